"""Pure parts of the VM runtime's controllers: launcher pod, run strategies, back-off, subresources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cdi.apiserver import Settings, create_app
from cdi.controller.launcher_pod import launcher_pod, launcher_status, termination_status
from cdi.controller.vm import failed_early, run_strategy, start_backoff

VMI: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
    "metadata": {"name": "v", "namespace": "default", "uid": "u-1"},
    "spec": {"terminationGracePeriodSeconds": 5,
             "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root"}, {"name": "blk"}]}},
             "volumes": [{"name": "root", "dataVolume": {"name": "root-dv"}},
                         {"name": "blk", "persistentVolumeClaim": {"claimName": "raw"}}]},
}


def test_launcher_pod() -> None:
    pod = launcher_pod(VMI, {"raw"})
    assert pod["metadata"]["name"].startswith("virt-launcher-v-") and len(pod["metadata"]["name"]) == 21
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20
    compute, tail = pod["spec"]["containers"]
    assert (compute["name"], tail["name"]) == ("compute", "guest-console-log")
    env = {e["name"]: e["value"] for e in compute["env"]}
    assert env["CDI_VOLUME_ROOT"] == "/var/run/kubevirt-private/vmi-disks/root"
    assert env["CDI_VOLUME_BLK"] == "/dev/blk"
    assert json.loads(env["VMI_SPEC"])["spec"] == VMI["spec"]
    assert compute["volumeDevices"] == [{"name": "vol-blk", "devicePath": "/dev/blk"}]


def test_launcher_reports() -> None:
    text = 'INFO x\n{"launcherStatus": {"phase": "Scheduled"}}\n{"launcherStatus": {"phase": "Running"}}\n'
    assert launcher_status(text) == {"phase": "Running"}
    pod = {"status": {"containerStatuses": [{"name": "compute", "state": {"terminated": {
        "exitCode": 0, "message": '{"phase": "Succeeded", "reason": "GuestShutdown"}'}}}]}}
    assert termination_status(pod) == {"phase": "Succeeded", "reason": "GuestShutdown", "exitCode": 0}


def test_run_strategy_and_backoff() -> None:
    assert run_strategy({"spec": {"running": True}}) == "Always"
    assert run_strategy({"spec": {"running": False}}) == "Halted"
    assert run_strategy({"spec": {"runStrategy": "Once"}}) == "Once"
    assert 10 <= start_backoff(1) <= 15 and 40 <= start_backoff(2) <= 60 and start_backoff(9) == 300
    early = {"status": {"phase": "Failed", "phaseTransitionTimestamps": [{"phase": "Scheduling"}]}}
    late = {"status": {"phase": "Failed", "phaseTransitionTimestamps": [{"phase": "Running"}]}}
    assert failed_early(early) and not failed_early(late)


@pytest.fixture
def api() -> TestClient:
    return TestClient(create_app(Settings(token="t")), headers={"Authorization": "Bearer t"})


def _vm(api: TestClient, **spec: Any) -> None:
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"},
            "spec": {**spec, "template": {"spec": VMI["spec"] | {"volumes": VMI["spec"]["volumes"]}}}}
    body["spec"]["template"]["spec"]["domain"] = {"memory": {"guest": "128Mi"}}
    assert api.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", json=body).status_code == 201


SUB = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/v"
VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/v"


def test_start_and_stop_flip_run_strategy(api: TestClient) -> None:
    _vm(api, runStrategy="Halted")
    assert api.put(f"{SUB}/start").status_code == 202
    assert api.get(VMS).json()["spec"]["runStrategy"] == "Always"
    refused = api.put(f"{SUB}/start")
    assert refused.status_code == 409 and "Always does not support manual start requests" in refused.json()["message"]
    assert api.put(f"{SUB}/stop").status_code == 202
    assert api.get(VMS).json()["spec"]["runStrategy"] == "Halted"
    assert "does not support manual restart" in api.put(f"{SUB}/restart").json()["message"]


def test_manual_uses_state_change_requests(api: TestClient) -> None:
    _vm(api, runStrategy="Manual")
    assert api.put(f"{SUB}/stop").status_code == 409  # not running
    assert api.put(f"{SUB}/start").status_code == 202
    assert api.get(VMS).json()["status"]["stateChangeRequests"] == [{"action": "Start"}]
    assert "already underway" in api.put(f"{SUB}/start").json()["message"]
    assert api.get("/apis/subresources.kubevirt.io/v1").json()["resources"][0]["name"] == "virtualmachines/start"
