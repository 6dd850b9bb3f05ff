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
