"""Pieces of the API server without HTTP: patches, selectors, tables, store history, object semantics."""

from __future__ import annotations

import json

import pytest

from cdi.api import default_registry
from cdi.apiserver.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Expired,
    Invalid,
    NotFound,
    UnsupportedMediaType,
)
from cdi.apiserver.objects import Objects
from cdi.apiserver.patch import apply_patch, json_patch, merge_patch
from cdi.apiserver.selectors import field_matcher, label_matcher
from cdi.apiserver.store import Store
from cdi.apiserver.strategic import strategic_merge_patch
from cdi.apiserver.tables import human_duration, table

REG = default_registry()
PODS = REG.lookup("", "v1", "pods")
DVS = REG.lookup("cdi.kubevirt.io", "v1beta1", "datavolumes")
CMS = REG.lookup("", "v1", "configmaps")
assert PODS and DVS and CMS


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }


def test_json_patch_operations_and_failures() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "list": [1, 2]}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/list/0", "value": 9},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "copy", "from": "/list", "path": "/copy"},
            {"op": "move", "from": "/copy", "path": "/moved"},
            {"op": "test", "path": "/moved/2", "value": 3},
        ],
    )
    assert out == {"metadata": {"labels": {"b": "2"}}, "list": [9, 2, 3], "moved": [9, 2, 3]}
    assert doc["list"] == [1, 2]  # the input is not modified
    with pytest.raises(BadRequest):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(Conflict):
        json_patch(doc, [{"op": "test", "path": "/list/0", "value": 5}])


def test_strategic_merge_patch_directives() -> None:
    pod = {
        "metadata": {"finalizers": ["a", "b"]},
        "spec": {
            "containers": [{"name": "c1", "image": "old"}, {"name": "c2", "image": "x"}],
            "tolerations": [{"key": "k"}],
        },
    }
    patch = {
        "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "c1"}, {"name": "c2"}],
            "containers": [{"name": "c1", "image": "new"}, {"name": "c2", "$patch": "delete"}],
            "tolerations": [{"key": "z"}],
        },
    }
    out = strategic_merge_patch(pod, patch)
    assert out["metadata"]["finalizers"] == ["b", "c"]
    assert out["spec"]["containers"] == [{"name": "c1", "image": "new"}]
    assert out["spec"]["tolerations"] == [{"key": "z"}]
    assert strategic_merge_patch({"a": {"x": 1, "y": 2}}, {"a": {"$patch": "replace", "z": 3}}) == {
        "a": {"z": 3}
    }
    assert strategic_merge_patch({"a": {"x": 1, "y": 2}}, {"a": {"$retainKeys": ["y"], "y": 5}}) == {
        "a": {"y": 5}
    }


def test_strategic_merge_keys_depend_on_the_path() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}})
    assert out["spec"]["ports"] == [{"port": 80, "name": "http"}, {"port": 443, "name": "https", "targetPort": 8443}]
    container = {"name": "c", "ports": [{"containerPort": 1}], "env": [{"name": "A", "value": "1"}]}
    pod = {"spec": {"containers": [container]}}
    patch = {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 2}],
                                      "env": [{"name": "B", "value": "2"}, {"name": "A", "$patch": "delete"}]}]}}
    c = strategic_merge_patch(pod, patch)["spec"]["containers"][0]
    assert c["ports"] == [{"containerPort": 1}, {"containerPort": 2}] and c["env"] == [{"name": "B", "value": "2"}]
    replaced = strategic_merge_patch(pod, {"spec": {"containers": [{"$patch": "replace"}, {"name": "d"}]}})
    assert replaced["spec"]["containers"] == [{"name": "d"}]
    ordered = strategic_merge_patch(svc, {"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}]}})
    assert [p["port"] for p in ordered["spec"]["ports"]] == [443, 80]
    ns = {"spec": {"finalizers": ["kubernetes"]}, "metadata": {"finalizers": ["a"]}}
    out = strategic_merge_patch(ns, {"spec": {"finalizers": ["x"]}, "metadata": {"finalizers": ["b"]}})
    assert out == {"spec": {"finalizers": ["x"]}, "metadata": {"finalizers": ["a", "b"]}}


def test_apply_patch_media_types() -> None:
    assert apply_patch("application/merge-patch+json; charset=utf-8", {"a": 1}, b'{"b":2}') == {
        "a": 1,
        "b": 2,
    }
    with pytest.raises(UnsupportedMediaType, match="apply-patch"):
        apply_patch("application/apply-patch+yaml", {}, b"a: b")
    with pytest.raises(UnsupportedMediaType, match="merge-patch[+]json, application/apply-patch[+]yaml$"):
        apply_patch("application/strategic-merge-patch+json", {}, b"{}", custom=True)
    with pytest.raises(UnsupportedMediaType):
        apply_patch("text/plain", {}, b"{}")
    with pytest.raises(BadRequest):
        apply_patch("application/merge-patch+json", {}, b"{nope")


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app in (web, db)", True),
        ("app notin (web)", False),
        ("tier", True),
        ("!tier", False),
        ("missing", False),
        ("!missing", True),
        ("app=web,tier in (front)", True),
        ("app=web,tier=back", False),
        ("missing!=x", True),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    obj = {"metadata": {"labels": {"app": "web", "tier": "front"}}}
    assert label_matcher(selector)(obj) is matches


def test_label_selector_syntax_error() -> None:
    with pytest.raises(BadRequest):
        label_matcher("a in (b")


def test_field_selectors_per_kind() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}}
    assert field_matcher(PODS, "status.phase=Running,metadata.name=p")(pod)
    assert not field_matcher(PODS, "status.phase!=Running")(pod)
    with pytest.raises(BadRequest, match="field label not supported: status.phase"):
        field_matcher(DVS, "status.phase=Running")


