"""A DataVolume's ``spec.sourceRef``: which PVC the DataSource it names stands for, right now.

The clone reconciler asks this before it creates the target claim; once the claim exists, the source
it was made from (the claim's ``cdi.kubevirt.io/storage.clone.source``) is kept, so a DataSource that
moves on to a newer import (a DataImportCron did) never changes a clone half way. The readiness is
computed fresh (the DataSource's own condition may lag behind its spec), with the DataSource
controller's rules. A DataSource that is missing, not ready, or not a PVC raises ``Unresolved``: the
DataVolume waits, says why, and is woken when the DataSource changes.
"""

from __future__ import annotations

import copy

from cdi.controller.datasource import SNAPSHOT_UNSUPPORTED, Unresolved, pvc_source, readiness, resolve_chain
from cdi.kube import DATASOURCE, Client, Obj

RESOLVED = "__resolvedSource"  # key of an in-memory copy only; the API never sees it
WAIT_FOR_DATASOURCE = 5.0  # the DataSource's changes wake the DataVolume; this is the safety net


def ref_key(dv: Obj) -> tuple[str, str] | None:
    """(namespace, name) of the DataSource a DataVolume refers to, or None."""
    ref = (dv.get("spec") or {}).get("sourceRef")
    if not isinstance(ref, dict) or ref.get("kind", "DataSource") != "DataSource" or not ref.get("name"):
        return None
    return str(ref.get("namespace") or dv["metadata"]["namespace"]), str(ref["name"])


def resolve(client: Client, dv: Obj) -> tuple[str, str]:
    """(namespace, name) of the PVC to clone for a DataVolume with a sourceRef."""
    key = ref_key(dv)
    if key is None:
        raise Unresolved("DataSourceInvalid", "spec.sourceRef must name a DataSource")
    ns, name = key
    ds = client.find(DATASOURCE, ns, name)
    if ds is None:
        raise Unresolved("DataSourceNotFound", f"DataSource {ns}/{name} not found; waiting for it to be created")
    try:
        resolved = resolve_chain(client, ds)
    except Unresolved as e:
        raise Unresolved("DataSourceNotReady", f"DataSource {ns}/{name} is not ready: {e.message}") from e
    found = pvc_source(resolved)
    if found is None:
        source = (resolved.get("spec") or {}).get("source") or {}
        if source.get("snapshot") is not None:
            raise Unresolved("DataSourceNotSupported", f"DataSource {ns}/{name}: {SNAPSHOT_UNSUPPORTED}")
        raise Unresolved("DataSourceNotReady", f"DataSource {ns}/{name} has no source yet (not ready)")
    state, reason, message = readiness(client, resolved)
    if state != "True":
        raise Unresolved("DataSourceNotReady", f"DataSource {ns}/{name} is not ready: {reason}: {message} "
                                               f"(PVC {found[0]}/{found[1]})")
    return found


def with_pvc_source(dv: Obj, namespace: str, name: str, *, via: str) -> Obj:
    """A copy of the DataVolume cloning that PVC, as CDI's controller fills spec.source from the reference.

    ``via`` (``sourceRef`` or ``cache``) stays on the copy (never written back) under ``RESOLVED``: the
    clone reconciler needs no clone token for such a clone within the DataVolume's own namespace.
    """
    out = copy.deepcopy(dv)
    out["spec"]["source"] = {"pvc": {"namespace": namespace, "name": name}}
    out[RESOLVED] = via
    return out


def resolved_via(dv: Obj) -> str | None:
    """``sourceRef`` or ``cache`` for a DataVolume copy made by ``with_pvc_source``, else None."""
    value = dv.get(RESOLVED)
    return str(value) if value else None
