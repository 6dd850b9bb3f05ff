"""RBAC authorization as kube-apiserver does it: request attributes, rule matching, the decision.

- `request_attributes(user, method, path, query)` is kube's RequestInfoFactory: the verb (get, list,
  watch, create, update, patch, delete, deletecollection; the lower-cased method for non-resource
  paths), API group, namespace, resource, subresource and name of a request. A list or watch with a
  `fieldSelector` of `metadata.name=X` carries name X, so a rule with resourceNames can allow it.
- `rule_allows(attrs, rule)` is kube's RuleAllows (verbs, apiGroups, resources with `*`,
  `resource/subresource` and `*/subresource`, resourceNames, nonResourceURLs with a trailing `*`).
- `Authorizer.authorize(attrs)`: members of `system:masters` may do anything (kube's privileged
  group authorizer); otherwise the ClusterRoleBindings, then the RoleBindings of the request's
  namespace, are searched for a rule that allows the request. ClusterRoles with an
  `aggregationRule` also hold the rules of the ClusterRoles their selectors match. What was read
  is reused until the store's resourceVersion moves (any write), so decisions are never stale.
- `forbidden(attrs, reason)` is the 403 kube answers, word for word.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from cdi.apiserver.errors import Forbidden
from cdi.apiserver.store import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
SA_PREFIX = "system:serviceaccount:"
RBAC = "rbac.authorization.k8s.io"
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class User:
    """An authenticated identity: kube's user.Info."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)


# The user of the request being served (set by the access filter); None for the server's own writes.
CURRENT_USER: ContextVar[User | None] = ContextVar("current_user", default=None)


@dataclass(frozen=True)
class Attributes:
    """What a request asks to do: kube's authorizer.Attributes."""

    user: User
    verb: str
    resource_request: bool
    path: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def request_attributes(user: User, method: str, path: str, query: str = "") -> Attributes:
    """kube's RequestInfoFactory.NewRequestInfo, as authorization sees it."""
    parts = [p for p in path.split("/") if p]
    non_resource = Attributes(user, method.lower(), False, path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    verb = _METHOD_VERBS.get(method.upper(), "")
    if parts and parts[0] == "watch":  # the deprecated /watch/ prefix
        verb, parts = "watch", parts[1:]
    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 else ""
    if not name and verb == "get":
        q = parse_qs(query)
        verb = "watch" if (q.get("watch") or [""])[-1].lower() in ("1", "true") else "list"
        name = _exact_name(q.get("fieldSelector") or [])
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, True, path=path, group=group, version=version, namespace=namespace,
                      resource=resource, subresource=subresource, name=name)


def _exact_name(selectors: list[str]) -> str:
    """The X of a fieldSelector requiring `metadata.name=X` (or `==`), else ''."""
    for selector in selectors[-1:]:
        for term in selector.split(","):
            key, op, value = term.partition("==") if "==" in term else term.partition("=")
            if op and key.strip() == "metadata.name" and not key.strip().endswith("!"):
                return value.strip()
    return ""