def test_human_durations_like_kubectl() -> None:
    assert [
        human_duration(s)
        for s in (0, 59, 119, 125, 600, 3 * 3600, 7 * 3600 + 60, 30 * 3600, 3 * 86400 + 3600, 400 * 86400)
    ] == ["0s", "59s", "119s", "2m5s", "10m", "3h", "7h1m", "30h", "3d1h", "400d"]


def test_table_has_name_first_and_age_last() -> None:
    obj = {
        "metadata": {"name": "d", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "status": {"phase": "Succeeded", "progress": "100.0%", "restartCount": 2},
    }
    t = table(DVS, [obj])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Phase", "Progress", "Restarts", "Age"]
    cells = t["rows"][0]["cells"]
    assert cells[:4] == ["d", "Succeeded", "100.0%", 2] and cells[4].endswith("d")
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_store_history_is_bounded(tmp_path) -> None:
    store = Store(str(tmp_path / "db"), history=3)
    for i in range(5):
        store.put("/configmaps", "default", f"c{i}", {"metadata": {"name": f"c{i}"}}, "ADDED")
    assert store.resource_version == 6
    assert [e.obj["metadata"]["name"] for e in store.events_since("/configmaps", 3)] == ["c2", "c3", "c4"]
    with pytest.raises(Expired, match="too old resource version: 2"):
        store.events_since("/configmaps", 2)
    store.close()
    reopened = Store(str(tmp_path / "db"), history=3)
    assert reopened.resource_version == 6 and reopened.compacted == 3
    assert reopened.get("/configmaps", "default", "c4")["metadata"]["resourceVersion"] == "6"  # type: ignore[index]
    reopened.close()


@pytest.fixture()
def objects(tmp_path) -> Objects:
    o = Objects(Store(str(tmp_path / "db")), default_registry())
    o.ensure_namespace("default")
    return o


def test_objects_create_errors(objects: Objects) -> None:
    objects.create(CMS, "default", {"metadata": {"name": "a"}})
    with pytest.raises(AlreadyExists, match='configmaps "a" already exists'):
        objects.create(CMS, "default", {"metadata": {"name": "a"}})
    with pytest.raises(NotFound, match='namespaces "nope" not found'):
        objects.create(CMS, "nope", {"metadata": {"name": "a"}})
    with pytest.raises(Invalid, match="RFC 1123"):
        objects.create(CMS, "default", {"metadata": {"name": "Bad_Name"}})
    gen = objects.create(CMS, "default", {"metadata": {"generateName": "cm-"}})
    assert gen["metadata"]["name"].startswith("cm-") and len(gen["metadata"]["name"]) == 8


def test_objects_finalizers_and_cascade(objects: Objects) -> None:
    dv = objects.create(
        DVS,
        "default",
        {
            "metadata": {"name": "d", "finalizers": ["f"]},
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
        },
    )
    ref = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "name": "d",
        "uid": dv["metadata"]["uid"],
    }
    objects.create(CMS, "default", {"metadata": {"name": "dep", "ownerReferences": [ref]}})
    obj, finished = objects.delete(DVS, "default", "d")
    assert not finished and obj["metadata"]["deletionTimestamp"]
    assert objects.get(CMS, "default", "dep")  # dependents stay while the owner is held
    obj["metadata"]["finalizers"] = []
    objects.update(DVS, "default", "d", obj)
    with pytest.raises(NotFound):
        objects.get(DVS, "default", "d")
    with pytest.raises(NotFound):
        objects.get(CMS, "default", "dep")


def test_objects_foreground_and_orphan(objects: Objects) -> None:
    owner = objects.create(CMS, "default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    objects.create(
        CMS, "default", {"metadata": {"name": "held-dep", "finalizers": ["x"], "ownerReferences": [ref]}}
    )
    obj, finished = objects.delete(CMS, "default", "owner", {"propagationPolicy": "Foreground"})
    assert not finished and "foregroundDeletion" in obj["metadata"]["finalizers"]
    dep = objects.get(CMS, "default", "held-dep")
    assert dep["metadata"]["deletionTimestamp"]
    dep["metadata"]["finalizers"] = []
    objects.update(CMS, "default", "held-dep", dep)
    with pytest.raises(NotFound):
        objects.get(CMS, "default", "owner")  # the owner went once its last dependent went

    owner = objects.create(CMS, "default", {"metadata": {"name": "owner2"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner["metadata"]["uid"]}
    objects.create(CMS, "default", {"metadata": {"name": "orphan", "ownerReferences": [ref]}})
    objects.delete(CMS, "default", "owner2", {"propagationPolicy": "Orphan"})
    assert "ownerReferences" not in objects.get(CMS, "default", "orphan")["metadata"]


def test_noop_update_keeps_resource_version(objects: Objects) -> None:
    cm = objects.create(CMS, "default", {"metadata": {"name": "same"}, "data": {"a": "1"}})
    again = objects.update(CMS, "default", "same", json.loads(json.dumps(cm)))
    assert again["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]
