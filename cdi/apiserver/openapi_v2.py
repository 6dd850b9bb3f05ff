"""The OpenAPI v2 (Swagger 2.0) document at /openapi/v2, in JSON and in its protobuf form.

Helm and older clients validate manifests against /openapi/v2; client-go's discovery client asks
for it only as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, gnostic's
openapi_v2.Document), `kubectl explain --output=plaintext-openapiv2` reads it that way, and other
tools ask for JSON. Both are derived from the same v3 documents (`openapi.py`): component schemas
become `definitions` (refs rewritten, `anyOf` of int-or-string dropped as kube does for CRDs, since
Swagger 2.0 has no anyOf), request bodies become `in: body` parameters, path parameters are
declared. An Accept header that allows neither form is answered 406, as kube-openapi does.

The protobuf encoder covers the gnostic messages the document uses (field numbers from gnostic's
OpenAPIv2.proto); values of `enum`, `default` and vendor extensions travel as YAML in `Any.yaml`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from cdi.api.registry import Registry
from cdi.apiserver.errors import NotAcceptable
from cdi.apiserver.openapi import gv_document

Obj = dict[str, Any]

JSON = "application/json"
PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
PROTOBUF_LEGACY = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
_DROPPED = ("anyOf", "oneOf", "allOf", "not", "nullable")


def _schema_v2(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_schema_v2(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key in _DROPPED:
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        elif key in ("properties",) and isinstance(value, dict):
            out[key] = {k: _schema_v2(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _schema_v2(value)
        else:
            out[key] = value
    return out


def _operation_v2(op: Obj) -> Obj:
    out: Obj = {k: v for k, v in op.items() if k in ("operationId", "description")}
    out.update({k: v for k, v in op.items() if k.startswith("x-")})
    params: list[Obj] = [
        {"name": p["name"], "in": "query", "type": "string", "uniqueItems": True} for p in op.get("parameters", [])
    ]
    body = op.get("requestBody")
    if body:
        schema = next(iter(body["content"].values()))["schema"]
        params.insert(0, {"name": "body", "in": "body", "required": True, "schema": _schema_v2(schema)})
    out["parameters"] = params
    out["consumes"] = ["*/*"] if body else []
    out["produces"] = [JSON, "application/yaml"]
    out["schemes"] = ["https"]
    responses: Obj = {}
    for code, resp in op.get("responses", {}).items():
        entry: Obj = {"description": resp.get("description", "OK")}
        content = resp.get("content") or {}
        if content:
            entry["schema"] = _schema_v2(next(iter(content.values()))["schema"])
        responses[code] = entry
    out["responses"] = responses
    return out


def document(registry: Registry) -> Obj:
    """The Swagger 2.0 document of every group/version the registry serves."""
    gvs = [("", "v1")] + [(g, v) for g, versions in registry.groups().items() for v in versions]
    paths: Obj = {}
    definitions: Obj = {}
    for group, version in gvs:
        v3 = gv_document(registry, group, version)
        for name, schema in v3["components"]["schemas"].items():
            definitions[name] = _schema_v2(schema)
        for path, item in v3["paths"].items():
            names = [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]
            entry: Obj = {m: _operation_v2(op) for m, op in item.items()}
            entry["parameters"] = [
                {"name": n, "in": "path", "required": True, "type": "string", "uniqueItems": True} for n in names
            ]
            paths[path] = entry
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                            "description": "Bearer Token authentication"}
        },
        "security": [{"BearerToken": []}],
    }


def negotiate(accept: str | None) -> str:
    """JSON or PROTOBUF, in the client's order of preference; NotAcceptable when neither is allowed."""
    if not accept:
        return JSON
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in (PROTOBUF.lower(), PROTOBUF_LEGACY.lower()):
            return PROTOBUF
        if media in (JSON, "application/*", "*/*"):
            return JSON
    raise NotAcceptable(f"only the following media types are accepted: {JSON}, {PROTOBUF}")


# -- protobuf ---------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _str(num: int, value: Any) -> bytes:
    return _bytes(num, str(value).encode()) if value not in (None, "") else b""


def _bool(num: int, value: Any) -> bytes:
    return _varint(num << 3) + b"\x01" if value else b""


def _int(num: int, value: Any) -> bytes:
    return _varint(num << 3) + _varint(int(value)) if isinstance(value, int) and not isinstance(value, bool) else b""


def _double(num: int, value: Any) -> bytes:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _varint(num << 3 | 1) + struct.pack("<d", float(value))
    return b""


def _any(value: Any) -> bytes:
    """gnostic's Any: the value as YAML (JSON is YAML) in field 2."""
    return _str(2, json.dumps(value))


