"""Kinds of "who is asking": RBAC objects, ServiceAccounts and the review kinds.

- `rbac.authorization.k8s.io/v1` Role, ClusterRole, RoleBinding and ClusterRoleBinding, stored and
  validated as kube-apiserver does the parts that matter (a roleRef names a Role or ClusterRole and
  cannot change; subjects are User, Group or ServiceAccount; rules name verbs).
- `v1` ServiceAccount with its `token` subresource (TokenRequest).
- The review kinds (`SubjectAccessReview`, `SelfSubjectAccessReview`, `SelfSubjectRulesReview` in
  `authorization.k8s.io/v1`, `SelfSubjectReview` in `authentication.k8s.io/v1`): create-only and
  never stored; they are declared here so discovery and `kubectl` know them, and answered by
  `cdi.apiserver.reviews`.
"""

from __future__ import annotations

import json

from cdi.api.registry import Column, Obj, ResourceKind, get_path

RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHZ_GROUP = "authorization.k8s.io"
AUTHN_GROUP = "authentication.k8s.io"
SUBJECT_KINDS = ("User", "Group", "ServiceAccount")


def _validate_rules(obj: Obj) -> list[str]:
    errs: list[str] = []
    for i, rule in enumerate(obj.get("rules") or []):
        path = f"rules[{i}]"
        if not isinstance(rule, dict):
            errs.append(f"{path}: Invalid value: {rule!r}: must be an object")
            continue
        if not rule.get("verbs"):
            errs.append(f"{path}.verbs: Required value: verbs must contain at least one value")
        urls = rule.get("nonResourceURLs") or []
        if urls and (rule.get("resources") or rule.get("apiGroups")):
            errs.append(f"{path}.nonResourceURLs: Invalid value: {urls}: rules cannot apply to both "
                        "regular resources and non-resource URLs")
        if not urls and not rule.get("resources"):
            errs.append(f"{path}.resources: Required value: resource rules must supply at least one resource")
    return errs


def _validate_role(obj: Obj, old: Obj | None) -> list[str]:
    return _validate_rules(obj)


def _validate_binding(obj: Obj, old: Obj | None) -> list[str]:
    """kube's ValidateRoleBinding: a roleRef to a (Cluster)Role that never changes, typed subjects."""
    namespaced = obj["kind"] == "RoleBinding"
    ref = obj.get("roleRef") or {}
    errs: list[str] = []
    allowed = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("apiGroup") != RBAC_GROUP:
        errs.append(f'roleRef.apiGroup: Unsupported value: "{ref.get("apiGroup", "")}": '
                    f'supported values: "{RBAC_GROUP}"')
    if ref.get("kind") not in allowed:
        supported = ", ".join(f'"{k}"' for k in allowed)
        errs.append(f'roleRef.kind: Unsupported value: "{ref.get("kind", "")}": supported values: {supported}')
    if not ref.get("name"):
        errs.append("roleRef.name: Required value")
    for i, s in enumerate(obj.get("subjects") or []):
        path = f"subjects[{i}]"
        if not isinstance(s, dict):
            errs.append(f"{path}: Invalid value: {s!r}: must be an object")
            continue
        if s.get("kind") not in SUBJECT_KINDS:
            errs.append(f'{path}.kind: Unsupported value: "{s.get("kind", "")}": '
                        'supported values: "Group", "ServiceAccount", "User"')
        if not s.get("name"):
            errs.append(f"{path}.name: Required value")
        if s.get("kind") == "ServiceAccount" and not namespaced and not s.get("namespace"):
            errs.append(f"{path}.namespace: Required value")
    if old is not None and (old.get("roleRef") or {}) != ref:
        # kube prints the Go value: rbac.RoleRef{APIGroup:"...", Kind:"...", Name:"..."}
        fields = ", ".join(f"{go}:{json.dumps(str(ref.get(key, '')))}"
                           for go, key in (("APIGroup", "apiGroup"), ("Kind", "kind"), ("Name", "name")))
        errs.append(f"roleRef: Invalid value: rbac.RoleRef{{{fields}}}: cannot change roleRef")
    return errs


def _subjects(kind: str) -> Column:
    def cell(obj: Obj) -> str:
        found = [s for s in obj.get("subjects") or [] if isinstance(s, dict) and s.get("kind") == kind]
        if kind == "ServiceAccount":
            return ", ".join(f"{s.get('namespace', '')}/{s.get('name')}" for s in found)
        return ", ".join(str(s.get("name")) for s in found)

    label = {"User": "Users", "Group": "Groups", "ServiceAccount": "ServiceAccounts"}[kind]
    return Column(label, func=cell, priority=1)


def _role_ref(obj: Obj) -> str:
    return f"{get_path(obj, '.roleRef.kind')}/{get_path(obj, '.roleRef.name')}"


_CREATED_AT = Column("Created At", "date", ".metadata.creationTimestamp")
_BINDING_COLUMNS = (Column("Role", func=_role_ref), _subjects("User"), _subjects("Group"),
                    _subjects("ServiceAccount"))


def _rbac_kind(kind: str, plural: str, *, namespaced: bool, binding: bool) -> ResourceKind:
    return ResourceKind(
        group=RBAC_GROUP, version="v1", kind=kind, plural=plural, singular=kind.lower(),
        namespaced=namespaced,
        columns=_BINDING_COLUMNS if binding else (_CREATED_AT,),
        age_column=binding,
        validate=_validate_binding if binding else _validate_role,
        non_spec_fields=(),
    )


def _review_kind(group: str, kind: str, plural: str, *, namespaced: bool = False) -> ResourceKind:
    return ResourceKind(group=group, version="v1", kind=kind, plural=plural, singular=kind.lower(),
                        namespaced=namespaced, verbs=("create",), name_column=False, age_column=False)


ROLE = _rbac_kind("Role", "roles", namespaced=True, binding=False)
CLUSTERROLE = _rbac_kind("ClusterRole", "clusterroles", namespaced=False, binding=False)
ROLEBINDING = _rbac_kind("RoleBinding", "rolebindings", namespaced=True, binding=True)
CLUSTERROLEBINDING = _rbac_kind("ClusterRoleBinding", "clusterrolebindings", namespaced=False, binding=True)

SERVICEACCOUNT = ResourceKind(
    group="", version="v1", kind="ServiceAccount", plural="serviceaccounts", singular="serviceaccount",
    short_names=("sa",), extra_subresources=("token",),
    columns=(Column("Secrets", "integer", func=lambda o: len(o.get("secrets") or [])),),
    non_spec_fields=(),
)

SUBJECTACCESSREVIEW = _review_kind(AUTHZ_GROUP, "SubjectAccessReview", "subjectaccessreviews")
SELFSUBJECTACCESSREVIEW = _review_kind(AUTHZ_GROUP, "SelfSubjectAccessReview", "selfsubjectaccessreviews")
SELFSUBJECTRULESREVIEW = _review_kind(AUTHZ_GROUP, "SelfSubjectRulesReview", "selfsubjectrulesreviews")
SELFSUBJECTREVIEW = _review_kind(AUTHN_GROUP, "SelfSubjectReview", "selfsubjectreviews")

REVIEW_KINDS = (SUBJECTACCESSREVIEW, SELFSUBJECTACCESSREVIEW, SELFSUBJECTRULESREVIEW, SELFSUBJECTREVIEW)
RBAC_KINDS = (SERVICEACCOUNT, ROLE, CLUSTERROLE, ROLEBINDING, CLUSTERROLEBINDING, *REVIEW_KINDS)
