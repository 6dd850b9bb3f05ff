"""Who is asking: users, ServiceAccounts and RBAC with the real kubectl, as two different users.

One server for the module, laid out like `cdi serve`'s data directory (admin kubeconfig, users.csv,
serviceaccount.key), so `cdi user add` works on it. alice is an admin of namespace "alice"; bob
starts with no rights there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml

from tests.functional.apiserver_fixtures import Cluster, datavolume, start_cluster

DV_GROUP = "cdi.kubevirt.io"


def cdi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdi.cli.main", *args], capture_output=True, text=True,
                          timeout=60)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class As:
    """kubectl with another user's kubeconfig."""

    def __init__(self, cluster: Cluster, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("--kubeconfig", str(self.kubeconfig), *args, input=input, check=check)

    def token(self) -> str:
        return str(yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["token"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, As, As]]:
    work = tmp_path_factory.mktemp("rbac")
    c = start_cluster(work, users_file=str(work / "users.csv"),
                      service_account_key_file=str(work / "serviceaccount.key"))
    users = {}
    for name, extra in (("alice", ["--group", "dev", "--namespace", "alice"]), ("bob", [])):
        out = cdi("user", "add", name, "--data-dir", str(work), *extra)
        assert out.returncode == 0, out.stderr
        path = work / "users" / f"{name}.kubeconfig"
        assert f"kubeconfig: {path}" in out.stdout
        users[name] = As(c, path)
    c.kubectl("create", "namespace", "alice")
    c.kubectl("create", "rolebinding", "alice-admin", "--clusterrole=admin", "--user=alice", "-n", "alice")
    yield c, users["alice"], users["bob"]
    c.server.stop()


def forbidden(user: str, verb: str, resource: str, group: str, ns: str | None, name: str = "") -> str:
    qualified = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
    subject = f'{qualified} "{name}"' if name else qualified
    where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    return (f'Error from server (Forbidden): {subject} is forbidden: User "{user}" cannot {verb} resource '
            f'"{resource}" in API group "{group}" {where}')


def test_user_files_are_owner_only_and_listed(env: tuple[Cluster, As, As]) -> None:
    c, alice, _ = env
    assert (c.workdir / "users.csv").stat().st_mode & 0o777 == 0o600
    assert (c.workdir / "serviceaccount.key").stat().st_mode & 0o777 == 0o600
    assert alice.kubeconfig.stat().st_mode & 0o777 == 0o600
    listing = cdi("user", "list", "--data-dir", str(c.workdir)).stdout.splitlines()
    assert [line.split()[0] for line in listing] == ["NAME", "alice", "bob"]
    assert listing[1].split()[2] == "dev"
    assert cdi("user", "add", "alice", "--data-dir", str(c.workdir)).returncode == 1
    taken = cdi("user", "add", "admin", "--data-dir", str(c.workdir))
    assert (taken.returncode, taken.stderr.strip()) == (
        1, 'cdi user add: error: "admin" is the name of the admin token\'s user; choose another name')


def test_whoami_names_the_user_and_groups(env: tuple[Cluster, As, As]) -> None:
    c, alice, _ = env
    review = json.loads(alice.kubectl("auth", "whoami", "-o", "json").stdout)
    info = review["status"]["userInfo"]
    assert (info["username"], info["groups"]) == ("alice", ["dev", "system:authenticated"])
    admin = json.loads(c.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert admin["groups"] == ["system:masters", "system:authenticated"]
    table = alice.kubectl("auth", "whoami").stdout.split()
    assert table[:4] == ["ATTRIBUTE", "VALUE", "Username", "alice"]


def test_alice_works_in_her_namespace_and_nowhere_else(env: tuple[Cluster, As, As]) -> None:
    _, alice, _ = env
    out = alice.kubectl("apply", "-f", "-", input=yaml.safe_dump(datavolume("alices-disk")))
    assert out.stdout.strip() == "datavolume.cdi.kubevirt.io/alices-disk created"
    assert alice.kubectl("get", "dv", "-o", "name").stdout.split() == ["datavolume.cdi.kubevirt.io/alices-disk"]
    assert alice.kubectl("get", "ns", "alice", "-o", "name").stdout.strip() == "namespace/alice"
    refused = alice.kubectl("get", "dv", "-n", "default", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == forbidden("alice", "list", "datavolumes", DV_GROUP, "default")
    refused = alice.kubectl("get", "dv", "-A", check=False)
    assert refused.stderr.strip() == forbidden("alice", "list", "datavolumes", DV_GROUP, None)
    refused = alice.kubectl("get", "ns", "default", check=False)
    assert refused.stderr.strip() == forbidden("alice", "get", "namespaces", "", "default", "default")


def test_bob_is_refused_until_a_rolebinding_grants_him(env: tuple[Cluster, As, As]) -> None:
    c, alice, bob = env
    manifest = yaml.safe_dump(datavolume("bobs-disk"))
    assert bob.kubectl("auth", "can-i", "create", "datavolumes", "-n", "alice", check=False).stdout.strip() == "no"
    refused = bob.kubectl("create", "-n", "alice", "-f", "-", input=manifest, check=False)
    expected = forbidden("bob", "create", "datavolumes", DV_GROUP, "alice")
    assert refused.stderr.strip() == expected.replace("(Forbidden): ", '(Forbidden): error when creating "STDIN": ')
    refused = bob.kubectl("get", "dv", "alices-disk", "-n", "alice", check=False)
    assert refused.stderr.strip() == forbidden("bob", "get", "datavolumes", DV_GROUP, "alice", "alices-disk")
    refused = bob.kubectl("get", "dv", "alices-disk", "-n", "alice", "--subresource", "status", check=False)
    assert refused.stderr.strip() == forbidden("bob", "get", "datavolumes/status", DV_GROUP, "alice",
                                               "alices-disk")

    # alice, an admin of her namespace, grants bob the edit role there.
    alice.kubectl("create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob")
    assert bob.kubectl("auth", "can-i", "create", "datavolumes", "-n", "alice").stdout.strip() == "yes"
    out = bob.kubectl("create", "-n", "alice", "-f", "-", input=manifest).stdout.strip()
    assert out == "datavolume.cdi.kubevirt.io/bobs-disk created"
    assert bob.kubectl("delete", "dv", "bobs-disk", "-n", "alice").returncode == 0
    # edit does not include RBAC: bob can neither see nor change who may do what.
    assert bob.kubectl("auth", "can-i", "create", "rolebindings", "-n", "alice", check=False).stdout.strip() == "no"
    refused = bob.kubectl("get", "rolebindings", "-n", "alice", check=False)
    assert refused.stderr.strip() == forbidden("bob", "list", "rolebindings", "rbac.authorization.k8s.io", "alice")
    # The admin token still does everything.
    assert c.kubectl("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"


def test_can_i_agrees_with_what_the_api_does(env: tuple[Cluster, As, As]) -> None:
    c, alice, bob = env
    c.kubectl("create", "namespace", "carol")
    c.kubectl("create", "role", "pvc-reader", "--verb=get,list,watch", "--resource=persistentvolumeclaims",
              "-n", "carol")
    c.kubectl("create", "rolebinding", "bob-pvc", "--role=pvc-reader", "--user=bob", "-n", "carol")
    pvcs = "persistentvolumeclaims"
    checks = [("get", pvcs), ("list", pvcs), ("create", pvcs), ("list", "datavolumes"), ("delete", pvcs)]
    for verb, resource in checks:
        said = bob.kubectl("auth", "can-i", verb, resource, "-n", "carol", check=False).stdout.strip()
        args = {"get": ["get", resource, "nothing"], "list": ["get", resource],
                "create": ["create", "-f", "-"], "delete": ["delete", resource, "nothing"]}[verb]
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        done = bob.kubectl(*args, "-n", "carol", input=yaml.safe_dump(pvc) if verb == "create" else None,
                           check=False)
        allowed = "(Forbidden)" not in done.stderr
        assert (said == "yes") == allowed, (verb, resource, said, done.stderr)
    rows = [line.split() for line in bob.kubectl("auth", "can-i", "--list", "-n", "carol").stdout.splitlines()]
    assert ["persistentvolumeclaims", "[]", "[]", "[get", "list", "watch]"] in rows
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in rows
    assert not any(r[0].startswith("datavolumes") for r in rows)
    alice_rows = [line.split() for line in alice.kubectl("auth", "can-i", "--list").stdout.splitlines()]
    dv_row = next(r for r in alice_rows if r[0] == "datavolumes.cdi.kubevirt.io")
    assert dv_row[3].lstrip("[").rstrip("]") == "*"  # admin: every verb (view's get, list, watch follow)


def _get(c: Cluster, token: str, path: str) -> requests.Response:
    return requests.get(c.server.url + path, headers={"Authorization": f"Bearer {token}"},
                        verify=str(c.server.tls.ca_file), timeout=10)


def test_lists_and_watches_need_permission_and_resource_names_allow_a_named_watch(
    env: tuple[Cluster, As, As],
) -> None:
    c, alice, bob = env
    c.kubectl("create", "role", "one-disk", "--verb=get,list,watch", "--resource=datavolumes.cdi.kubevirt.io",
              "--resource-name=alices-disk", "-n", "alice")
    c.kubectl("create", "rolebinding", "bob-one-disk", "--role=one-disk", "--user=bob", "-n", "alice")
    c.kubectl("delete", "rolebinding", "bob-edit", "-n", "alice")
    base = "/apis/cdi.kubevirt.io/v1beta1/namespaces/alice/datavolumes"
    token = bob.token()
    assert _get(c, token, f"{base}?watch=true&timeoutSeconds=1").status_code == 403
    refused = _get(c, token, base)
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        'datavolumes.cdi.kubevirt.io is forbidden: User "bob" cannot list resource "datavolumes" in API group '
        '"cdi.kubevirt.io" in the namespace "alice"')
    named = _get(c, token, f"{base}?fieldSelector=metadata.name%3Dalices-disk")
    assert [o["metadata"]["name"] for o in named.json()["items"]] == ["alices-disk"]
    watched = _get(c, token, f"{base}?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Dalices-disk")
    assert [json.loads(line)["object"]["metadata"]["name"] for line in watched.text.splitlines()] == ["alices-disk"]
    assert bob.kubectl("get", "dv", "alices-disk", "-n", "alice", "-o", "name").returncode == 0
    assert _get(c, alice.token(), "/apis/cdi.kubevirt.io/v1beta1/datavolumes?watch=true").status_code == 403


def test_service_account_token_works_from_a_script(env: tuple[Cluster, As, As]) -> None:
    c, alice, _ = env
    wait_for(lambda: alice.kubectl("get", "sa", "default", check=False).returncode == 0, "default serviceaccount")
    alice.kubectl("create", "serviceaccount", "robot")
    alice.kubectl("create", "rolebinding", "robot-view", "--clusterrole=view", "--serviceaccount=alice:robot")
    token = alice.kubectl("create", "token", "robot", "--duration", "15m").stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "system:serviceaccount:alice:robot"
    assert claims["exp"] - claims["iat"] == 900
    script = f"""
import sys
from kubernetes import client
cfg = client.Configuration()
cfg.host = {c.server.url!r}
cfg.ssl_ca_cert = {str(c.server.tls.ca_file)!r}
cfg.api_key = {{"authorization": "Bearer " + sys.stdin.read().strip()}}
api = client.CustomObjectsApi(client.ApiClient(cfg))
items = api.list_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", "alice", "datavolumes")["items"]
print(" ".join(sorted(o["metadata"]["name"] for o in items)))
try:
    api.create_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", "alice", "datavolumes",
                                        {{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                         "metadata": {{"name": "robots"}}, "spec": {{}}}})
except client.ApiException as e:
    print(e.status)
"""
    out = subprocess.run([sys.executable, "-c", script], input=token, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["alices-disk", "403"]
    who = json.loads(c.kubectl("auth", "whoami", "-o", "json", "--token", token).stdout)["status"]["userInfo"]
    assert who["groups"] == ["system:serviceaccounts", "system:serviceaccounts:alice", "system:authenticated"]
    # A token of a deleted ServiceAccount is refused, even after one of the same name is made again.
    alice.kubectl("delete", "serviceaccount", "robot")
    alice.kubectl("create", "serviceaccount", "robot")
    assert _get(c, token, "/api").status_code == 401


def test_expired_wrong_and_missing_tokens_get_401(env: tuple[Cluster, As, As]) -> None:
    c, alice, _ = env
    sa = json.loads(c.kubectl("get", "sa", "default", "-n", "alice", "-o", "json").stdout)
    key = (c.workdir / "serviceaccount.key").read_bytes()
    now = int(time.time())
    issuer = "https://kubernetes.default.svc.cluster.local"
    claims = {"iss": issuer, "aud": [issuer], "sub": "system:serviceaccount:alice:default",
              "iat": now - 1200, "nbf": now - 1200, "exp": now - 600,
              "kubernetes.io": {"namespace": "alice",
                                "serviceaccount": {"name": "default", "uid": sa["metadata"]["uid"]}}}
    expired = jwt.encode(claims, key, algorithm="ES256")
    fresh = jwt.encode({**claims, "exp": now + 600}, key, algorithm="ES256")
    assert _get(c, fresh, "/api").status_code == 200  # the same claims, not expired: accepted
    unauthorized = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    for token in (expired, "not-a-token", alice.token() + "x"):
        r = _get(c, token, "/api")
        assert (r.status_code, r.json()) == (401, unauthorized)
    out = alice.kubectl("get", "dv", "--token", "wrong", check=False)
    assert "error: You must be logged in to the server (Unauthorized)" in out.stderr


def test_removed_user_is_refused_without_a_restart(env: tuple[Cluster, As, As]) -> None:
    c, _, _ = env
    out = cdi("user", "add", "dave", "--data-dir", str(c.workdir))
    assert out.returncode == 0, out.stderr
    dave = As(c, c.workdir / "users" / "dave.kubeconfig")
    assert dave.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == "dave"
    assert cdi("user", "remove", "dave", "--data-dir", str(c.workdir)).returncode == 0
    assert _get(c, dave.token(), "/api").status_code == 401


def test_default_roles_carry_cdi_and_kubevirt_rules(env: tuple[Cluster, As, As]) -> None:
    c, _, _ = env
    edit = json.loads(c.kubectl("get", "clusterrole", "edit", "-o", "json").stdout)
    assert {"verbs": ["create"], "apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/source"]} in edit["rules"]
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": "erin", "resourceAttributes": {"namespace": "alice", "verb": "update",
                                                               "group": "subresources.kubevirt.io",
                                                               "resource": "virtualmachines", "subresource": "start"}}}
    c.kubectl("create", "rolebinding", "erin-edit", "--clusterrole=edit", "--user=erin", "-n", "alice")
    answer = json.loads(c.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout)
    assert answer["status"] == {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "erin-edit/alice" of '
                                                           'ClusterRole "edit" to User "erin"'}
    review["spec"]["resourceAttributes"]["namespace"] = "default"
    answer = json.loads(c.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout)
    assert answer["status"] == {"allowed": False}


