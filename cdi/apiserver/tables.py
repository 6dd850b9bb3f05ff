"""Server-side tables (meta.k8s.io/v1 Table) and other response shapes chosen by the Accept header.

kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints the columns we send, so
`kubectl get dv` shows the kind's declared columns; AGE-like `date` columns are rendered the way
kube-apiserver renders them (`5s`, `3m20s`, `2d`). `as=PartialObjectMetadata[List]` is served too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cdi.api.duration import human_duration
from cdi.api.registry import Column, ResourceKind

Obj = dict[str, Any]

__all__ = ["age", "human_duration", "partial_metadata", "table", "wants"]

TABLE_TYPES = {"string", "integer", "number", "boolean", "date"}


def age(timestamp: Any, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        t = datetime.strptime(str(timestamp)[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - t).total_seconds())


def _cell(col: Column, obj: Obj) -> Any:
    value = col.cell(obj)
    if col.type == "date":
        return age(value)
    if isinstance(value, dict | list):
        return str(value)
    return value


def column_definitions(kind: ResourceKind) -> list[Obj]:
    return [
        {
            "name": c.name,
            "type": c.type if c.type in TABLE_TYPES else "string",
            "format": c.format,
            "description": c.description,
            "priority": c.priority,
        }
        for c in kind.table_columns()
    ]


def partial_metadata(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(
    kind: ResourceKind,
    objs: list[Obj],
    *,
    resource_version: str | None = None,
    include_object: str = "Metadata",
    headers: bool = True,
    list_meta: Obj | None = None,
) -> Obj:
    """A Table of `objs`; `include_object` is None, Metadata or Object as in kube's TableOptions."""
    cols = kind.table_columns()
    rows = []
    for o in objs:
        row: Obj = {"cells": [_cell(c, o) for c in cols]}
        if include_object == "Object":
            row["object"] = o
        elif include_object != "None":
            row["object"] = partial_metadata(o)
        rows.append(row)
    meta: Obj = dict(list_meta or {})
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": column_definitions(kind) if headers else [],
        "rows": rows,
    }


def wants(accept: str | None, as_kind: str) -> bool:
    """Whether the Accept header asks for `as=<as_kind>` in group meta.k8s.io (any version)."""
    if not accept:
        return False
    for part in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
        if params.get("as") == as_kind and params.get("g", "meta.k8s.io") == "meta.k8s.io":
            return True
    return False
