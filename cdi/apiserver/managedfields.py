"""managedFields and server-side apply, kept as simple as kube's semantics allow.

Every write names a field manager (the `fieldManager` parameter, else the client's user agent up
to its first `/`, as kube derives it). `metadata.managedFields` holds one entry per manager,
operation (Apply or Update) and subresource, with the fields it owns in FieldsV1.

- Update (create, update, patch): the manager takes the fields it set or changed; other managers
  lose those; fields that disappeared are nobody's any more.
- Apply (`application/apply-patch+yaml`): the applied configuration's fields are compared with
  the live object; a field another manager owns whose applied value differs is a conflict (409
  listing each field and manager, in kube's words) unless `force`, which takes the field over.
  Equal values are shared. The configuration is merged into the object (maps recursively,
  associative lists by key, the rest replaced); fields the manager applied before and leaves out
  now are removed when no other manager owns them. Applying to a missing object creates it.

Tracked fields are those a user sets: everything but apiVersion, kind and metadata, plus
metadata's labels, annotations, finalizers and ownerReferences; the status of a kind with a
status subresource belongs to writes of that subresource only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import Conflict
from cdi.apiserver.fieldpaths import Path, Shape, from_fields_v1, leaves, merge, path_string, remove, same, to_fields_v1

Obj = dict[str, Any]

APPLY = "Apply"
UPDATE = "Update"
TRACKED_META = ("labels", "annotations", "finalizers", "ownerReferences")


def manager_of(field_manager: str | None, user_agent: str | None) -> str:
    """The manager of a write: fieldManager, else the user agent's program name, as kube does."""
    if field_manager:
        return field_manager
    agent = (user_agent or "").split("/", 1)[0].strip()
    return agent[:128] or "unknown"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    subresource: str = ""
    time: str = ""
    fields: set[Path] = field(default_factory=set)

    def key(self) -> tuple[str, str, str]:
        return self.manager, self.operation, self.subresource

    def to_json(self) -> Obj:
        out: Obj = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                    "time": self.time or _now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def describe(self) -> str:
        """The manager as kube names it in conflict messages."""
        name = json.dumps(self.manager)
        if self.subresource:
            name += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == UPDATE:
            name += f" using {self.api_version}" + (f" at {self.time}" if self.time else "")
        return name


def read(obj: Obj | None) -> list[Entry]:
    out = []
    for e in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if isinstance(e, dict) and e.get("manager") is not None:
            out.append(Entry(str(e["manager"]), str(e.get("operation") or UPDATE), str(e.get("apiVersion") or ""),
                             str(e.get("subresource") or ""), str(e.get("time") or ""),
                             from_fields_v1(e.get("fieldsV1"))))
    return out


def _write(obj: Obj, entries: list[Entry]) -> None:
    kept = [e.to_json() for e in entries if e.fields]
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def tracked(kind: ResourceKind, obj: Obj | None, subresource: str = "") -> Obj:
    """The part of `obj` whose fields have owners (see the module docstring)."""
    if obj is None:
        return {}
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    if kind.status_subresource:
        out.pop("status", None)
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in TRACKED_META}
    if meta:
        out["metadata"] = meta
    return out


def _reset_requested(old: Obj | None, new: Obj) -> bool:
    """A client may replace managedFields; `[{}]` clears them (kube's way to strip them)."""
    sent = new["metadata"].get("managedFields")
    before = ((old or {}).get("metadata") or {}).get("managedFields")
    if sent == [{}]:
        new["metadata"].pop("managedFields", None)
        return True
    return sent is not None and sent != before


def record_update(kind: ResourceKind, old: Obj | None, new: Obj, manager: str, *, subresource: str = "") -> None:
    """Update `new`'s managedFields for a non-apply write by `manager` (old is None on create)."""
    if _reset_requested(old, new):
        return
    shape = Shape(kind)
    before, after = tracked(kind, old, subresource), tracked(kind, new, subresource)
    old_paths, new_paths = leaves(before, shape), leaves(after, shape)
    changed = {p for p in new_paths if p not in old_paths or not same(before, after, p)}
    gone = old_paths - new_paths
    entries = read(old)
    for e in entries:
        e.fields -= changed | gone
    if changed:
        mine = next((e for e in entries if e.key() == (manager, UPDATE, subresource)), None)
        if mine is None:
            mine = Entry(manager, UPDATE, kind.api_version, subresource)
            entries.append(mine)
        mine.fields |= changed
        mine.time = _now()
        mine.api_version = kind.api_version
    _write(new, entries)


def _owned(path: Path, others: list[Path]) -> bool:
    """Whether another manager owns `path` or, for a map or list element (`.`), anything inside it."""
    base = path[:-1] if path[-1:] == (".",) else path
    return any(o[: len(base)] == base for o in others)


def _conflict_error(conflicts: list[tuple[Entry, Path]]) -> Conflict:
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {e.describe()}", "field": path_string(p)}
              for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {e.describe()}: {path_string(p)}"
    else:
        by_manager: dict[str, list[str]] = {}
        for e, p in conflicts:
            by_manager.setdefault(e.describe(), []).append(path_string(p))
        lines = []
        for name in sorted(by_manager):
            lines.append(f"conflicts with {name}:")
            lines += [f"- {p}" for p in by_manager[name]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return Conflict(message, details={"causes": causes})


def apply(
    kind: ResourceKind, current: Obj | None, config: Obj, manager: str, *, force: bool, subresource: str = ""
) -> Obj:
    """The object after `manager` applies `config` to `current` (None: create), with managedFields."""
    shape = Shape(kind)
    config = copy.deepcopy(config)
    config.setdefault("metadata", {}).pop("managedFields", None)
    applied = tracked(kind, config, subresource)
    mine_now = leaves(applied, shape)
    if current is None:
        new = config
        _write(new, [Entry(manager, APPLY, kind.api_version, subresource, _now(), mine_now)])
        return new
    live = tracked(kind, current, subresource)
    entries = read(current)
    mine = next((e for e in entries if e.key() == (manager, APPLY, subresource)), None)
    before = set(mine.fields) if mine else set()
    conflicts = [
        (e, p)
        for e in entries
        if e.manager != manager
        for p in sorted(mine_now & e.fields)
        if not same(live, applied, p)
    ]
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for e, p in conflicts:
        e.fields.discard(p)
    if subresource == "status":
        new = copy.deepcopy(current)
        new["status"] = merge(current.get("status"), config.get("status", {}), shape) if "status" in config else (
            current.get("status"))
    else:
        body = {k: v for k, v in config.items() if not (k == "status" and kind.status_subresource)}
        new = merge(current, body, shape)
    others = [f for e in entries if e.manager != manager for f in e.fields]
    # Whole maps and list elements first: an element's key fields must still be there to find it.
    for p in sorted(before - mine_now, key=lambda p: (p[-1:] != (".",), len(p))):
        if not _owned(p, others):
            remove(new, p)
    if mine is None:
        mine = Entry(manager, APPLY, kind.api_version, subresource)
        entries.append(mine)
    mine.fields, mine.time, mine.api_version = mine_now, _now(), kind.api_version
    _write(new, entries)
    return new
