"""Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Strategic merge patch lives in `strategic.py` and is accepted for built-in kinds only: for custom
resources kube-apiserver answers 415 listing the types it accepts, and so do we.
"""

from __future__ import annotations

import copy
from typing import Any

from cdi.apiserver import limits
from cdi.apiserver.errors import BadRequest, Conflict, UnsupportedMediaType
from cdi.apiserver.strategic import strategic_merge_patch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


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
        if kind in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(
                f"the server rejected our request due to an error in our request: {kind} operation: missing value"
            )
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


def accepted_types(*, custom: bool) -> list[str]:
    """PATCH media types kube-apiserver accepts: custom resources have no strategic merge patch."""
    types = [JSON_PATCH, MERGE_PATCH] + ([] if custom else [STRATEGIC_PATCH])
    return [*types, APPLY_PATCH]


def apply_patch(content_type: str, current: Any, body: bytes, *, custom: bool = False) -> Any:
    """Apply a PATCH body of the given media type to `current` and return the patched document.

    `custom` marks a custom resource. Server-side apply is handled by the caller (`managedfields`).
    """
    media = content_type.split(";")[0].strip().lower()
    if media not in accepted_types(custom=custom) or media == APPLY_PATCH:
        raise UnsupportedMediaType(
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(accepted_types(custom=custom))
        )
    patch = limits.decode(body, "error decoding patch")
    if media == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise BadRequest("merge patch must be a JSON object")
        return merge_patch(current, patch)
    if media == JSON_PATCH:
        return json_patch(current, patch)
    if not isinstance(patch, dict):
        raise BadRequest("strategic merge patch must be a JSON object")
    return strategic_merge_patch(current, patch)
