"""Server-side apply on associative lists, sets and maps, without a server (cdi.apiserver.managedfields)."""

from __future__ import annotations

import pytest

from cdi.api import default_registry
from cdi.apiserver.errors import Conflict
from cdi.apiserver.fieldpaths import Shape, from_fields_v1, leaves, path_string, to_fields_v1
from cdi.apiserver.managedfields import apply, record_update

REG = default_registry()
PODS = REG.lookup("", "v1", "pods")
assert PODS is not None


def pod(*containers: dict, finalizers: list[str] | None = None) -> dict:
    meta: dict = {"name": "p", "namespace": "default"}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": list(containers)}}


def test_containers_are_an_associative_list_and_conflicts_name_the_element() -> None:
    live = pod({"name": "a", "image": "x"}, {"name": "b", "image": "y"})
    record_update(PODS, None, live, "creator")
    mine = pod({"name": "a", "image": "x2"})
    with pytest.raises(Conflict) as e:
        apply(PODS, live, mine, "me", force=False)
    assert e.value.message.endswith(': .spec.containers[name="a"].image')
    [cause] = (e.value.details or {})["causes"]
    assert cause["reason"] == "FieldManagerConflict" and cause["field"] == '.spec.containers[name="a"].image'
    assert cause["message"].startswith('conflict with "creator" using v1 at ')
    new = apply(PODS, live, mine, "me", force=True)
    assert new["spec"]["containers"] == [{"name": "a", "image": "x2"}, {"name": "b", "image": "y"}]
    # The element "a" stays while creator still owns its name; "c" goes when only "me" had it.
    added = apply(PODS, new, pod({"name": "a", "image": "x2"}, {"name": "c", "image": "z"}), "me", force=False)
    assert [c["name"] for c in added["spec"]["containers"]] == ["a", "b", "c"]
    dropped = apply(PODS, added, pod({"name": "a", "image": "x2"}), "me", force=False)
    assert [c["name"] for c in dropped["spec"]["containers"]] == ["a", "b"]


def test_finalizers_are_a_set_and_fields_v1_round_trips() -> None:
    obj = pod({"name": "a"}, finalizers=["x/y"])
    paths = leaves({"metadata": {"finalizers": ["x/y"]}, "spec": obj["spec"]}, Shape(PODS))
    assert (("f:metadata", "f:finalizers", 'v:"x/y"')) in paths
    assert from_fields_v1(to_fields_v1(paths)) == paths
    assert path_string(("f:metadata", "f:finalizers", 'v:"x/y"')) == '.metadata.finalizers[="x/y"]'
    merged = apply(PODS, obj, pod({"name": "a"}, finalizers=["z/w"]), "me", force=False)
    assert merged["metadata"]["finalizers"] == ["x/y", "z/w"]
