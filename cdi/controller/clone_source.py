"""The source side of a clone: whether the source can be read yet, and removing what a stream runs there.

``source_busy`` gives CDI's reasons to wait (the source claim not bound, its DataVolume not Succeeded,
a pod other than a clone still using it). A stream's source pod and Secret live in the source's
namespace, where an owner reference to the target cannot reach, so ``release_source_side`` removes
them when the target DataVolume goes.
"""

from __future__ import annotations

import logging

from cdi.controller import conditions as c
from cdi.controller.clone_stream import ANN_TARGET, LABEL_TARGET_UID, source_pod_name
from cdi.kube import DATAVOLUME, POD, PVC, SECRET, ApiError, Client, NotFound, Obj

log = logging.getLogger(__name__)


def source_busy(client: Client, source: Obj) -> tuple[str, str] | None:
    """Why the source cannot be read yet (CDI's reasons), or None."""
    smeta = source["metadata"]
    if (source.get("status") or {}).get("phase") != "Bound":
        return "SourcePVCNotBound", f"The source pvc {smeta['namespace']}/{smeta['name']} is not bound"
    for ref in smeta.get("ownerReferences") or []:
        if ref.get("kind") != "DataVolume":
            continue
        owner = client.find(DATAVOLUME, smeta["namespace"], ref["name"])
        if owner is not None and (owner.get("status") or {}).get("phase") != c.SUCCEEDED:
            return "ImportPVCNotReady", "The source PVC is not fully imported"
    try:
        pods, _ = client.list(POD, smeta["namespace"])
    except ApiError:
        return None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if (pod["metadata"].get("labels") or {}).get("cdi.kubevirt.io") == "cdi-clone":
            continue  # another clone reads it too: reading together is fine
        claims = {(v.get("persistentVolumeClaim") or {}).get("claimName")
                  for v in (pod.get("spec") or {}).get("volumes") or []}
        if smeta["name"] in claims:
            return ("CloneSourceInUse", f"pod {smeta['namespace']}/{pod['metadata']['name']} using "
                                        f"PersistentVolumeClaim {smeta['name']}")
    return None


def release_source_side(client: Client, namespace: str, name: str) -> None:
    """The DataVolume is gone or going: stop its stream's source side in the source namespace (an
    owner reference cannot cross namespaces, so nothing else would), unless a new claim of that
    name is the one being cloned into."""
    try:
        pods, _ = client.list(POD, None, label_selector="cdi.kubevirt.io=cdi-clone")
    except ApiError:
        return
    target = client.find(PVC, namespace, name)
    current = None if target is None or target["metadata"].get("deletionTimestamp") else target["metadata"]["uid"]
    for pod in pods:
        meta = pod["metadata"]
        uid = (meta.get("labels") or {}).get(LABEL_TARGET_UID)
        if (meta.get("annotations") or {}).get(ANN_TARGET) == f"{namespace}/{name}" and uid and uid != current:
            log.info("[%s/%s] deleted; removing clone source pod %s/%s", namespace, name, meta["namespace"],
                     meta["name"])
            delete_source_side(client, meta["namespace"], uid)

def delete_source_side(client: Client, source_ns: str, uid: str) -> None:
    for kind in (POD, SECRET):
        try:
            client.delete(kind, source_ns, source_pod_name(uid))
        except NotFound:
            pass
