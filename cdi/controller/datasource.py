"""The DataSource reconciler: is the golden image a DataSource names ready to be cloned?

As CDI's datasource-controller: `spec.source.dataSource` is followed one level (not across namespaces,
never to itself); a `pvc` source is Ready when the claim exists and the DataVolume of the same name, if
there is one, has Succeeded; otherwise `Ready` is False with CDI's reasons (`NotFound`, the
DataVolume's phase such as `ImportInProgress`, `NoSource`, ...). `status.source` mirrors the resolved
source while Ready and is empty otherwise, so a reader of the status never sees a source that is not
usable. VolumeSnapshots are not served here: a snapshot source says so in the condition.
"""

from __future__ import annotations

import copy
import logging

from cdi.controller import conditions as c
from cdi.kube import DATASOURCE, DATAVOLUME, PVC, Client, Obj

log = logging.getLogger(__name__)

READY = "Ready"
SNAPSHOT_UNSUPPORTED = ("VolumeSnapshot sources are not supported here (this server has no VolumeSnapshots); "
                        "point spec.source.pvc at a PVC instead")


class Unresolved(Exception):
    """A DataSource that does not lead to a usable source; ``reason`` is CDI's condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def resolve_chain(client: Client, ds: Obj) -> Obj:
    """The DataSource whose `spec.source` is the real one: ``ds`` itself or the one it references.

    CDI's ResolveDataSourceChain: one level at most, same namespace only, never itself.
    """
    ref = ((ds.get("spec") or {}).get("source") or {}).get("dataSource")
    if not isinstance(ref, dict):
        return ds
    meta = ds["metadata"]
    ref_ns = str(ref.get("namespace") or meta["namespace"])
    if ref_ns != meta["namespace"]:
        raise Unresolved("CrossNamespaceReference", "DataSource cannot reference a DataSource in another namespace")
    if ref.get("name") == meta["name"]:
        raise Unresolved("SelfReference", "DataSource cannot self-reference")
    target = client.find(DATASOURCE, ref_ns, str(ref.get("name") or ""))
    if target is None:
        raise Unresolved("NotFound", f'datasources.cdi.kubevirt.io "{ref.get("name")}" not found')
    if ((target.get("spec") or {}).get("source") or {}).get("dataSource") is not None:
        raise Unresolved("MaxReferenceDepthReached", "DataSource reference chain exceeds maximum depth of 1")
    return target


def pvc_source(ds: Obj) -> tuple[str, str] | None:
    """(namespace, name) of a resolved DataSource's PVC source, the namespace defaulting to the DataSource's."""
    pvc = ((ds.get("spec") or {}).get("source") or {}).get("pvc")
    if not isinstance(pvc, dict) or not pvc.get("name"):
        return None
    return str(pvc.get("namespace") or ds["metadata"]["namespace"]), str(pvc["name"])


def readiness(client: Client, resolved: Obj) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready condition for a resolved DataSource."""
    source = (resolved.get("spec") or {}).get("source") or {}
    found = pvc_source(resolved)
    if found is not None:
        ns, name = found
        dv = client.find(DATAVOLUME, ns, name)
        if dv is not None:
            phase = str((dv.get("status") or {}).get("phase") or "")
            if phase == c.SUCCEEDED:
                return "True", READY, "DataSource is ready to be consumed"
            return "False", phase or c.PENDING, f"Import DataVolume phase {phase or c.PENDING}"
        if client.find(PVC, ns, name) is None:
            return "False", "NotFound", "PVC not found"
        return "True", READY, "DataSource is ready to be consumed"
    if source.get("snapshot") is not None:
        return "False", "NotSupported", SNAPSHOT_UNSUPPORTED
    return "False", "NoSource", "No source PVC set"


class DataSourceReconciler:
    def __init__(self, client: Client) -> None:
        self.client = client

    def reconcile(self, namespace: str, name: str) -> float | None:
        ds = self.client.find(DATASOURCE, namespace, name)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return None
        old: Obj = ds.get("status") or {}
        status: Obj = {"conditions": copy.deepcopy(old.get("conditions") or [])}
        try:
            resolved = resolve_chain(self.client, ds)
            state, reason, message = readiness(self.client, resolved)
            source = copy.deepcopy((resolved.get("spec") or {}).get("source") or {})
        except Unresolved as e:
            state, reason, message, source = "False", e.reason, e.message, {}
        c.set_condition(status["conditions"], READY, state, reason, message)
        status["source"] = source if state == "True" else {}
        if status != old:
            # The whole status replaced: a merge patch would keep a stale source key that is gone now.
            self.client.patch(DATASOURCE, namespace, name, [{"op": "add", "path": "/status", "value": status}],
                              status=True, json_patch=True)
            log.info("[%s/%s] datasource ready=%s reason=%s", namespace, name, state, reason)
        return None