def test_rbac_writes_cannot_grant_more_than_the_writer_holds(env: tuple[Cluster, As, As]) -> None:
    c, alice, bob = env
    refused = alice.kubectl("create", "rolebinding", "bob-root", "--clusterrole=cluster-admin", "--user=bob",
                            check=False)
    assert refused.stderr.strip() == (
        'error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io "bob-root" is forbidden: '
        'user "alice" (groups=["dev" "system:authenticated"]) is attempting to grant RBAC permissions not currently '
        'held:\n{APIGroups:["*"], Resources:["*"], Verbs:["*"]}\n{NonResourceURLs:["*"], Verbs:["*"]}')
    refused = alice.kubectl("create", "role", "node-maker", "--verb=create,delete", "--resource=nodes", check=False)
    assert refused.stderr.strip() == (
        'Error from server (Forbidden): roles.rbac.authorization.k8s.io "node-maker" is forbidden: user "alice" '
        '(groups=["dev" "system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["nodes"], Verbs:["create" "delete"]}')
    # What she holds she may hand on: a role of her own rights, and a binding to it.
    alice.kubectl("create", "role", "dv-maker", "--verb=get,create", "--resource=datavolumes.cdi.kubevirt.io")
    alice.kubectl("create", "rolebinding", "bob-dv-maker", "--role=dv-maker", "--user=bob")
    assert bob.kubectl("auth", "can-i", "create", "datavolumes", "-n", "alice").stdout.strip() == "yes"
    # The `bind` verb lets a user bind a role they do not hold, as in kube.
    c.kubectl("create", "role", "binder", "--verb=bind", "--resource=clusterroles.rbac.authorization.k8s.io",
              "--resource-name=cluster-admin", "-n", "alice")
    c.kubectl("create", "rolebinding", "alice-binder", "--role=binder", "--user=alice", "-n", "alice")
    alice.kubectl("create", "rolebinding", "bob-root", "--clusterrole=cluster-admin", "--user=bob")
    assert bob.kubectl("auth", "can-i", "delete", "nodes", "-n", "alice").stdout.strip() == "yes"
    alice.kubectl("delete", "rolebinding", "bob-root", "bob-dv-maker")


