"""Scratch claims: the volume a worker pod gets at /scratch when its job needs scratch space, as CDI
makes them.

A worker pod starts without one, so that an import that streams (most do) never costs a second
volume. When the worker finds it needs scratch space (a source qemu-img cannot read over the network,
a checksum to prove before the bytes are used, a qcow2 whose tables come after their data) it ends
with CDI's termination message ``scratchSpaceRequired``; the controller marks the target claim
(``cdi.kubevirt.io/storage.import.requiresScratch: "true"``), deletes the pod, and creates the next
one with a claim ``<target>-scratch`` mounted at /scratch. That claim is owned by the pod, so it is
garbage collected with it, and deleted by the controller as soon as the import ends.

Its storage class is CDIConfig's ``scratchSpaceStorageClass`` (the spec's override when that class
exists, else the status), else the target's; its size is CDI's: the target's usable space with the
scratch volume's filesystem overhead on top, rounded up to 1 MiB.
"""

from __future__ import annotations

import hashlib
import logging
import math

from cdi.controller.resources import LABEL_APP, SCRATCH_MOUNT, SCRATCH_VOLUME, ControllerSettings, owner_ref
from cdi.kube import PVC, AlreadyExists, Client, NotFound, Obj
from cdi.kube.kinds import CDICONFIG, STORAGECLASS
from cdi.kube.storage import storage_class as default_storage_class
from cdi.units import format_quantity, parse_size

log = logging.getLogger(__name__)

ANN_REQUIRES_SCRATCH = "cdi.kubevirt.io/storage.import.requiresScratch"
VOLUME, MOUNT_PATH = SCRATCH_VOLUME, SCRATCH_MOUNT
SUFFIX = "scratch"
LABEL_VELERO_EXCLUDE = "velero.io/exclude-from-backup"
# CDI's reasons and messages for the DataVolume's conditions
REASON_REQUIRED = "Scratch space required"
MESSAGE_REQUIRED = "scratch space required and none found"
REASON_CREATING = "CreatingScratchSpace"
MESSAGE_CREATING = "Creating scratch space"
ALIGN = 1 << 20
NAME_LIMIT = 253


def claim_name(target: str) -> str:
    """``<target>-scratch`` (CDI's naming.GetResourceName): a name too long for that is cut and made
    unique again with a hash of the whole."""
    full = f"{target}-{SUFFIX}"
    if len(full) <= NAME_LIMIT:
        return full
    digest = hashlib.sha256(target.encode()).hexdigest()[:8]
    return f"{target[:NAME_LIMIT - len(SUFFIX) - 10].rstrip('-.')}-{digest}-{SUFFIX}"


def scratch_size(target: Obj, overhead: float) -> int:
    """CDI's rule: the target's usable space (its request less its filesystem overhead, rounded down to
    1 MiB), plus the scratch volume's own overhead (it is always a Filesystem volume), rounded up."""
    request = parse_size(str(target["spec"]["resources"]["requests"]["storage"]))
    target_overhead = overhead if (target["spec"].get("volumeMode") or "Filesystem") == "Filesystem" else 0.0
    usable = math.ceil(request / (1 + target_overhead)) // ALIGN * ALIGN
    required = math.ceil(_round_up(usable) * (1 + overhead))
    return _round_up(required)


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def storage_class(client: Client, target: Obj) -> str | None:
    """CDIConfig ``spec.scratchSpaceStorageClass`` when such a class exists, else its
    ``status.scratchSpaceStorageClass``, else the cluster's default class (what CDI's config controller
    puts in that status), else the target's class (None: no class named)."""
    config = client.find(CDICONFIG, None, "config") or {}
    wanted = str((config.get("spec") or {}).get("scratchSpaceStorageClass") or "")
    if wanted and client.find(STORAGECLASS, None, wanted) is not None:
        return wanted
    if wanted:
        log.warning("CDIConfig scratchSpaceStorageClass %s does not exist: using the target's class", wanted)
    status = str((config.get("status") or {}).get("scratchSpaceStorageClass") or "")
    if status:
        return status
    default = default_storage_class(client, {"spec": {}})  # a claim that names no class gets the default
    if default is not None:
        return str(default["metadata"]["name"])
    name = (target.get("spec") or {}).get("storageClassName")
    return str(name) if name else None


def build_claim(target: Obj, pod: Obj, *, storage_class_name: str | None, settings: ControllerSettings) -> Obj:
    """The scratch claim of ``target`` for ``pod``, owned by the pod (gone with it, as in CDI). Only the
    target's kubevirt.io annotations are copied, never CDI's (they would start another import)."""
    meta = target["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if "kubevirt.io" in k and "cdi.kubevirt.io" not in k}
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": format_quantity(scratch_size(target,
                                                                                    settings.filesystem_overhead))}}}
    if storage_class_name:
        spec["storageClassName"] = storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**LABEL_APP, LABEL_VELERO_EXCLUDE: "true"},
            "annotations": annotations,
            "ownerReferences": [owner_ref(pod)],
        },
        "spec": spec,
    }


def pod_claim(pod: Obj) -> str | None:
    """The scratch claim the pod mounts, or None."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") == VOLUME:
            return str((volume.get("persistentVolumeClaim") or {}).get("claimName") or "") or None
    return None


def ensure_claim(client: Client, target: Obj, pod: Obj, settings: ControllerSettings) -> tuple[Obj, bool]:
    """The pod's scratch claim, created when missing; (claim, created)."""
    name = pod_claim(pod)
    assert name is not None, "the pod mounts no scratch claim"
    existing = client.find(PVC, target["metadata"]["namespace"], name)
    if existing is not None:
        return existing, False
    wanted = build_claim(target, pod, storage_class_name=storage_class(client, target), settings=settings)
    try:
        return client.create(PVC, wanted), True
    except AlreadyExists:
        return client.get(PVC, target["metadata"]["namespace"], name), False


def owned_by(claim: Obj, owner: Obj) -> bool:
    uid = owner["metadata"].get("uid")
    return any(o.get("uid") == uid for o in claim["metadata"].get("ownerReferences") or [])


def is_scratch_of(claim: Obj, pod_name: str) -> bool:
    """Whether ``claim`` is a scratch claim made for a worker pod of that name (and not, say, the claim
    of a DataVolume that happens to be called ``<target>-scratch``)."""
    return any(o.get("kind") == "Pod" and o.get("name") == pod_name
               for o in claim["metadata"].get("ownerReferences") or [])


def delete_claim(client: Client, namespace: str, target: str, pod_name: str) -> bool:
    """Delete the target's scratch claim, made for pods named ``pod_name``, if there is one."""
    name = claim_name(target)
    claim = client.find(PVC, namespace, name)
    if claim is None or claim["metadata"].get("deletionTimestamp") or not is_scratch_of(claim, pod_name):
        return False
    try:
        client.delete(PVC, namespace, name)
    except NotFound:
        return False
    log.info("[%s/%s] deleted scratch claim %s", namespace, target, name)
    return True
