"""One walk of a request's object against its schema: unknown fields and wrong JSON types.

The schema is either a custom resource's OpenAPI v3 schema or one of kube's own types, whose parts
name each other by `$ref` (`cdi.api.kube_schemas`). The walk

- records and removes the fields the schema does not declare (properties, additionalProperties,
  `x-kubernetes-preserve-unknown-fields`; objects without declared structure take anything);
- records values whose JSON type the schema does not allow, with the Go struct, field path and
  Go type kube's JSON decoder names (`cannot unmarshal number into Go struct field
  ObjectMeta.metadata.name of type string`), and base64 strings (`format: byte`) that do not
  decode (`illegal base64 data at input byte 3`).

It is iterative, so deep documents cannot exhaust Python's recursion.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from cdi.api import kube_schemas

Obj = dict[str, Any]

_GO_JSON_TYPE = {"boolean": "bool", "integer": "number", "number": "number", "string": "string",
                 "array": "array", "object": "object"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@dataclass(frozen=True)
class TypeProblem:
    """A value of the wrong JSON type (or undecodable base64) at `path`."""

    path: str  # with indices, e.g. spec.containers[0].image
    struct: str  # the Go struct holding the field, e.g. Container
    go_path: str  # kube's field path without indices, e.g. spec.containers.image
    sent: str  # JSON type sent: integer, number, string, boolean, array, object
    expected: str  # schema type expected, e.g. string
    go_type: str  # e.g. string, int32, []v1.OwnerReference, map[string]string
    detail: str | None = None  # the decoder's own words for a string it cannot parse
    shown: str | None = None  # that string

    def go_message(self) -> str:
        if self.detail is not None:
            return self.detail
        return (
            f"json: cannot unmarshal {_GO_JSON_TYPE[self.sent]} into Go struct field "
            f"{self.struct}.{self.go_path} of type {self.go_type}"
        )

    def crd_message(self) -> str:
        what = f'"{self.shown if self.shown is not None else self.sent}"'
        return f"{self.path}: Invalid value: {what}: {self.path} in body must be of type {self.expected}: {what}"


@dataclass
class Findings:
    unknown: list[str] = field(default_factory=list)
    types: list[TypeProblem] = field(default_factory=list)


def _json_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else None


def _resolve(schema: Obj, struct: str) -> tuple[Obj, str]:
    """Follow `$ref`s into kube's definitions; the struct becomes the type referenced."""
    seen = 0
    while (name := kube_schemas.ref_name(schema)) is not None and seen < 10:
        schema = kube_schemas.definitions()[name]
        struct = name.rsplit(".", 1)[-1]
        seen += 1
    return schema, struct


def _types(schema: Obj) -> set[str] | None:
    """The JSON types a schema allows (None: any)."""
    if "oneOf" in schema:
        out: set[str] = set()
        for alt in schema["oneOf"]:
            t = _types(alt)
            if t is None:
                return None
            out |= t
        return out
    t = schema.get("type")
    if t is None or schema.get("x-kubernetes-int-or-string"):
        return None
    return {x for x in ([t] if isinstance(t, str) else t) if x != "null"} or None


def _allows(types: set[str], sent: str) -> bool:
    return sent in types or (sent == "integer" and "number" in types)


def go_type(schema: Obj) -> str:
    """The Go type kube's decoder names for a schema: string, int64, []v1.OwnerReference, ..."""
    name = kube_schemas.ref_name(schema)
    if name is not None:
        parts = name.split(".")
        return f"{parts[-2]}.{parts[-1]}"
    types = _types(schema) or set()
    if "array" in types:
        return "[]" + go_type(schema.get("items") or {})
    if "object" in types:
        extra = schema.get("additionalProperties")
        return f"map[string]{go_type(extra)}" if isinstance(extra, dict) else "map[string]interface {}"
    if "integer" in types:
        return str(schema.get("format") or "int64")
    if "number" in types:
        return "float64"
    if "boolean" in types:
        return "bool"
    return "string"


def _base64_error(text: str) -> int | None:
    """Where Go's StdEncoding fails on `text`, None when it decodes."""
    body = text.rstrip("=")
    m = _BASE64.match(body)
    end = m.end() if m else 0
    if end < len(body):
        return end
    try:
        binascii.a2b_base64(text.encode())
    except binascii.Error:
        return len(body) - len(body) % 4
    if len(text) % 4 or len(text) - len(body) > 2:
        return len(body) - len(body) % 4 if len(text) % 4 else len(body)
    return None


def _format_error(text: str, fmt: Any) -> str | None:
    """Go's words for a string its type cannot parse: base64 bytes, RFC 3339 times."""
    if fmt == "byte":
        at = _base64_error(text)
        return None if at is None else f"illegal base64 data at input byte {at}"
    if fmt == "date-time" and not _RFC3339.fullmatch(text):
        return f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse "{text}" as "2006"'
    return None


def walk(doc: Any, schema: Obj, *, path: str, struct: str, go_path: str, prune: bool = True) -> Findings:
    """Check `doc` against `schema`, removing unknown fields when `prune`."""
    found = Findings()
    # (value, its schema, its path, the Go struct holding it, its Go field path)
    stack: list[tuple[Any, Obj, str, str, str]] = [(doc, schema, path, struct, go_path)]
    while stack:
        value, raw, where, holder, gp = stack.pop()
        sch, st = _resolve(raw, holder)
        sent = _json_type(value)
        if sent is None:
            continue
        types = _types(sch)
        if types is not None and not _allows(types, sent):
            found.types.append(TypeProblem(where, holder, gp, sent, "/".join(sorted(types)), go_type(raw)))
            continue
        if sent == "string":
            detail = _format_error(value, sch.get("format"))
            if detail is not None:
                fmt = str(sch.get("format"))
                found.types.append(TypeProblem(where, holder, gp, sent, fmt, "string", detail=detail, shown=value))
            continue
        if sent == "array":
            items = sch.get("items")
            if isinstance(items, dict):
                stack.extend((v, items, f"{where}[{i}]", st, gp) for i, v in enumerate(value))
            continue
        if sent != "object":
            continue
        props = sch.get("properties")
        extra = sch.get("additionalProperties")
        if sch.get("x-kubernetes-preserve-unknown-fields") or (props is None and extra is None):
            continue
        for key in list(value):
            sub = f"{where}.{key}" if where else key
            if props and key in props:
                gsub = f"{gp}.{key}" if gp else key
                stack.append((value[key], props[key], sub, st, gsub))
            elif isinstance(extra, dict):
                stack.append((value[key], extra, sub, st, gp))
            elif extra is not True:
                found.unknown.append(sub)
                if prune:
                    del value[key]
    return found