def _has(values: list[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def rule_allows(attrs: Attributes, rule: Obj) -> bool:
    """kube's RuleAllows."""
    verbs = rule.get("verbs") or []
    if not _has(verbs, attrs.verb):
        return False
    if not attrs.resource_request:
        return any(u == "*" or u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1]))
                   for u in rule.get("nonResourceURLs") or [])
    if not _has(rule.get("apiGroups") or [], attrs.group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not ("*" in resources or combined in resources
            or (attrs.subresource and f"*/{attrs.subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def applies_to(user: User, subject: Obj, namespace: str) -> bool:
    """kube's appliesToUser: a ServiceAccount subject defaults to the binding's namespace."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or namespace
        return bool(ns) and user.name == f"{SA_PREFIX}{ns}:{name}"
    return False


def _describe_subject(subject: Obj, binding_ns: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_ns}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


def _selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class _Snapshot:
    """The RBAC objects as of one resourceVersion of the store, with resolved rules memoized."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.lock:  # the version first: a write after it makes the snapshot stale, never wrong
            self.rv = store.resource_version
            self.cluster_roles = {o["metadata"]["name"]: o for o in store.items(f"{RBAC}/clusterroles")}
            self.cluster_bindings = store.items(f"{RBAC}/clusterrolebindings")
        self._role_bindings: dict[str, list[Obj]] = {}
        self._resolved: dict[str, list[Obj] | None] = {}

    def role_bindings(self, namespace: str) -> list[Obj]:
        if namespace not in self._role_bindings:
            self._role_bindings[namespace] = self.store.items(f"{RBAC}/rolebindings", namespace)
        return self._role_bindings[namespace]

    def cluster_role_rules(self, name: str, seen: frozenset[str] = frozenset()) -> list[Obj] | None:
        """A ClusterRole's rules, with those of the ClusterRoles its aggregationRule selects."""
        if not seen and name in self._resolved:
            return self._resolved[name]
        role = self.cluster_roles.get(name)
        rules: list[Obj] | None = None
        if role is not None:
            rules = list(role.get("rules") or [])
            selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
            for other_name, other in self.cluster_roles.items() if selectors else ():
                labels = other["metadata"].get("labels") or {}
                if other_name != name and other_name not in seen and any(
                        _selector_matches(s, labels) for s in selectors):
                    rules.extend(self.cluster_role_rules(other_name, seen | {name}) or [])
        if not seen:
            self._resolved[name] = rules
        return rules


class Authorizer:
    """RBAC over the objects in the store, as of the store's current resourceVersion."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._snapshot: _Snapshot | None = None

    def snapshot(self) -> _Snapshot:
        snap = self._snapshot
        if snap is None or snap.rv != self.store.resource_version:
            snap = self._snapshot = _Snapshot(self.store)
        return snap

    def role_rules(self, ref: Obj, namespace: str) -> tuple[list[Obj], str]:
        """The rules a roleRef names, and an error (kube's words) when the role does not exist."""
        kind, name = ref.get("kind"), str(ref.get("name"))
        if kind == "ClusterRole":
            found = self.snapshot().cluster_role_rules(name)
            return (found, "") if found is not None else ([], f'clusterrole.{RBAC} "{name}" not found')
        role = self.store.get(f"{RBAC}/roles", namespace, name) if kind == "Role" else None
        if role is None:
            return [], f'role.{RBAC} "{name}" not found'
        return list(role.get("rules") or []), ""

    def visit(self, user: User, namespace: str) -> Iterator[tuple[str, list[Obj], str]]:
        """(source description, rules, error) for every binding that applies to the user."""
        snap = self.snapshot()
        bindings = [(b, "") for b in snap.cluster_bindings]
        if namespace:
            bindings += [(b, namespace) for b in snap.role_bindings(namespace)]
        for binding, ns in bindings:
            subject = next((s for s in binding.get("subjects") or [] if applies_to(user, s, ns)), None)
            if subject is None:
                continue
            ref = binding.get("roleRef") or {}
            rules, error = self.role_rules(ref, ns)
            name = binding["metadata"]["name"]
            label = f'RoleBinding "{name}/{ns}"' if ns else f'ClusterRoleBinding "{name}"'
            yield f'{label} of {ref.get("kind")} "{ref.get("name")}" to {_describe_subject(subject, ns)}', rules, error

    def authorize(self, attrs: Attributes) -> Decision:
        if MASTERS in attrs.user.groups:
            return Decision(True)
        errors: list[str] = []
        for source, rules, error in self.visit(attrs.user, attrs.namespace):
            if error:
                errors.append(error)
            if any(rule_allows(attrs, r) for r in rules):
                return Decision(True, f"RBAC: allowed by {source}")
        if not errors:
            return Decision(False)
        joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return Decision(False, f"RBAC: {joined}")

    def rules_for(self, user: User, namespace: str) -> tuple[list[Obj], list[str]]:
        """Every rule the user holds in `namespace` (cluster-wide ones included), and the errors."""
        rules: list[Obj] = []
        errors: list[str] = []
        for _, found, error in self.visit(user, namespace):
            rules.extend(found)
            if error:
                errors.append(error)
        return rules, errors


def forbidden(attrs: Attributes, reason: str = "") -> Forbidden:
    """The 403 kube-apiserver answers (responsewriters.Forbidden and NewForbidden)."""
    who = f'User "{attrs.user.name}"'
    if not attrs.resource_request:
        msg = f'{who} cannot {attrs.verb} path "{attrs.path}"'
    else:
        resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
        msg = f'{who} cannot {attrs.verb} resource "{resource}" in API group "{attrs.group}" {where}'
    if reason:
        msg = f"{msg}: {reason}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    details: Obj = {}
    if attrs.resource_request:
        if attrs.name:
            details["name"] = attrs.name
        if attrs.group:
            details["group"] = attrs.group
        details["kind"] = attrs.resource
    if not qualified or not attrs.resource_request:
        return Forbidden(f"forbidden: {msg}", details=details or None)
    if attrs.name:
        return Forbidden(f'{qualified} "{attrs.name}" is forbidden: {msg}', details=details)
    return Forbidden(f"{qualified} is forbidden: {msg}", details=details)
