"""Uploads through the real proxy and real upload server processes, against the in-process API server and node.

Tokens come from the official kubernetes Python client (UploadTokenRequest), uploads go through the
real curl; every finished volume is compared byte for byte and by digest with the image sent.
"""

from __future__ import annotations

import datetime
import io
import os
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ControllerSettings
from cdi.kube import DATAVOLUME, POD, PVC, SECRET, SERVICE, Obj
from cdi.upload_runtime import KEY_FILE, start_upload_proxy
from cdi.uploadtoken import Signer, ensure_key
from importer.digest import volume_digest
from tests.functional.test_node_fixtures import NS, NodeEnv, make_env
from tests.support import images
from uploadproxy.proxy import UploadProxy

DIGEST = "cdi.kubevirt.io/storage.import.volumeDigest"


@dataclass
class Env:
    node: NodeEnv
    proxy: UploadProxy
    work: Path
    api: k8s.ApiClient
    raw: Path

    @property
    def client(self) -> Any:
        return self.node.client

    def create_dv(self, name: str, size: str = "16Mi", **spec: Any) -> None:
        claim = {"resources": {"requests": {"storage": size}}}
        if "volumeMode" in spec:
            claim["volumeMode"] = spec.pop("volumeMode")
        self.client.create(DATAVOLUME, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                        "metadata": {"name": name, "namespace": NS},
                                        "spec": {"source": {"upload": {}}, "storage": claim, **spec}})

    def phase(self, name: str, *phases: str, timeout: float = 30) -> Obj:
        return self.node.wait(DATAVOLUME, name, lambda d: (d.get("status") or {}).get("phase") in phases, timeout)

    def token(self, pvc: str) -> str:
        body = {"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                "metadata": {"name": pvc, "namespace": NS}, "spec": {"pvcName": pvc}}
        out = k8s.CustomObjectsApi(self.api).create_namespaced_custom_object(
            "upload.cdi.kubevirt.io", "v1beta1", NS, "uploadtokenrequests", body)
        return str(out["status"]["token"])

    def curl(self, path: str, *args: str, token: str | None = None, headers: tuple[str, ...] = ()) -> tuple[int, str]:
        out = self.work / f"curl-{time.monotonic_ns()}"
        cmd = ["curl", "-sS", "--cacert", str(self.node.cluster.server.tls.ca_file), "-o", str(out),
               "-w", "%{http_code}"]
        if token is not None:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        for h in headers:
            cmd += ["-H", h]
        proc = subprocess.run([*cmd, *args, self.proxy.url + path], capture_output=True, text=True, timeout=120)
        body = out.read_text() if out.exists() else ""
        return int(proc.stdout.strip() or 0), body

    def volume(self, name: str) -> Path:
        pvc = self.client.get(PVC, NS, name)
        path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
        return path / "disk.img" if path.is_dir() else path

    def check_volume(self, name: str, image: Path) -> None:
        """The volume holds ``image`` then zeros, and its recorded digest is the digest of exactly that."""
        dv = self.client.get(DATAVOLUME, NS, name)
        disk = self.volume(name)
        size = disk.stat().st_size
        reference = images.padded(image.read_bytes(), size, self.work / f"{name}.expected")
        assert images.same_content(disk, reference)
        assert dv["metadata"]["annotations"][DIGEST] == volume_digest(str(reference))
        reference.unlink()

    def running_message(self, name: str, text: str, timeout: float = 30) -> Obj:
        def says(d: Obj) -> bool:
            conds = (d.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Running" and text in (c.get("message") or "") for c in conds)

        return self.node.wait(DATAVOLUME, name, says, timeout)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("upload")
    node = make_env(work, max_running_pods=8)
    manager = ControllerManager(node.client, ControllerSettings(progress_interval=0.2), workers=2).start()
    proxy = start_upload_proxy(node.cluster.server, node.client, work, "127.0.0.1", 0)
    api = k8s_config.new_client_from_config(str(node.cluster.kubeconfig))
    raw = images.make_raw(work / "disk.raw", 8 << 20)
    yield Env(node, proxy, work, api, raw)
    proxy.stop()
    manager.stop()
    node.node.stop()
    node.cluster.server.stop()


def test_sync_upload_of_raw_as_cdi_documents_it(env: Env) -> None:
    env.create_dv("up-sync")
    env.phase("up-sync", "UploadReady")
    pvc = env.client.get(PVC, NS, "up-sync")
    assert pvc["metadata"]["annotations"]["cdi.kubevirt.io/storage.pod.ready"] == "true"
    code, body = env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=env.token("up-sync"))
    assert (code, body) == (200, "")
    dv = env.phase("up-sync", "Succeeded", timeout=10)  # sync: complete when the answer came
    assert dv["status"]["progress"] == "100.0%"
    env.check_volume("up-sync", env.raw)
    reasons = [e["reason"] for e in env.node.events("up-sync")]
    assert {"UploadScheduled", "UploadReady", "UploadSucceeded"} <= set(reasons)
    code, body = env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=env.token("up-sync"))
    assert code == 503 and "already finished uploading" in body


