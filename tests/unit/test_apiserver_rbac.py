"""RBAC's pure parts against kube's behaviour: request attributes, rule matching, messages, coverage."""

from __future__ import annotations

import pytest

from cdi.apiserver.authn import parse_token_file
from cdi.apiserver.rbac import Attributes, User, forbidden, request_attributes, rule_allows
from cdi.apiserver.rbac_admission import compact, compact_string, missing_rules

U = User("bob", groups=("system:authenticated",))


def attrs(method: str, path: str, query: str = "") -> tuple[str, str, str, str, str, str]:
    a = request_attributes(U, method, path, query)
    return a.verb, a.group, a.namespace, a.resource, a.subresource, a.name


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/v1/namespaces", "", ("list", "", "", "namespaces", "", "")),
    ("GET", "/api/v1/namespaces/alice", "", ("get", "", "alice", "namespaces", "", "alice")),
    ("PUT", "/api/v1/namespaces/alice/finalize", "", ("update", "", "alice", "namespaces", "finalize", "alice")),
    ("GET", "/api/v1/namespaces/a/pods", "watch=true", ("watch", "", "a", "pods", "", "")),
    ("GET", "/api/v1/namespaces/a/pods", "watch=1&fieldSelector=metadata.name%3Dp",
     ("watch", "", "a", "pods", "", "p")),
    ("GET", "/api/v1/namespaces/a/pods", "fieldSelector=metadata.name==p,status.phase=Running",
     ("list", "", "a", "pods", "", "p")),
    ("GET", "/api/v1/namespaces/a/pods", "fieldSelector=metadata.name!%3Dp", ("list", "", "a", "pods", "", "")),
    ("GET", "/api/v1/namespaces/a/pods/p/log", "", ("get", "", "a", "pods", "log", "p")),
    ("GET", "/api/v1/watch/namespaces/a/pods", "", ("watch", "", "a", "pods", "", "")),
    ("DELETE", "/apis/cdi.kubevirt.io/v1beta1/namespaces/a/datavolumes", "",
     ("deletecollection", "cdi.kubevirt.io", "a", "datavolumes", "", "")),
    ("PATCH", "/apis/cdi.kubevirt.io/v1beta1/namespaces/a/datavolumes/d/status", "",
     ("patch", "cdi.kubevirt.io", "a", "datavolumes", "status", "d")),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "",
     ("create", "authorization.k8s.io", "", "selfsubjectaccessreviews", "", "")),
    ("PUT", "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachines/vm/start", "",
     ("update", "subresources.kubevirt.io", "a", "virtualmachines", "start", "vm")),
    ("GET", "/apis/cdi.kubevirt.io/v1beta1/datavolumes", "", ("list", "cdi.kubevirt.io", "", "datavolumes", "", "")),
])
def test_request_attributes_as_kubes_request_info(method: str, path: str, query: str,
                                                  expected: tuple[str, ...]) -> None:
    assert attrs(method, path, query) == expected
    assert request_attributes(U, method, path, query).resource_request


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/cdi.kubevirt.io", "/apis/cdi.kubevirt.io/v1beta1",
                                  "/openapi/v2", "/version", "/healthz"])
def test_discovery_and_other_paths_are_non_resource_requests(path: str) -> None:
    a = request_attributes(U, "GET", path)
    assert (a.resource_request, a.verb, a.path) == (False, "get", path)


def test_rule_matching() -> None:
    dv = request_attributes(U, "GET", "/apis/cdi.kubevirt.io/v1beta1/namespaces/a/datavolumes/d/status")
    assert rule_allows(dv, {"verbs": ["get"], "apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/status"]})
    assert rule_allows(dv, {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status"]})
    assert not rule_allows(dv, {"verbs": ["get"], "apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"]})
    assert rule_allows(dv, {"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"], "resourceNames": ["d"]})
    assert not rule_allows(dv, {"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"], "resourceNames": ["e"]})
    assert not rule_allows(dv, {"verbs": ["get"], "apiGroups": [""], "resources": ["*"]})
    lst = request_attributes(U, "GET", "/apis/cdi.kubevirt.io/v1beta1/namespaces/a/datavolumes")
    assert not rule_allows(lst, {"verbs": ["list"], "apiGroups": ["*"], "resources": ["*"], "resourceNames": ["d"]})
    urls = {"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/version"]}
    assert rule_allows(request_attributes(U, "GET", "/apis/cdi.kubevirt.io"), urls)
    assert not rule_allows(request_attributes(U, "GET", "/apis"), urls)
    assert not rule_allows(request_attributes(U, "POST", "/version"), urls)
    assert not rule_allows(dv, urls)  # URL rules never allow resource requests


def test_forbidden_messages_as_kube_words_them() -> None:
    a = request_attributes(U, "GET", "/apis/cdi.kubevirt.io/v1beta1/namespaces/a/datavolumes/d/status")
    assert forbidden(a).message == ('datavolumes.cdi.kubevirt.io "d" is forbidden: User "bob" cannot get resource '
                                    '"datavolumes/status" in API group "cdi.kubevirt.io" in the namespace "a"')
    a = request_attributes(U, "GET", "/api/v1/nodes")
    assert forbidden(a).message == ('nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" '
                                    "at the cluster scope")
    a = Attributes(U, "get", False, path="/metrics")
    assert forbidden(a, "RBAC: x").message == 'forbidden: User "bob" cannot get path "/metrics": RBAC: x'


def test_escalation_coverage_and_compact_descriptions() -> None:
    held = [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/status"]},
            {"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}]
    assert missing_rules(held, [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "pods/status"]}]) == []
    missing = missing_rules(held, [{"verbs": ["get", "delete", "watch"], "apiGroups": [""], "resources": ["pods"]},
                                   {"verbs": ["get"], "nonResourceURLs": ["/apis/x", "/api"]}])
    assert [compact_string(r) for r in compact(missing)] == [
        '{APIGroups:[""], Resources:["pods"], Verbs:["delete" "watch"]}', '{NonResourceURLs:["/api"], Verbs:["get"]}']
    named = [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}]
    assert missing_rules(named, named) == []
    assert missing_rules(named, [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])


def test_static_token_file_as_kube_reads_it() -> None:
    users = parse_token_file('t1,alice,u1,"dev,ops"\nt2,bob,u2\n\nt3,carol,u3,\n')
    assert [(u.token, u.name, u.uid, u.groups) for u in users] == [
        ("t1", "alice", "u1", ("dev", "ops")), ("t2", "bob", "u2", ()), ("t3", "carol", "u3", ())]
    with pytest.raises(ValueError, match="users.csv:2: expected"):
        parse_token_file("t1,alice,u1\nt2,bob\n", source="users.csv")


def test_a_bindings_role_ref_cannot_change() -> None:
    from cdi.api.rbac import ROLEBINDING

    assert ROLEBINDING.validate is not None
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
    old = {"kind": "RoleBinding", "metadata": {"name": "b"}, "roleRef": ref, "subjects": []}
    new = {**old, "roleRef": {**ref, "name": "edit"}}
    assert ROLEBINDING.validate(new, old) == [
        'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", '
        'Name:"edit"}: cannot change roleRef']
    assert ROLEBINDING.validate(old, old) == []
