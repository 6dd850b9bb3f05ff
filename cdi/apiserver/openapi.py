"""OpenAPI v3 documents (/openapi/v3 and one document per group/version).

What kubectl needs from them:
- `kubectl explain` looks up the component schema carrying `x-kubernetes-group-version-kind`;
- `kubectl create/apply` (validation on by default) looks for a PATCH operation of the kind with a
  `fieldValidation` query parameter to decide that the server validates, so every kind gets its
  paths with that parameter.
Built-in kinds get kube 1.32's own schemas (`cdi.api.kube_schemas`) with every type they refer to,
so `kubectl explain pod.spec.containers` works and kubectl's strategic merge patches follow kube's
patch strategies. The OpenAPI v2 document
(`openapi_v2.py`) is derived from these; kubectl 1.32 uses v3 when /openapi/v3 exists.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

from cdi.api import kube_schemas
from cdi.api.registry import Registry, ResourceKind

Obj = dict[str, Any]

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(kind: ResourceKind) -> str:
    if not kind.group:
        return f"io.k8s.api.core.{kind.version}.{kind.kind}"
    reversed_group = ".".join(reversed(kind.group.split(".")))
    return f"{reversed_group}.{kind.version}.{kind.kind}"


def _gvk(kind: ResourceKind) -> Obj:
    return {"group": kind.group, "version": kind.version, "kind": kind.kind}


_VERB_OF_ACTION = {"get": "read", "put": "replace", "patch": "patch", "delete": "delete", "list": "list",
                   "post": "create"}


def operation_id(kind: ResourceKind, action: str, subresource: str = "") -> str:
    """kube's operation ids, unique per document: readCoreV1NamespacedPodStatus, listCdiKubevirtIoV1beta1..."""
    group = "".join(p.capitalize() for p in kind.group.split(".")) if kind.group else "Core"
    scope = "Namespaced" if kind.namespaced else ""
    return f"{_VERB_OF_ACTION[action]}{group}{kind.version.capitalize()}{scope}{kind.kind}{subresource.capitalize()}"


def _v3(schema: Any, wanted: list[str]) -> Any:
    """A schema of kube's definitions in OpenAPI v3 form; the types it refers to go to `wanted`."""
    if isinstance(schema, list):
        return [_v3(s, wanted) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            wanted.append(name)
            out[key] = f"#/components/schemas/{name}"
        elif key == "type" and isinstance(value, list):  # ["string", "null"]: OpenAPI 3.0 has one type
            out[key] = next((t for t in value if t != "null"), "object")
        else:
            out[key] = _v3(value, wanted)
    return out


@lru_cache(maxsize=64)
def _closure(name: str) -> Obj:
    """The type `name` and every type it refers to, in v3 form (shared: not to be modified)."""
    out: Obj = {}
    wanted = [name]
    while wanted:
        n = wanted.pop()
        if n not in out:
            out[n] = _v3(kube_schemas.definitions()[n], wanted)
    return out


def builtin_schemas(kind: ResourceKind) -> Obj:
    """kube's schema of a built-in kind and of every type it refers to, by name; {} for others."""
    name = kube_schemas.definition_name(kind.group, kind.version, kind.kind) if kind.schema is None else None
    if name is None:
        return {}
    out = dict(_closure(name))
    out[name] = {**out[name], "x-kubernetes-group-version-kind": [_gvk(kind)]}
    return out


def _operation(kind: ResourceKind, action: str, *, body: bool, subresource: str = "") -> Obj:
    builtin = kube_schemas.definition_name(kind.group, kind.version, kind.kind) if kind.schema is None else None
    typed = kind.schema is not None or builtin is not None
    ref = {"$ref": f"#/components/schemas/{builtin or schema_name(kind)}"} if typed else {"type": "object"}
    op: Obj = {
        "operationId": operation_id(kind, action, subresource),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind),
        "parameters": [
            {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for p in _QUERY_PARAMS
        ],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
    }
    if body:
        op["requestBody"] = {"content": {"*/*": {"schema": ref}}, "required": True}
    return op


def _paths(kind: ResourceKind) -> Obj:
    prefix = "/" + gv_path(kind.group, kind.version)
    base = (
        f"{prefix}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"{prefix}/{kind.plural}"
    )
    item = {
        "get": _operation(kind, "get", body=False),
        "put": _operation(kind, "put", body=True),
        "patch": _operation(kind, "patch", body=True),
        "delete": _operation(kind, "delete", body=False),
    }
    collection = {"get": _operation(kind, "list", body=False), "post": _operation(kind, "post", body=True)}
    paths = {base: collection, f"{base}/{{name}}": item}
    if kind.status_subresource:
        paths[f"{base}/{{name}}/status"] = {
            "get": _operation(kind, "get", body=False, subresource="status"),
            "put": _operation(kind, "put", body=True, subresource="status"),
            "patch": _operation(kind, "patch", body=True, subresource="status"),
        }
    return paths


def gv_document(registry: Registry, group: str, version: str) -> Obj:
    """The OpenAPI v3 document of one group/version."""
    paths: Obj = {}
    schemas: Obj = {}
    for kind in registry.kinds_in(group, version):
        paths.update(_paths(kind))
        schemas.update(builtin_schemas(kind))
        if kind.schema:
            schema = dict(kind.schema)
            schema["x-kubernetes-group-version-kind"] = [_gvk(kind)]
            schemas[schema_name(kind)] = schema
            schemas[schema_name(kind) + "List"] = {
                "type": "object",
                "description": f"{kind.kind}List is a list of {kind.kind}",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "items": {
                        "type": "array",
                        "items": {"$ref": f"#/components/schemas/{schema_name(kind)}"},
                    },
                },
                "x-kubernetes-group-version-kind": [{**_gvk(kind), "kind": kind.kind + "List"}],
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(doc: Obj) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()


def root_document(registry: Registry) -> Obj:
    """The /openapi/v3 index: one entry per group/version with a content hash."""
    gvs = [("", "v1")] + [(g, v) for g, versions in registry.groups().items() for v in versions]
    paths = {}
    for group, version in gvs:
        path = gv_path(group, version)
        digest = _hash(gv_document(registry, group, version))
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