def test_async_upload_of_qcow2(env: Env, image_factory: Any) -> None:
    env.create_dv("up-async")
    env.phase("up-async", "UploadReady")
    code, _ = env.curl("/v1beta1/upload-async", "--data-binary", f"@{image_factory.get('qcow2')}",
                       token=env.token("up-async"))
    assert code == 200
    env.phase("up-async", "Succeeded")
    env.check_volume("up-async", image_factory.raw)


def test_a_running_upload_shows_its_progress_on_the_datavolume(env: Env, image_factory: Any) -> None:
    import threading

    env.create_dv("up-progress")
    env.phase("up-progress", "UploadReady")
    image = image_factory.get("qcow2")
    answer: list[tuple[int, str]] = []
    sender = threading.Thread(target=lambda: answer.append(env.curl(
        "/v1beta1/upload", "--limit-rate", str(image.stat().st_size // 3), "--data-binary", f"@{image}",
        token=env.token("up-progress"))))
    sender.start()

    def midway(d: Obj) -> bool:
        status = d.get("status") or {}
        value = str(status.get("progress", "N/A"))
        return status.get("phase") == "UploadReady" and value.endswith("%") and 0 < float(value[:-1]) < 100

    dv = env.node.wait(DATAVOLUME, "up-progress", midway, 30)
    assert dv["status"]["progress"].count(".") == 1 and len(dv["status"]["progress"].split(".")[1]) == 3  # NN.NN%
    sender.join(60)
    assert answer == [(200, "")]
    assert env.phase("up-progress", "Succeeded", timeout=10)["status"]["progress"] == "100.0%"
    env.check_volume("up-progress", image_factory.raw)


def test_form_upload_of_gz_and_v1alpha1_alias(env: Env, image_factory: Any) -> None:
    env.create_dv("up-form")
    env.phase("up-form", "UploadReady")
    code, _ = env.curl("/v1alpha1/upload-form", "-F", f"file=@{image_factory.get('raw.gz')}",
                       token=env.token("up-form"))
    assert code == 200
    env.phase("up-form", "Succeeded", timeout=10)
    env.check_volume("up-form", image_factory.raw)


def test_archive_upload_extracts_files(env: Env) -> None:
    env.create_dv("up-archive", contentType="archive")
    env.phase("up-archive", "UploadReady")
    tar = env.work / "files.tar"
    with tarfile.open(tar, "w") as t:
        for name, data in (("a.txt", b"alpha\n"), ("dir/b.bin", os.urandom(100_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    code, _ = env.curl("/v1beta1/upload", "--data-binary", f"@{tar}", token=env.token("up-archive"))
    assert code == 200
    env.phase("up-archive", "Succeeded", timeout=10)
    root = env.volume("up-archive").parent
    assert (root / "a.txt").read_bytes() == b"alpha\n"
    with tarfile.open(tar) as t:
        member = t.extractfile("dir/b.bin")
        assert member is not None and (root / "dir" / "b.bin").read_bytes() == member.read()


def test_block_volume_upload_of_zst(env: Env, image_factory: Any) -> None:
    env.create_dv("up-block", volumeMode="Block")
    env.phase("up-block", "UploadReady")
    code, _ = env.curl("/v1beta1/upload", "-T", str(image_factory.get("raw.zst")), token=env.token("up-block"))
    assert code == 200
    env.phase("up-block", "Succeeded", timeout=10)
    env.check_volume("up-block", image_factory.raw)


def test_vmdk_into_a_block_volume_converts_through_the_pods_own_scratch(env: Env, image_factory: Any) -> None:
    """A vmdk needs a local file for qemu-img: the upload pod's emptyDir holds it, not the device's /dev."""
    env.create_dv("up-block-vmdk", volumeMode="Block")
    env.phase("up-block-vmdk", "UploadReady")
    pod = env.client.get(POD, NS, "cdi-upload-up-block-vmdk")
    assert {"name": "cdi-scratch-vol", "emptyDir": {}} in pod["spec"]["volumes"]
    assert {"name": "cdi-scratch-vol", "mountPath": "/scratch"} in pod["spec"]["containers"][0]["volumeMounts"]
    code, _ = env.curl("/v1beta1/upload", "-T", str(image_factory.get("vmdk")), token=env.token("up-block-vmdk"))
    assert code == 200
    env.phase("up-block-vmdk", "Succeeded", timeout=10)
    env.check_volume("up-block-vmdk", image_factory.raw)


def test_token_errors_as_cdi(env: Env) -> None:
    env.create_dv("up-tokens")
    env.phase("up-tokens", "UploadReady")
    data = ("--data-binary", f"@{env.raw}")
    assert env.curl("/v1beta1/upload", *data)[0] == 400  # no Authorization header
    assert env.curl("/v1beta1/upload", *data, headers=("Authorization: Bearer a b",))[0] == 400
    assert env.curl("/v1beta1/upload", *data, headers=("Authorization: Basic abc",))[0] == 400
    other = Signer(ensure_key(env.work / "other.key"))
    assert env.curl("/v1beta1/upload", *data, token=other.upload_token(NS, "up-tokens"))[0] == 401
    key = ensure_key(env.work / KEY_FILE)
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    assert env.curl("/v1beta1/upload", *data, token=Signer(key).upload_token(NS, "up-tokens", now=old))[0] == 401
    claims = {"iss": "cdi-apiserver", "exp": datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5),
              "operation": "Clone", "name": "up-tokens", "namespace": NS,
              "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}}
    assert env.curl("/v1beta1/upload", *data, token=jwt.encode(claims, key, algorithm="PS256"))[0] == 400
    code, body = env.curl("/v1beta1/upload", *data, token=env.token("no-such-pvc<script>"))
    assert code == 503 and "no-such-pvc&lt;script&gt;" in body and "<script>" not in body
    assert env.client.get(DATAVOLUME, NS, "up-tokens")["status"]["phase"] == "UploadReady"
    env.client.delete(DATAVOLUME, NS, "up-tokens")


def test_cors_preflight(env: Env) -> None:
    out = subprocess.run(["curl", "-sS", "-i", "-X", "OPTIONS", "--cacert", str(env.node.cluster.server.tls.ca_file),
                          "-H", "Origin: https://example.com", env.proxy.url + "/v1beta1/upload-form"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "HTTP/1.1 200" in out and "Access-Control-Allow-Origin: *" in out
    assert "Authorization" in out.split("Access-Control-Allow-Headers:")[1].splitlines()[0]


def test_second_concurrent_upload_gets_503(env: Env) -> None:
    env.create_dv("up-busy")
    env.phase("up-busy", "UploadReady")
    token = env.token("up-busy")
    slow = subprocess.Popen(["curl", "-sS", "--cacert", str(env.node.cluster.server.tls.ca_file), "-o", "/dev/null",
                             "-w", "%{http_code}", "--limit-rate", "2M", "-H", f"Authorization: Bearer {token}",
                             "--data-binary", f"@{env.raw}", env.proxy.url + "/v1beta1/upload"],
                            stdout=subprocess.PIPE, text=True)
    disk = env.volume("up-busy")
    deadline = time.monotonic() + 20
    while not (disk.exists() and disk.stat().st_blocks > 0):  # the first upload is writing
        assert time.monotonic() < deadline and slow.poll() is None
        time.sleep(0.05)
    assert env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=token)[0] == 503
    out, _ = slow.communicate(timeout=60)
    assert out == "200"
    env.phase("up-busy", "Succeeded", timeout=10)
    env.check_volume("up-busy", env.raw)


def _wait_event(env: Env, name: str, reason: str, text: str, timeout: float = 10) -> None:
    """The event follows the condition the controller writes first."""
    deadline = time.monotonic() + timeout
    while not any(e["reason"] == reason and text in e.get("message", "") for e in env.node.events(name)):
        assert time.monotonic() < deadline, env.node.events(name)
        time.sleep(0.1)


def _progress_stays_na(env: Env, name: str, seconds: float = 2.5) -> None:
    """The refused or cut-off bytes are not held: the progress says N/A, through several of the upload
    server's progress lines (one a second) and the controller's reads (every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = env.client.get(DATAVOLUME, NS, name)["status"]
        assert (status["phase"], status["progress"]) == ("UploadReady", "N/A"), status
        time.sleep(0.1)


def test_image_larger_than_volume_is_400_and_the_dv_says_why(env: Env) -> None:
    env.create_dv("up-big", size="4Mi")
    env.phase("up-big", "UploadReady")
    code, body = env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=env.token("up-big"))
    assert code == 400
    assert body.startswith("Saving stream failed: effective image size is larger than the reported available storage")
    dv = env.running_message("up-big", "larger than the volume capacity")
    assert dv["status"]["phase"] == "UploadReady"  # another try may still come
    _progress_stays_na(env, "up-big")
    _wait_event(env, "up-big", "UploadFailed", "larger than the volume capacity")
    env.client.delete(DATAVOLUME, NS, "up-big")  # a DataVolume deleted while its upload server runs
    deadline = time.monotonic() + 15
    while left := [k.kind for k, n in ((DATAVOLUME, "up-big"), (PVC, "up-big"), (POD, "cdi-upload-up-big"),
                                       (SERVICE, "cdi-upload-up-big"), (SECRET, "cdi-upload-up-big"))
                   if env.client.find(k, NS, n) is not None]:
        assert time.monotonic() < deadline, f"left behind after deletion: {left}"
        time.sleep(0.05)


@pytest.mark.parametrize("path,form", [("/v1beta1/upload-async", False), ("/v1beta1/upload-form-async", True)])
def test_async_upload_of_a_qcow2_larger_than_the_volume_is_400_as_sync(env: Env, path: str, form: bool) -> None:
    name = "up-big-async" + ("-form" if form else "")
    big = env.work / "big50.qcow2"
    if not big.exists():
        images.convert(images.make_raw(env.work / "big50.raw", 50 << 20, data_ratio=0.2), "qcow2", big)
    env.create_dv(name, size="20Mi")
    env.phase(name, "UploadReady")
    data = ("-F", f"file=@{big}") if form else ("--data-binary", f"@{big}")
    code, body = env.curl(path, *data, token=env.token(name))
    assert code == 400, body
    cdi = "effective image size is larger than the reported available storage: image virtual size 52428800"
    assert body.startswith(f"Saving stream failed: {cdi}")
    dv = env.running_message(name, cdi)
    assert dv["status"]["phase"] == "UploadReady"  # refused before its answer: another try may still come
    _wait_event(env, name, "UploadFailed", cdi)
    env.client.delete(DATAVOLUME, NS, name)


def _send_cut(env: Env, token: str, data: bytes, announced: int) -> None:
    """A request announcing ``announced`` bytes that sends only ``data`` and then closes."""
    ctx = ssl.create_default_context(cafile=str(env.node.cluster.server.tls.ca_file))
    with socket.create_connection(("127.0.0.1", env.proxy.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(f"POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Length: {announced}\r\n\r\n".encode() + data)


def test_cut_body_is_refused_then_a_full_upload_succeeds(env: Env) -> None:
    env.create_dv("up-cut")
    env.phase("up-cut", "UploadReady")
    data = env.raw.read_bytes()
    _send_cut(env, env.token("up-cut"), data[: 3 << 20], len(data))
    env.running_message("up-cut", "the upload ended at byte")
    _progress_stays_na(env, "up-cut")
    code, _ = env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=env.token("up-cut"))
    assert code == 200
    env.phase("up-cut", "Succeeded", timeout=10)
    env.check_volume("up-cut", env.raw)


def test_bare_pvc_marked_as_upload_target(env: Env) -> None:
    env.client.create(PVC, {"metadata": {"name": "up-pvc", "namespace": NS,
                                         "annotations": {"cdi.kubevirt.io/storage.upload.target": ""}},
                            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                                     "resources": {"requests": {"storage": "8Mi"}}}})

    def ann(p: Obj) -> dict[str, str]:
        return p["metadata"].get("annotations") or {}

    env.node.wait(PVC, "up-pvc", lambda p: ann(p).get("cdi.kubevirt.io/storage.pod.ready") == "true", 30)
    code, _ = env.curl("/v1beta1/upload", "--data-binary", f"@{env.raw}", token=env.token("up-pvc"))
    assert code == 200
    pvc = env.node.wait(PVC, "up-pvc", lambda p: ann(p).get("cdi.kubevirt.io/storage.pod.phase") == "Succeeded")
    assert ann(pvc)[DIGEST] == volume_digest(str(env.raw))
    assert images.same_content(env.volume("up-pvc"), env.raw)


def _image_upload(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdi.cli.main", "image-upload", *args,
                           "--kubeconfig", str(env.node.cluster.kubeconfig), "--uploadproxy-url", env.proxy.url],
                          capture_output=True, text=True, timeout=120)


def test_image_upload_exits_1_with_cdis_message_when_the_image_is_larger_than_the_volume(env: Env) -> None:
    big = env.work / "big50.qcow2"
    if not big.exists():
        images.convert(images.make_raw(env.work / "big50.raw", 50 << 20, data_ratio=0.2), "qcow2", big)
    out = _image_upload(env, "dv", "up-iu-big", "--size", "20Mi", "--image-path", str(big))
    assert out.returncode == 1, out.stderr
    assert "effective image size is larger than the reported available storage" in out.stderr
    env.client.delete(DATAVOLUME, NS, "up-iu-big")


class _Cluster:
    """What image-upload reads while it waits: the DataVolume, its PVC and the upload pod."""

    def __init__(self, dv_phase: str = "UploadReady", pvc_ann: dict[str, str] | None = None,
                 pod: Obj | None = None) -> None:
        self.objects: dict[str, Obj] = {
            "DataVolume": {"metadata": {"name": "d"}, "status": {"phase": dv_phase}},
            "PersistentVolumeClaim": {"metadata": {"name": "d", "annotations": pvc_ann or {}}},
        }
        if pod is not None:
            self.objects["Pod"] = pod

    def get(self, kind: Any, ns: str, name: str) -> Obj:
        return self.objects[kind.kind]

    def find(self, kind: Any, ns: str, name: str) -> Obj | None:
        return self.objects.get(kind.kind)


_FAILED_POD = {"metadata": {"name": "cdi-upload-d"}, "status": {"phase": "Failed", "containerStatuses": [
    {"state": {"terminated": {"exitCode": 1, "message": '{"ok": false, "message": "convert failed: disk full"}'}}}]}}


@pytest.mark.parametrize("kind,cluster,said", [
    ("pvc", _Cluster(pvc_ann={"cdi.kubevirt.io/storage.pod.phase": "Failed",
                              "cdi.kubevirt.io/storage.condition.running.message": "bad image"}), "bad image"),
    ("dv", _Cluster(pod=_FAILED_POD), "convert failed: disk full"),
    ("pvc", _Cluster(pod=_FAILED_POD), "convert failed: disk full"),
])
def test_image_upload_stops_waiting_when_the_upload_failed(kind: str, cluster: _Cluster, said: str) -> None:
    import argparse
    import threading

    from cdi.cli.imageupload import CliError, _wait_processed

    args = argparse.Namespace(kind=kind, name="d", processing_timeout=30)
    errors: list[str] = []

    def wait() -> None:
        try:
            _wait_processed(cluster, args, NS, interval=0.01)
        except CliError as e:
            errors.append(str(e))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(5)
    assert errors == [f"processing failed: {said}"]


def test_image_upload_waits_for_processing_only_so_long() -> None:
    import argparse

    from cdi.cli.imageupload import CliError, _wait_processed

    # a cut attempt's refusal, recorded on the claim after our upload was answered 200, is no failure
    cluster = _Cluster(pvc_ann={"cdi.kubevirt.io/storage.condition.running.message":
                                "the upload ended at byte 29949952 of 100663296: the connection closed"})
    with pytest.raises(CliError, match="timed out after 0s waiting for d to be processed"):
        _wait_processed(cluster, argparse.Namespace(kind="dv", name="d", processing_timeout=0.2), NS, interval=0.01)
    cluster.objects["DataVolume"]["status"]["phase"] = "Succeeded"
    _wait_processed(cluster, argparse.Namespace(kind="dv", name="d", processing_timeout=0.2), NS, interval=0.01)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_image_upload_sparse_sends_only_data(env: Env, image_factory: Any, fmt: str) -> None:
    from cdi.cli.sparse import body_length, data_extents

    image = image_factory.get(fmt)
    size, extents = data_extents(image)
    assert size == image_factory.raw.stat().st_size and body_length(extents) < size * 0.7
    out = _image_upload(env, "dv", f"up-sparse-{fmt}", "--size", "16Mi", "--image-path", str(image), "--sparse")
    assert out.returncode == 0, out.stderr
    assert "Processing completed successfully" in out.stderr
    env.check_volume(f"up-sparse-{fmt}", image_factory.raw)


def test_image_upload_sparse_refuses_compressed_qcow2(env: Env) -> None:
    text = env.work / "text.raw"
    text.write_bytes(b"compressible " * (1 << 18))
    packed = env.work / "text.qcow2"
    images.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(text), str(packed))
    out = _image_upload(env, "dv", "up-sparse-c", "--size", "16Mi", "--image-path", str(packed), "--sparse")
    assert out.returncode == 1 and "compressed or encrypted clusters: upload without --sparse" in out.stderr


def test_uploader_gets_a_fresh_token_when_its_token_expired(env: Env) -> None:
    from cdi.cli.imageupload import Uploader

    env.create_dv("up-expired")
    env.phase("up-expired", "UploadReady")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=6)
    tokens = [Signer(ensure_key(env.work / KEY_FILE)).upload_token(NS, "up-expired", now=old)]
    issued: list[str] = []

    def new_token() -> str:
        issued.append(tokens.pop(0) if tokens else env.token("up-expired"))
        return issued[-1]

    ctx = ssl.create_default_context(cafile=str(env.node.cluster.server.tls.ca_file))
    Uploader(env.proxy.url, ctx, new_token, env.raw, archive=False).upload()
    assert len(issued) == 2  # the expired one was refused (401) and replaced
    env.phase("up-expired", "Succeeded", timeout=15)
    env.check_volume("up-expired", env.raw)
