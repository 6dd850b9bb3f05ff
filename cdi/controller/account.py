"""The controllers' own identity in ``cdi serve``: ServiceAccount ``cdi/cdi-controller`` and its ClusterRole.

``cdi serve`` runs its controllers as this ServiceAccount, bound to a ClusterRole with exactly the rules
of ``cdi.controller.permissions`` (the ones the chart installs), so every import, upload and clone on one
machine proves the cluster's RBAC. The local node keeps the admin credentials (it is the kubelet); the
controllers do not. ``TokenSource`` asks for short-lived tokens (TokenRequest) and renews them before
they expire.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from cdi.controller.permissions import cluster_rules, namespace_rules
from cdi.kube import NAMESPACE, SERVICEACCOUNT, AlreadyExists, Client, Kind, Obj

log = logging.getLogger(__name__)

NAMESPACE_NAME = "cdi"
ACCOUNT = "cdi-controller"
ROLE = "cdi-controller"
CLUSTERROLE = Kind("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False)
CLUSTERROLEBINDING = Kind("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings",
                          namespaced=False)
NSROLE = Kind("rbac.authorization.k8s.io", "v1", "Role", "roles")
ROLEBINDING = Kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings")
TOKEN_SECONDS = 3600


def ensure_account(admin: Client, *, rules: list[Obj] | None = None, namespace: str = NAMESPACE_NAME,
                   name: str = ACCOUNT) -> None:
    """Create (or bring up to date) the namespace, ServiceAccount, ClusterRole and ClusterRoleBinding, and
    the Role and RoleBinding of the namespace (the upload signers: no Secret of another namespace).

    The ClusterRole's rules are replaced by ``rules`` (default: every controller's), so a rule removed
    from ``permissions.py`` is removed from the role at the next start; the Role's likewise."""
    role_rules = cluster_rules() if rules is None else rules
    ns_rules = namespace_rules()
    labels = {"app.kubernetes.io/name": "cdi", "app.kubernetes.io/component": "controller"}
    objects: list[tuple[Kind, Obj]] = [
        (NAMESPACE, {"metadata": {"name": namespace}}),
        (SERVICEACCOUNT, {"metadata": {"name": name, "namespace": namespace, "labels": labels}}),
        (CLUSTERROLE, {"metadata": {"name": ROLE, "labels": labels}, "rules": role_rules}),
        (CLUSTERROLEBINDING, {"metadata": {"name": ROLE, "labels": labels},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE},
                              "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
        (NSROLE, {"metadata": {"name": ROLE, "namespace": namespace, "labels": labels}, "rules": ns_rules}),
        (ROLEBINDING, {"metadata": {"name": ROLE, "namespace": namespace, "labels": labels},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE},
                       "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
    ]
    for kind, obj in objects:
        try:
            admin.create(kind, obj)
        except AlreadyExists:
            if kind is CLUSTERROLE:
                admin.patch(kind, None, ROLE, {"rules": role_rules})
            elif kind is NSROLE:
                admin.patch(kind, namespace, ROLE, {"rules": ns_rules})
    log.info("controller account %s/%s bound to ClusterRole %s rules=%d", namespace, name, ROLE, len(role_rules))


class TokenSource:
    """Bearer tokens of a ServiceAccount, minted through ``admin`` and renewed at 80% of their life."""

    def __init__(self, admin: Client, *, namespace: str = NAMESPACE_NAME, name: str = ACCOUNT,
                 seconds: int = TOKEN_SECONDS) -> None:
        self.admin = admin
        self.namespace = namespace
        self.name = name
        self.seconds = seconds
        self._lock = threading.Lock()
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        with self._lock:
            if time.time() >= self._renew_at:
                answer = self.admin.request_token(self.namespace, self.name, seconds=self.seconds)
                status = answer["status"]
                expiry = datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00")).timestamp()
                self._token = str(status["token"])
                self._renew_at = time.time() + 0.8 * (expiry - time.time())
            return self._token


def controller_client(admin: Client, **kwargs: str) -> Client:
    """A client of the same API server acting as the controllers' ServiceAccount."""
    return admin.with_token(TokenSource(admin, **kwargs))  # type: ignore[arg-type]
