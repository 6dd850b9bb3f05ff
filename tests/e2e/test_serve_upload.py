"""End to end uploads: ``cdi serve``, the real kubectl and curl as CDI's doc/upload.md shows, ``cdi image-upload``
(with the upload server killed in the middle: the upload continues where it stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import DATAVOLUME, POD, PVC
from importer.digest import volume_digest
from tests.support import images
from tests.support.serve import Serve, serving

pytestmark = pytest.mark.slow

DIGEST = "cdi.kubevirt.io/storage.import.volumeDigest"
DV = """apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: upload-datavolume
spec:
  source:
    upload: {}
  pvc:
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: 64Mi
"""
TOKEN = """apiVersion: upload.cdi.kubevirt.io/v1beta1
kind: UploadTokenRequest
metadata:
  name: upload-datavolume
  namespace: default
spec:
  pvcName: upload-datavolume
"""


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "serve-upload", "--uploadproxy-port", "0",
                       "--upload-resume-interval", str(4 << 20))


def volume_file(serve: Serve, name: str) -> Path:
    pvc = serve.client.get(PVC, "default", name)
    path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    return path / "disk.img" if path.is_dir() else path


def expected_digest(image: Path, disk: Path, work: Path) -> str:
    reference = work / f"{disk.parent.name}.ref"
    with open(image, "rb") as src, open(reference, "wb") as dst:
        while data := src.read(1 << 20):
            dst.write(data)
        dst.truncate(disk.stat().st_size)
    try:
        return volume_digest(str(reference))
    finally:
        reference.unlink()


def test_curl_as_cdi_documents_it(serve: Serve, image_factory, tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    while not (url := serve.kubectl("get", "cdiconfig", "config", "-o", "jsonpath={.status.uploadProxyURL}",
                                    check=False).stdout):
        assert time.monotonic() < deadline, "CDIConfig config never got status.uploadProxyURL"
        time.sleep(0.1)
    assert url.startswith("https://127.0.0.1:")
    # the start-up message is printed once everything listens, a moment after CDIConfig is published
    while f"upload proxy at {url}" not in serve.log.read_text():
        assert time.monotonic() < deadline, f"the start-up message never named the upload proxy at {url}"
        time.sleep(0.1)
    serve.kubectl("create", "-f", "-", input=DV)
    serve.kubectl("wait", "--for=jsonpath={.status.phase}=UploadReady", "dv/upload-datavolume", "--timeout=60s")
    token = serve.kubectl("create", "-f", "-", "-o=jsonpath={.status.token}", input=TOKEN).stdout
    assert token.count(".") == 2
    image = image_factory.get("qcow2")
    proc = subprocess.run(["curl", "-v", "--insecure", "-H", f"Authorization: Bearer {token}", "--data-binary",
                           f"@{image}", f"{url}/v1beta1/upload"], capture_output=True, text=True, timeout=120)
    assert "< HTTP/1.1 200" in proc.stderr, proc.stderr[-2000:]
    serve.kubectl("wait", "--for=condition=Ready", "dv/upload-datavolume", "--timeout=30s")
    out = serve.kubectl("get", "dv", "upload-datavolume").stdout.splitlines()
    assert out[1].split()[:3] == ["upload-datavolume", "Succeeded", "100.0%"]
    disk = volume_file(serve, "upload-datavolume")
    digest = serve.dv("upload-datavolume")["metadata"]["annotations"][DIGEST]
    assert digest == expected_digest(image_factory.raw, disk, tmp_path)
    events = serve.kubectl("get", "events", "--field-selector", "involvedObject.name=upload-datavolume").stdout
    assert "UploadSucceeded" in events


def _image_upload(serve: Serve, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KUBECONFIG": str(serve.kubeconfig)}
    return subprocess.Popen([sys.executable, "-m", "cdi.cli.main", "image-upload", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_image_upload_of_qcow2_into_a_block_pvc(serve: Serve, image_factory, tmp_path: Path) -> None:
    proc = _image_upload(serve, "pvc", "iu-block", "--size", "16Mi", "--volume-mode", "block",
                         "--image-path", str(image_factory.get("qcow2")), "--insecure")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Processing completed successfully" in out
    pvc = serve.client.get(PVC, "default", "iu-block")
    disk = volume_file(serve, "iu-block")
    assert pvc["metadata"]["annotations"][DIGEST] == expected_digest(image_factory.raw, disk, tmp_path)


def test_image_upload_continues_after_the_upload_server_is_killed(serve: Serve, tmp_path: Path) -> None:
    raw = images.make_raw(tmp_path / "big.raw", 96 << 20, data_ratio=0.6)
    proc = _image_upload(serve, "dv", "iu-resume", "--size", "128Mi", "--image-path", str(raw))
    pod_name = "cdi-upload-iu-resume"
    deadline = time.monotonic() + 60
    while True:  # kill the server once it holds a durable resume point
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        pvc = serve.client.find(PVC, "default", "iu-resume")
        if pvc and "cdi.kubevirt.io/local-path" in pvc["metadata"]["annotations"]:
            root = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
            if (root / ".disk.img.cdi-resume.json").exists():
                break
        time.sleep(0.01)
    pod = serve.client.get(POD, "default", pod_name)
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "continuing at byte" in out and "continuing at byte 0\n" not in out, out
    dv = serve.client.get(DATAVOLUME, "default", "iu-resume")
    assert dv["status"]["phase"] == "Succeeded"
    disk = volume_file(serve, "iu-resume")
    assert dv["metadata"]["annotations"][DIGEST] == expected_digest(raw, disk, tmp_path)
