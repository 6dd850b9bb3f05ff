"""Registry of resource kinds served by the embedded API server.

Every kind the API server knows is one `ResourceKind` declaration: its group, version, names,
scope, whether it has a status subresource, its table columns (like a CRD's
additionalPrinterColumns), an optional validation and defaulting function and an optional OpenAPI
v3 schema. Adding a kind (VirtualMachine, DataSource, ...) means writing one declaration and
registering it; the server derives routes, discovery, tables and OpenAPI from it.

Validation functions return a list of error strings shaped `<field path>: <detail>`, e.g.
`spec.source.http.url: Invalid value: "ftp://x": ...`; the server turns them into a 422 `Status`
with one cause per string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Validator = Callable[[Obj, Obj | None], list[str]]
Defaulter = Callable[[Obj], None]
CellFunc = Callable[[Obj], Any]

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
BASE_SELECTABLE_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class Column:
    """One column of a server-side table, like a CRD's additionalPrinterColumns entry.

    `func` (object -> cell) or else `json_path` (a simple `.a.b.c` path) gives the cell. A column
    with a `func` may still carry a `json_path`: the JSONPath a CustomResourceDefinition's printer
    column uses for it (e.g. a condition filter the embedded server computes in Python), so the
    generated CRD (`cdi.api.crdgen`) shows the same column in a cluster.
    `priority` 0 columns are always shown, priority 1 only with `-o wide`.
    """

    name: str
    type: str = "string"
    json_path: str | None = None
    func: CellFunc | None = None
    priority: int = 0
    description: str = ""
    format: str = ""

    def cell(self, obj: Obj) -> Any:
        if self.func is not None:
            return self.func(obj)
        if self.json_path is None:
            return None
        return get_path(obj, self.json_path)


@dataclass(frozen=True)
class ResourceKind:
    """Declaration of one resource kind (one REST resource under one group/version)."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # Extra read-only subresources served by hooks (e.g. "log" for pods).
    extra_subresources: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    # NAME first and AGE last are added to `columns` unless switched off (events have no NAME).
    name_column: bool = True
    age_column: bool = True
    validate: Validator | None = None
    default: Defaulter | None = None
    # Fields usable in a fieldSelector besides metadata.name and metadata.namespace.
    selectable_fields: tuple[str, ...] = ()
    # OpenAPI v3 schema of the whole object; None means "any object".
    schema: Obj | None = None
    # Fields of the object that are not "spec" for the purpose of generation: changes to anything
    # outside metadata and these keys bump metadata.generation.
    non_spec_fields: tuple[str, ...] = ("status",)
    description: str = ""
    verbs: tuple[str, ...] = STANDARD_VERBS
    # Served in a cluster by an aggregated API server rather than stored through a CRD (CDI's
    # upload API): `cdi.api.crdgen` generates no CustomResourceDefinition for it.
    aggregated: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`datavolumes.cdi.kubevirt.io` or `pods`, as kube-apiserver words it in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """`DataVolume.cdi.kubevirt.io` or `Pod`, as used in 'is invalid' messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def custom(self) -> bool:
        """Whether the kind is a custom resource (a CRD's) rather than one built into kube.

        Built-in kinds live in the core group or in `*.k8s.io` groups (apps and the like are not
        served here); a CRD's group must contain a dot and is not `*.k8s.io` without approval.
        """
        return "." in self.group and not self.group.endswith(".k8s.io")

    @property
    def key(self) -> str:
        """Storage key of the resource: `group/plural` (core group is empty)."""
        return f"{self.group}/{self.plural}"

    @property
    def all_selectable_fields(self) -> tuple[str, ...]:
        return BASE_SELECTABLE_FIELDS + self.selectable_fields

    def table_columns(self) -> list[Column]:
        cols: list[Column] = []
        if self.name_column:
            cols.append(
                Column(
                    "Name",
                    "string",
                    ".metadata.name",
                    format="name",
                    description="Name must be unique within a namespace.",
                )
            )
        cols.extend(self.columns)
        if self.age_column:
            cols.append(
                Column(
                    "Age",
                    "date",
                    ".metadata.creationTimestamp",
                    description="CreationTimestamp of the object.",
                )
            )
        return cols


class Registry:
    """The set of kinds one API server serves."""

    def __init__(self, kinds: list[ResourceKind] | None = None) -> None:
        self._kinds: dict[tuple[str, str, str], ResourceKind] = {}
        for k in kinds or []:
            self.register(k)

    def register(self, kind: ResourceKind) -> None:
        key = (kind.group, kind.version, kind.plural)
        if key in self._kinds:
            raise ValueError(f"kind already registered: {kind.group_resource}/{kind.version}")
        self._kinds[key] = kind
        log.debug("registered kind=%s group=%s version=%s", kind.kind, kind.group, kind.version)

    def lookup(self, group: str, version: str, plural: str) -> ResourceKind | None:
        return self._kinds.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceKind | None:
        for k in self._kinds.values():
            if k.api_version == api_version and k.kind == kind:
                return k
        return None

    def by_key(self, key: str) -> ResourceKind | None:
        for k in self._kinds.values():
            if k.key == key:
                return k
        return None

    def __iter__(self) -> Iterator[ResourceKind]:
        return iter(self._kinds.values())

    def groups(self) -> dict[str, list[str]]:
        """Named groups (not the core group) and their versions, in registration order."""
        out: dict[str, list[str]] = {}
        for k in self._kinds.values():
            if k.group:
                versions = out.setdefault(k.group, [])
                if k.version not in versions:
                    versions.append(k.version)
        return out

    def kinds_in(self, group: str, version: str) -> list[ResourceKind]:
        return [k for k in self._kinds.values() if k.group == group and k.version == version]


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def get_path(obj: Any, path: str) -> Any:
    """Evaluate a simple JSON path like `.status.phase` or `.spec.ports[0].port`; None if absent."""
    cur = obj
    for m in _SEGMENT.finditer(path):
        name, index = m.group(1), m.group(2)
        if name is not None:
            if not isinstance(cur, dict) or name not in cur:
                return None
            cur = cur[name]
        else:
            i = int(index)
            if not isinstance(cur, list) or i >= len(cur):
                return None
            cur = cur[i]
    return cur
