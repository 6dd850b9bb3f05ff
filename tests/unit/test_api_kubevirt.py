"""VirtualMachine / VirtualMachineInstance admission (KubeVirt's webhook rules), tables and discovery."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cdi.api import default_registry
from cdi.api.kubevirt import VIRTUALMACHINE, validate_vm, validate_vmi
from cdi.apiserver import Settings, create_app

DV_SPEC = {"source": {"http": {"url": "http://127.0.0.1/disk.qcow2"}},
           "storage": {"resources": {"requests": {"storage": "64Mi"}}}}


def vm(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "runStrategy": "Always",
        "dataVolumeTemplates": [{"metadata": {"name": "root"}, "spec": copy.deepcopy(DV_SPEC)}],
        "template": {"spec": {
            "domain": {"memory": {"guest": "128Mi"},
                       "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "root", "dataVolume": {"name": "root"}}],
        }},
    }
    base.update(spec)
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"}, "spec": base}


def fields(errors: list[str]) -> list[str]:
    return [e.split(":", 1)[0] for e in errors]


def test_valid_vm() -> None:
    assert validate_vm(vm(), None) == []
    assert validate_vm(vm(runStrategy=None, running=True), None) == []


def test_running_and_run_strategy_are_exclusive() -> None:
    assert fields(validate_vm(vm(running=True), None)) == ["spec.running"]
    assert fields(validate_vm(vm(runStrategy="Sometimes"), None)) == ["spec.runStrategy"]


def test_disk_must_reference_a_volume() -> None:
    obj = vm()
    obj["spec"]["template"]["spec"]["domain"]["devices"]["disks"].append({"name": "nope"})
    assert fields(validate_vm(obj, None)) == ["spec.template.spec.domain.devices.disks[1].name"]


def test_volume_needs_exactly_one_source() -> None:
    obj = vm()
    obj["spec"]["template"]["spec"]["volumes"][0]["emptyDisk"] = {"capacity": "1Gi"}
    assert fields(validate_vm(obj, None)) == ["spec.template.spec.volumes[0]"]
    obj["spec"]["template"]["spec"]["volumes"][0] = {"name": "root", "containerDisk": {"image": "x"}}
    assert fields(validate_vm(obj, None))[0] == "spec.template.spec.volumes[0].containerDisk"


def test_data_volume_templates() -> None:
    obj = vm()
    obj["spec"]["dataVolumeTemplates"].append(copy.deepcopy(obj["spec"]["dataVolumeTemplates"][0]))
    assert "spec.dataVolumeTemplates[1].metadata.name" in fields(validate_vm(obj, None))
    obj = vm()
    del obj["spec"]["dataVolumeTemplates"][0]["spec"]["storage"]
    assert fields(validate_vm(obj, None)) == ["spec.dataVolumeTemplates[0].spec.pvc"]


def test_memory_is_required() -> None:
    obj = vm()
    del obj["spec"]["template"]["spec"]["domain"]["memory"]
    assert fields(validate_vm(obj, None)) == ["spec.template.spec.domain.resources.requests.memory"]


def test_bus_and_boot_order() -> None:
    obj = vm()
    disks = obj["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    disks[0] = {"name": "root", "cdrom": {"bus": "virtio"}, "bootOrder": 0}
    assert fields(validate_vm(obj, None)) == ["spec.template.spec.domain.devices.disks[0].cdrom.bus",
                                              "spec.template.spec.domain.devices.disks[0].bootOrder"]


def test_vmi_spec_is_immutable() -> None:
    vmi = {"spec": vm()["spec"]["template"]["spec"]}
    assert validate_vmi(vmi, None) == []
    changed = copy.deepcopy(vmi)
    changed["spec"]["terminationGracePeriodSeconds"] = 3
    assert fields(validate_vmi(changed, vmi)) == ["spec"]


@pytest.fixture
def api() -> TestClient:
    app = create_app(Settings(token="t"), registry=default_registry())
    return TestClient(app, headers={"Authorization": "Bearer t"})


def test_server_answers_422_with_the_field(api: TestClient) -> None:
    resp = api.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", json=vm(running=True))
    assert resp.status_code == 422
    causes = resp.json()["details"]["causes"]
    assert causes[0]["field"] == "spec.running"
    assert "mutually exclusive" in resp.json()["message"]


def test_table_columns(api: TestClient) -> None:
    assert api.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", json=vm()).status_code == 201
    resp = api.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
                   headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    names = [c["name"] for c in resp.json()["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Name", "Age", "Status", "Ready"]
    vmi_cols = [c.name for c in default_registry().lookup("kubevirt.io", "v1", "virtualmachineinstances")
                .table_columns() if c.priority == 0]  # type: ignore[union-attr]
    assert vmi_cols == ["Name", "Age", "Phase", "IP", "NodeName", "Ready"]
    assert VIRTUALMACHINE.short_names == ("vm", "vms")
