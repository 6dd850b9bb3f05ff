"""Write semantics kube users rely on: dryRun, request and object sizes, Secrets' stringData,
field validation, strategic merge patch and server-side apply, with the real kubectl and the client."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.functional.apiserver_fixtures import Cluster, cluster, datavolume

__all__ = ["cluster"]

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"


@pytest.fixture()
def custom(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    with cluster.api_client() as api:
        yield client.CustomObjectsApi(api)


@pytest.fixture()
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    with cluster.api_client() as api:
        yield client.CoreV1Api(api)


def http(cluster: Cluster) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(cluster.server.tls.ca_file))
    headers = {"Authorization": f"Bearer {cluster.server.settings.token}"}
    return httpx.Client(base_url=cluster.server.url, headers=headers, verify=ctx)


def rv(cluster: Cluster) -> int:
    """The store's newest resourceVersion: every write, event or cascade moves it."""
    return int(cluster.server.app.state.store.resource_version)


def owned_pvc(name: str, owner: dict) -> dict:
    ref = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "ownerReferences": [ref]},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


# -- dryRun -------------------------------------------------------------------------------------


def test_kubectl_delete_dry_run_server_deletes_nothing(cluster: Cluster) -> None:
    cluster.apply(datavolume("dry-del"))
    dv = yaml.safe_load(cluster.kubectl("get", "dv", "dry-del", "-o", "yaml").stdout)
    cluster.apply(owned_pvc("dry-del", dv))
    before = rv(cluster)
    out = cluster.kubectl("delete", "dv", "dry-del", "--dry-run=server").stdout
    assert out.strip() == 'datavolume.cdi.kubevirt.io "dry-del" deleted (server dry run)'
    out = cluster.kubectl("delete", "pvc", "--all", "--dry-run=server").stdout
    assert 'persistentvolumeclaim "dry-del" deleted (server dry run)' in out
    assert rv(cluster) == before  # nothing written, no event, no cascade
    cluster.kubectl("get", "dv/dry-del", "pvc/dry-del")
    assert cluster.kubectl("label", "dv", "dry-del", "a=b", "--dry-run=server").returncode == 0
    assert cluster.kubectl("apply", "-f", "-", "--dry-run=server",
                           input=yaml.safe_dump(datavolume("dry-new"))).returncode == 0
    out = cluster.kubectl("apply", "--server-side", "-f", "-", "--dry-run=server",
                          input=yaml.safe_dump(datavolume("dry-new"))).stdout
    assert out.strip() == "datavolume.cdi.kubevirt.io/dry-new serverside-applied (server dry run)"
    assert rv(cluster) == before
    assert cluster.kubectl("get", "dv", "dry-new", check=False).returncode == 1


def test_every_verb_honours_dry_run_from_query_and_body(
    cluster: Cluster, custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    cm = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "dry-cm", "finalizers": ["x/y"]}, "data": {"a": "1"}}
    )
    before = rv(cluster)
    made = core.create_namespaced_config_map("default", {"metadata": {"generateName": "dry-"}}, dry_run="All")
    assert made.metadata.uid and made.metadata.name.startswith("dry-")
    cm.data = {"a": "2"}
    assert core.replace_namespaced_config_map("dry-cm", "default", cm, dry_run="All").data == {"a": "2"}
    patched = core.patch_namespaced_config_map("dry-cm", "default", {"data": {"a": "3"}}, dry_run="All")
    assert patched.data == {"a": "3"}
    # The DeleteOptions body alone asks for the dry run, as kubectl sends it.
    held = core.delete_namespaced_config_map("dry-cm", "default", body=client.V1DeleteOptions(dry_run=["All"]))
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["x/y"]
    core.delete_collection_namespaced_config_map("default", dry_run="All")
    assert rv(cluster) == before
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, datavolume("dry-st"))
    before = rv(cluster)
    st = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "dry-st", {"status": {"phase": "Succeeded"}}, dry_run="All"
    )
    assert st["status"]["phase"] == "Succeeded"
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "dry-st", dry_run="All")
    assert rv(cluster) == before
    assert core.read_namespaced_config_map("dry-cm", "default").data == {"a": "1"}
    assert "status" not in custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "dry-st")


