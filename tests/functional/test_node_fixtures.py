"""Fixtures for local node tests: a real API server, a LocalNode with a tmp data dir, and helpers.

Import them into a test module (`from tests.functional.test_node_fixtures import ...`); each module
gets its own server and node.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdi.apiserver.upload_tokens import set_token_signer
from cdi.clonetoken import TokenCheck
from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ControllerSettings
from cdi.kube import EVENT, POD, Client, NotFound, Obj
from cdi.node import LocalNode, NodeSettings
from cdi.node.images import WORKER_IMAGES, Image, Program
from cdi.uploadtoken import Signer, ensure_key, public_pem
from tests.functional.apiserver_fixtures import Cluster, make_cdi_namespace, start_cluster

NS = "default"
# The worker images and one more that runs any python script: the node's image table is our own seam,
# and the tests' pods need programs that do what each test wants.
TEST_IMAGE = "cdi-test-python"
TEST_IMAGES = {**WORKER_IMAGES, TEST_IMAGE: Image(TEST_IMAGE, (Program(("python3",)),))}


@dataclass
class NodeEnv:
    cluster: Cluster
    client: Client
    node: LocalNode
    data_dir: Path
    work: Path

    def wait(self, kind: Any, name: str, predicate: Callable[[Obj], Any], timeout: float = 10.0) -> Obj:
        """Poll the object until ``predicate`` holds; fail with its last state otherwise."""
        deadline = time.monotonic() + timeout
        obj: Obj = {}
        while time.monotonic() < deadline:
            try:
                obj = self.client.get(kind, NS, name)
                if predicate(obj):
                    return obj
            except NotFound:
                obj = {}
            time.sleep(0.05)
        raise AssertionError(f"{kind.kind} {name} did not reach the expected state: {obj.get('status')}")

    def wait_pod_phase(self, name: str, *phases: str, timeout: float = 10.0) -> Obj:
        return self.wait(POD, name, lambda p: p.get("status", {}).get("phase") in phases, timeout)

    def wait_gone(self, kind: Any, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client.get(kind, NS, name)
            except NotFound:
                return
            time.sleep(0.05)
        raise AssertionError(f"{kind.kind} {name} still exists")

    def events(self, name: str) -> list[Obj]:
        items, _ = self.client.list(EVENT, NS)
        return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def make_env(work: Path, **settings: Any) -> NodeEnv:
    cluster = start_cluster(work)
    client = Client.from_kubeconfig(str(cluster.kubeconfig))
    make_cdi_namespace(cluster.kubeconfig)
    settings.setdefault("restart_backoff", 0.2)
    settings.setdefault("images", TEST_IMAGES)
    node = LocalNode(client, NodeSettings(data_dir=work / "data", **settings))
    cluster.server.set_log_provider(node.log_provider)
    node.start()
    return NodeEnv(cluster, client, node, work / "data", work)


def cdi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdi.cli.main", *args], capture_output=True, text=True, timeout=60)


@dataclass
class Controlled:
    cluster: Cluster
    client: Client
    signer: Signer
    manager: ControllerManager


@contextmanager
def controlled_cluster(work: Path, **manager_options: Any) -> Iterator[Controlled]:
    """An API server with users and ServiceAccounts, the cdi namespace, a local node, the upload-token
    signer (clone tokens too) and the DataVolume controllers; all stopped on exit."""
    cluster = start_cluster(work, users_file=str(work / "users.csv"),
                            service_account_key_file=str(work / "serviceaccount.key"))
    client = Client.from_kubeconfig(str(cluster.kubeconfig))
    make_cdi_namespace(cluster.kubeconfig)
    node = LocalNode(client, NodeSettings(data_dir=work / "data", restart_backoff=0.2, images=TEST_IMAGES,
                                          max_running_pods=6))
    cluster.server.set_log_provider(node.log_provider)
    node.start()
    key = ensure_key(work / "upload-token.key")
    signer = Signer(key)
    set_token_signer(cluster.server.app, signer)
    manager = ControllerManager(client, ControllerSettings(progress_interval=0.2), workers=2,
                                clone_tokens=TokenCheck(public_pem(key)), **manager_options).start()
    try:
        yield Controlled(cluster, client, signer, manager)
    finally:
        manager.stop()
        node.stop()
        cluster.server.stop()


def add_admin_user(work: Path, cluster: Cluster, name: str, namespace: str) -> None:
    """A static user who is admin of their own (new) namespace."""
    out = cdi("user", "add", name, "--data-dir", str(work), "--namespace", namespace)
    assert out.returncode == 0, out.stderr
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "rolebinding", f"{name}-admin", "--clusterrole=admin", f"--user={name}", "-n", namespace)


@pytest.fixture(scope="module")
def node_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeEnv]:
    env = make_env(tmp_path_factory.mktemp("node"), max_running_pods=2)
    yield env
    env.node.stop()
    env.cluster.server.stop()


def pvc(name: str, size: str, mode: str = "Filesystem") -> Obj:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                     "resources": {"requests": {"storage": size}}}}


def pod(name: str, script: str, *, restart: str = "Never", env: list[Obj] | None = None, **spec: Any) -> Obj:
    """A pod whose one container runs ``python3 -c script``."""
    container: Obj = {"name": "main", "image": TEST_IMAGE, "command": ["python3", "-c", script],
                      "env": env or []}
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"restartPolicy": restart, "containers": [container], **spec}}


def secret(name: str, **data: str) -> Obj:
    return {"metadata": {"name": name, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def container_status(p: Obj) -> Obj:
    statuses = p.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]
