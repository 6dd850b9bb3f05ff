"""Label and field selectors, parsed from their query-string form and matched against objects.

Label selectors support `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)` and `k notin (a,b)`;
field selectors support `f=v`, `f==v` and `f!=v` on the fields a kind declares selectable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdi.api.registry import ResourceKind, get_path
from cdi.apiserver.errors import BadRequest

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]

_SET_OP = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_OP = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s=!]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _check_tokens(text: str) -> None:
    """kube's lexer errors for what the patterns below would let through: a dangling comma, a
    parenthesis or comma where a key or value belongs."""
    if text.rstrip().endswith(","):
        raise BadRequest("found '', expected: identifier after ','")
    for part in _split_top(text):
        if _SET_OP.match(part):
            continue
        for ch in ("(", ")"):
            if ch in part:
                raise BadRequest(f"unable to parse requirement: found '{ch}', expected: identifier")


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    _check_tokens(text)
    reqs = []
    for part in _split_top(text):
        if m := _SET_OP.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_OP.match(part):
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise BadRequest(f"unable to parse requirement: {part.strip()!r}: invalid label selector")
    return reqs


def label_matcher(text: str | None) -> Matcher:
    reqs = parse_label_selector(text)

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in reqs)

    return match


def field_matcher(kind: ResourceKind, text: str | None) -> Matcher:
    """Matcher for a fieldSelector; BadRequest on a field the kind does not support."""
    if not text:
        return lambda obj: True
    checks: list[tuple[str, bool, str]] = []
    for part in _split_top(text):
        m = _EQ_OP.match(part)
        if not m:
            raise BadRequest(f"invalid selector: '{text}'; can't understand '{part.strip()}'")
        fld, op, value = m.group(1), m.group(2), m.group(3)
        if fld not in kind.all_selectable_fields:
            raise BadRequest(f"field label not supported: {fld}")
        checks.append((fld, op != "!=", value))

    def match(obj: Obj) -> bool:
        for fld, equal, value in checks:
            actual = get_path(obj, "." + fld)
            actual_s = "" if actual is None else str(actual)
            if (actual_s == value) != equal:
                return False
        return True

    return match