def test_dry_run_still_validates_and_bad_values_are_refused(cluster: Cluster) -> None:
    with http(cluster) as c:
        bad = datavolume("dry-bad", source={"http": {"url": "ftp://x"}}, storage={})
        r = c.post(f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}?dryRun=All", json=bad)
        assert r.status_code == 422, r.text
        r = c.post("/api/v1/namespaces/default/configmaps?dryRun=Yes", json={"metadata": {"name": "x"}})
        assert r.status_code == 422
        assert r.json()["message"] == (
            'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Yes"}: '
            'supported values: "All"'
        )
        r = c.request("DELETE", "/api/v1/namespaces/default/configmaps/x",
                      content=json.dumps({"dryRun": ["Nope"]}))
        assert r.status_code == 422 and r.json()["details"]["kind"] == "DeleteOptions"


# -- sizes and internal errors ----------------------------------------------------------------


def test_request_and_object_size_limits(cluster: Cluster) -> None:
    big = cluster.workdir / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024 + 10))
    proc = cluster.kubectl("create", "configmap", "too-big", f"--from-file={big}", check=False)
    assert proc.returncode == 1
    assert "Request entity too large: limit is 3145728" in proc.stderr
    with http(cluster) as c:
        r = c.post("/api/v1/namespaces/default/configmaps", content=b"{" + b" " * (4 << 20) + b"}")
        assert r.status_code == 413 and r.json()["reason"] == "RequestEntityTooLarge"
        before = rv(cluster)
        two_mib = {"metadata": {"name": "two-mib"}, "data": {"k": "y" * (2 << 20)}}
        r = c.post("/api/v1/namespaces/default/configmaps", json=two_mib)
        assert (r.status_code, r.json()["message"]) == (413, "etcdserver: request is too large")
        assert rv(cluster) == before
        deep = '{"metadata":{"name":"deep"},"data":' + '{"a":' * 10000 + "1" + "}" * 10001
        r = c.post("/api/v1/namespaces/default/configmaps", content=deep)
        assert r.status_code == 400 and "max depth" in r.json()["message"]
        c.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "deep-target"}})
        r = c.patch("/api/v1/namespaces/default/configmaps/deep-target", content="[" * 100000 + "]" * 100000,
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 400, r.text


def test_internal_error_does_not_echo_the_exception(cluster: Cluster, core: client.CoreV1Api) -> None:
    def broken(_req: object) -> str:
        raise RuntimeError("/var/lib/secret-internal-path exploded")

    core.create_namespaced_pod("default", {"metadata": {"name": "logs-500"},
                                           "spec": {"containers": [{"name": "c", "image": "x"}]}})
    cluster.server.set_log_provider(broken)
    try:
        with http(cluster) as c:
            r = c.get("/api/v1/namespaces/default/pods/logs-500/log")
    finally:
        cluster.server.set_log_provider(None)
    assert r.status_code == 500 and r.json()["reason"] == "InternalError"
    assert "secret-internal-path" not in r.text


# -- Secrets ----------------------------------------------------------------------------------


def test_secret_string_data_is_merged_into_data_and_never_stored(cluster: Cluster) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"user": "YWRtaW4="}, "stringData": {"password": "s3cret", "user": "root"}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(secret))
    got = yaml.safe_load(cluster.kubectl("get", "secret", "creds", "-o", "yaml").stdout)
    assert "stringData" not in got
    assert got["data"] == {"user": "cm9vdA==", "password": "czNjcmV0"}  # stringData wins, as in kube
    patch = json.dumps({"stringData": {"token": "abc"}})
    cluster.kubectl("patch", "secret", "creds", "--type=merge", "-p", patch)
    got = yaml.safe_load(cluster.kubectl("get", "secret", "creds", "-o", "json").stdout)
    assert "stringData" not in got and got["data"]["token"] == "YWJj" and got["data"]["password"] == "czNjcmV0"
    stored = cluster.server.app.state.store.get("/secrets", "default", "creds")
    assert "stringData" not in stored


