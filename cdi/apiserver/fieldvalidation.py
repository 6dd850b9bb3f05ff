"""Server-side field validation (`fieldValidation=Strict|Warn|Ignore`) as kube-apiserver 1.27+ does it.

Unknown fields are found from the kind's OpenAPI v3 schema (properties, additionalProperties,
items, `x-kubernetes-preserve-unknown-fields`), with `metadata` checked against ObjectMeta; built-in
kinds served without a schema have their top-level fields declared in `TOP_LEVEL`. Duplicate keys
in a JSON body are found while it is decoded (`decode`).

Whatever the directive, unknown fields are never stored: kube prunes them from custom resources
and typed decoding drops them from built-in ones. The directive decides what the client hears:

- Strict: create/update answer 400 `<Kind> in version "<v>" cannot be handled as a <Kind>: strict
  decoding error: unknown field "spec.foo"`; a patch answers 422 `patch: Invalid value: ...`;
- Warn (kube's default when the parameter is absent): `Warning: 299 - "unknown field \\"spec.foo\\""`;
- Ignore: nothing.

A server-side apply configuration with an unknown field is always refused (`applied`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cdi.api.registry import ResourceKind
from cdi.apiserver import limits
from cdi.apiserver.errors import BadRequest, Invalid

log = logging.getLogger(__name__)

Obj = dict[str, Any]

OBJECT_META = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
}
OWNER_REFERENCE = {"apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion"}
MANAGED_FIELDS_ENTRY = {"manager", "operation", "apiVersion", "time", "fieldsType", "fieldsV1", "subresource"}
TYPE_META = {"apiVersion", "kind", "metadata"}
# Top-level fields of the built-in kinds served without a schema (their Go types' JSON names).
TOP_LEVEL: dict[str, set[str]] = {
    "Namespace": {"spec", "status"},
    "PersistentVolumeClaim": {"spec", "status"},
    "Pod": {"spec", "status"},
    "Service": {"spec", "status"},
    "Secret": {"data", "stringData", "type", "immutable"},
    "ConfigMap": {"data", "binaryData", "immutable"},
    "Event": {
        "involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count",
        "type", "eventTime", "series", "action", "related", "reportingComponent", "reportingInstance",
    },
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _prune_meta(meta: Any, path: str, found: list[str]) -> None:
    if not isinstance(meta, dict):
        return
    for key in list(meta):
        if key not in OBJECT_META:
            found.append(_join(path, key))
            del meta[key]
    for list_name, known in (("ownerReferences", OWNER_REFERENCE), ("managedFields", MANAGED_FIELDS_ENTRY)):
        for i, item in enumerate(meta.get(list_name) or []):
            if isinstance(item, dict):
                for key in list(item):
                    if key not in known:
                        found.append(f"{path}.{list_name}[{i}].{key}")
                        del item[key]


def _prune(doc: Any, schema: Obj, path: str, found: list[str]) -> None:
    """Remove fields `schema` does not declare from `doc`, recording their paths in `found`."""
    if isinstance(doc, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(doc):
                _prune(item, items, f"{path}[{i}]", found)
        return
    if not isinstance(doc, dict):
        return
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if props is None and extra is None and (preserve or schema.get("type") != "object"):
        return  # no structure declared: anything goes (int-or-string, free-form objects)
    for key in list(doc):
        if props and key in props:
            _prune(doc[key], props[key], _join(path, key), found)
        elif isinstance(extra, dict):
            _prune(doc[key], extra, _join(path, key), found)
        elif extra is True or preserve:
            continue
        else:
            found.append(_join(path, key))
            del doc[key]


def prune_unknown(kind: ResourceKind, obj: Obj) -> list[str]:
    """Drop the fields `kind` does not declare from `obj` (in place); their paths, sorted."""
    found: list[str] = []
    if kind.schema is not None:
        top = {k: v for k, v in obj.items() if k != "metadata"}
        _prune(top, kind.schema, "", found)
        for key in list(obj):
            if key != "metadata" and key not in top:
                del obj[key]
    elif kind.kind in TOP_LEVEL:
        for key in list(obj):
            if key not in TYPE_META and key not in TOP_LEVEL[kind.kind]:
                found.append(key)
                del obj[key]
    _prune_meta(obj.get("metadata"), "metadata", found)
    if found:
        meta = obj.get("metadata") or {}
        log.info("unknown fields dropped kind=%s name=%s fields=%s", kind.kind, meta.get("name"), ",".join(found))
    return sorted(found)


def decode(raw: bytes) -> tuple[Any, list[str]]:
    """JSON from a request and the paths of keys it repeats (kube: `duplicate field "a.b"`)."""
    dups: dict[int, list[str]] = {}

    def pairs(items: list[tuple[str, Any]]) -> Obj:
        d: Obj = {}
        repeated = []
        for k, v in items:
            if k in d:
                repeated.append(k)
            d[k] = v  # the last one wins, as in Go's decoder
        if repeated:
            dups[id(d)] = repeated
        return d

    try:
        doc = json.loads(raw or b"null", object_pairs_hook=pairs)
    except RecursionError as e:
        raise BadRequest(f"error decoding request body: exceeded max depth of {limits.MAX_DEPTH}") from e
    except ValueError as e:
        raise BadRequest(f"error decoding request body: {e}") from e
    limits.check_depth(doc, "error decoding request body")
    found: list[str] = []
    if dups:
        stack: list[tuple[Any, str]] = [(doc, "")]
        while stack:
            node, path = stack.pop()
            if isinstance(node, dict):
                found.extend(_join(path, k) for k in dups.get(id(node), []))
                stack.extend((v, _join(path, k)) for k, v in node.items())
            elif isinstance(node, list):
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return doc, sorted(found)


def applied(kind: ResourceKind, config: Obj) -> None:
    """A server-side apply configuration may not carry unknown fields, whatever the directive: kube
    cannot build the typed patch and answers 400 naming each field."""
    unknown = prune_unknown(kind, config)
    if unknown:
        meta = config.get("metadata") or {}
        where = f"{meta.get('namespace', '')}/{meta.get('name', '')}" if kind.namespaced else meta.get("name", "")
        problems = "\n".join(f".{p}: field not declared in schema" for p in unknown)
        raise BadRequest(
            f"failed to create typed patch object ({where}; {kind.api_version}, Kind={kind.kind}): {problems}"
        )


@dataclass
class FieldCheck:
    """The field validation of one request: its directive, duplicates found while decoding, warnings."""

    directive: str = "Warn"
    duplicates: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def _problems(self, kind: ResourceKind, obj: Obj) -> list[str]:
        unknown = prune_unknown(kind, obj)
        return [f'duplicate field "{p}"' for p in self.duplicates] + [f'unknown field "{p}"' for p in unknown]

    def body(self, kind: ResourceKind, obj: Obj) -> None:
        """Check (and prune) the body of a create or update."""
        problems = self._problems(kind, obj)
        if not problems:
            return
        if self.directive == "Strict":
            raise BadRequest(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                f"strict decoding error: {', '.join(problems)}"
            )
        if self.directive == "Warn":
            self.warnings.extend(problems)

    def patched(self, kind: ResourceKind, obj: Obj) -> None:
        """Check (and prune) the result of a patch: a Strict failure is kube's 422 on `patch`."""
        before = json.dumps(obj, separators=(",", ":"))
        problems = self._problems(kind, obj)
        if not problems:
            return
        if self.directive == "Strict":
            detail = f"strict decoding error: {', '.join(problems)}"
            raise Invalid.named("", "", [f"patch: Invalid value: {json.dumps(before)}: {detail}"])
        if self.directive == "Warn":
            self.warnings.extend(problems)

    def headers(self) -> list[tuple[str, str]]:
        """`Warning` headers as kube-apiserver sends them (RFC 7234 code 299, agent `-`)."""
        return [("Warning", f"299 - {json.dumps(w)}") for w in dict.fromkeys(self.warnings)]
