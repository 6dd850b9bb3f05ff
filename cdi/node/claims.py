"""Where a claim's volume lives on this node, known from the node's own layout, never from the claim.

The provisioner puts each claim's volume under ``volumes/<namespace>/<claim>-<uid8>/`` (the directory
for Filesystem; ``block.img`` in it, or the device named in its ``device`` file, for Block). Pods find
a claim's volume the same way. The ``cdi.kubevirt.io/local-path`` annotation on the claim only tells
people where the data is: anyone who may edit the claim may change it, so nothing reads it as a path.
"""

from __future__ import annotations

from pathlib import Path

from cdi.kube import Obj

FINALIZER = "cdi.kubevirt.io/local-volume"


def volume_dir_name(name: str, uid: str) -> str:
    """``<claim>-<uid8>``; a claim name may have 253 characters, a file name at most 255 bytes, so a long
    one is cut (the uid keeps it unique)."""
    return f"{name[:200]}-{uid[:8]}"


def volume_dir(volumes_root: Path, namespace: str, name: str, uid: str) -> Path:
    return volumes_root / namespace / volume_dir_name(name, uid)


def claim_path(volumes_root: Path, pvc: Obj) -> Path | None:
    """The host path of a claim this node provisioned and bound; None when it has not (yet)."""
    meta, spec = pvc.get("metadata") or {}, pvc.get("spec") or {}
    if FINALIZER not in (meta.get("finalizers") or []) or (pvc.get("status") or {}).get("phase") != "Bound":
        return None
    vdir = volume_dir(volumes_root, meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
    if (spec.get("volumeMode") or "Filesystem") != "Block":
        return vdir if vdir.is_dir() else None
    device_file = vdir / "device"
    if device_file.exists():
        return Path(device_file.read_text().strip())
    image = vdir / "block.img"
    return image if image.exists() else None
