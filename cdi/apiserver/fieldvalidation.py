"""Server-side field validation (`fieldValidation=Strict|Warn|Ignore`) as kube-apiserver 1.27+ does it.

Unknown fields and values of the wrong JSON type are found by walking the object against the
kind's OpenAPI v3 schema, or kube's own schema for built-in kinds (`schemawalk`, `kube_schemas`),
with `metadata` checked against ObjectMeta. Wrong types are refused whatever the directive.
Duplicate keys in a JSON body are found while it is decoded (`decode`).

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

from cdi.api import kube_schemas
from cdi.api.registry import ResourceKind
from cdi.apiserver import limits, schemawalk
from cdi.apiserver.errors import BadRequest, Invalid

log = logging.getLogger(__name__)

Obj = dict[str, Any]

def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


META_SCHEMA: Obj = {"$ref": f"#/$defs/{kube_schemas.OBJECT_META}"}


def schema_of(kind: ResourceKind) -> Obj | None:
    """The schema a kind's objects are checked against: its own, or kube's for a built-in kind."""
    if kind.schema is not None:
        return kind.schema
    name = kube_schemas.definition_name(kind.group, kind.version, kind.kind)
    return {"$ref": f"#/$defs/{name}"} if name else None


def inspect(kind: ResourceKind, obj: Obj) -> schemawalk.Findings:
    """Unknown fields (removed from `obj`) and wrong types of an object of `kind`."""
    schema = schema_of(kind)
    if kind.schema is None and schema is not None:
        return schemawalk.walk(obj, schema, path="", struct=kind.kind, go_path="")
    found = schemawalk.Findings()
    if schema is not None:
        top = {k: v for k, v in obj.items() if k != "metadata"}
        found = schemawalk.walk(top, schema, path="", struct=kind.kind, go_path="")
        for key in list(obj):
            if key != "metadata" and key not in top:
                del obj[key]
    if "metadata" in obj:
        meta = schemawalk.walk(obj["metadata"], META_SCHEMA, path="metadata", struct=kind.kind, go_path="metadata")
        found.unknown += meta.unknown
        found.types += meta.types
    return found


def check_types(kind: ResourceKind, found: schemawalk.Findings, obj: Obj) -> None:
    """Refuse an object with values of the wrong JSON type, in kube's words.

    Built-in kinds and every object's metadata fail typed decoding: 400 `<Kind> in version "v1"
    cannot be handled as a <Kind>: json: cannot unmarshal ...`. The rest of a custom resource
    fails schema validation: 422 `... in body must be of type string`.
    """
    if not found.types:
        return
    decoding = [t for t in found.types if kind.schema is None or t.path.split(".")[0].split("[")[0] == "metadata"]
    if decoding:
        first = min(decoding, key=lambda t: t.path)
        raise BadRequest(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: {first.go_message()}'
        )
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    raise Invalid.of(kind, name if isinstance(name, str) else "", [t.crd_message() for t in sorted(
        found.types, key=lambda t: t.path)])


def prune_unknown(kind: ResourceKind, obj: Obj) -> list[str]:
    """Drop the fields `kind` does not declare from `obj` (in place); their paths, sorted.

    Values of the wrong type are refused first (`check_types`), whatever the field validation.
    """
    found = inspect(kind, obj)
    check_types(kind, found, obj)
    if found.unknown:
        meta = obj.get("metadata") or {}
        log.info(
            "unknown fields dropped kind=%s name=%s fields=%s", kind.kind, meta.get("name"), ",".join(found.unknown)
        )
    return sorted(found.unknown)


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

    limits.check_raw_depth(raw, "error decoding request body")
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
