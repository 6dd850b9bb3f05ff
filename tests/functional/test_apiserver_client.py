"""The official kubernetes Python client against the embedded API server, plus raw HTTP checks."""

from __future__ import annotations

import json
import ssl
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.functional.apiserver_fixtures import Cluster, cluster, datavolume, start_cluster

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


def http(cluster: Cluster, token: str | None = "valid") -> httpx.Client:
    headers = {}
    if token == "valid":
        headers["Authorization"] = f"Bearer {cluster.server.settings.token}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    ctx = ssl.create_default_context(cafile=str(cluster.server.tls.ca_file))
    return httpx.Client(base_url=cluster.server.url, headers=headers, verify=ctx)


def test_requests_without_or_with_wrong_token_get_401(cluster: Cluster) -> None:
    for token in (None, "wrong-token"):
        with http(cluster, token) as c:
            r = c.get("/api/v1/namespaces/default/pods")
        assert r.status_code == 401
        assert r.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
    with http(cluster) as c:
        assert c.get("/version").json()["major"] == "1"


def test_custom_objects_crud_and_conflict(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, datavolume("py-dv"))
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["resourceVersion"].isdigit()
    assert "status" not in created

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert "py-dv" in [o["metadata"]["name"] for o in listed["items"]]
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])

    patched = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "py-dv",
        {"status": {"phase": "ImportScheduled", "claimName": "py-dv"}, "spec": {"contentType": "archive"}},
    )
    assert patched["status"] == {"phase": "ImportScheduled", "claimName": "py-dv"}
    assert "contentType" not in patched["spec"]  # the status subresource changes only status
    assert patched["metadata"]["generation"] == 1

    stale = dict(created)
    stale["metadata"] = dict(created["metadata"], labels={"x": "y"})
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "py-dv", stale)
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on datavolumes.cdi.kubevirt.io "py-dv": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )

    current = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "py-dv")
    current["metadata"]["labels"] = {"x": "y"}
    current["status"] = {"phase": "Failed"}
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "py-dv", current)
    assert replaced["metadata"]["labels"] == {"x": "y"}
    assert replaced["status"]["phase"] == "ImportScheduled"  # main resource writes ignore status

    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, datavolume("py-dv"))
    assert err.value.status == 409
    assert json.loads(err.value.body)["message"] == 'datavolumes.cdi.kubevirt.io "py-dv" already exists'

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "py-dv")
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "py-dv")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'datavolumes.cdi.kubevirt.io "py-dv" not found'


def test_invalid_datavolume_is_422_with_causes(cluster: Cluster) -> None:
    body = datavolume(
        "bad-url",
        source={"http": {"url": "notaurl"}},
        storage={"resources": {"requests": {"storage": "1Gi"}}},
    )
    with http(cluster) as c:
        r = c.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes", json=body)
    assert r.status_code == 422
    status = r.json()
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'DataVolume.cdi.kubevirt.io "bad-url" is invalid: spec.source.http.url: '
        'Invalid value: "notaurl": Invalid source URL scheme: notaurl'
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.source.http.url",
            "message": 'Invalid value: "notaurl": Invalid source URL scheme: notaurl',
        }
    ]
    assert status["details"]["kind"] == "DataVolume" and status["details"]["group"] == GROUP


def test_generation_bumps_on_spec_changes_only(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "gen"}, "data": {"a": "1"}})
    assert cm.metadata.generation == 1
    cm = core.patch_namespaced_config_map("gen", "default", {"metadata": {"labels": {"l": "1"}}})
    assert cm.metadata.generation == 1
    cm = core.patch_namespaced_config_map("gen", "default", {"data": {"a": "2"}})
    assert cm.metadata.generation == 2 and cm.data == {"a": "2"}


