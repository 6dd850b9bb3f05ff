"""The default ClusterRoles and ClusterRoleBindings, as kube-apiserver bootstraps them.

cluster-admin (bound to `system:masters`), the user-facing admin, edit and view (aggregated roles:
their rules are written out here, and rules of ClusterRoles labelled `aggregate-to-<role>` are added
when a request is evaluated), and system:discovery, system:basic-user and system:public-info-viewer
bound to `system:authenticated` so any user can discover the API, `kubectl auth can-i` and
`kubectl auth whoami`. CDI's and KubeVirt's aggregated roles (`cdi.kubevirt.io:admin|edit|view`,
`kubevirt.io:admin|edit|view`) carry the rules their operators install.

`ensure(objects)` creates what is missing at start and, as kube's reconciler does for roles marked
`rbac.authorization.kubernetes.io/autoupdate: "true"`, adds default rules and subjects an existing
object lacks (it never removes any).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from cdi.api.rbac import CLUSTERROLE, CLUSTERROLEBINDING
from cdi.apiserver.objects import Objects

log = logging.getLogger(__name__)

Obj = dict[str, Any]

READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
READ_WRITE = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
CDI, KUBEVIRT, SUBRESOURCES = "cdi.kubevirt.io", "kubevirt.io", "subresources.kubevirt.io"


def _rule(verbs: list[str], groups: list[str], resources: list[str]) -> Obj:
    return {"verbs": verbs, "apiGroups": groups, "resources": resources}


def _urls(verbs: list[str], urls: list[str]) -> Obj:
    return {"verbs": verbs, "nonResourceURLs": urls}


# kube's system:aggregate-to-view, -edit and -admin (the groups cdi serves, and those kubectl knows).
_VIEW = [
    _rule(READ, [""], ["pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
                       "services", "services/status", "endpoints", "persistentvolumeclaims",
                       "persistentvolumeclaims/status", "configmaps"]),
    _rule(READ, [""], ["limitranges", "resourcequotas", "bindings", "events", "pods/status",
                       "resourcequotas/status", "namespaces/status", "replicationcontrollers/status", "pods/log"]),
    _rule(READ, [""], ["namespaces"]),
]
_EDIT = [
    _rule(WRITE, [""], ["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
    _rule(["create"], [""], ["pods/eviction"]),
    _rule(WRITE, [""], ["replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
                        "services/proxy", "persistentvolumeclaims", "configmaps", "secrets", "events"]),
    _rule(["create"], [""], ["serviceaccounts/token"]),
    _rule(READ, [""], ["pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"]),
    _rule(["impersonate"], [""], ["serviceaccounts"]),
]
_ADMIN = [
    _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    _rule(READ_WRITE, ["rbac.authorization.k8s.io"], ["roles", "rolebindings"]),
]
# CDI's operator: pkg/operator/resources/cluster/rbac.go (cdi.kubevirt.io:admin, :edit, :view).
_CDI_EDIT = [
    _rule(["*"], [CDI], ["datavolumes", "dataimportcrons", "datasources", "volumeimportsources",
                         "volumeuploadsources", "volumeclonesources"]),
    _rule(["create"], [CDI], ["datavolumes/source"]),
    _rule(["*"], ["upload.cdi.kubevirt.io"], ["uploadtokenrequests"]),
]
_CDI_VIEW = [
    _rule(READ, [CDI], ["cdiconfigs", "dataimportcrons", "datasources", "datavolumes", "objecttransfers",
                        "storageprofiles", "volumeimportsources", "volumeuploadsources", "volumeclonesources"]),
]
# KubeVirt's virt-operator: kubevirt.io:admin, :edit, :view.
_KUBEVIRT_EDIT = [
    _rule(["get"], [SUBRESOURCES], ["virtualmachineinstances/console", "virtualmachineinstances/vnc",
                                    "virtualmachineinstances/vnc/screenshot", "virtualmachineinstances/portforward",
                                    "virtualmachineinstances/guestosinfo", "virtualmachineinstances/filesystemlist",
                                    "virtualmachineinstances/userlist"]),
    _rule(["update"], [SUBRESOURCES], ["virtualmachineinstances/pause", "virtualmachineinstances/unpause",
                                       "virtualmachineinstances/addvolume", "virtualmachineinstances/removevolume",
                                       "virtualmachineinstances/freeze", "virtualmachineinstances/unfreeze",
                                       "virtualmachineinstances/softreboot"]),
    _rule(["get"], [SUBRESOURCES], ["virtualmachines/expand-spec", "virtualmachines/portforward"]),
    _rule(["update"], [SUBRESOURCES], ["virtualmachines/start", "virtualmachines/stop", "virtualmachines/restart",
                                       "virtualmachines/addvolume", "virtualmachines/removevolume",
                                       "virtualmachines/migrate", "virtualmachines/memorydump"]),
    _rule(READ_WRITE, [KUBEVIRT], ["virtualmachines", "virtualmachineinstances", "virtualmachineinstancepresets",
                                   "virtualmachineinstancereplicasets", "virtualmachineinstancemigrations"]),
    _rule(["get", "list"], [KUBEVIRT], ["kubevirts"]),
]
_KUBEVIRT_VIEW = [
    _rule(["get", "list"], [KUBEVIRT], ["kubevirts"]),
    _rule(["get"], [SUBRESOURCES], ["virtualmachines/expand-spec", "virtualmachineinstances/guestosinfo",
                                    "virtualmachineinstances/filesystemlist", "virtualmachineinstances/userlist"]),
    _rule(READ, [KUBEVIRT], ["virtualmachines", "virtualmachineinstances", "virtualmachineinstancepresets",
                             "virtualmachineinstancereplicasets", "virtualmachineinstancemigrations"]),
]
_HEALTH = ["/livez", "/readyz", "/healthz", "/version", "/version/"]
# kube's system:monitoring (bound to the group of the same name): the metrics and health endpoints.
_MONITORING = ["/metrics", "/metrics/slis", "/livez", "/readyz", "/healthz", "/livez/*", "/readyz/*", "/healthz/*"]


def _role(name: str, rules: list[Obj], *, labels: dict[str, str] | None = None,
          aggregate_from: str | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
                 "annotations": {AUTOUPDATE: "true"}}
    role: Obj = {"metadata": meta, "rules": rules}
    if aggregate_from:
        role["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {AGGREGATE + aggregate_from: "true"}}]}
    return role


def _binding(name: str, groups: list[str], role: str | None = None) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role or name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g} for g in groups],
    }


def cluster_roles() -> list[Obj]:
    """The default ClusterRoles; admin holds edit's rules and edit view's, as aggregation makes them."""
    view = _VIEW + _CDI_VIEW + _KUBEVIRT_VIEW
    edit = _EDIT + _CDI_EDIT + _KUBEVIRT_EDIT + view
    return [
        _role("cluster-admin", [_rule(["*"], ["*"], ["*"]), _urls(["*"], ["*"])]),
        _role("admin", _ADMIN + edit, aggregate_from="admin"),
        _role("edit", edit, labels={AGGREGATE + "admin": "true"}, aggregate_from="edit"),
        _role("view", view, labels={AGGREGATE + "edit": "true"}, aggregate_from="view"),
        _role("system:discovery", [_urls(["get"], [*_HEALTH, "/api", "/api/*", "/apis", "/apis/*",
                                                   "/openapi", "/openapi/*"])]),
        _role("system:basic-user", [
            _rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
        ]),
        _role("system:public-info-viewer", [_urls(["get"], _HEALTH)]),
        _role("system:monitoring", [_urls(["get"], _MONITORING)]),
        _role("cdi.kubevirt.io:admin", _CDI_EDIT, labels={AGGREGATE + "admin": "true"}),
        _role("cdi.kubevirt.io:edit", _CDI_EDIT, labels={AGGREGATE + "edit": "true"}),
        _role("cdi.kubevirt.io:view", _CDI_VIEW, labels={AGGREGATE + "view": "true"}),
        _role("cdi.kubevirt.io:clone-sourcer", [_rule(["create"], [CDI], ["datavolumes/source"])]),
        _role("kubevirt.io:admin", _KUBEVIRT_EDIT, labels={AGGREGATE + "admin": "true"}),
        _role("kubevirt.io:edit", _KUBEVIRT_EDIT, labels={AGGREGATE + "edit": "true"}),
        _role("kubevirt.io:view", _KUBEVIRT_VIEW, labels={AGGREGATE + "view": "true"}),
    ]


def cluster_role_bindings() -> list[Obj]:
    authenticated = ["system:authenticated"]
    return [
        _binding("cluster-admin", ["system:masters"]),
        _binding("system:discovery", authenticated),
        _binding("system:basic-user", authenticated),
        _binding("system:public-info-viewer", ["system:authenticated", "system:unauthenticated"]),
        _binding("system:monitoring", ["system:monitoring"]),
    ]


def _missing(have: list[Obj], want: list[Obj]) -> list[Obj]:
    return [w for w in want if w not in have]


def ensure(objects: Objects) -> None:
    """Create the default roles and bindings, or add the default rules and subjects they lack."""
    for kind, defaults, field in ((CLUSTERROLE, cluster_roles(), "rules"),
                                  (CLUSTERROLEBINDING, cluster_role_bindings(), "subjects")):
        for want in defaults:
            name = want["metadata"]["name"]
            have = objects.store.get(kind.key, "", name)
            if have is None:
                objects.create(kind, "", copy.deepcopy(want))
                continue
            if (have["metadata"].get("annotations") or {}).get(AUTOUPDATE) != "true":
                continue
            missing = _missing(have.get(field) or [], want[field])
            if missing:
                updated = copy.deepcopy(have)
                updated[field] = (have.get(field) or []) + missing
                objects.update(kind, "", name, updated)
                log.info("reconciled default %s name=%s added=%d", kind.kind, name, len(missing))
