"""End to end: ``cdi serve`` + the real kubectl + real HTTP(S) servers: DataVolumes as CDI users write them."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import PVC
from cdi.units import parse_size
from importer.digest import volume_digest
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.serve import Serve, dv_manifest, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "serve")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


def volume_file(serve: Serve, name: str) -> Path:
    pvc = serve.client.get(PVC, "default", name)
    path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    return path / "disk.img" if path.is_dir() else path


def test_http_storage_import_reaches_succeeded(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/e2e.qcow2", Route(path=str(image_factory.get("qcow2"))))
    serve.apply(dv_manifest("http-storage", {"http": {"url": files.url("/e2e.qcow2")}}, size="64Mi"))
    serve.kubectl("wait", "--for=condition=Ready", "dv/http-storage", "--timeout=90s")
    out = serve.kubectl("get", "dv", "http-storage").stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    assert out[1].split()[:4] == ["http-storage", "Succeeded", "100.0%", "0"]
    disk = volume_file(serve, "http-storage")
    assert disk.stat().st_size == 64 << 20
    with open(disk, "rb") as f:
        assert f.read(8 << 20) == image_factory.raw.read_bytes()
    dv = serve.dv("http-storage")
    digest = dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.volumeDigest"]
    assert digest == volume_digest(str(disk))
    conds = {c["type"]: c for c in dv["status"]["conditions"]}
    assert conds["Bound"]["status"] == "True" and conds["Ready"]["status"] == "True"
    assert conds["Running"]["reason"] == "Completed"
    assert dv["status"]["claimName"] == "http-storage"
    pvc = serve.client.get(PVC, "default", "http-storage")
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "DataVolume"
    # with the storage API the PVC grows by the filesystem overhead, the image keeps its size
    assert parse_size(pvc["spec"]["resources"]["requests"]["storage"]) > 64 << 20
    described = serve.kubectl("describe", "dv", "http-storage").stdout
    assert "Succeeded" in described and "ImportScheduled" in described


def test_pvc_api_block_volume(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/e2e.raw.xz", Route(path=str(image_factory.get("raw.xz"))))
    serve.apply(dv_manifest("block", {"http": {"url": files.url("/e2e.raw.xz")}}, size="32Mi", api="pvc",
                            volume_mode="Block"))
    serve.wait_phase("block", "Succeeded")
    disk = volume_file(serve, "block")
    assert disk.stat().st_size == 32 << 20
    data = disk.read_bytes()
    assert data[: 8 << 20] == image_factory.raw.read_bytes()
    assert data[8 << 20:] == bytes(24 << 20)


def test_blank_datavolume(serve: Serve) -> None:
    serve.apply(dv_manifest("blank", {"blank": {}}, size="1Gi"))
    serve.wait_phase("blank", "Succeeded")
    disk = volume_file(serve, "blank")
    assert disk.stat().st_size == 1 << 30
    assert images.allocated(disk) == 0


def test_secret_ref_cert_config_map_and_headers(serve: Serve, https_server: HttpServer, ca, image_factory) -> None:
    https_server.add("/private.qcow2", Route(path=str(image_factory.get("qcow2")), user="alice", password="pw",
                                             require_headers={"X-Api": "1", "X-Secret": "s3"}))
    ca_pem = ca.cert_pem.bytes().decode()
    serve.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                 "data": {"accessKeyId": base64.b64encode(b"alice").decode(),
                          "secretKey": base64.b64encode(b"pw").decode()}})
    serve.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hdr"},
                 "stringData": {"h": "X-Secret: s3"}})
    serve.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca"}, "data": {"ca.pem": ca_pem}})
    source = {"http": {"url": https_server.url("/private.qcow2"), "secretRef": "creds", "certConfigMap": "ca",
                       "extraHeaders": ["X-Api: 1"], "secretExtraHeaders": ["hdr"]}}
    serve.apply(dv_manifest("private", source, size="16Mi"))
    serve.wait_phase("private", "Succeeded")
    with open(volume_file(serve, "private"), "rb") as f:
        assert f.read(8 << 20) == image_factory.raw.read_bytes()


def test_watch_progress_and_importer_logs(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/slow.raw", Route(path=str(image_factory.raw), rate=2 << 20))  # about 4 s
    # watch all DataVolumes: "get dv slow -w" would fail if it started before the DataVolume exists
    watcher = subprocess.Popen(["kubectl", "--kubeconfig", str(serve.kubeconfig), "get", "dv", "-w",
                                "--request-timeout=60s"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "HOME": str(serve.data_dir.parent)})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    serve.apply(dv_manifest("watch-marker", {"blank": {}}, size="1Mi"))  # seen once the watch is running
    deadline = time.monotonic() + 30
    while not any(line.startswith("watch-marker") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    serve.apply(dv_manifest("slow", {"http": {"url": files.url("/slow.raw")}}, size="16Mi",
                            annotations={"cdi.kubevirt.io/storage.pod.retainAfterCompletion": "true"}))
    progress: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = serve.dv("slow").get("status") or {}
        if status.get("phase") == "ImportInProgress" and status.get("progress", "").endswith("%"):
            progress.add(status["progress"])
        if status.get("phase") == "Succeeded":
            break
        time.sleep(0.2)
    time.sleep(0.5)
    watcher.terminate()
    phases = {line.split()[1] for line in lines if line.startswith("slow")}
    assert {"ImportScheduled", "ImportInProgress", "Succeeded"} <= phases, lines
    assert len(progress) >= 2, progress  # the percentage moved during the transfer
    logs = serve.kubectl("logs", "importer-slow").stdout
    assert '"progress": "100.00%"' in logs and "import done" in logs


def test_checksum_mismatch_is_permanent_failure(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/sum.raw.gz", Route(path=str(image_factory.get("raw.gz"))))
    bad = "sha256:" + "0" * 64
    serve.apply(dv_manifest("badsum", {"http": {"url": files.url("/sum.raw.gz"), "checksum": bad}}, size="16Mi"))
    dv = serve.wait_phase("badsum", "Failed")
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert running["reason"] == "ChecksumMismatch"
    actual = hashlib.sha256(image_factory.get("raw.gz").read_bytes()).hexdigest()
    assert actual in running["message"]
    events = serve.kubectl("get", "events", "--field-selector", "involvedObject.name=badsum").stdout
    assert "ImportFailed" in events
    good = "sha256:" + actual
    serve.apply(dv_manifest("goodsum", {"http": {"url": files.url("/sum.raw.gz"), "checksum": good}}, size="16Mi"))
    serve.wait_phase("goodsum", "Succeeded")


def test_transient_errors_retry_with_restart_count(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/flaky.raw", Route(path=str(image_factory.raw), fail_first=14))  # importer retries 6x per run
    serve.apply(dv_manifest("flaky", {"http": {"url": files.url("/flaky.raw")}}, size="16Mi"))
    dv = serve.wait_phase("flaky", "Succeeded", timeout=120)
    assert dv["status"]["restartCount"] >= 1


def test_bad_manifest_is_refused_with_reason(serve: Serve) -> None:
    proc = serve.kubectl("apply", "-f", "-", check=False, input="""
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: bad}
spec:
  source: {http: {url: "ftp://example.org/disk.img"}}
  storage: {resources: {requests: {storage: 1Gi}}}
""")
    assert proc.returncode != 0
    assert "spec.source.http.url" in proc.stderr


def test_delete_cascades_to_pvc_and_data(serve: Serve, files: HttpServer, image_factory) -> None:
    files.add("/del.raw", Route(path=str(image_factory.raw)))
    serve.apply(dv_manifest("todelete", {"http": {"url": files.url("/del.raw")}}, size="16Mi"))
    serve.wait_phase("todelete", "Succeeded")
    disk = volume_file(serve, "todelete")
    serve.kubectl("delete", "dv", "todelete", "--timeout=60s")
    deadline = time.monotonic() + 30

    def pvc_left() -> bool:  # the claim goes in two steps: its volume's data first, then the object
        return serve.kubectl("get", "pvc", "todelete", check=False).returncode == 0

    while (disk.exists() or pvc_left()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not disk.exists()
    assert not pvc_left()
