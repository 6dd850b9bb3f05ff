"""Field paths of objects: the vocabulary of managedFields (FieldsV1) and server-side apply.

A path is a tuple of elements as FieldsV1 spells them: `f:<field>` for a map field, `k:<json>` for
the element of an associative list identified by its keys, `v:<json>` for a value of a set-like
list, `.` for a list element itself. A field's path set holds its leaves (scalars, atomic lists,
empty maps) and the elements of associative lists.

How a list is treated comes from the kind: a custom resource's schema
(`x-kubernetes-list-type: map|set|atomic`, `x-kubernetes-list-map-keys`; atomic when unsaid, as
for CRDs), and for built-in kinds the strategic merge keys (`strategic.merge_key`) with
`metadata.finalizers` a set.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from cdi.api.registry import ResourceKind
from cdi.apiserver.strategic import merge_key

Obj = dict[str, Any]
Path = tuple[str, ...]


# Map-typed fields (granular maps, which FieldsV1 marks with `.`) of the built-in kinds, by name.
_BUILTIN_MAPS = ("labels", "annotations", "nodeSelector", "matchLabels", "requests", "limits")
_BUILTIN_TOP_MAPS = ("data", "binaryData", "stringData")


class Shape:
    """Tells list types and maps apart along a walk through an object of one kind."""

    def __init__(self, kind: ResourceKind) -> None:
        self.schema = kind.schema
        self.kind = kind.kind

    def is_map(self, schema: Obj | None, names: tuple[str, ...]) -> bool:
        """Whether the object at `names` is a map (string keys of one type) rather than a struct."""
        if names[-1:] in (("labels",), ("annotations",)) and names[:1] == ("metadata",):
            return True
        if schema is not None:
            return "additionalProperties" in schema and not schema.get("properties")
        if self.schema is not None:
            return False
        return (
            names[-1] in _BUILTIN_MAPS
            or (len(names) == 1 and names[0] in _BUILTIN_TOP_MAPS)
            or (self.kind == "Service" and names == ("spec", "selector"))
        )

    def child(self, schema: Obj | None, name: str) -> Obj | None:
        if schema is None:
            return None
        props = schema.get("properties") or {}
        if name in props:
            return props[name]
        extra = schema.get("additionalProperties")
        return extra if isinstance(extra, dict) else None

    def list_type(self, schema: Obj | None, names: tuple[str, ...]) -> tuple[str, list[str]]:
        """("map", keys), ("set", []) or ("atomic", []) for the list at `names` (field names)."""
        if names == ("metadata", "finalizers"):
            return "set", []
        if names == ("metadata", "ownerReferences"):
            return "map", ["uid"]
        if schema is not None and schema.get("x-kubernetes-list-type"):
            kind = schema["x-kubernetes-list-type"]
            return kind, list(schema.get("x-kubernetes-list-map-keys") or []) if kind == "map" else []
        if self.schema is None:
            key = merge_key(names)
            if key:
                return "map", [key]
        return "atomic", []


def _item_key(item: Any, keys: list[str]) -> str | None:
    if not isinstance(item, dict) or any(k not in item for k in keys):
        return None
    return "k:" + json.dumps({k: item[k] for k in keys}, separators=(",", ":"), sort_keys=True)


def leaves(obj: Obj, shape: Shape) -> set[Path]:
    """The path set of `obj`, a whole object or the part of it whose ownership is tracked."""
    out: set[Path] = set()

    def walk(value: Any, schema: Obj | None, path: Path, names: tuple[str, ...]) -> None:
        if isinstance(value, dict) and value:
            if shape.is_map(schema, names):
                out.add((*path, "."))
            for k, v in value.items():
                walk(v, shape.child(schema, k), (*path, f"f:{k}"), (*names, k))
            return
        if isinstance(value, list) and value:
            list_kind, keys = shape.list_type(schema, names)
            items = schema.get("items") if isinstance(schema, dict) else None
            if list_kind == "set" and all(not isinstance(v, dict | list) for v in value):
                out.update((*path, "v:" + json.dumps(v)) for v in value)
                return
            if list_kind == "map":
                ids = [_item_key(v, keys) for v in value]
                if all(ids):
                    for ident, v in zip(ids, value, strict=True):
                        item = (*path, str(ident))
                        out.add((*item, "."))
                        walk(v, items, item, names)
                    return
        out.add(path)

    for k, v in obj.items():
        walk(v, shape.child(shape.schema, k), (f"f:{k}",), (k,))
    return out


def _find(items: list[Any], element: str) -> int | None:
    if element.startswith("k:"):
        want = json.loads(element[2:])
        for i, item in enumerate(items):
            if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
                return i
    elif element.startswith("v:"):
        value = json.loads(element[2:])
        for i, item in enumerate(items):
            if item == value:
                return i
    return None


MISSING = object()


def get(obj: Any, path: Path) -> Any:
    """The value at `path` (an element path ending in `.` gives the element); MISSING if absent."""
    cur = obj
    for element in path:
        if element == ".":
            continue
        if element.startswith("f:") and isinstance(cur, dict):
            if element[2:] not in cur:
                return MISSING
            cur = cur[element[2:]]
        elif isinstance(cur, list):
            i = _find(cur, element)
            if i is None:
                return MISSING
            cur = cur[i] if element.startswith("k:") else True
        else:
            return MISSING
    return cur


def same(a: Any, b: Any, path: Path) -> bool:
    """Whether two objects agree at `path` (an associative element agrees when both hold it)."""
    va, vb = get(a, path), get(b, path)
    if path and path[-1] == ".":
        return (va is MISSING) == (vb is MISSING)
    return va == vb


def remove(obj: Any, path: Path) -> None:
    """Remove the field, list element or set value at `path` from `obj` (in place), if present."""
    if path and path[-1] == ".":
        path = path[:-1]
    cur = obj
    for element in path[:-1]:
        nxt = get(cur, (element,))
        if nxt is MISSING:
            return
        cur = nxt
    last = path[-1]
    if last.startswith("f:") and isinstance(cur, dict):
        cur.pop(last[2:], None)
    elif isinstance(cur, list):
        i = _find(cur, last)
        if i is not None:
            cur.pop(i)


def merge(current: Any, config: Any, shape: Shape) -> Any:
    """Structured merge of an applied configuration into the live object."""

    def walk(live: Any, applied: Any, schema: Obj | None, names: tuple[str, ...]) -> Any:
        if isinstance(applied, dict) and isinstance(live, dict):
            out = copy.deepcopy(live)
            for k, v in applied.items():
                out[k] = walk(live.get(k), v, shape.child(schema, k), (*names, k))
            return out
        if isinstance(applied, list) and isinstance(live, list):
            list_kind, keys = shape.list_type(schema, names)
            items = schema.get("items") if isinstance(schema, dict) else None
            if list_kind == "set":
                return copy.deepcopy(live) + [copy.deepcopy(v) for v in applied if v not in live]
            if list_kind == "map" and all(_item_key(v, keys) for v in [*live, *applied]):
                merged = copy.deepcopy(live)
                for v in applied:
                    i = _find(merged, str(_item_key(v, keys)))
                    if i is None:
                        merged.append(copy.deepcopy(v))
                    else:
                        merged[i] = walk(merged[i], v, items, names)
                return merged
        return copy.deepcopy(applied)

    return walk(current, config, shape.schema, ())


def path_string(path: Path) -> str:
    """A path as structured-merge-diff prints it: `.spec.containers[name="c"].image`."""
    out = ""
    for element in path:
        if element.startswith("f:"):
            out += "." + element[2:]
        elif element.startswith("k:"):
            keys = json.loads(element[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif element.startswith("v:"):
            out += f"[={element[2:]}]"
    return out


def to_fields_v1(paths: set[Path]) -> Obj:
    """FieldsV1 (nested `f:`/`k:`/`v:` maps) of a path set."""
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    return root


def from_fields_v1(fields: Any, prefix: Path = ()) -> set[Path]:
    """The path set a FieldsV1 map describes (the inverse of `to_fields_v1`)."""
    out: set[Path] = set()
    if not isinstance(fields, dict):
        return out
    for element, sub in fields.items():
        path = (*prefix, element)
        if isinstance(sub, dict) and sub:
            out |= from_fields_v1(sub, path)
        else:
            out.add(path)
    return out