# -- strategic merge patch ----------------------------------------------------------------------


def test_strategic_merge_patch_refused_on_custom_resources_and_merged_by_key_on_builtins(
    cluster: Cluster,
) -> None:
    cluster.apply(datavolume("smp"))
    proc = cluster.kubectl("patch", "dv", "smp", "-p", '{"metadata":{"labels":{"a":"b"}}}', check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (  # kubectl's own wording of kube's 415
        "error: application/strategic-merge-patch+json is not supported by cdi.kubevirt.io/v1beta1, "
        "Kind=DataVolume: the body of the request was in an unknown format - "
        "accepted media types include: application/json-patch+json, application/merge-patch+json, "
        "application/apply-patch+yaml"
    )
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smp"},
           "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}}
    cluster.apply(svc)
    cluster.kubectl("patch", "svc", "smp", "-p", '{"spec":{"ports":[{"port":443,"targetPort":8443}]}}')
    got = json.loads(cluster.kubectl("get", "svc", "smp", "-o", "json").stdout)
    assert [(p["port"], p.get("targetPort")) for p in got["spec"]["ports"]] == [(80, None), (443, 8443)]
    svc["spec"]["ports"][0]["port"] = 8080  # client-side apply: a strategic patch with $setElementOrder
    cluster.apply(svc)
    got = json.loads(cluster.kubectl("get", "svc", "smp", "-o", "json").stdout)
    assert [p["port"] for p in got["spec"]["ports"]] == [8080, 443]


# -- field validation -------------------------------------------------------------------------


def test_unknown_fields_strict_warn_ignore_with_kubectl(cluster: Cluster) -> None:
    dv = datavolume("fv")
    dv["spec"]["foo"] = 1
    dv["metadata"]["bar"] = "x"
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(dv), check=False)
    assert proc.returncode == 1
    assert (
        'DataVolume in version "v1beta1" cannot be handled as a DataVolume: strict decoding error: '
        'unknown field "metadata.bar", unknown field "spec.foo"'
    ) in proc.stderr
    proc = cluster.kubectl("create", "-f", "-", "--validate=warn", input=yaml.safe_dump(dv))
    assert 'Warning: unknown field "spec.foo"' in proc.stderr
    got = json.loads(cluster.kubectl("get", "dv", "fv", "-o", "json").stdout)
    assert "foo" not in got["spec"] and "bar" not in got["metadata"]  # pruned, as kube prunes
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fv"}, "datta": {"a": "1"}}
    proc = cluster.kubectl("apply", "-f", "-", "--validate=false", input=yaml.safe_dump(cm))
    assert proc.stderr == ""
    assert "datta" not in json.loads(cluster.kubectl("get", "cm", "fv", "-o", "json").stdout)


