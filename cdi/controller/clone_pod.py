"""The clone worker pod, as a pure function: one pod that mounts the source claim read-only and the target.

The pod ``cdi-clone-<dv>`` runs in the target's namespace, owned by the target PVC, and runs the
``cdi-cloner`` image (``python3 -m cloner``). The source is mounted at /source (its ``disk.img``) or,
for a Block source, as the device /dev/cdi-clone-source; the target as the importer has it (/data or
/dev/cdi-block-volume). A pod can only use claims of its own namespace, so this pod serves clones
within one namespace; a clone across namespaces streams from a pod in the source namespace instead.
"""

from __future__ import annotations

from typing import Any

from cdi.controller.resources import (
    ANN_CREATED_BY,
    METRICS_ENV,
    METRICS_PORTS,
    WorkerPodConfig,
    child_name,
    worker_container,
    worker_pod,
)

Obj = dict[str, Any]

LABEL_COMPONENT = "cdi-clone"
SOURCE_DIR = "/source"
SOURCE_DEVICE = "/dev/cdi-clone-source"
TARGET_DIR = "/data"
TARGET_DEVICE = "/dev/cdi-block-volume"


def clone_pod_name(dv_name: str) -> str:
    return child_name("cdi-clone-", dv_name)


def is_block(pvc: Obj) -> bool:
    return (pvc.get("spec") or {}).get("volumeMode") == "Block"


def build_clone_pod(dv: Obj, source: Obj, target: Obj, *, image: str, reflink: bool = True,
                    placement: WorkerPodConfig | None = None) -> Obj:
    meta = dv["metadata"]
    mounts: list[Obj] = []
    devices: list[Obj] = []
    if is_block(source):
        devices.append({"name": "cdi-clone-source", "devicePath": SOURCE_DEVICE})
        source_path = SOURCE_DEVICE
    else:
        mounts.append({"name": "cdi-clone-source", "mountPath": SOURCE_DIR, "readOnly": True})
        source_path = f"{SOURCE_DIR}/disk.img"
    if is_block(target):
        devices.append({"name": "cdi-data-vol", "devicePath": TARGET_DEVICE})
        target_path = TARGET_DEVICE
    else:
        mounts.append({"name": "cdi-data-vol", "mountPath": TARGET_DIR})
        target_path = f"{TARGET_DIR}/disk.img"
    env: list[Obj] = [
        {"name": "CLONER_SOURCE", "value": source_path},
        {"name": "CLONER_TARGET", "value": target_path},
        {"name": "CLONER_TARGET_BLOCK", "value": str(is_block(target)).lower()},
        {"name": "CLONER_REFLINK", "value": str(reflink).lower()},
        {"name": "CLONER_DIGEST", "value": "true"},
        {"name": "OWNER_UID", "value": meta["uid"]},
    ]
    container = worker_container("cdi-cloner", image, ["python3", "-m", "cloner"], [*env, *METRICS_ENV],
                                 mounts=mounts, devices=devices, ports=METRICS_PORTS)
    volumes = [
        {"name": "cdi-clone-source",
         "persistentVolumeClaim": {"claimName": source["metadata"]["name"], "readOnly": True}},
        {"name": "cdi-data-vol", "persistentVolumeClaim": {"claimName": target["metadata"]["name"]}},
    ]
    return worker_pod(clone_pod_name(meta["name"]), meta["namespace"], container, volumes,
                      labels={"cdi.kubevirt.io": LABEL_COMPONENT}, annotations={ANN_CREATED_BY: meta["uid"]},
                      owner=target, placement=placement)
