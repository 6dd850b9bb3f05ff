"""Clones on a real XFS filesystem with reflink (a loop device), where the copy shares extents."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.apiserver.upload_tokens import set_token_signer
from cdi.clonetoken import TokenCheck
from cdi.controller.clone import ANN_CLONE_METHOD
from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ControllerSettings
from cdi.kube import DATAVOLUME, Client, Obj
from cdi.node import LocalNode, NodeSettings
from cdi.uploadtoken import Signer, ensure_key, public_pem
from cloner.copy import clone
from importer.digest import volume_digest
from tests.functional.apiserver_fixtures import make_cdi_namespace, start_cluster
from tests.functional.test_node_fixtures import TEST_IMAGES
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.xfs import Unavailable, xfs_mount


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    try:
        with xfs_mount(tmp_path) as mnt:
            yield mnt
    except Unavailable as e:
        pytest.skip(f"no XFS on a loop device here: {e}")


def shared_extents(path: Path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True).stdout
    return "shared" in out


def test_reflink_on_xfs_shares_extents_in_constant_time(xfs: Path) -> None:
    src, dst = xfs / "src.img", xfs / "dst.img"
    images.make_raw(src, 64 << 20)
    os.sync()
    started = time.monotonic()
    assert clone(str(src), str(dst), 64 << 20) == "reflink"
    elapsed = time.monotonic() - started
    assert volume_digest(str(dst)) == volume_digest(str(src))
    assert shared_extents(dst), "the clone's extents are not shared with the source"
    assert elapsed < 0.5, elapsed
    # Writing into the clone leaves the source alone (copy on write).
    before = volume_digest(str(src))
    with open(dst, "r+b") as f:
        f.write(b"\x01" * 4096)
    assert volume_digest(str(src)) == before != volume_digest(str(dst))


def test_a_datavolume_clone_on_xfs_uses_reflink(xfs: Path, tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    cluster = start_cluster(tmp_path / "api")
    client = Client.from_kubeconfig(str(cluster.kubeconfig))
    make_cdi_namespace(cluster.kubeconfig)
    node = LocalNode(client, NodeSettings(data_dir=xfs / "data", restart_backoff=0.2, images=TEST_IMAGES))
    node.start()
    key = ensure_key(tmp_path / "upload-token.key")
    set_token_signer(cluster.server.app, Signer(key))
    manager = ControllerManager(client, ControllerSettings(progress_interval=0.2), workers=2,
                                clone_tokens=TokenCheck(public_pem(key))).start()
    raw = images.make_raw(tmp_path / "disk.raw", 6 << 20)
    try:
        with HttpServer() as http:
            http.add("/disk.raw", Route(path=str(raw)))

            def dv(name: str, source: Obj) -> None:
                client.create(DATAVOLUME, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                           "metadata": {"name": name, "namespace": "default"},
                                           "spec": {"source": source, "pvc": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "8Mi"}}}}})

            def done(name: str) -> Obj:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    obj = client.get(DATAVOLUME, "default", name)
                    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        return obj
                    time.sleep(0.05)
                raise AssertionError(f"{name} not done: {obj.get('status')}")

            dv("golden", {"http": {"url": http.url("/disk.raw")}})
            assert done("golden")["status"]["phase"] == "Succeeded"
            dv("copy", {"pvc": {"name": "golden", "namespace": "default"}})
            copy = done("copy")
            assert copy["status"]["phase"] == "Succeeded", copy["status"]
            assert copy["metadata"]["annotations"][ANN_CLONE_METHOD] == "reflink"
            target = next((xfs / "data" / "volumes" / "default").glob("copy-*")) / "disk.img"
            assert shared_extents(target)
    finally:
        manager.stop()
        node.stop()
        cluster.server.stop()


def test_a_sparse_file_cloned_into_a_real_block_device_leaves_no_stale_data(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for losetup")
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\xa5" * (16 << 20))  # stale data everywhere
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no loop device here: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        src = images.make_raw(tmp_path / "src.img", 8 << 20)
        assert clone(str(src), dev, 8 << 20, fixed_target=True) == "sparse"
        with open(dev, "rb") as f:
            data = f.read()
        assert data[: 8 << 20] == src.read_bytes()
        assert data[8 << 20:] == b"\xa5" * (8 << 20), "past the source the device is not the clone's to touch"
        assert volume_digest(dev, 8 << 20) == volume_digest(str(src))
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
