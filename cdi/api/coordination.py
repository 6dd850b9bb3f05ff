"""`coordination.k8s.io/v1` Lease: what `cdi controller --leader-elect` holds so one replica reconciles.

As kube-apiserver serves it: namespaced, no status subresource, `kubectl get lease` shows the holder.
The spec is validated as kube validates it (durations positive, transitions not negative).
"""

from __future__ import annotations

from typing import Any

from cdi.api.registry import Column, ResourceKind

Obj = dict[str, Any]


def _validate_lease(obj: Obj, old: Obj | None) -> list[str]:
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return ["spec: Invalid value: must be an object"]
    errors = []
    for field in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"spec.{field}: Invalid value: {value!r}: must be an integer")
        elif field == "leaseDurationSeconds" and value <= 0:
            errors.append(f"spec.{field}: Invalid value: {value}: must be greater than 0")
        elif value < 0:
            errors.append(f"spec.{field}: Invalid value: {value}: must be greater than or equal to 0")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        errors.append(f"spec.holderIdentity: Invalid value: {holder!r}: must be a string")
    return errors


LEASE = ResourceKind(
    group="coordination.k8s.io",
    version="v1",
    kind="Lease",
    plural="leases",
    singular="lease",
    columns=(Column("Holder", json_path=".spec.holderIdentity"),),
    validate=_validate_lease,
    non_spec_fields=(),
    description="Lease defines a lease concept.",
)
COORDINATION_KINDS = [LEASE]
