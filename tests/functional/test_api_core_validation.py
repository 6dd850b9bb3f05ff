"""Validation of core kinds as kube-apiserver does it: PVC quantities, ConfigMap and Secret keys; and
the garbage collector leaving alone dependents whose owner is of a kind this server does not serve."""

from __future__ import annotations

import re
import time

import pytest
from kubernetes import client

from tests.functional.apiserver_fixtures import Cluster, cluster

__all__ = ["cluster"]


def _pvc(name: str, storage: object) -> dict:
    return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                  "resources": {"requests": {"storage": storage}}}}


@pytest.mark.parametrize("storage, words", [
    ("1gi", "quantities must match the regular expression"), ("-1", "must be greater than or equal to 0"),
    ("0", "must be greater than zero"), ("1e100", "exponent is out of range"),
])
def test_pvc_sizes_are_checked_at_admission(cluster: Cluster, storage: str, words: str) -> None:
    api = client.CoreV1Api(cluster.api_client())
    with pytest.raises(client.ApiException) as err:
        api.create_namespaced_persistent_volume_claim("default", _pvc("badq", storage))
    assert err.value.status == 422
    assert "spec.resources.requests[storage]" in err.value.body and re.search(re.escape(words), err.value.body)


def test_a_pvc_volume_mode_kube_does_not_know_is_refused(cluster: Cluster) -> None:
    api = client.CoreV1Api(cluster.api_client())
    pvc = _pvc("weird", "1Gi")
    pvc["spec"]["volumeMode"] = "Weird"
    with pytest.raises(client.ApiException) as err:
        api.create_namespaced_persistent_volume_claim("default", pvc)
    assert err.value.status == 422
    assert 'spec.volumeMode: Unsupported value: \\"Weird\\": supported values: \\"Block\\", \\"Filesystem\\"' \
        in err.value.body
    pvc["spec"]["volumeMode"] = "Block"
    assert api.create_namespaced_persistent_volume_claim("default", pvc).spec.volume_mode == "Block"


def test_a_number_for_a_size_is_stored_as_a_quantity(cluster: Cluster) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **_pvc("numq", 5)})
    got = cluster.kubectl("get", "pvc", "numq", "-o", "jsonpath={.spec.resources.requests.storage}").stdout
    assert got == "5"


@pytest.mark.parametrize("key", ["../../etc/x", "bad key", "..", ".", "..hidden", "a/b"])
def test_configmap_and_secret_keys_are_checked(cluster: Cluster, key: str) -> None:
    core = client.CoreV1Api(cluster.api_client())
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "badkey"}, "data": {key: "v"}})
    assert err.value.status == 422 and f"data[{key}]" in err.value.body
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_secret("default", {"metadata": {"name": "badkey"}, "stringData": {key: "v"}})
    assert err.value.status == 422


def test_dependents_of_an_owner_kind_not_served_here_are_kept(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api_client())
    owned = {"metadata": {"name": "by-sts", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "0b5a3d9e-0000-4000-8000-000000000001"}]},
        "data": {"k": "v"}}
    core.create_namespaced_config_map("default", owned)
    gone = {"metadata": {"name": "by-missing-cm", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "nope", "uid": "0b5a3d9e-0000-4000-8000-000000000002"}]}}
    core.create_namespaced_config_map("default", gone)
    # The orphan of a served kind is collected at once; the other must still be there after that.
    deadline = time.monotonic() + 5
    while any(c.metadata.name == "by-missing-cm" for c in core.list_namespaced_config_map("default").items):
        assert time.monotonic() < deadline, "an orphan of a served kind was not collected"
        time.sleep(0.05)
    assert core.read_namespaced_config_map("by-sts", "default").data == {"k": "v"}


def test_a_repeated_event_is_counted_on_the_first(cluster: Cluster) -> None:
    from cdi.kube import CONFIGMAP, EVENT, Client

    c = Client.from_kubeconfig(str(cluster.kubeconfig))
    cm = c.create(CONFIGMAP, {"metadata": {"name": "noisy", "namespace": "default"}})
    for _ in range(3):
        c.event(cm, reason="Again", message="the same thing happened")
    c.event(cm, reason="Again", message="something else happened")
    events = [e for e in c.list(EVENT, "default")[0] if e["involvedObject"]["name"] == "noisy"]
    counts = sorted((e["message"], e["count"]) for e in events)
    assert counts == [("something else happened", 1), ("the same thing happened", 3)]
    table = cluster.kubectl("get", "events", "-o", "wide", "--field-selector", "involvedObject.name=noisy").stdout
    header = table.splitlines()[0].split()
    assert "COUNT" in header, table
    same = next(line for line in table.splitlines() if "the same thing" in line)
    assert " 3 " in same, table


def test_a_pods_spec_changes_only_where_kube_allows(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod("default", {"metadata": {"name": "fixed"}, "spec": {"containers": [
        {"name": "c", "image": "cdi-importer", "env": [{"name": "A", "value": "1"}]}]}})
    core.patch_namespaced_pod("fixed", "default", {"spec": {"containers": [{"name": "c", "image": "cdi-importer:v2"}]}})
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_pod("fixed", "default", {"spec": {"containers": [
            {"name": "c", "env": [{"name": "A", "value": "2"}]}]}})
    assert err.value.status == 422 and "pod updates may not change fields" in err.value.body
    core.patch_namespaced_pod("fixed", "default", {"spec": {"nodeName": "cdi-local"}})  # binding, once
    with pytest.raises(client.ApiException):
        core.patch_namespaced_pod("fixed", "default", {"spec": {"nodeName": "elsewhere"}})
