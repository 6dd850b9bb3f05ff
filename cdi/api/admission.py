"""The admission steps of a custom kind: defaulting, then validation, wherever they run.

The embedded API server runs them inside its create and update (`cdi.apiserver.objects`); in a
cluster the webhook server (`cdi.webhook`) runs them for kube-apiserver, the mutating webhook the
defaulting and the validating webhook the validation. Both call these two functions, so a manifest
is defaulted and refused the same way in both modes.
"""

from __future__ import annotations

from cdi.api.registry import Obj, ResourceKind


def apply_defaults(kind: ResourceKind, obj: Obj) -> None:
    """Fill in the kind's defaults in place (nothing for a kind without a defaulter)."""
    if kind.default is not None:
        kind.default(obj)


def validation_errors(kind: ResourceKind, obj: Obj, old: Obj | None) -> list[str]:
    """The kind's field errors (`<path>: <detail>`) for a create (`old` None) or an update."""
    return kind.validate(obj, old) if kind.validate is not None else []