def _extensions(num: int, obj: Obj) -> bytes:
    return b"".join(
        _bytes(num, _str(1, k) + _bytes(2, _any(v))) for k, v in obj.items() if k.startswith("x-")
    )


def _schema(s: Obj) -> bytes:
    out = [_str(1, s.get("$ref")), _str(2, s.get("format")), _str(3, s.get("title")),
           _str(4, s.get("description"))]
    if "default" in s:
        out.append(_bytes(5, _any(s["default"])))
    for num, key in ((6, "multipleOf"), (7, "maximum"), (9, "minimum")):
        out.append(_double(num, s.get(key)))
    out += [_bool(8, s.get("exclusiveMaximum")), _bool(10, s.get("exclusiveMinimum"))]
    for num, key in ((11, "maxLength"), (12, "minLength"), (14, "maxItems"), (15, "minItems"),
                     (17, "maxProperties"), (18, "minProperties")):
        out.append(_int(num, s.get(key)))
    out += [_str(13, s.get("pattern")), _bool(16, s.get("uniqueItems"))]
    out += [_str(19, r) for r in s.get("required") or []]
    out += [_bytes(20, _any(e)) for e in s.get("enum") or []]
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out.append(_bytes(21, _bytes(1, _schema(extra))))
    elif isinstance(extra, bool):
        out.append(_bytes(21, _varint(2 << 3) + (b"\x01" if extra else b"\x00")))
    kind = s.get("type")
    if kind:
        out.append(_bytes(22, b"".join(_str(1, t) for t in (kind if isinstance(kind, list) else [kind]))))
    items = s.get("items")
    if isinstance(items, dict):
        out.append(_bytes(23, _bytes(1, _schema(items))))
    props = s.get("properties")
    if isinstance(props, dict):
        named = b"".join(_bytes(1, _str(1, k) + _bytes(2, _schema(v))) for k, v in props.items())
        out.append(_bytes(25, named))
    out.append(_extensions(31, s))
    return b"".join(out)


def _parameter(p: Obj) -> bytes:
    if p["in"] == "body":
        body = _str(2, p["name"]) + _str(3, "body") + _bool(4, p.get("required")) + _bytes(5, _schema(p["schema"]))
        return _bytes(1, _bytes(1, body))  # ParametersItem.parameter -> Parameter.body_parameter
    sub = (_bool(1, p.get("required")) + _str(2, p["in"]) + _str(4, p["name"]))
    if p["in"] == "query":
        sub += _str(6, p.get("type")) + _bool(20, p.get("uniqueItems"))
        non_body = _bytes(3, sub)
    else:
        sub += _str(5, p.get("type")) + _bool(19, p.get("uniqueItems"))
        non_body = _bytes(4, sub)
    return _bytes(1, _bytes(2, non_body))  # ParametersItem.parameter -> Parameter.non_body_parameter


def _operation(op: Obj) -> bytes:
    out = [_str(3, op.get("description")), _str(5, op.get("operationId"))]
    out += [_str(6, m) for m in op.get("produces", [])] + [_str(7, m) for m in op.get("consumes", [])]
    out += [_bytes(8, _parameter(p)) for p in op.get("parameters", [])]
    codes = b""
    for code, resp in op.get("responses", {}).items():
        response = _str(1, resp.get("description"))
        if "schema" in resp:
            response += _bytes(2, _bytes(1, _schema(resp["schema"])))
        codes += _bytes(1, _str(1, code) + _bytes(2, _bytes(1, response)))
    out.append(_bytes(9, codes))
    out += [_str(10, s) for s in op.get("schemes", [])]
    out.append(_extensions(13, op))
    return b"".join(out)


_METHODS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def to_protobuf(doc: Obj) -> bytes:
    """gnostic's openapi_v2.Document for `doc` (as `document` builds it)."""
    info = doc.get("info") or {}
    out = [_str(1, doc.get("swagger")), _bytes(2, _str(1, info.get("title")) + _str(2, info.get("version")))]
    paths = b""
    for path, item in doc.get("paths", {}).items():
        body = b"".join(_bytes(_METHODS[m], _operation(op)) for m, op in item.items() if m in _METHODS)
        body += b"".join(_bytes(9, _parameter(p)) for p in item.get("parameters", []))
        paths += _bytes(2, _str(1, path) + _bytes(2, body))
    out.append(_bytes(8, paths))
    defs = b"".join(_bytes(1, _str(1, k) + _bytes(2, _schema(v))) for k, v in doc.get("definitions", {}).items())
    out.append(_bytes(9, defs))
    return b"".join(out)