def test_duplicate_fields_and_strict_patches(cluster: Cluster) -> None:
    with http(cluster) as c:
        dup = b'{"metadata":{"name":"dup","name":"dup"},"data":{"a":"1"}}'
        r = c.post("/api/v1/namespaces/default/configmaps?fieldValidation=Strict", content=dup)
        assert r.status_code == 400
        assert r.json()["message"] == (
            'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
            'duplicate field "metadata.name"'
        )
        r = c.post("/api/v1/namespaces/default/configmaps?fieldValidation=Warn", content=dup)
        assert r.status_code == 201 and r.headers["warning"] == '299 - "duplicate field \\"metadata.name\\""'
        r = c.patch(f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/fv?fieldValidation=Strict",
                    json={"spec": {"source": {"blank": {"size": 1}}}},
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 422, r.text
        assert r.json()["message"].endswith('strict decoding error: unknown field "spec.source.blank.size"')
        r = c.post("/api/v1/namespaces/default/configmaps?fieldValidation=Loose", json={"metadata": {"name": "x"}})
        assert r.status_code == 422 and "fieldValidation: Unsupported value" in r.json()["message"]


def test_names_labels_and_annotations_validated_as_kube(cluster: Cluster, core: client.CoreV1Api) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "lbl", "labels": {"bad key": "v"}}}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(cm), check=False)
    assert 'The ConfigMap "lbl" is invalid: metadata.labels: Invalid value: "bad key": name part must consist' in (
        proc.stderr
    )
    cm["metadata"]["labels"] = {"ok": "v" * 64}
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(cm), check=False)
    assert "must be no more than 63 characters" in proc.stderr
    with http(cluster) as c:
        big = {"metadata": {"name": "ann", "annotations": {"a": "x" * (256 * 1024)}}}
        r = c.post("/api/v1/namespaces/default/configmaps", json=big)
        assert r.status_code == 422
        assert r.json()["details"]["causes"] == [{"reason": "FieldValueTooLong", "field": "metadata.annotations",
                                                  "message": "Too long: may not be more than 262144 bytes"}]
        r = c.post("/api/v1/namespaces/default/services", json={"metadata": {"name": "1svc"}, "spec": {}})
        assert r.status_code == 422 and "a DNS-1035 label must consist" in r.json()["message"]
        r = c.post("/api/v1/namespaces", json={"metadata": {"name": "a.b"}})
        assert r.status_code == 422 and "a lowercase RFC 1123 label must consist" in r.json()["message"]
        r = c.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"generateName": "Bad-"}})
        assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "metadata.generateName"
    made = core.create_namespaced_config_map("default", {"metadata": {"generateName": "g" * 70}})
    assert len(made.metadata.name) == 63


# -- server-side apply ----------------------------------------------------------------------------


CM_SSA = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  labels: {{app: x}}
data:
  a: "1"
  b: "2"
