"""`storage.k8s.io/v1` StorageClass: which claims bind at once and which wait for their first consumer.

The local node fulfils every class itself; what it honours is ``volumeBindingMode``: ``Immediate``
(the default) binds a claim when it is created, ``WaitForFirstConsumer`` when the first pod that uses
it is scheduled, as kube's scheduler and provisioners do. Cluster-scoped, no status, kubectl's columns.
"""

from __future__ import annotations

from typing import Any

from cdi.api.registry import Column, ResourceKind, get_path

Obj = dict[str, Any]

BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
RECLAIM_POLICIES = ("Delete", "Retain")


def _validate(obj: Obj, old: Obj | None) -> list[str]:
    errors = []
    if not obj.get("provisioner"):
        errors.append("provisioner: Required value")
    mode = obj.get("volumeBindingMode")
    if mode not in BINDING_MODES:
        errors.append(f'volumeBindingMode: Unsupported value: "{mode}": supported values: '
                      + ", ".join(f'"{m}"' for m in BINDING_MODES))
    if obj.get("reclaimPolicy") not in RECLAIM_POLICIES:
        errors.append(f'reclaimPolicy: Unsupported value: "{obj.get("reclaimPolicy")}": supported values: '
                      + ", ".join(f'"{p}"' for p in RECLAIM_POLICIES))
    if old is not None:
        for field in ("provisioner", "parameters", "reclaimPolicy", "volumeBindingMode"):
            if obj.get(field) != old.get(field):
                errors.append(f"{field}: Forbidden: updates to {field} are forbidden.")
    return errors


def _default(obj: Obj) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


STORAGECLASS = ResourceKind(
    group="storage.k8s.io",
    version="v1",
    kind="StorageClass",
    plural="storageclasses",
    singular="storageclass",
    namespaced=False,
    short_names=("sc",),
    columns=(
        Column("Provisioner", json_path=".provisioner"),
        Column("ReclaimPolicy", json_path=".reclaimPolicy"),
        Column("VolumeBindingMode", json_path=".volumeBindingMode"),
        Column("AllowVolumeExpansion", "boolean", func=lambda o: bool(get_path(o, ".allowVolumeExpansion"))),
    ),
    validate=_validate,
    default=_default,
    non_spec_fields=(),
    description="StorageClass describes the parameters for a class of storage.",
)
STORAGE_KINDS = [STORAGECLASS]
