"""The schema walk behind field validation and type checks, and the YAML alias budget."""

from __future__ import annotations

import pytest

from cdi.api import kube_schemas
from cdi.apiserver import limits, schemawalk
from cdi.apiserver.errors import BadRequest


def _pod(obj: dict) -> schemawalk.Findings:
    schema = {"$ref": "#/$defs/" + str(kube_schemas.definition_name("", "v1", "Pod"))}
    return schemawalk.walk(obj, schema, path="", struct="Pod", go_path="")


def test_unknown_fields_inside_a_pod_are_found_and_removed() -> None:
    pod = {"spec": {"containers": [{"name": "c", "image": "x", "envv": [], "ports": [{"containerPort": 80,
                                                                                      "hostPot": 1}]}]}}
    found = _pod(pod)
    assert sorted(found.unknown) == ["spec.containers[0].envv", "spec.containers[0].ports[0].hostPot"]
    assert pod == {"spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}]}}


@pytest.mark.parametrize(("obj", "message"), [
    ({"metadata": 5}, "cannot unmarshal number into Go struct field Pod.metadata of type v1.ObjectMeta"),
    ({"spec": {"containers": [{"name": "c", "image": 1}]}},
     "cannot unmarshal number into Go struct field Container.spec.containers.image of type string"),
    ({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}},
     "cannot unmarshal string into Go struct field ContainerPort.spec.containers.ports.containerPort of type int32"),
    ({"metadata": {"labels": []}},
     "cannot unmarshal array into Go struct field ObjectMeta.metadata.labels of type map[string]string"),
])
def test_wrong_types_are_named_as_gos_decoder_does(obj: dict, message: str) -> None:
    [problem] = _pod(obj).types
    assert problem.go_message() == "json: " + message


def test_quantities_and_int_or_strings_take_either_type() -> None:
    pod = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
                                    "livenessProbe": {"httpGet": {"port": "http"}}}]}}
    assert _pod(pod).types == []


def test_aliases_within_the_budget_load_and_bombs_do_not() -> None:
    assert limits.decode(b"a: &x [1, 2]\nb: *x\n", "yaml", as_yaml=True) == {"a": [1, 2], "b": [1, 2]}
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    with pytest.raises(BadRequest, match="excessive aliasing"):
        limits.decode("\n".join(bomb).encode(), "yaml", as_yaml=True)
