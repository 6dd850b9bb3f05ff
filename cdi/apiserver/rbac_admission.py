"""RBAC escalation prevention, as kube-apiserver's RBAC storage does it.

A user may create or change a Role or ClusterRole only with rules they already hold (in that
namespace; cluster-wide for a ClusterRole), unless RBAC allows them the `escalate` verb on it; a
ClusterRole with an `aggregationRule` needs every right (cluster-admin). A user may create or change
a RoleBinding or ClusterRoleBinding only when they hold every rule of the role it names, unless RBAC
allows them `bind` on that role. Members of `system:masters` may always. Refusals are kube's 403:
`... is attempting to grant RBAC permissions not currently held:` and the missing rules in kube's
compact form. Writes the server makes itself (no user) are not checked.

Rule coverage is kube's `Covers`: each rule is broken down into one verb, group, resource and
resource name (or URL) at a time, and each piece must be covered by one of the user's rules.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import Forbidden
from cdi.apiserver.rbac import CURRENT_USER, MASTERS, RBAC, Attributes, Authorizer, User

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
FULL_AUTHORITY = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]


def breakdown(rule: Obj) -> list[Obj]:
    """kube's BreakdownRule: one verb x group x resource (x name), and one verb x URL, per rule."""
    out: list[Obj] = []
    names = rule.get("resourceNames") or [None]
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                for name in names:
                    sub: Obj = {"verbs": [verb], "apiGroups": [group], "resources": [resource]}
                    if name is not None:
                        sub["resourceNames"] = [name]
                    out.append(sub)
    for url in rule.get("nonResourceURLs") or []:
        for verb in rule.get("verbs") or []:
            out.append({"verbs": [verb], "nonResourceURLs": [url]})
    return out


def _has_all(have: list[str], wanted: list[str]) -> bool:
    return all(w in have for w in wanted)


def _resources_cover(have: list[str], wanted: list[str]) -> bool:
    if "*" in have:
        return True
    for path in wanted:
        if path in have:
            continue
        if "/" not in path or "*/" + path.split("/", 1)[1] not in have:
            return False
    return True


def _url_covers(owner: str, sub: str) -> bool:
    return owner == sub or (owner.endswith("*") and sub.startswith(owner.rstrip("*")))


def rule_covers(owner: Obj, sub: Obj) -> bool:
    """kube's ruleCovers."""
    verbs, groups = owner.get("verbs") or [], owner.get("apiGroups") or []
    owner_names, sub_names = owner.get("resourceNames") or [], sub.get("resourceNames") or []
    return (
        ("*" in verbs or _has_all(verbs, sub.get("verbs") or []))
        and ("*" in groups or _has_all(groups, sub.get("apiGroups") or []))
        and _resources_cover(owner.get("resources") or [], sub.get("resources") or [])
        and all(any(_url_covers(o, s) for o in owner.get("nonResourceURLs") or [])
                for s in sub.get("nonResourceURLs") or [])
        and (not owner_names or (bool(sub_names) and _has_all(owner_names, sub_names)))
    )


def missing_rules(owner_rules: list[Obj], rules: list[Obj]) -> list[Obj]:
    """The broken-down rules of `rules` no owner rule covers (kube's Covers)."""
    return [sub for rule in rules for sub in breakdown(rule) if not any(rule_covers(o, sub) for o in owner_rules)]


def _go_quoted(values: list[str]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def compact_string(rule: Obj) -> str:
    """kube's rbacv1helpers.CompactString."""
    parts = [f"{label}:{_go_quoted(rule[key])}" for key, label in (
        ("apiGroups", "APIGroups"), ("resources", "Resources"), ("nonResourceURLs", "NonResourceURLs"),
        ("resourceNames", "ResourceNames"), ("verbs", "Verbs")) if rule.get(key)]
    return "{" + ", ".join(parts) + "}"


def compact(rules: list[Obj]) -> list[Obj]:
    """kube's CompactRules: simple rules (one group and resource, no names) merged across verbs."""
    out: list[Obj] = []
    simple: dict[tuple[str, str], Obj] = {}
    for r in rules:
        if r.get("resourceNames") or r.get("nonResourceURLs"):
            out.append(r)
            continue
        key = (r["apiGroups"][0], r["resources"][0])
        if key in simple:
            simple[key]["verbs"] = simple[key]["verbs"] + [v for v in r["verbs"] if v not in simple[key]["verbs"]]
        else:
            simple[key] = {**r, "verbs": list(r["verbs"])}
            out.append(simple[key])
    return out


class EscalationCheck:
    """The admission check refusing RBAC writes that would grant more than the writer holds."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def __call__(self, kind: ResourceKind, obj: Obj, old: Obj | None) -> None:
        user = CURRENT_USER.get()
        if user is None or kind.group != RBAC or MASTERS in user.groups:
            return
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        if kind.kind in ROLE_KINDS:
            fields = ("rules", "aggregationRule")
            if old is not None and all(obj.get(f) == old.get(f) for f in fields):
                return
            if self._allowed(user, "escalate", kind.plural, ns, name):
                return
            if obj.get("aggregationRule") and missing_rules(self._held(user, "")[0], FULL_AUTHORITY):
                raise Forbidden.of(kind, name, "must have cluster-admin privileges to use the aggregationRule")
            self._confirm(kind, user, ns, name, obj.get("rules") or [])
        elif kind.kind in BINDING_KINDS:
            if old is not None and all(obj.get(f) == old.get(f) for f in ("roleRef", "subjects")):
                return
            ref = obj.get("roleRef") or {}
            resource = {"Role": "roles", "ClusterRole": "clusterroles"}.get(str(ref.get("kind")), "")
            if self._allowed(user, "bind", resource, ns, str(ref.get("name"))):
                return
            rules, error = self.authorizer.role_rules(ref, ns)
            if error:
                raise Forbidden.of(kind, name, error)
            self._confirm(kind, user, ns, name, rules)

    def _allowed(self, user: User, verb: str, resource: str, ns: str, name: str) -> bool:
        attrs = Attributes(user, verb, True, group=RBAC, namespace=ns, resource=resource, name=name)
        return self.authorizer.authorize(attrs).allowed

    def _held(self, user: User, ns: str) -> tuple[list[Obj], list[str]]:
        return self.authorizer.rules_for(user, ns)

    def _confirm(self, kind: ResourceKind, user: User, ns: str, name: str, rules: list[Obj]) -> None:
        """kube's ConfirmNoEscalation."""
        held, errors = self._held(user, ns)
        missing = missing_rules(held, rules)
        if not missing:
            return
        lines = sorted({compact_string(r) for r in compact(missing)})
        msg = (f"user {json.dumps(user.name)} (groups={_go_quoted(list(user.groups))}) is attempting to grant RBAC "
               "permissions not currently held:\n" + "\n".join(lines))
        if errors:
            msg += f"; resolution errors: [{', '.join(errors)}]"
        log.info("rbac escalation refused user=%s kind=%s name=%s missing=%d", user.name, kind.kind, name, len(lines))
        raise Forbidden.of(kind, name, msg)