"""


def test_server_side_apply_conflicts_force_and_removal_with_kubectl(cluster: Cluster) -> None:
    cluster.kubectl("create", "-f", "-", input=CM_SSA.format(name="ssa"))
    got = yaml.safe_load(cluster.kubectl("get", "cm", "ssa", "-o", "yaml", "--show-managed-fields").stdout)
    [entry] = got["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == ("kubectl-create", "Update", "FieldsV1")
    assert entry["fieldsV1"] == {"f:data": {".": {}, "f:a": {}, "f:b": {}},
                                 "f:metadata": {"f:labels": {".": {}, "f:app": {}}}}
    same = cluster.kubectl("apply", "--server-side", "-f", "-", input=CM_SSA.format(name="ssa"))
    assert same.stdout.strip() == "configmap/ssa serverside-applied"  # equal values: shared, no conflict
    changed = CM_SSA.format(name="ssa").replace('a: "1"', 'a: "9"')
    proc = cluster.kubectl("apply", "--server-side", "-f", "-", input=changed, check=False)
    assert proc.returncode == 1
    assert 'Apply failed with 1 conflict: conflict with "kubectl-create" using v1 at ' in proc.stderr
    assert proc.stderr.splitlines()[0].endswith(": .data.a") and "--force-conflicts" in proc.stderr
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=changed)
    got = yaml.safe_load(cluster.kubectl("get", "cm", "ssa", "-o", "yaml", "--show-managed-fields").stdout)
    owners = {e["manager"]: e["fieldsV1"]["f:data"] for e in got["metadata"]["managedFields"]}
    assert owners == {"kubectl-create": {".": {}, "f:b": {}}, "kubectl": {".": {}, "f:a": {}, "f:b": {}}}
    # Left out of the applied configuration: kept while kubectl-create still owns it...
    cluster.kubectl("apply", "--server-side", "-f", "-", input=changed.replace('  b: "2"\n', ""))
    assert json.loads(cluster.kubectl("get", "cm", "ssa", "-o", "json").stdout)["data"] == {"a": "9", "b": "2"}
    # ...and removed when the applier was its only manager.
    cluster.kubectl("apply", "--server-side", "-f", "-", input=CM_SSA.format(name="ssa2"))
    cluster.kubectl("apply", "--server-side", "-f", "-", input=CM_SSA.format(name="ssa2").replace('  b: "2"\n', ""))
    assert json.loads(cluster.kubectl("get", "cm", "ssa2", "-o", "json").stdout)["data"] == {"a": "1"}


def test_server_side_apply_creates_custom_resources_and_needs_a_field_manager(
    cluster: Cluster, custom: client.CustomObjectsApi
) -> None:
    unknown = datavolume("ssa-dv")
    unknown["spec"]["foo"] = 1
    proc = cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(unknown), check=False)
    assert proc.stderr.strip().endswith(
        "failed to create typed patch object (default/ssa-dv; cdi.kubevirt.io/v1beta1, Kind=DataVolume): "
        ".spec.foo: field not declared in schema"
    )
    out = cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(datavolume("ssa-dv")))
    assert out.stdout.strip() == "datavolume.cdi.kubevirt.io/ssa-dv serverside-applied"
    dv = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "ssa-dv")
    [entry] = dv["metadata"]["managedFields"]
    assert entry["manager"] == "kubectl" and entry["operation"] == "Apply"
    assert entry["fieldsV1"]["f:spec"]["f:source"] == {"f:http": {"f:url": {}}}
    patch = datavolume("ssa-dv")
    patch["metadata"]["labels"] = {"team": "a"}
    applied = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "ssa-dv", patch,
                                                    field_manager="robot", _content_type="application/apply-patch+yaml")
    assert applied["metadata"]["labels"] == {"team": "a"}
    assert {e["manager"] for e in applied["metadata"]["managedFields"]} == {"kubectl", "robot"}
    with http(cluster) as c:
        r = c.patch(f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/ssa-dv", content=yaml.safe_dump(patch),
                    headers={"Content-Type": "application/apply-patch+yaml"})
        assert r.status_code == 422
        assert r.json()["message"] == (
            'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
        )
        r = c.patch(f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/ssa-new?fieldManager=m",
                    content=yaml.safe_dump(datavolume("ssa-new")),
                    headers={"Content-Type": "application/apply-patch+yaml"})
        assert r.status_code == 201


# -- more misuse kube refuses -----------------------------------------------------------------------


def test_create_with_resource_version_and_changes_to_immutable_data_are_refused(
    cluster: Cluster, core: client.CoreV1Api
) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen", "resourceVersion": "12"},
          "data": {"a": "1"}, "immutable": True}
    with pytest.raises(ApiException) as e:  # (kubectl create clears it before sending)
        core.create_namespaced_config_map("default", cm)
    assert e.value.status == 400
    assert json.loads(e.value.body)["message"] == "resourceVersion should not be set on objects to be created"
    del cm["metadata"]["resourceVersion"]
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(cm))
    proc = cluster.kubectl("patch", "cm", "frozen", "--type=merge", "-p", '{"data":{"a":"2"}}', check=False)
    assert 'The ConfigMap "frozen" is invalid: data: Forbidden: field is immutable when `immutable` is set' in (
        proc.stderr
    )
    proc = cluster.kubectl("patch", "cm", "frozen", "--type=merge", "-p", '{"immutable":false}', check=False)
    assert "immutable: Forbidden: field is immutable when `immutable` is set" in proc.stderr
    assert core.read_namespaced_config_map("frozen", "default").data == {"a": "1"}


def test_owner_references_and_finalizers_are_validated(cluster: Cluster) -> None:
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "", "controller": True}
    bad = {"metadata": {"name": "orphan-to-be", "ownerReferences": [ref, {**ref, "name": "p", "uid": "u2"}],
                        "finalizers": ["not a name!"]}}
    with http(cluster) as c:
        r = c.post("/api/v1/namespaces/default/configmaps", json=bad)
    assert r.status_code == 422
    fields = [cause["field"] for cause in r.json()["details"]["causes"]]
    assert fields == ["metadata.finalizers[0]", "metadata.ownerReferences.uid", "metadata.ownerReferences"]
    assert 'uid must not be empty' in r.text and "ConfigMap/o and ConfigMap/p" in r.text
