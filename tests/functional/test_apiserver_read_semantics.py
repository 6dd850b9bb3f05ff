"""Read semantics kube clients rely on: paged lists, watches with selectors, server-side Tables
for pods and events, and the OpenAPI v2 document, with the real kubectl and the client."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.functional.apiserver_fixtures import Cluster, cluster

__all__ = ["cluster"]


@pytest.fixture()
def core(cluster: Cluster) -> Iterator[client.CoreV1Api]:
    with cluster.api_client() as api:
        yield client.CoreV1Api(api)


def http(cluster: Cluster) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(cluster.server.tls.ca_file))
    headers = {"Authorization": f"Bearer {cluster.server.settings.token}"}
    return httpx.Client(base_url=cluster.server.url, headers=headers, verify=ctx)


def namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace({"metadata": {"name": name}})
    return name


# -- pagination -------------------------------------------------------------------------------


def test_pages_return_every_object_once_despite_deletes_and_creates(core: client.CoreV1Api) -> None:
    ns = namespace(core, "pages")
    for i in range(7):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}})
    first = core.list_namespaced_config_map(ns, limit=3)
    assert [c.metadata.name for c in first.items] == ["cm-0", "cm-1", "cm-2"]
    assert first.metadata.remaining_item_count == 4
    core.delete_namespaced_config_map("cm-0", ns)  # already returned: must not shift the next page
    core.delete_namespaced_config_map("cm-5", ns)  # not returned yet: gone before its page
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cm-9"}})
    second = core.list_namespaced_config_map(ns, limit=3, _continue=first.metadata._continue)
    assert second.metadata.resource_version == first.metadata.resource_version
    names = [c.metadata.name for c in first.items + second.items]
    assert names == ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "cm-6"]
    third = core.list_namespaced_config_map(ns, limit=3, _continue=second.metadata._continue)
    assert [c.metadata.name for c in third.items] == ["cm-9"] and not third.metadata._continue


def test_kubectl_chunked_get_and_expired_or_bad_tokens(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = namespace(core, "chunks")
    for i in range(5):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"c{i}"}})
    out = cluster.kubectl("get", "cm", "-n", ns, "--chunk-size=2", "-o", "name").stdout.split()
    assert out == [f"configmap/c{i}" for i in range(5)]
    first = core.list_namespaced_config_map(ns, limit=2)
    objects = cluster.server.app.state.objects
    cms = cluster.server.app.state.registry.lookup("", "v1", "configmaps")
    for i in range(cluster.server.settings.watch_history + 1):  # the token's rv leaves the history
        objects.create(cms, ns, {"metadata": {"name": f"churn-{i}"}})
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map(ns, limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410
    assert "The provided continue parameter is too old" in e.value.body
    with http(cluster) as c:
        r = c.get(f"/api/v1/namespaces/{ns}/configmaps", params={"limit": "2", "continue": "!!garbage"})
        assert r.status_code == 400 and r.json()["reason"] == "BadRequest"


# -- watch with selectors -----------------------------------------------------------------------


def test_watch_with_selector_sees_objects_leave_and_join(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = namespace(core, "sel-watch")
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "w", "labels": {"app": "x"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "other", "labels": {"app": "y"}}})
    moved = core.patch_namespaced_config_map("w", ns, {"metadata": {"labels": {"app": "z"}}})
    core.patch_namespaced_config_map("w", ns, {"metadata": {"labels": {"app": "x"}}})
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w", ns)
    seen = []
    for ev in watch.Watch().stream(core.list_namespaced_config_map, ns, label_selector="app=x",
                                   resource_version=start, timeout_seconds=10):
        obj = ev["object"]
        seen.append((ev["type"], obj.metadata.labels.get("app"), obj.metadata.resource_version))
        if len(seen) == 5:
            break
    # Leaving the selection is a DELETED carrying the last matching content and the new version.
    assert [s[:2] for s in seen] == [("ADDED", "x"), ("DELETED", "x"), ("ADDED", "x"), ("MODIFIED", "x"),
                                     ("DELETED", "x")]
    assert seen[1][2] == moved.metadata.resource_version
    with http(cluster) as c:  # a field selector follows the same rules
        r = c.get(f"/api/v1/namespaces/{ns}/configmaps", params={
            "watch": "1", "resourceVersion": start, "fieldSelector": "metadata.name=other",
            "timeoutSeconds": "1"})
        assert [line.count('"type":"ADDED"') for line in r.text.splitlines()] == [1]


# -- pods' and events' tables ---------------------------------------------------------------------


def _cs(name: str, state: dict, *, ready: bool = False, restarts: int = 0, last: dict | None = None) -> dict:
    out = {"name": name, "state": state, "ready": ready, "restartCount": restarts, "image": "x", "imageID": ""}
    if last:
        out["lastState"] = last
    return out


POD_STATES = {
    "done": ("Succeeded", [_cs("a", {"terminated": {"exitCode": 0, "reason": "Completed"}})], "0/1", "Completed"),
    "failed": ("Failed", [_cs("a", {"terminated": {"exitCode": 3, "reason": "Error"}})], "0/1", "Error"),
    "noreason": ("Failed", [_cs("a", {"terminated": {"exitCode": 3}})], "0/1", "ExitCode:3"),
    "crash": ("Running", [_cs("a", {"waiting": {"reason": "CrashLoopBackOff"}}, restarts=4,
                               last={"terminated": {"exitCode": 1, "finishedAt": "2020-01-01T00:00:00Z"}})],
              "0/1", "CrashLoopBackOff"),
    "pull": ("Pending", [_cs("a", {"waiting": {"reason": "ErrImagePull"}})], "0/1", "ErrImagePull"),
    "creating": ("Pending", [_cs("a", {"waiting": {"reason": "ContainerCreating"}})], "0/1", "ContainerCreating"),
    "half": ("Running", [_cs("a", {"running": {}}, ready=True),
                         _cs("b", {"terminated": {"exitCode": 0, "reason": "Completed"}})], "1/2", "Running"),
}


def test_pod_status_ready_and_restarts_columns_as_kubectl_shows_them(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = namespace(core, "podtable")
    for name, (phase, statuses, _, _) in POD_STATES.items():
        containers = [{"name": s["name"], "image": "x"} for s in statuses]
        core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": {"containers": containers}})
        conditions = [{"type": "Ready", "status": "True"}] if name == "half" else []
        core.patch_namespaced_pod_status(name, ns, {"status": {"phase": phase, "containerStatuses": statuses,
                                                               "conditions": conditions}})
    core.create_namespaced_pod(ns, {"metadata": {"name": "leaving", "finalizers": ["x/y"]},
                                    "spec": {"containers": [{"name": "a", "image": "x"}]}})
    core.delete_namespaced_pod("leaving", ns)
    rows = {line.split()[0]: line.split()[1:] for line in cluster.kubectl("get", "pods", "-n", ns).stdout.splitlines()}
    assert rows.pop("NAME") == ["READY", "STATUS", "RESTARTS", "AGE"]
    for name, (_, _, ready, status) in POD_STATES.items():
        assert rows[name][:2] == [ready, status], name
    assert rows["crash"][2] == "4" and rows["crash"][3].startswith("(") and rows["crash"][4] == "ago)"  # 4 (6y ago)
    assert rows["leaving"][1] == "Terminating"


def test_get_events_columns_as_kube_prints_them(cluster: Cluster, core: client.CoreV1Api) -> None:
    ns = namespace(core, "evtable")
    core.create_namespaced_event(ns, {
        "metadata": {"name": "e1"}, "involvedObject": {"kind": "DataVolume", "name": "dv1", "namespace": ns},
        "reason": "ImportFailed", "message": "  404 at the URL \n", "type": "Warning", "count": 3,
        "source": {"component": "cdi-controller"}, "firstTimestamp": "2020-01-01T00:00:00Z",
        "lastTimestamp": "2020-01-02T00:00:00Z"})
    lines = cluster.kubectl("get", "events", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split()[1:] == ["Warning", "ImportFailed", "datavolume/dv1", "404", "at", "the", "URL"]
    wide = cluster.kubectl("get", "events", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE",
                               "FIRST", "SEEN", "COUNT", "NAME"]
    assert wide[1].split()[-2:] == ["3", "e1"] and "cdi-controller" in wide[1]


# -- OpenAPI v2 ----------------------------------------------------------------------------------


def test_openapi_v2_in_protobuf_for_kubectl_explain_and_in_json(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "dv.spec.source.http", "--output=plaintext-openapiv2").stdout
    assert "VERSION:  cdi.kubevirt.io/v1beta1" in out and "certConfigMap" in out
    assert "url\t<string> -required-" in out
    with http(cluster) as c:
        r = c.get("/openapi/v2", headers={"Accept": "application/json"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc["swagger"] == "2.0"
        dv = doc["definitions"]["io.kubevirt.cdi.v1beta1.DataVolume"]
        assert dv["x-kubernetes-group-version-kind"] == [
            {"group": "cdi.kubevirt.io", "version": "v1beta1", "kind": "DataVolume"}]
        text = r.text
        assert "#/components/" not in text and '"anyOf"' not in text and '"requestBody"' not in text
        item = doc["paths"]["/apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/datavolumes/{name}"]
        assert {p["name"] for p in item["parameters"]} == {"namespace", "name"}
        assert item["put"]["parameters"][0]["in"] == "body"
        ids = [op["operationId"] for i in doc["paths"].values() for m, op in i.items() if m != "parameters"]
        assert len(ids) == len(set(ids))  # Swagger 2.0 wants them unique
        r = c.get("/openapi/v2", headers={"Accept": "application/xml"})
        assert r.status_code == 406 and r.json()["reason"] == "NotAcceptable"