def _clone(name: str, source_ns: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"pvc": {"namespace": source_ns, "name": "golden"}},
                 "storage": {"resources": {"requests": {"storage": "1Gi"}}}}})


def test_a_clone_from_another_namespace_needs_datavolumes_source_there(env: tuple[Cluster, As, As]) -> None:
    c, alice, bob = env
    c.kubectl("create", "namespace", "bobs")
    c.kubectl("create", "rolebinding", "bob-admin", "--clusterrole=admin", "--user=bob", "-n", "bobs")
    refused = bob.kubectl("create", "-n", "bobs", "-f", "-", input=_clone("copy", "alice"), check=False)
    assert refused.stderr.strip() == (
        'Error from server: error when creating "STDIN": admission webhook "datavolume-mutate.cdi.kubevirt.io" '
        "denied the request:  User bob has insufficient permissions in clone source namespace alice")
    refused = bob.kubectl("create", "-n", "bobs", "-f", "-", input=_clone("copy", "nowhere"), check=False)
    assert refused.stderr.strip() == (
        'Error from server: error when creating "STDIN": admission webhook "datavolume-mutate.cdi.kubevirt.io" '
        'denied the request: namespaces "nowhere" not found')
    # A clone within one's own namespace needs nothing more.
    bob.kubectl("create", "-n", "bobs", "-f", "-", input=_clone("local-copy", "bobs"))
    # alice lets bob clone from her namespace with CDI's clone-sourcer role.
    alice.kubectl("create", "rolebinding", "bob-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer", "--user=bob")
    out = bob.kubectl("create", "-n", "bobs", "-f", "-", input=_clone("copy", "alice")).stdout.strip()
    assert out == "datavolume.cdi.kubevirt.io/copy created"


