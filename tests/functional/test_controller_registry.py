"""Registry and S3 DataVolumes through the controller and the local node, against the in-process API
server: real importer processes pulling from a real docker-registry (plain, and TLS with basic auth)
and from moto's S3 server. The outcome is checked on the volume (its bytes), on the DataVolume (phase,
Running condition, events) and on the claim (the image digest recorded).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ANN_SOURCE_DIGEST, ControllerSettings
from cdi.kube import CONFIGMAP, DATAVOLUME, PVC, SECRET, Obj
from cdi.kube.kinds import CDICONFIG
from cdi.node.claims import volume_dir_name
from tests.functional.test_node_fixtures import NS, NodeEnv, make_env
from tests.support import images
from tests.support.registry import OciLayout, Registry, container_disk, layout_blobs
from tests.support.s3server import S3Server


class Env:
    def __init__(self, node: NodeEnv, plain: Registry, private: Registry, s3: S3Server, work: Path) -> None:
        self.node, self.client = node, node.client
        self.plain, self.private, self.s3, self.work = plain, private, s3, work
        self.raw = images.make_raw(work / "disk.raw", 4 << 20)
        self.qcow2 = work / "disk.qcow2"
        images.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(self.raw), str(self.qcow2))

    def dv(self, name: str, source: Obj, size: str = "8Mi") -> Obj:
        body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}}
        return self.client.create(DATAVOLUME, body)

    def done(self, name: str) -> Obj:
        return self.node.wait(DATAVOLUME, name, lambda d: (d.get("status") or {}).get("phase") in
                              ("Succeeded", "Failed"), 40)

    def volume(self, name: str) -> Path:
        """The disk file of the DataVolume's claim on the local node."""
        uid = self.client.get(PVC, NS, name)["metadata"]["uid"]
        return self.node.data_dir / "volumes" / NS / volume_dir_name(name, uid) / "disk.img"

    def same_disk(self, name: str) -> bool:
        """The volume holds the disk, then zeros up to its capacity."""
        data = self.volume(name).read_bytes()
        raw = self.raw.read_bytes()
        return data[: len(raw)] == raw and not data[len(raw):].strip(b"\0")

    def failed_with(self, name: str) -> tuple[str, str, list[str]]:
        dv = self.done(name)
        assert dv["status"]["phase"] == "Failed", dv["status"]
        running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
        events = [f"{e['reason']}: {e['message']}" for e in self.node.events(name)]
        return running["reason"], running["message"], events


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("controller-registry")
    node = make_env(work, max_running_pods=4)
    manager = ControllerManager(node.client, ControllerSettings(progress_interval=0.2), workers=2).start()
    with Registry(work / "plain") as plain, Registry(work / "private", tls=True, auth=("cdi", "pw")) as private, \
            S3Server() as s3:
        e = Env(node, plain, private, s3, work)
        node.client.create(CDICONFIG, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDIConfig",
                                       "metadata": {"name": "config"},
                                       "spec": {"insecureRegistries": [plain.host]}})
        yield e
    manager.stop()
    node.node.stop()
    node.cluster.server.stop()


def _secret(env: Env, name: str, key: str, secret: str) -> None:
    data = {"accessKeyId": base64.b64encode(key.encode()).decode(),
            "secretKey": base64.b64encode(secret.encode()).decode()}
    env.client.create(SECRET, {"metadata": {"name": name, "namespace": NS}, "data": data})


def test_registry_import_records_the_image_digest(env: Env) -> None:
    digest = env.plain.push(container_disk(env.work / "l1", env.qcow2, compression="zstd"), "disks/q", "v1",
                            src_tag="latest")
    env.dv("reg", {"registry": {"url": env.plain.url("disks/q", "v1"), "pullMethod": "node"}})
    dv = env.done("reg")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert env.same_disk("reg")
    assert dv["metadata"]["annotations"][ANN_SOURCE_DIGEST] == digest
    assert env.client.get(PVC, NS, "reg")["metadata"]["annotations"][ANN_SOURCE_DIGEST] == digest


