"""Volume provisioner of the local node against a real API server: bind, size, sparse, reclaim."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cdi.kube import POD, PVC, Obj
from cdi.node.claims import FINALIZER
from tests.functional.test_node_fixtures import NS, NodeEnv, node_env, pod, pvc

__all__ = ["node_env"]

LOCAL_PATH = "cdi.kubevirt.io/local-path"


def bound(p: Obj) -> bool:
    return p.get("status", {}).get("phase") == "Bound"


def test_filesystem_claim_is_bound_to_a_directory(node_env: NodeEnv) -> None:
    created = node_env.client.create(PVC, pvc("fs1", "64Mi"))
    got = node_env.wait(PVC, "fs1", bound)
    uid = created["metadata"]["uid"]
    path = Path(got["metadata"]["annotations"][LOCAL_PATH])
    assert path == node_env.data_dir / "volumes" / NS / f"fs1-{uid[:8]}"
    assert path.is_dir()
    assert got["spec"]["volumeName"] == f"pvc-{uid}"
    assert FINALIZER in got["metadata"]["finalizers"]
    assert got["status"]["capacity"] == {"storage": "64Mi"}
    assert got["status"]["accessModes"] == ["ReadWriteOnce"]
    # The event follows the status update.
    node_env.wait(PVC, "fs1", lambda _: any(e["reason"] == "ProvisioningSucceeded" for e in node_env.events("fs1")))


def test_block_claim_gets_a_sparse_file_of_exactly_its_size(node_env: NodeEnv) -> None:
    node_env.client.create(PVC, pvc("blk1", "1Gi", mode="Block"))
    got = node_env.wait(PVC, "blk1", bound)
    image = Path(got["metadata"]["annotations"][LOCAL_PATH])
    assert image.name == "block.img"
    st = os.stat(image)
    assert st.st_size == 1 << 30
    assert st.st_blocks == 0  # sparse
    assert got["status"]["capacity"] == {"storage": "1Gi"}


def test_claim_larger_than_the_free_space_stays_pending(node_env: NodeEnv) -> None:
    node_env.client.create(PVC, pvc("huge", "900Ei"))

    def failed(_: Obj) -> bool:
        return any(e["reason"] == "ProvisioningFailed" for e in node_env.events("huge"))

    node_env.wait(PVC, "huge", failed)
    event = next(e for e in node_env.events("huge") if e["reason"] == "ProvisioningFailed")
    assert event["type"] == "Warning"
    assert "free" in event["message"]
    got = node_env.client.get(PVC, NS, "huge")
    assert got["status"]["phase"] == "Pending"
    assert not list((node_env.data_dir / "volumes" / NS).glob("huge-*"))
    node_env.client.delete(PVC, NS, "huge")


def test_block_pool_device_is_handed_out(tmp_path: Path, node_env: NodeEnv) -> None:
    # Regular files stand in for block devices: the provisioner only needs their size.
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"\0" * 4096)
    large.write_bytes(b"\0" * (2 << 20))
    node_env.node.settings.block_pool[:] = [large, small]
    try:
        node_env.client.create(PVC, pvc("pooled", "8Ki", mode="Block"))
        got = node_env.wait(PVC, "pooled", bound)
    finally:
        node_env.node.settings.block_pool.clear()
    assert got["metadata"]["annotations"][LOCAL_PATH] == str(large)
    assert got["status"]["capacity"] == {"storage": str(2 << 20)}


def test_deleted_claim_keeps_its_data_until_its_pod_is_gone(node_env: NodeEnv) -> None:
    node_env.client.create(PVC, pvc("used", "16Mi"))
    path = Path(node_env.wait(PVC, "used", bound)["metadata"]["annotations"][LOCAL_PATH])
    script = "import json,os,time; d=json.loads(os.environ['CDI_VOLUME_MOUNTS'])['/data']; " \
             "open(d+'/disk.img','w').write('x'); time.sleep(60)"
    spec = pod("user", script, volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "used"}}],
               container={"volumeMounts": [{"name": "d", "mountPath": "/data"}]},
               terminationGracePeriodSeconds=1)
    node_env.client.create(POD, spec)
    node_env.wait_pod_phase("user", "Running")
    node_env.wait(POD, "user", lambda _: (path / "disk.img").exists())
    node_env.client.delete(PVC, NS, "used")
    node_env.wait(PVC, "used", lambda p: p["metadata"].get("deletionTimestamp"))
    time.sleep(1.0)
    assert (path / "disk.img").exists()
    assert node_env.client.get(PVC, NS, "used")["metadata"]["finalizers"] == [FINALIZER]
    node_env.client.delete(POD, NS, "user")
    node_env.wait_gone(PVC, "used")
    assert not path.exists()