def test_impersonation_needs_the_impersonate_verb(env: tuple[Cluster, As, As]) -> None:
    c, alice, _ = env
    # The admin may be anyone: `kubectl --as` answers as that user would be answered.
    assert c.kubectl("auth", "can-i", "list", "datavolumes", "-n", "default", "--as=bob",
                     check=False).stdout.strip() == "no"
    who = json.loads(c.kubectl("auth", "whoami", "-o", "json", "--as=bob", "--as-group=qa").stdout)
    assert who["status"]["userInfo"]["groups"] == ["qa", "system:authenticated"]
    refused = alice.kubectl("get", "dv", "--as=bob", check=False)
    assert refused.stderr.strip() == ('Error from server (Forbidden): users "bob" is forbidden: User "alice" cannot '
                                      'impersonate resource "users" in API group "" at the cluster scope')
    # edit and admin may impersonate the ServiceAccounts of their namespace, as in kube.
    alice.kubectl("create", "serviceaccount", "helper")
    who = json.loads(alice.kubectl("auth", "whoami", "-o", "json", "--as=system:serviceaccount:alice:helper").stdout)
    assert who["status"]["userInfo"]["groups"] == ["system:serviceaccounts", "system:serviceaccounts:alice",
                                                   "system:authenticated"]
    refused = alice.kubectl("get", "dv", "--as=system:serviceaccount:default:default", check=False)
    assert refused.stderr.strip() == (
        'Error from server (Forbidden): serviceaccounts "default" is forbidden: User "alice" cannot impersonate '
        'resource "serviceaccounts" in API group "" in the namespace "default"')
