"""End to end: VirtualMachines on ``cdi serve`` boot from imported DataVolumes (real qemu, kubectl).

One ``cdi serve``, one qemu at a time, few boots (TCG boots take 10-20 s here): a VM importing a
qcow2 over http boots, shows KubeVirt's columns and its serial output in the guest-console-log
container and through ``cdi console``, stops and starts again, and is cleaned up on deletion; a
404 import gives DataVolumeError; a guest that powers itself off is left alone by Once and
restarted by Always.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.kube import DATAVOLUME, POD, PVC, NotFound
from tests.bootdisk import build_boot_disk
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.serve import Serve, dv_manifest, serving

pytestmark = pytest.mark.slow

VM_API = ("kubevirt.io", "v1")


def vm_manifest(name: str, volume: dict[str, Any], *, strategy: str = "Always",
                templates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "runStrategy": strategy,
        "template": {"spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": {"memory": {"guest": "256Mi"},
                       "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "root", **volume}],
        }},
    }
    if templates:
        spec["dataVolumeTemplates"] = templates
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "vmserve")


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("bootdisks")
    with HttpServer() as server:
        for name, poweroff in (("boot", False), ("poweroff", True)):
            raw = build_boot_disk(root / name, poweroff=poweroff)
            qcow2 = root / f"{name}.qcow2"
            images.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
            server.add(f"/{name}.qcow2", Route(path=str(qcow2)))
        yield server


def get(serve: Serve, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return serve.client.get_raw(f"/apis/kubevirt.io/v1/namespaces/default/{plural}/{name}")  # type: ignore[no-any-return]
    except NotFound:
        return None


def wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def printable(serve: Serve, name: str) -> str | None:
    return ((get(serve, "virtualmachines", name) or {}).get("status") or {}).get("printableStatus")


def launcher_pods(serve: Serve, vmi: str) -> list[dict[str, Any]]:
    return serve.client.list(POD, "default", label_selector=f"vm.kubevirt.io/name={vmi}")[0]


def qemu_running(serve: Serve, marker: str) -> bool:
    return bool(serve.pids(f"qemu-system.*{marker}"))


def cdi(serve: Serve, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cdi.cli.main", *args, "--kubeconfig", str(serve.kubeconfig)],
                          capture_output=True, timeout=timeout)


def test_vm_boots_stops_starts_and_is_cleaned_up(serve: Serve, disks: HttpServer) -> None:
    template = dv_manifest("testvm-root", {"http": {"url": disks.url("/boot.qcow2")}}, size="64Mi")
    template.pop("apiVersion"), template.pop("kind")
    serve.apply(vm_manifest("testvm", {"dataVolume": {"name": "testvm-root"}}, templates=[template]))
    serve.kubectl("wait", "--for=condition=Ready", "vm/testvm", "--timeout=180s", timeout=200)
    rows = serve.kubectl("get", "vm").stdout.splitlines()
    assert rows[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    assert rows[1].split()[0] == "testvm" and rows[1].split()[2:] == ["Running", "True"]
    vmi_rows = serve.kubectl("get", "vmi").stdout.splitlines()
    assert vmi_rows[0].split() == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    vmi = get(serve, "virtualmachineinstances", "testvm")
    assert vmi is not None and vmi["status"]["accelerator"]["name"] in ("KVM", "TCG")
    pod = launcher_pods(serve, "testvm")[0]["metadata"]["name"]
    assert pod.startswith("virt-launcher-testvm-")
    wait("the marker in the guest-console-log container", lambda: "CDI-BOOT-OK" in serve.kubectl(
        "logs", pod, "-c", "guest-console-log").stdout, timeout=60)
    assert "Accelerator" in serve.kubectl("get", "events", "--field-selector",
                                          "involvedObject.kind=VirtualMachineInstance").stdout

    # the console: a line typed goes to the guest, which echoes it; Ctrl+] leaves
    con = subprocess.Popen([sys.executable, "-m", "cdi.cli.main", "console", "testvm", "--kubeconfig",
                            str(serve.kubeconfig)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert con.stdin is not None and con.stdout is not None
    time.sleep(1.0)
    con.stdin.write(b"hello-console\n")
    con.stdin.flush()
    seen = b""
    deadline = time.monotonic() + 20
    os.set_blocking(con.stdout.fileno(), False)
    while b"cdi-echo: hello-console" not in seen and time.monotonic() < deadline:
        seen += con.stdout.read() or b""
        time.sleep(0.1)
    con.stdin.write(b"\x1d")
    con.stdin.flush()
    assert con.wait(10) == 0, con.stderr.read() if con.stderr else ""
    assert b"cdi-echo: hello-console" in seen, seen[-500:]

    # stop, then start again
    assert cdi(serve, "stop", "testvm").returncode == 0
    wait("Stopped", lambda: printable(serve, "testvm") == "Stopped", timeout=60)
    assert get(serve, "virtualmachineinstances", "testvm") is None
    assert not launcher_pods(serve, "testvm")
    refused = cdi(serve, "restart", "testvm")
    assert refused.returncode == 1 and b"does not support manual restart" in refused.stderr
    assert cdi(serve, "start", "testvm").returncode == 0
    serve.kubectl("wait", "--for=condition=Ready", "vm/testvm", "--timeout=120s", timeout=130)
    assert printable(serve, "testvm") == "Running"

    # deleting the VM removes the VMI, the pod, the DataVolume, the PVC, the volume and qemu
    pvc = serve.client.get(PVC, "default", "testvm-root")
    volume = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    uid = get(serve, "virtualmachineinstances", "testvm")["metadata"]["uid"]  # type: ignore[index]
    assert qemu_running(serve, "testvm"), "this serve's qemu is not found: the check below would prove nothing"
    serve.kubectl("delete", "vm", "testvm")
    wait("everything gone", lambda: get(serve, "virtualmachineinstances", "testvm") is None
         and not launcher_pods(serve, "testvm") and not volume.exists()
         and serve.client.find(DATAVOLUME, "default", "testvm-root") is None
         and serve.client.find(PVC, "default", "testvm-root") is None, timeout=60)
    for kind in (DATAVOLUME, PVC):
        with pytest.raises(NotFound):
            serve.client.get(kind, "default", "testvm-root")
    wait("qemu gone", lambda: not qemu_running(serve, uid) and not qemu_running(serve, "testvm"), timeout=30)


def test_failed_import_shows_data_volume_error(serve: Serve, disks: HttpServer) -> None:
    template = dv_manifest("broken-root", {"http": {"url": disks.url("/missing.qcow2")}}, size="64Mi")
    template.pop("apiVersion"), template.pop("kind")
    serve.apply(vm_manifest("broken", {"dataVolume": {"name": "broken-root"}}, templates=[template]))
    wait("DataVolumeError", lambda: printable(serve, "broken") == "DataVolumeError", timeout=60)
    assert get(serve, "virtualmachineinstances", "broken") is None
    serve.kubectl("delete", "vm", "broken")


def test_powered_off_guest_once_and_always(serve: Serve, disks: HttpServer) -> None:
    serve.apply(dv_manifest("poweroff-disk", {"http": {"url": disks.url("/poweroff.qcow2")}}, size="64Mi"))
    serve.wait_phase("poweroff-disk", "Succeeded")
    volume = {"persistentVolumeClaim": {"claimName": "poweroff-disk"}}
    serve.apply(vm_manifest("once", volume, strategy="Once"))
    wait("Once: the VMI Succeeded", lambda: ((get(serve, "virtualmachineinstances", "once") or {})
                                             .get("status") or {}).get("phase") == "Succeeded", timeout=120)
    uid = get(serve, "virtualmachineinstances", "once")["metadata"]["uid"]  # type: ignore[index]
    wait("Once: Stopped", lambda: printable(serve, "once") == "Stopped", timeout=30)
    time.sleep(3)
    vmi = get(serve, "virtualmachineinstances", "once")
    assert vmi is not None and vmi["metadata"]["uid"] == uid  # never restarted
    refused = cdi(serve, "start", "once")
    assert refused.returncode == 1 and b"Once does not support manual start requests" in refused.stderr
    serve.kubectl("delete", "vm", "once")
    wait("once gone", lambda: get(serve, "virtualmachineinstances", "once") is None, timeout=60)

    serve.apply(vm_manifest("always", volume, strategy="Always"))
    first = wait("Always: a first VMI", lambda: (get(serve, "virtualmachineinstances", "always") or {})
                 .get("metadata", {}).get("uid"), timeout=30)
    wait("Always: a second VMI after the guest powered off", lambda: (
        (get(serve, "virtualmachineinstances", "always") or {}).get("metadata", {}).get("uid") not in (None, first)),
        timeout=150)
    assert cdi(serve, "stop", "always").returncode == 0
    wait("Always stopped", lambda: printable(serve, "always") == "Stopped", timeout=60)
    assert get(serve, "virtualmachines", "always")["spec"]["runStrategy"] == "Halted"  # type: ignore[index]
    serve.kubectl("delete", "vm", "always")


def test_rerun_on_failure_restarts_a_crashed_guest(serve: Serve, disks: HttpServer) -> None:
    serve.apply(dv_manifest("rerun-disk", {"http": {"url": disks.url("/boot.qcow2")}}, size="64Mi"))
    serve.wait_phase("rerun-disk", "Succeeded")
    serve.apply(vm_manifest("rerun", {"persistentVolumeClaim": {"claimName": "rerun-disk"}},
                            strategy="RerunOnFailure"))
    serve.kubectl("wait", "--for=condition=Ready", "vm/rerun", "--timeout=180s", timeout=200)
    first = get(serve, "virtualmachineinstances", "rerun")["metadata"]["uid"]  # type: ignore[index]
    # the guest "crashes": its qemu is killed, the launcher reports Failed, RerunOnFailure starts it again
    pids = serve.pids("guest=default_rerun")
    assert pids, "no qemu for the VM"
    for pid in pids:
        os.kill(int(pid), 9)
    wait("a new VMI after the failure", lambda: (
        (get(serve, "virtualmachineinstances", "rerun") or {}).get("metadata", {}).get("uid") not in (None, first)),
        timeout=150)
    serve.kubectl("wait", "--for=condition=Ready", "vm/rerun", "--timeout=180s", timeout=200)
    assert printable(serve, "rerun") == "Running"
    serve.kubectl("delete", "vm", "rerun")
    wait("rerun gone", lambda: get(serve, "virtualmachineinstances", "rerun") is None, timeout=60)
