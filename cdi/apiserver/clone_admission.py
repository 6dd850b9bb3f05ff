"""CDI's clone authorization for DataVolumes (its `datavolume-mutate.cdi.kubevirt.io` webhook).

A DataVolume cloning a PVC (`spec.source.pvc`) from another namespace is admitted, on create and
update, only when the requesting user may `create` `datavolumes/source` (group cdi.kubevirt.io) on
that PVC in the source namespace, or else `create` `pods` there: the two SubjectAccessReviews CDI
sends (`CanUserClonePVC`). Otherwise the request is refused as kube reports CDI's refusal:
`admission webhook "datavolume-mutate.cdi.kubevirt.io" denied the request:  User NAME has
insufficient permissions in clone source namespace NS` (422, the cause on
`spec.source.PVC.namespace`); a source namespace that does not exist is a 400 naming it. A
DataVolume marked pre-populated (`cdi.kubevirt.io/storage.prePopulated` or
`cdi.kubevirt.io/storage.checkStaticVolume`) or being deleted is let through, as CDI does.

Once a clone is allowed (same namespace, or the review passed), a new DataVolume gets CDI's clone
token (`cdi.kubevirt.io/storage.clone.token`, see `cdi.clonetoken`) when a signer is set: the
controller clones only with it. A `sourceRef` to a DataSource is authorized as a clone of the PVC the
DataSource stands for at that moment (CDI's `newCloneSourceHandler`), so nobody reaches through a
DataSource a PVC they could not clone directly; a DataSource that does not exist yet or has no PVC is
let through without a token (the DataVolume waits; the controller then clones without a token only from
the DataVolume's own namespace). A VirtualMachine's `dataVolumeTemplates` get the same check for the
user who writes the VirtualMachine (KubeVirt's VM admission), refused as
`admission webhook "virtualmachine-validator.kubevirt.io" denied the request:
spec.dataVolumeTemplates[0]: Authorization failed, message is: User NAME has insufficient permissions
in clone source namespace NS`: the VM controller creates those DataVolumes as its ServiceAccount, which
may clone anything. Not here: `source.snapshot` (this server serves no VolumeSnapshots).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import WebhookDenied, WebhookError
from cdi.apiserver.rbac import CURRENT_USER, Attributes, Decision, User
from cdi.clonetoken import ANN_CLONE_TOKEN, issue
from cdi.uploadtoken import Signer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
WEBHOOK = "datavolume-mutate.cdi.kubevirt.io"
VM_WEBHOOK = "virtualmachine-validator.kubevirt.io"  # KubeVirt's VM admission (virt-api)
VM_GROUP = "kubevirt.io"
GROUP = "cdi.kubevirt.io"
DATASOURCES = "cdi.kubevirt.io/datasources"  # the store's key of the DataSource kind
DATASOURCE_KIND = "DataSource"
NO_TOKEN_OKAY = ("cdi.kubevirt.io/storage.prePopulated", "cdi.kubevirt.io/storage.checkStaticVolume")


class Authorizes(Protocol):
    """Who answers the reviews: the embedded server's RBAC, or a cluster's SubjectAccessReview API."""

    def authorize(self, attrs: Attributes) -> Decision: ...


class CloneSourceCheck:
    """The admission check: may the requesting user read the clone source in its namespace?

    The embedded API server runs it with its own RBAC and store; the webhook server (`cdi.webhook`)
    with SubjectAccessReviews and namespace reads against the cluster's API server.
    """

    def __init__(self, authorizer: Authorizes, namespace_exists: Callable[[str], bool],
                 find_datasource: Callable[[str, str], Obj | None]) -> None:
        self.authorizer = authorizer
        self.namespace_exists = namespace_exists
        self.find_datasource = find_datasource  # (namespace, name) -> the DataSource, or None
        self.signer: Signer | None = None  # the upload-token key, once the server has one

    def _grant(self, obj: Obj, old: Obj | None, source_ns: str, source_name: str) -> None:
        """Put the clone token on a new DataVolume (an update keeps the one it has)."""
        meta = obj["metadata"]
        if self.signer is None or old is not None:
            return
        meta.setdefault("annotations", {})[ANN_CLONE_TOKEN] = issue(self.signer, source_ns, source_name,
                                                                    meta.get("namespace", ""), meta.get("name", ""))

    def _clone_source(self, obj: Obj, target_ns: str) -> tuple[str, str] | None:
        """The PVC a DataVolume clones: ``source.pvc``, or what its ``sourceRef`` DataSource stands for now
        (through a ``dataSource`` reference, its status, as CDI); None when it clones nothing (yet)."""
        spec = obj.get("spec") or {}
        pvc = (spec.get("source") or {}).get("pvc")
        if isinstance(pvc, dict):
            return str(pvc.get("namespace") or target_ns), str(pvc.get("name") or "")
        ref = spec.get("sourceRef")
        if not isinstance(ref, dict) or ref.get("kind", DATASOURCE_KIND) != DATASOURCE_KIND:
            return None
        ds_ns = str(ref.get("namespace") or target_ns)
        ds = self.find_datasource(ds_ns, str(ref.get("name") or ""))
        if ds is None:
            # Nothing to authorize yet: the DataVolume waits for the DataSource, and the controller clones
            # without a token only from the DataVolume's own namespace.
            return None
        source = (ds.get("spec") or {}).get("source") or {}
        if source.get("dataSource") is not None:
            source = (ds.get("status") or {}).get("source") or {}
        pvc = source.get("pvc")
        if not isinstance(pvc, dict) or not pvc.get("name"):
            return None
        return str(pvc.get("namespace") or ds_ns), str(pvc["name"])

    def __call__(self, kind: ResourceKind, obj: Obj, old: Obj | None) -> None:
        user = CURRENT_USER.get()
        if user is None:
            return
        if (kind.group, kind.kind) == (VM_GROUP, "VirtualMachine"):
            self._admit_vm(user, obj, old)
            return
        if (kind.group, kind.kind) != (GROUP, "DataVolume"):
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        target_ns = meta.get("namespace", "")
        source = self._clone_source(obj, target_ns)
        if source is None:
            return
        source_ns, source_name = source
        no_token_okay = any(a in (meta.get("annotations") or {}) for a in NO_TOKEN_OKAY)
        if not self.namespace_exists(source_ns):
            if no_token_okay:
                return
            raise WebhookError.by(WEBHOOK, f'namespaces "{source_ns}" not found')
        if source_ns == target_ns or self._may_clone(user, source_ns, source_name):
            self._grant(obj, old, source_ns, source_name)
            return
        if no_token_okay:
            return
        reason = f"User {user.name} has insufficient permissions in clone source namespace {source_ns}"
        log.info("clone refused user=%s source=%s/%s target=%s/%s", user.name, source_ns, source_name, target_ns,
                 meta.get("name"))
        cause = {"reason": "FieldValueInvalid", "message": reason, "field": "spec.source.PVC.namespace"}
        raise WebhookDenied.by(WEBHOOK, f" {reason}", details={"causes": [cause]})

    def _may_clone(self, user: User, source_ns: str, source_name: str) -> bool:
        """CDI's two reviews: ``create datavolumes/source``, or else ``create pods``, in the source namespace."""
        for group, resource, subresource in ((GROUP, "datavolumes", "source"), ("", "pods", "")):
            attrs = Attributes(user, "create", True, group=group, namespace=source_ns, resource=resource,
                               subresource=subresource, name=source_name)
            if self.authorizer.authorize(attrs).allowed:
                return True
        return False

    def _admit_vm(self, user: User, vm: Obj, old: Obj | None) -> None:
        """KubeVirt's VM admission: each dataVolumeTemplate must be a clone the requesting user may make.

        The VM controller creates the DataVolumes as its own ServiceAccount, which may clone anything;
        without this check a VirtualMachine would reach a PVC (or a DataSource's PVC) in a namespace its
        author cannot clone from. A template the old object already had passed this check when it came.
        """
        meta = vm["metadata"]
        if meta.get("deletionTimestamp"):
            return
        target_ns = meta.get("namespace", "")
        before = ((old or {}).get("spec") or {}).get("dataVolumeTemplates") or []
        causes: list[Obj] = []
        for i, template in enumerate((vm.get("spec") or {}).get("dataVolumeTemplates") or []):
            if not isinstance(template, dict) or template in before:
                continue
            tmeta = template.get("metadata") or {}
            as_dv = {"metadata": {**tmeta, "namespace": target_ns}, "spec": template.get("spec") or {}}
            source = self._clone_source(as_dv, target_ns)
            if source is None or source[0] == target_ns:
                continue
            source_ns, source_name = source
            if not self.namespace_exists(source_ns):
                message = f'namespaces "{source_ns}" not found'
            elif self._may_clone(user, source_ns, source_name):
                continue
            else:
                message = f"User {user.name} has insufficient permissions in clone source namespace {source_ns}"
            log.info("VM clone refused user=%s source=%s/%s vm=%s/%s", user.name, source_ns, source_name,
                     target_ns, meta.get("name"))
            causes.append({"reason": "FieldValueInvalid", "message": f"Authorization failed, message is: {message}",
                           "field": f"spec.dataVolumeTemplates[{i}]"})
        if causes:
            text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            raise WebhookDenied.by(VM_WEBHOOK, text, details={"causes": causes})
