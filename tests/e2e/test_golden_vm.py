"""End to end: a VM boots from a golden image a DataImportCron keeps (``cdi serve``, real registry, qemu).

The containerDisk with a bootable disk is pushed to a real ``docker-registry``; a DataImportCron imports
it and feeds DataSource ``golden``; a VirtualMachine whose dataVolumeTemplate refers to that DataSource
gets its disk cloned from it and boots (its serial marker in the guest-console-log container).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.kube import POD
from tests.bootdisk import build_boot_disk
from tests.support.registry import Registry, container_disk
from tests.support.serve import Serve, serving

pytestmark = pytest.mark.slow


def wait(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "goldenserve")


def test_a_vm_boots_from_the_datasource_a_dataimportcron_feeds(serve: Serve, tmp_path: Path) -> None:
    disk = build_boot_disk(tmp_path / "boot")
    with Registry(tmp_path / "registry") as reg:
        reg.push(container_disk(tmp_path / "layout", disk), "golden/boot")
        serve.kubectl("patch", "cdiconfig", "config", "--type=merge", "-p",
                      f'{{"spec": {{"insecureRegistries": ["{reg.host}"]}}}}')
        serve.apply({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
                     "metadata": {"name": "golden-cron", "namespace": "default"},
                     "spec": {"schedule": "0 3 * * *", "managedDataSource": "golden", "template": {"spec": {
                         "source": {"registry": {"url": reg.url("golden/boot")}},
                         "storage": {"resources": {"requests": {"storage": "64Mi"}}}}}}})
        # the cron's controller makes the DataSource a moment after the cron: kubectl wait needs it to exist
        deadline = time.monotonic() + 60
        while serve.kubectl("get", "das/golden", check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        serve.kubectl("wait", "--for=condition=Ready", "das/golden", "--timeout=120s", timeout=130)
    serve.apply({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "golden-vm"},
                 "spec": {"runStrategy": "Always",
                          "dataVolumeTemplates": [{"metadata": {"name": "golden-vm-root"}, "spec": {
                              "sourceRef": {"kind": "DataSource", "name": "golden"}, "storage": {}}}],
                          "template": {"spec": {
                              "terminationGracePeriodSeconds": 5,
                              "domain": {"memory": {"guest": "256Mi"},
                                         "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                              "volumes": [{"name": "root", "dataVolume": {"name": "golden-vm-root"}}]}}}})
    serve.kubectl("wait", "--for=condition=Ready", "vm/golden-vm", "--timeout=180s", timeout=200)
    pod = wait("the launcher", lambda: serve.client.list(POD, "default",
                                                          label_selector="vm.kubevirt.io/name=golden-vm")[0])[0]
    wait("the guest's marker", lambda: "CDI-BOOT-OK" in serve.kubectl(
        "logs", pod["metadata"]["name"], "-c", "guest-console-log").stdout, timeout=90)
    rows = serve.kubectl("get", "das,dic").stdout
    assert "golden" in rows and "golden-cron" in rows and "pvc" in rows, rows
    serve.kubectl("delete", "vm", "golden-vm")
