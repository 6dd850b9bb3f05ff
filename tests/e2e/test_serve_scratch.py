"""End to end: a DataVolume whose import needs scratch space, through ``cdi serve`` and the real kubectl.

A Block volume (where scratch beside the target would land in the pod's /dev) from a server without
range requests: the importer asks for scratch, the controller makes ``<pvc>-scratch`` in CDIConfig's
scratch class, the node provisions it for the importer pod, and it is gone when the import is done.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import PVC
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.serve import Serve, dv_manifest, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "serve")


def test_a_block_import_that_needs_scratch_gets_a_scratch_claim_of_cdiconfigs_class(
        serve: Serve, tmp_path: Path) -> None:
    raw = images.make_raw(tmp_path / "d.raw", 6 << 20)
    vmdk = images.convert(raw, "vmdk", tmp_path / "d.vmdk")
    reference = tmp_path / "reference.raw"
    images.qemu_img("convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(reference))
    serve.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "scratch-e2e"},
                 "provisioner": "cdi.kubevirt.io/local", "volumeBindingMode": "WaitForFirstConsumer"})
    # serve makes CDIConfig "config" when its upload proxy is up (status.uploadProxyURL): patch that one
    for _ in range(100):
        if serve.kubectl("get", "cdiconfig", "config", check=False).returncode == 0:
            break
        time.sleep(0.1)
    serve.kubectl("patch", "cdiconfig", "config", "--type", "merge",
                  "-p", '{"spec": {"scratchSpaceStorageClass": "scratch-e2e"}}')
    with HttpServer() as files:
        files.add("/d.vmdk", Route(path=str(vmdk), ranges=False))
        serve.apply(dv_manifest("blockvmdk", {"http": {"url": files.url("/d.vmdk")}}, size="16Mi", api="pvc",
                                volume_mode="Block"))
        serve.wait_phase("blockvmdk", "Succeeded")
    pvc = serve.client.get(PVC, "default", "blockvmdk")
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.requiresScratch"] == "true"
    disk = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    data = disk.read_bytes()
    ref = reference.read_bytes()
    assert len(data) == 16 << 20 and data[:len(ref)] == ref and not data[len(ref):].strip(b"\0")
    events = serve.kubectl("get", "events", "--field-selector", "involvedObject.name=blockvmdk",
                           "-o", "jsonpath={range .items[*]}{.reason}={.message}{'\\n'}{end}").stdout
    assert "CreatingScratchSpace=Creating scratch space" in events, events
    log = serve.log.read_text()
    assert "created scratch claim blockvmdk-scratch class=scratch-e2e" in log
    # gone afterwards: the claim, and its volume on disk
    claims = serve.kubectl("get", "pvc", "-o", "name").stdout.split()
    assert "persistentvolumeclaim/blockvmdk" in claims
    for _ in range(100):
        claims = serve.kubectl("get", "pvc", "-o", "name").stdout.split()
        leftovers = list((serve.data_dir / "volumes" / "default").glob("blockvmdk-scratch-*"))
        if "persistentvolumeclaim/blockvmdk-scratch" not in claims and not leftovers:
            break
        time.sleep(0.1)
    assert "persistentvolumeclaim/blockvmdk-scratch" not in claims and not leftovers, (claims, leftovers)
