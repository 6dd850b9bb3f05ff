"""Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Strategic merge patch is done as a merge patch with the parts of the strategy kubectl relies on:
- lists of objects named in `MERGE_KEYS` (containers by name, conditions by type, ...) are merged
  element by element on their merge key instead of replaced, and `$patch: delete` in such an
  element removes it;
- `finalizers` is merged as a set, with `$deleteFromPrimitiveList/finalizers` removing entries;
- `$patch: replace` on a map replaces it, `$patch: delete` on a map deletes it;
- `$retainKeys` keeps only the listed keys of the map after merging;
- `$setElementOrder/<list>` is accepted and ignored (order of merged lists is the stored order
  followed by new elements).
Lists not named in `MERGE_KEYS` are replaced, as in a merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

from cdi.apiserver import limits
from cdi.apiserver.errors import BadRequest, Conflict, UnsupportedMediaType

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> merge key of lists merged element-wise by strategic merge patch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}
PRIMITIVE_SET_LISTS = ("finalizers",)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _decode_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise BadRequest(f"invalid JSON pointer: {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _parent(doc: Any, parts: list[str], pointer: str) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise BadRequest(
                f"the server rejected our request due to an error in our request: "
                f"doc is missing path: {pointer!r}"
            )
    return cur, parts[-1]


def _get(doc: Any, pointer: str) -> Any:
    parts = _decode_pointer(pointer)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, pointer)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise BadRequest(f"doc is missing path: {pointer!r}")


def _remove(doc: Any, pointer: str) -> Any:
    parent, last = _parent(doc, _decode_pointer(pointer), pointer)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise BadRequest(f"doc is missing path: {pointer!r}: missing value")


def _add(doc: Any, pointer: str, value: Any) -> Any:
    parts = _decode_pointer(pointer)
    if not parts:
        return value
    parent, last = _parent(doc, parts, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise BadRequest(f"add operation: index out of bounds: {pointer!r}")
    else:
        raise BadRequest(f"add operation does not apply: doc is missing path: {pointer!r}")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 add, remove, replace, move, copy and test."""
    if not isinstance(ops, list):
        raise BadRequest("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"invalid json patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _decode_pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            value = _get(doc, op.get("from", ""))
            if kind == "move":
                _remove(doc, op["from"])
            doc = _add(doc, path, copy.deepcopy(value))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise Conflict(
                    f"the server rejected our request due to an error in our request: "
                    f"testing value {path} failed"
                )
        else:
            raise BadRequest(f"unexpected json patch operation: {kind!r}")
    return doc


def _merge_keyed_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    if not all(isinstance(x, dict) and key in x for x in [*target, *patch]):
        return copy.deepcopy([x for x in patch if not (isinstance(x, dict) and "$patch" in x)])
    result = [copy.deepcopy(x) for x in target]
    for item in patch:
        idx = next((i for i, x in enumerate(result) if x[key] == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        if idx is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[idx] = strategic_merge_patch(result[idx], item)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the directives kubectl emits (see module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [x for x in result.get(name) or [] if x not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_keyed_list(result[key], value, MERGE_KEYS[key])
        elif key in PRIMITIVE_SET_LISTS and isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = list(dict.fromkeys([*result[key], *value]))
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def apply_patch(content_type: str, current: Any, body: bytes) -> Any:
    """Apply a PATCH body of the given media type to `current` and return the patched document."""
    media = content_type.split(";")[0].strip().lower()
    if media == APPLY_PATCH:
        raise UnsupportedMediaType(
            "server-side apply (application/apply-patch+yaml) is not supported by this server; "
            "use client-side `kubectl apply` (the default) or a merge patch"
        )
    patch = limits.decode(body, "error decoding patch")
    if media == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise BadRequest("merge patch must be a JSON object")
        return merge_patch(current, patch)
    if media == JSON_PATCH:
        return json_patch(current, patch)
    if media == STRATEGIC_PATCH:
        if not isinstance(patch, dict):
            raise BadRequest("strategic merge patch must be a JSON object")
        return strategic_merge_patch(current, patch)
    raise UnsupportedMediaType(
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}"
    )
