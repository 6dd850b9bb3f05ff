"""The admission webhook server answers AdmissionReviews as kube-apiserver sends them, over real TLS.

Request bodies follow the admission/v1 example of Kubernetes' documentation ("Dynamic Admission
Control": uid, kind, resource, requestKind, name, namespace, operation, userInfo, object,
oldObject, options, dryRun). Refusals must be the embedded API server's own: the same message and
causes for the same manifest.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonpatch
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi.api import crdgen, default_registry
from cdi.api.registry import ResourceKind
from cdi.apiserver.clone_admission import CloneSourceCheck
from cdi.clonetoken import ANN_CLONE_TOKEN, TokenCheck
from cdi.kube import Client
from cdi.uploadtoken import Signer
from cdi.webhook import WebhookServer
from cdi.webhook.cluster import ClusterAuthorizer
from tests.functional.apiserver_fixtures import Cluster, cluster, datavolume  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
GOOD_URL = "https://images.example.com/fedora.qcow2"


def _defaulted_kind() -> ResourceKind:
    """A custom kind with a defaulter, as a DataSource-like kind would declare one."""

    def default(obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        obj["metadata"].setdefault("labels", {})["defaulted"] = "yes"

    return ResourceKind(group="cdi.kubevirt.io", version="v1beta1", kind="Widget", plural="widgets",
                        singular="widget", default=default)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("webhook-tls")
    cert = ca.issue_cert("cdi-webhook.cdi.svc", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "tls.crt"))
    for pem in cert.cert_chain_pems[1:]:
        with open(d / "tls.crt", "ab") as f:
            f.write(pem.bytes())
    return ca, d / "tls.crt", d / "tls.key"


@pytest.fixture(scope="module")
def webhook(tls: tuple[trustme.CA, Path, Path]) -> Iterator[WebhookServer]:
    _, crt, key = tls
    kinds = [*crdgen.crd_kinds(default_registry()), _defaulted_kind()]
    server = WebhookServer(kinds, cert_file=str(crt), key_file=str(key)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(tls: tuple[trustme.CA, Path, Path], webhook: WebhookServer) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context()
    tls[0].configure_trust(ctx)
    with httpx.Client(base_url=webhook.url, verify=ctx, timeout=10) as client:
        yield client


def review(operation: str, obj: dict | None, old: dict | None = None, *, dry_run: bool = False,
           group: str = "cdi.kubevirt.io", version: str = "v1beta1", kind: str = "DataVolume",
           resource: str = "datavolumes", sub_resource: str = "") -> dict:
    """An AdmissionReview request shaped as kube-apiserver sends it."""
    meta = (obj or old or {}).get("metadata", {})
    options_kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}[operation]
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", "default"),
        "operation": operation,
        "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated", "my-admin-group"],
                     "extra": {"some-key": ["some-value1", "some-value2"]}},
        "object": obj,
        "oldObject": old,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
        "dryRun": dry_run,
    }
    if sub_resource:
        request["subResource"] = request["requestSubResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def stored(dv: dict) -> dict:
    """The object as kube-apiserver passes it to webhooks: with the server-set metadata."""
    out = copy.deepcopy(dv)
    out["metadata"].update(namespace="default", uid=str(uuid.uuid4()), creationTimestamp="2026-12-01T10:00:00Z",
                           generation=1)
    return out


def post(http: httpx.Client, path: str, body: dict) -> dict:
    resp = http.post(path, json=body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["apiVersion"] == body["apiVersion"] and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]


def test_valid_create_is_allowed_by_both_endpoints_without_a_patch(http: httpx.Client) -> None:
    body = review("CREATE", stored(datavolume("ok")))
    assert post(http, "/validate", body) == {"uid": body["request"]["uid"], "allowed": True}
    assert post(http, "/mutate", body) == {"uid": body["request"]["uid"], "allowed": True}


def test_invalid_create_is_refused_with_the_embedded_servers_status(http: httpx.Client,
                                                                    cluster: Cluster) -> None:  # noqa: F811
    dv = datavolume("bad", source={"http": {"url": "ftp://images.example.com/x.img"}},
                    storage={"resources": {"requests": {"storage": "0"}}})
    response = post(http, "/validate", review("CREATE", stored(dv)))
    assert response["allowed"] is False
    server = cluster.server
    ctx = ssl.create_default_context(cafile=str(server.tls.ca_file))
    auth = {"Authorization": f"Bearer {server.settings.token}"}
    with httpx.Client(base_url=server.url, verify=ctx, headers=auth) as c:
        embedded = c.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes", json=dv)
    assert embedded.status_code == 422
    expected = embedded.json()
    status = response["status"]
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["message"] == expected["message"]
    assert status["details"] == expected["details"]
    assert status["message"].startswith('DataVolume.cdi.kubevirt.io "bad" is invalid: spec.')


@pytest.mark.parametrize("target", ["storage", "pvc"])
def test_a_volume_mode_kube_does_not_know_is_refused_by_the_webhook(http: httpx.Client, target: str) -> None:
    spec = {"volumeMode": "Weird", "resources": {"requests": {"storage": "1Gi"}}}
    if target == "pvc":
        spec["accessModes"] = ["ReadWriteOnce"]
    dv = datavolume("weird")
    dv["spec"].pop("storage", None)
    dv["spec"].pop("pvc", None)
    dv["spec"][target] = spec
    response = post(http, "/validate", review("CREATE", stored(dv)))
    assert response["allowed"] is False and response["status"]["code"] == 422
    assert (f'spec.{target}.volumeMode: Unsupported value: "Weird": supported values: "Block", "Filesystem"'
            in response["status"]["message"])


def test_update_of_an_immutable_spec_is_refused_and_of_labels_allowed(http: httpx.Client) -> None:
    old = stored(datavolume("upd"))
    new = copy.deepcopy(old)
    new["spec"]["source"]["http"]["url"] = GOOD_URL + ".other"
    response = post(http, "/validate", review("UPDATE", new, old))
    assert response["allowed"] is False
    assert "Cannot update DataVolume Spec: spec is immutable after creation" in response["status"]["message"]
    assert response["status"]["details"]["causes"][0]["field"] == "spec"
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert post(http, "/validate", review("UPDATE", relabelled, old))["allowed"] is True


def test_update_without_old_object_is_a_bad_request(http: httpx.Client) -> None:
    body = review("UPDATE", stored(datavolume("x")))
    resp = http.post("/validate", json=body)
    assert resp.status_code == 400
    assert resp.json()["message"] == "request.oldObject must be an object for UPDATE"


def test_delete_and_status_writes_are_allowed_unchecked(http: httpx.Client) -> None:
    old = stored(datavolume("gone", source={"http": {"url": "ftp://x"}}))  # even an invalid stored object
    assert post(http, "/validate", review("DELETE", None, old))["allowed"] is True
    new = copy.deepcopy(old)
    new["status"] = {"phase": "Succeeded"}
    assert post(http, "/validate", review("UPDATE", new, old, sub_resource="status"))["allowed"] is True


def test_dry_run_gets_the_same_answer(http: httpx.Client) -> None:
    dv = stored(datavolume("dry", source={"http": {"url": "ftp://x"}}))
    wet, dry = review("CREATE", dv), review("CREATE", dv, dry_run=True)
    a, b = post(http, "/validate", wet), post(http, "/validate", dry)
    assert (a["allowed"], a["status"]) == (b["allowed"], b["status"]) == (False, a["status"])


def test_virtual_machine_rules_run_too(http: httpx.Client) -> None:
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm1", "namespace": "default"},
          "spec": {"template": {"spec": {"domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}}}}}}
    response = post(http, "/validate", review("CREATE", vm, group="kubevirt.io", version="v1",
                                              kind="VirtualMachine", resource="virtualmachines"))
    assert response["allowed"] is False
    assert response["status"]["message"].startswith('VirtualMachine.kubevirt.io "vm1" is invalid:')


def test_mutation_is_a_base64_json_patch_that_yields_the_defaulted_object(http: httpx.Client) -> None:
    widget = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "Widget",
              "metadata": {"name": "w", "namespace": "default"}}
    response = post(http, "/mutate", review("CREATE", widget, kind="Widget", resource="widgets"))
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert all(op["op"] in ("add", "replace") for op in patch)
    patched = jsonpatch.apply_patch(widget, patch)
    assert patched["spec"] == {"replicas": 1} and patched["metadata"]["labels"] == {"defaulted": "yes"}
    already = copy.deepcopy(patched)
    assert "patch" not in post(http, "/mutate", review("UPDATE", already, patched, kind="Widget", resource="widgets"))


def test_unserved_kind_is_allowed_with_a_warning(http: httpx.Client) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}
    response = post(http, "/validate", review("CREATE", pod, group="", version="v1", kind="Pod", resource="pods"))
    assert response["allowed"] is True
    assert response["warnings"] == ["the cdi webhook does not admit Pod of core/v1; "
                                    "check the webhook configuration's rules"]


@pytest.mark.parametrize("depth", [2000, 20000])
def test_a_deeply_nested_body_is_a_bad_request_as_in_the_embedded_server(http: httpx.Client, depth: int) -> None:
    """Within kube's depth limit (10000) a body is decoded whatever Python's default recursion limit; beyond
    it the answer is the embedded server's 400."""
    body = review("CREATE", stored(datavolume("deep")))
    text = json.dumps(body)
    nested = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    resp = http.post("/validate", content=nested.encode(), headers={"Content-Type": "application/json"})
    if depth <= 10000:
        assert resp.status_code == 200, resp.text
        assert resp.json()["response"]["allowed"] is True
        return
    assert resp.status_code == 400, resp.text
    assert resp.json()["kind"] == "Status" and "exceeded max depth" in resp.json()["message"]


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "Expecting property name enclosed in double quotes"),
    (b'{"apiVersion": "v1", "kind": "Pod"}', "the body must be an AdmissionReview"),
    (b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {"uid": "1"}}',
     "unsupported AdmissionReview apiVersion 'admission.k8s.io/v2'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
     "the AdmissionReview has no request with a uid"),
])
def test_malformed_bodies_are_bad_requests(http: httpx.Client, body: bytes, message: str) -> None:
    resp = http.post("/validate", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["kind"] == "Status" and message in resp.json()["message"]


def test_tls_only_and_only_with_the_right_ca(webhook: WebhookServer) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(webhook.url + "/healthz", verify=ssl.create_default_context(), timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{webhook.port}/healthz", timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_serves_and_refuses_a_bad_key_pair_or_missing_credentials(
        tls: tuple[trustme.CA, Path, Path], tmp_path: Path, cluster: Cluster) -> None:  # noqa: F811
    ca, crt, key = tls
    bad_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(bad_key))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")} | {"PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cdi.cli.main", "webhook", "--tls-cert", str(crt)]
    bad = subprocess.run([*cmd, "--tls-key", str(bad_key), "--port", "0"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert bad.returncode == 2
    assert f"cannot load --tls-cert {crt} / --tls-key {bad_key}" in bad.stderr
    alone = subprocess.run([*cmd, "--tls-key", str(key), "--service-account-dir", str(tmp_path)], capture_output=True,
                           text=True, timeout=30, env=env)
    assert alone.returncode == 2
    assert "no in-cluster configuration" in alone.stderr and "or --no-clone-check" in alone.stderr
    port = _free_port()
    proc = subprocess.Popen([*cmd, "--tls-key", str(key), "--port", str(port), "--address", "127.0.0.1",
                             "--kubeconfig", str(cluster.kubeconfig)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.post(f"https://127.0.0.1:{port}/validate", verify=ctx, timeout=5,
                                  json=review("CREATE", stored(datavolume("cli", source={"blank": {}}))))
                break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "cdi webhook did not start"
                time.sleep(0.1)
        assert resp.status_code == 200
        assert resp.json()["response"]["allowed"] is False  # blank without a size
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# CDI's clone authorization (datavolume-mutate): SubjectAccessReviews to a real API server's RBAC.

@pytest.fixture(scope="module")
def clone_webhook(tls: tuple[trustme.CA, Path, Path],
                  cluster: Cluster) -> Iterator[tuple[httpx.Client, rsa.RSAPrivateKey]]:  # noqa: F811
    for ns in ("src", "dst"):
        cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", "src")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    authorizer = ClusterAuthorizer(Client.from_kubeconfig(str(cluster.kubeconfig)))
    check = CloneSourceCheck(authorizer, authorizer.namespace_exists, lambda ns, name: None)
    check.signer = Signer(key)
    ca, crt, key_file = tls
    server = WebhookServer(crdgen.crd_kinds(default_registry()), cert_file=str(crt), key_file=str(key_file),
                           checks=[check]).start()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as http:
        yield http, key
    server.stop()


def _clone_review(user: str, source_ns: str, *, target_ns: str = "dst") -> dict:
    dv = stored(datavolume("copy", source={"pvc": {"namespace": source_ns, "name": "golden"}},
                          storage={"resources": {"requests": {"storage": "1Gi"}}}))
    dv["metadata"]["namespace"] = target_ns
    body = review("CREATE", dv)
    body["request"]["namespace"] = target_ns
    body["request"]["userInfo"] = {"username": user, "uid": "u-" + user, "groups": ["system:authenticated"]}
    return body


def test_cross_namespace_clone_without_rights_is_refused_as_cdi_words_it(
        clone_webhook: tuple[httpx.Client, rsa.RSAPrivateKey]) -> None:
    http, _ = clone_webhook
    response = post(http, "/mutate", _clone_review("alice", "src"))
    assert response["allowed"] is False
    status = response["status"]
    assert status["code"] == 422
    assert status["message"] == " User alice has insufficient permissions in clone source namespace src"
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.source.PVC.namespace",
                                            "message": "User alice has insufficient permissions in clone source "
                                                       "namespace src"}]


def test_allowed_clone_gets_a_clone_token_for_exactly_that_source_and_target(
        clone_webhook: tuple[httpx.Client, rsa.RSAPrivateKey]) -> None:
    http, key = clone_webhook
    body = _clone_review("bob", "src")
    response = post(http, "/mutate", body)
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(body["request"]["object"], json.loads(base64.b64decode(response["patch"])))
    token = patched["metadata"]["annotations"][ANN_CLONE_TOKEN]
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert TokenCheck(public).check(token, "src", "golden", "dst", "copy") is None
    assert TokenCheck(public).check(token, "src", "golden", "dst", "other") is not None
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    assert TokenCheck(private).check(token, "src", "golden", "dst", "copy") is None  # the chart's Secret form
    same = post(http, "/mutate", _clone_review("alice", "dst"))  # same namespace: no review needed
    assert same["allowed"] is True and "patch" in same


def test_clone_from_a_missing_namespace_is_a_bad_request(clone_webhook: tuple[httpx.Client, rsa.RSAPrivateKey]) -> None:
    http, _ = clone_webhook
    response = post(http, "/mutate", _clone_review("bob", "nope"))
    assert response["allowed"] is False
    assert (response["status"]["code"], response["status"]["message"]) == (400, 'namespaces "nope" not found')


def test_a_vm_template_cloning_across_namespaces_is_checked_for_the_vms_author(
        clone_webhook: tuple[httpx.Client, rsa.RSAPrivateKey]) -> None:
    template = {"metadata": {"name": "vm1-root"}, "spec": {"source": {"pvc": {"namespace": "src", "name": "golden"}},
                                                           "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm1", "namespace": "dst"},
          "spec": {"runStrategy": "Halted", "dataVolumeTemplates": [template],
                   "template": {"spec": {"domain": {"devices": {}}}}}}
    http, _ = clone_webhook
    answers = {}
    for user in ("alice", "bob"):
        body = review("CREATE", vm, group="kubevirt.io", version="v1", kind="VirtualMachine",
                      resource="virtualmachines")
        body["request"]["namespace"] = "dst"
        body["request"]["userInfo"] = {"username": user, "uid": "u-" + user, "groups": ["system:authenticated"]}
        answers[user] = post(http, "/mutate", body)
    refused = answers["alice"]
    assert refused["allowed"] is False and refused["status"]["code"] == 422
    message = "Authorization failed, message is: User alice has insufficient permissions in clone source namespace src"
    assert refused["status"]["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": message,
                                                       "field": "spec.dataVolumeTemplates[0]"}]
    assert answers["bob"]["allowed"] is True  # bob may edit in src
