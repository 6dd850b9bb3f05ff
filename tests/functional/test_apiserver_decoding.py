"""Decoding of request bodies as kube-apiserver does it: unknown fields inside built-in kinds, wrong
JSON types, YAML aliases, malformed selectors and resourceVersions, and errors that leave the
connection usable."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.functional.apiserver_fixtures import Cluster, cluster

__all__ = ["cluster"]

CM = "/api/v1/namespaces/default/configmaps"
POD = "/api/v1/namespaces/default/pods"


@pytest.fixture()
def c(cluster: Cluster) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(cluster.server.tls.ca_file))
    headers = {"Authorization": f"Bearer {cluster.server.settings.token}"}
    with httpx.Client(base_url=cluster.server.url, headers=headers, verify=ctx) as client:
        yield client


def test_kubectl_strict_apply_refuses_a_typo_inside_a_pod_spec(cluster: Cluster, c: httpx.Client) -> None:
    pod = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n"
           "  - name: c\n    image: x\n    envv:\n    - name: A\n      value: b\n")
    proc = cluster.kubectl("apply", "--validate=strict", "-f", "-", input=pod, check=False)
    assert proc.returncode != 0
    assert 'unknown field "spec.containers[0].envv"' in proc.stderr
    proc = cluster.kubectl("apply", "--validate=warn", "-f", "-", input=pod)
    assert 'unknown field "spec.containers[0].envv"' in proc.stderr
    stored = c.get(f"{POD}/typo").json()
    assert "envv" not in stored["spec"]["containers"][0]
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vmtypo"},
          "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {"diskz": []}}}}}}
    r = c.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines?fieldValidation=Strict", json=vm)
    assert r.status_code == 400 and 'unknown field "spec.template.spec.domain.devices.diskz"' in r.json()["message"]


@pytest.mark.parametrize(("meta", "words"), [
    ({"name": 5}, "cannot unmarshal number into Go struct field ObjectMeta.metadata.name of type string"),
    ({"name": True}, "cannot unmarshal bool into Go struct field ObjectMeta.metadata.name of type string"),
    ({"name": [1]}, "cannot unmarshal array into Go struct field ObjectMeta.metadata.name of type string"),
    ({"name": "t", "ownerReferences": 5}, "cannot unmarshal number into Go struct field "
     "ObjectMeta.metadata.ownerReferences of type []v1.OwnerReference"),
    ({"name": "t", "finalizers": [1]}, "cannot unmarshal number into Go struct field "
     "ObjectMeta.metadata.finalizers of type string"),
    ({"name": "t", "annotations": {"a": 1}}, "cannot unmarshal number into Go struct field "
     "ObjectMeta.metadata.annotations of type string"),
    ({"name": "t", "managedFields": [{"manager": 5}]}, "cannot unmarshal number into Go struct field "
     "ManagedFieldsEntry.metadata.managedFields.manager of type string"),
])
def test_wrong_json_types_are_400_with_kubes_words(c: httpx.Client, meta: dict, words: str) -> None:
    r = c.post(CM, json={"metadata": meta, "data": {"a": "b"}})
    assert r.status_code == 400, r.text
    assert words in r.json()["message"]
    assert c.get(f"{CM}/t").status_code == 404


def test_configmap_and_secret_values_are_typed(c: httpx.Client) -> None:
    r = c.post(CM, json={"metadata": {"name": "cmint"}, "data": {"a": 1}})
    assert r.status_code == 400 and "of type string" in r.json()["message"]
    r = c.post("/api/v1/namespaces/default/secrets", json={"metadata": {"name": "b64"}, "data": {"a": "!!!"}})
    assert r.status_code == 400 and "illegal base64 data at input byte 0" in r.json()["message"]
    c.post(CM, json={"metadata": {"name": "jp"}, "data": {"a": "b"}})
    ops = [{"op": "add", "path": "/data/x"}]
    r = c.patch(f"{CM}/jp", content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400 and "missing value" in r.json()["message"]
    ops = [{"op": "replace", "path": "/metadata/name", "value": 5}]
    r = c.patch(f"{CM}/jp", content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code in (400, 422) and "cannot unmarshal number" in r.json()["message"]


def test_a_500_leaves_the_connection_usable(cluster: Cluster) -> None:
    def broken(_req: object) -> str:
        raise RuntimeError("exploded")

    ctx = ssl.create_default_context(cafile=str(cluster.server.tls.ca_file))
    host, port = cluster.server.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx)
    auth = {"Authorization": f"Bearer {cluster.server.settings.token}", "Content-Type": "application/json"}
    conn.request("POST", POD, json.dumps({"metadata": {"name": "logs500"},
                                         "spec": {"containers": [{"name": "c", "image": "x"}]}}), auth)
    conn.getresponse().read()
    cluster.server.set_log_provider(broken)
    try:
        conn.request("GET", f"{POD}/logs500/log", headers=auth)
        resp = conn.getresponse()
        resp.read()
    finally:
        cluster.server.set_log_provider(None)
    assert resp.status == 500
    if resp.getheader("connection") != "close":
        conn.request("GET", "/version", headers=auth)
        assert conn.getresponse().status == 200


def _bomb(levels: int) -> str:
    lines = ["apiVersion: v1", "kind: ConfigMap", 'x0: &a0 ["a/b","a/b","a/b","a/b","a/b","a/b","a/b","a/b","a/b"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"metadata:\n  name: bomb\n  finalizers: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_quickly(c: httpx.Client) -> None:
    start = time.monotonic()
    r = c.patch(f"{CM}/bomb?fieldManager=x&fieldValidation=Ignore", content=_bomb(6),
                headers={"Content-Type": "application/apply-patch+yaml"}, timeout=60)
    assert r.status_code == 400 and "excessive aliasing" in r.json()["message"]
    assert time.monotonic() - start < 5
    ok = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: alias\n  labels: &l {a: b}\n  annotations: *l\n"
    r = c.patch(f"{CM}/alias?fieldManager=x", content=ok, headers={"Content-Type": "application/apply-patch+yaml"})
    assert r.status_code == 201, r.text


def test_bad_selectors_and_resource_versions_are_400(c: httpx.Client) -> None:
    for sel in ("app=(", "x=y,"):
        r = c.get(CM, params={"labelSelector": sel})
        assert r.status_code == 400, (sel, r.text)
    r = c.get(CM, params={"resourceVersion": "abc"})
    assert r.status_code == 400 and 'Invalid value: "abc"' in r.json()["message"]


def test_create_answer_names_kind_and_api_version(c: httpx.Client) -> None:
    r = c.post(CM, json={"metadata": {"name": "bare"}})
    assert r.status_code == 201
    assert list(r.json())[:2] == ["apiVersion", "kind"]
    assert (r.json()["kind"], r.json()["apiVersion"]) == ("ConfigMap", "v1")


def test_resource_versions_from_the_future_and_the_past(cluster: Cluster, c: httpx.Client) -> None:
    store = cluster.server.app.state.store
    future = store.resource_version + 1000
    start = time.monotonic()
    r = c.get(CM, params={"watch": "1", "resourceVersion": str(future)}, timeout=30)
    assert r.status_code == 504 and time.monotonic() - start >= 2.5
    body = r.json()
    assert body["message"].startswith(f"Too large resource version: {future}, current: ")
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    for _ in range(60):  # more writes than the kept watch history
        c.post(CM, json={"metadata": {"generateName": "hist-"}})
    r = c.get(CM, params={"resourceVersion": "1", "resourceVersionMatch": "Exact"})
    assert r.status_code == 410 and r.json()["reason"] == "Expired"
    r = c.get(CM, params={"resourceVersionMatch": "Exact"})
    assert r.status_code == 422


def test_kubectl_create_service_clusterip(cluster: Cluster, c: httpx.Client) -> None:
    cluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
    spec = c.get("/api/v1/namespaces/default/services/web").json()["spec"]
    assert spec["ports"] == [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    assert spec["selector"] == {"app": "web"} and spec["type"] == "ClusterIP"


def test_json_nests_as_deep_as_kube_allows(c: httpx.Client) -> None:
    vms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines"
    vm = {"metadata": {"name": "deepvm"}, "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {
        "memory": {"guest": "64Mi"}, "devices": {}}}}}}
    r = c.post(vms, json=vm)
    assert r.status_code == 201, r.text
    merge = {"Content-Type": "application/merge-patch+json"}
    deep = '{"status":{"x":' + '{"a":' * 6000 + "1" + "}" * 6002
    result: list[tuple[httpx.Response, float]] = []

    def patch_deep() -> None:
        start = time.monotonic()
        result.append((c.patch(f"{vms}/deepvm/status", content=deep, headers=merge, timeout=60),
                       time.monotonic() - start))

    worker = threading.Thread(target=patch_deep)
    worker.start()
    time.sleep(0.2)
    start = time.monotonic()
    assert c.get("/version").status_code == 200  # other requests are served meanwhile
    quick = time.monotonic() - start
    worker.join()
    [(r, slow)] = result
    assert r.status_code == 200, r.text[:300]
    assert quick < slow / 2, (quick, slow)
    too_deep = '{"status":{"x":' + '{"a":' * 10000 + "1" + "}" * 10002
    r = c.patch(f"{vms}/deepvm/status", content=too_deep, headers=merge)
    assert r.status_code == 400 and "exceeded max depth of 10000" in r.json()["message"]
    assert c.get(f"{vms}/deepvm").status_code == 200


def test_times_must_parse(c: httpx.Client) -> None:
    c.post(CM, json={"metadata": {"name": "when"}})
    ops = [{"op": "add", "path": "/metadata/deletionTimestamp", "value": "garbage"}]
    r = c.patch(f"{CM}/when", content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400 and 'parsing time "garbage"' in r.json()["message"]


def test_kubectl_explain_reaches_inside_built_in_kinds(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "pod.spec.containers.image").stdout
    assert "FIELD: image <string>" in out and "Container image name" in out
    out = cluster.kubectl("explain", "services.spec.ports.targetPort").stdout
    assert "targetPort" in out
    out = cluster.kubectl("explain", "pod.spec.containers.image", "--output=plaintext-openapiv2").stdout
    assert "FIELD:    image <string>" in out
