"""Options of write requests (CreateOptions, UpdateOptions, PatchOptions, DeleteOptions) as kube reads them.

kube-apiserver decodes these from the query string and, for DELETE, also from the body (kubectl
sends `{"propagationPolicy": ..., "dryRun": ["All"]}` in the DeleteOptions body and nothing in the
query). Both places count here. Values are validated as kube's `ValidateCreateOptions` and friends
do: an unknown dryRun value, fieldValidation directive or an over-long fieldManager is a 422 whose
kind is the options kind (`CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: ...`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cdi.apiserver import limits
from cdi.apiserver.errors import BadRequest, Invalid

Obj = dict[str, Any]

DRY_RUN_ALL = "All"
FIELD_VALIDATION = ("Ignore", "Strict", "Warn")
PROPAGATION = ("Background", "Foreground", "Orphan")
MAX_FIELD_MANAGER = 128


@dataclass(frozen=True)
class WriteOptions:
    """What a write request asked for besides its body."""

    dry_run: bool = False
    # "Strict", "Warn" or "Ignore"; kube-apiserver's default for an unset directive is Warn.
    field_validation: str = "Warn"
    field_manager: str | None = None
    force: bool = False


def _go_strings(values: list[str]) -> str:
    """A []string as Go's %#v prints it, the way kube's NotSupported errors show the value."""
    return "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"


def _check_dry_run(values: list[str]) -> list[str]:
    if all(v == DRY_RUN_ALL for v in values):
        return []
    return [f'dryRun: Unsupported value: {_go_strings(values)}: supported values: "{DRY_RUN_ALL}"']


def parse(
    options_kind: str,
    query: Any,
    *,
    body_dry_run: Iterable[Any] = (),
    apply: bool = False,
) -> WriteOptions:
    """WriteOptions from the query (a starlette QueryParams) and the DeleteOptions body's dryRun.

    `options_kind` is CreateOptions, UpdateOptions, PatchOptions or DeleteOptions: it names the
    object in the 422 kube returns for bad values. `apply` marks a server-side apply, for which
    kube requires a fieldManager.
    """
    dry_run = [str(v) for v in query.getlist("dryRun")] + [str(v) for v in body_dry_run]
    errors = _check_dry_run(dry_run)
    validation = query.get("fieldValidation") or ""
    if validation and validation not in FIELD_VALIDATION:
        supported = ", ".join(f'"{v}"' for v in ("", *FIELD_VALIDATION))
        errors.append(f'fieldValidation: Unsupported value: "{validation}": supported values: {supported}')
    manager = query.get("fieldManager") or None
    if manager is not None and len(manager) > MAX_FIELD_MANAGER:
        errors.append(
            f'fieldManager: Invalid value: "{manager}": must be no more than {MAX_FIELD_MANAGER} characters'
        )
    if apply and manager is None:
        errors.append("fieldManager: Required value: is required for apply patch")
    force_raw = query.get("force")
    force = force_raw is not None and force_raw.lower() in ("1", "true")
    if force and not apply:
        errors.append("force: Forbidden: may not be specified for non-apply patch")
    if errors:
        raise Invalid.named(f"{options_kind}.meta.k8s.io", "", errors)
    return WriteOptions(
        dry_run=bool(dry_run),
        field_validation=validation or "Warn",
        field_manager=manager,
        force=force,
    )


def delete_options(raw: bytes, query: Any) -> tuple[Obj, WriteOptions]:
    """The DeleteOptions body (merged with its query-string form) and the parsed WriteOptions."""
    options: Obj = {}
    if raw.strip():
        options = limits.decode(raw, "error decoding DeleteOptions")
        if not isinstance(options, dict):
            raise BadRequest("DeleteOptions must be a JSON object")
    if query.get("propagationPolicy"):
        options["propagationPolicy"] = query["propagationPolicy"]
    if query.get("orphanDependents"):
        options["orphanDependents"] = query["orphanDependents"].lower() in ("1", "true")
    if query.get("gracePeriodSeconds"):
        try:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        except ValueError as e:
            raise BadRequest(f"invalid value for gracePeriodSeconds: {query['gracePeriodSeconds']!r}") from e
    policy = options.get("propagationPolicy")
    if policy not in (None, *PROPAGATION):
        raise BadRequest(
            f"propagationPolicy: Unsupported value: {policy!r}: supported values: "
            + ", ".join(f'"{p}"' for p in PROPAGATION)
        )
    body_dry_run = options.get("dryRun") or []
    if not isinstance(body_dry_run, list):
        raise BadRequest("DeleteOptions.dryRun must be a list of strings")
    return options, parse("DeleteOptions", query, body_dry_run=body_dry_run)