def test_watch_streams_events_and_bookmarks_quickly(custom: client.CustomObjectsApi) -> None:
    start = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    received: list[tuple[str, str, float]] = []
    ready = threading.Event()

    def consume() -> None:
        w = watch.Watch()
        ready.set()
        for ev in w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=start,
            timeout_seconds=10,
        ):
            obj = ev["object"]
            received.append((ev["type"], obj["metadata"]["name"], time.monotonic()))
            if ev["type"] == "DELETED" and obj["metadata"]["name"] == "watch-me":
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    ready.wait()
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, datavolume("watch-me"))
    sent = time.monotonic()
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "watch-me", {"status": {"phase": "Succeeded"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "watch-me")
    t.join(timeout=15)
    mine = [(typ, name) for typ, name, _ in received if name == "watch-me"]
    assert mine == [("ADDED", "watch-me"), ("MODIFIED", "watch-me"), ("DELETED", "watch-me")]
    added_at = next(at for typ, name, at in received if typ == "ADDED")
    assert added_at - sent < 0.5


def test_watch_from_too_old_resource_version_is_410(
    custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    old = core.list_namespaced_config_map("default").metadata.resource_version
    for i in range(60):  # the module's server keeps 50 events
        core.create_namespaced_config_map("default", {"metadata": {"name": f"churn-{i}"}})
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=old,
            timeout_seconds=5,
        ):
            pass
    assert err.value.status == 410
    assert "Expired" in str(err.value.reason) and "too old resource version" in str(err.value.reason)
    core.delete_collection_namespaced_config_map("default", label_selector="")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == []


def test_core_pvcs_and_pods_with_selectors(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "work"}})
    for name, tier in (("a", "x"), ("b", "y")):
        core.create_namespaced_persistent_volume_claim(
            "work",
            {
                "metadata": {"name": name, "labels": {"tier": tier}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
    pvcs = core.list_namespaced_persistent_volume_claim("work", label_selector="tier notin (y)")
    assert [p.metadata.name for p in pvcs.items] == ["a"]
    assert pvcs.items[0].status.phase == "Pending" and pvcs.items[0].spec.volume_mode == "Filesystem"
    bound = core.patch_namespaced_persistent_volume_claim_status(
        "a", "work", {"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    )
    assert bound.status.phase == "Bound"

    pod = {"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    core.create_namespaced_pod("work", pod)
    core.patch_namespaced_pod_status("p1", "work", {"status": {"phase": "Running"}})
    running = core.list_pod_for_all_namespaces(field_selector="status.phase=Running")
    assert [(p.metadata.namespace, p.metadata.name) for p in running.items] == [("work", "p1")]
    assert core.list_namespaced_pod("work", field_selector="status.phase!=Running").items == []

    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("work", field_selector="spec.bogus=1")
    assert err.value.status == 400

    core.delete_namespace("work")
    with pytest.raises(ApiException) as err:
        core.read_namespace("work")
    assert err.value.status == 404
    assert core.list_pod_for_all_namespaces(field_selector="metadata.namespace=work").items == []


def test_latency_of_get_list_and_watch_delivery(cluster: Cluster, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, datavolume("timed"))
    path = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes"
    with http(cluster) as c:
        c.get(f"{path}/timed")
        gets, lists = [], []
        for _ in range(100):
            t0 = time.perf_counter()
            assert c.get(f"{path}/timed").status_code == 200
            gets.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert c.get(path).status_code == 200
            lists.append(time.perf_counter() - t0)
        delays = []
        with c.stream(
            "GET", path, params={"watch": "1", "resourceVersion": "0", "fieldSelector": "metadata.name=timed"}
        ) as stream:
            lines = stream.iter_lines()
            next(lines)  # synthetic ADDED
            with http(cluster) as writer:
                for i in range(20):
                    t0 = time.perf_counter()
                    writer.patch(
                        f"{path}/timed/status",
                        json={"status": {"progress": f"{i}.00%"}},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                    assert f'"{i}.00%"' in next(lines)
                    delays.append(time.perf_counter() - t0)
    get_ms, list_ms = statistics.median(gets) * 1000, statistics.median(lists) * 1000
    watch_ms = statistics.median(delays) * 1000
    print(f"\nlatency median: get={get_ms:.2f}ms list={list_ms:.2f}ms patch+watch-event={watch_ms:.2f}ms")
    assert get_ms < 20 and list_ms < 20 and watch_ms < 50


def test_legacy_discovery_fallback_works_for_kubectl(tmp_path) -> None:
    legacy = start_cluster(tmp_path, aggregated_discovery=False)
    try:
        with http(legacy) as c:
            r = c.get(
                "/apis",
                headers={
                    "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
                    ",application/json"
                },
            )
            assert r.headers["content-type"] == "application/json"
            assert r.json()["groups"][0]["name"] == GROUP
        out = legacy.kubectl("api-resources").stdout
        assert "datavolumes" in out and "dv,dvs" in out
        legacy.apply(datavolume("legacy"))
        header = legacy.kubectl("get", "dv").stdout.splitlines()[0]
        assert header.split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    finally:
        legacy.server.stop()


def test_aggregated_discovery_document(cluster: Cluster) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    with http(cluster) as c:
        r = c.get("/apis", headers={"Accept": accept})
    assert r.headers["content-type"] == accept
    item = r.json()["items"][0]
    assert item["metadata"]["name"] == GROUP
    dv = item["versions"][0]["resources"][0]
    assert dv["resource"] == "datavolumes" and dv["shortNames"] == ["dv", "dvs"]
    assert dv["subresources"][0]["subresource"] == "status"