def test_tls_registry_with_secret_and_cert_config_map(env: Env) -> None:
    reg = env.private
    reg.push(container_disk(env.work / "l2", env.raw), "private/disk", "v1", src_tag="latest")
    env.client.create(CONFIGMAP, {"metadata": {"name": "registry-ca", "namespace": NS},
                                  "data": {"ca.pem": Path(str(reg.ca_file)).read_text()}})
    _secret(env, "registry-creds", "cdi", "pw")
    _secret(env, "registry-wrong", "cdi", "not-it")
    url = reg.url("private/disk", "v1")
    env.dv("tls", {"registry": {"url": url, "secretRef": "registry-creds", "certConfigMap": "registry-ca"}})
    env.dv("tls-wrong", {"registry": {"url": url, "secretRef": "registry-wrong", "certConfigMap": "registry-ca"}})
    env.dv("tls-noca", {"registry": {"url": url, "secretRef": "registry-creds"}})
    dv = env.done("tls")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert env.same_disk("tls")
    reason, message, events = env.failed_with("tls-wrong")
    assert reason == "Unauthorized" and "check the secretRef's accessKeyId and secretKey" in message
    assert any(e.startswith("ImportFailed: ") and "denied" in e for e in events), events
    reason, message, _ = env.failed_with("tls-noca")
    assert "certConfigMap" in message and "insecureRegistries" in message


def _reasons(env: Env, name: str) -> tuple[str, str]:
    reason, message, events = env.failed_with(name)
    assert any(message in e for e in events), events  # the same words in an event
    return reason, message


def test_registry_refusals_fail_with_their_reason(env: Env) -> None:
    reg = env.plain
    # a disk file name of its own: an image no other test imported (the image cache would serve an
    # image already imported from its verified volume, without reading the tampered blob)
    layout = container_disk(env.work / "l3", env.raw, compression="gzip", name="tamper.img")
    reg.push(layout, "disks/tamper", "v1", src_tag="latest")
    stored = reg.stored_blob(next(layout_blobs(layout, "latest"))["digest"])
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0x01  # inside the gzip stream's deflate data or trailer: a changed byte
    stored.write_bytes(bytes(data))
    lay = OciLayout(env.work / "l4")
    lay.tag(lay.image([lay.layer({"etc/": None, "etc/os-release": b"ID=none\n"})]), "latest")
    reg.push(lay, "disks/nodisk", "v1", src_tag="latest")
    env.dv("missing", {"registry": {"url": reg.url("disks/q", "no-such-tag")}})
    env.dv("nodisk", {"registry": {"url": reg.url("disks/nodisk", "v1")}})
    env.dv("tampered", {"registry": {"url": reg.url("disks/tamper", "v1")}})
    env.dv("stream", {"registry": {"imageStream": "fedora:latest"}})
    reason, message = _reasons(env, "missing")
    assert reason == "ImageNotFound" and "no-such-tag" in message
    reason, message = _reasons(env, "nodisk")
    assert reason == "NoDiskInImage" and "Failed to find VM disk image file" in message
    reason, message, events = env.failed_with("tampered")
    assert reason == "DigestMismatch" and "layer digest mismatch" in message, (reason, message)
    assert not any(e.startswith("Succeeded:") for e in events), events
    reason, message = _reasons(env, "stream")
    assert reason == "UnsupportedSource" and "imageStream" in message


def test_s3_import_and_a_wrong_key(env: Env) -> None:
    url = env.s3.put("vm-disks", "images/disk.qcow2", env.qcow2)
    _secret(env, "s3-creds", env.s3.access_key, env.s3.secret_key)
    _secret(env, "s3-wrong", env.s3.access_key, "wrong-secret")
    env.dv("s3", {"s3": {"url": url, "secretRef": "s3-creds"}})
    env.dv("s3-wrong", {"s3": {"url": url, "secretRef": "s3-wrong"}})
    dv = env.done("s3")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert env.same_disk("s3")
    _, message = _reasons(env, "s3-wrong")
    assert "SignatureDoesNotMatch" in message and "check the secretRef" in message

