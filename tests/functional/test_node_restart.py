"""kill -9 of the process running the local node: its pod processes die with it (PR_SET_PDEATHSIG),
and a new run restarts the pod that was Running (restartCount 1), as kubelet does after a reboot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import POD, Client, Obj
from tests.functional.apiserver_fixtures import KUBECTL
from tests.functional.test_node_fixtures import NS, container_status, pod

HARNESS = """
import os, sys, time
from pathlib import Path
from cdi.apiserver import Settings
from cdi.apiserver.server import ApiServer
from cdi.kube import Client
from cdi.node import LocalNode, NodeSettings
from cdi.node.images import WORKER_IMAGES, Image, Program

TEST_IMAGES = {**WORKER_IMAGES, "cdi-test-python": Image("cdi-test-python", (Program(("python3",)),))}
data = Path(sys.argv[1])
server = ApiServer(Settings(token="harness-token", db_path=str(data / "objects.db")), tls_dir=data / "tls").start()
server.write_kubeconfig(data / "kubeconfig.new")
os.replace(data / "kubeconfig.new", data / "kubeconfig")
node = LocalNode(Client.from_kubeconfig(str(data / "kubeconfig")),
                 NodeSettings(data_dir=data / "node", restart_backoff=0.2, images=TEST_IMAGES))
server.set_log_provider(node.log_provider)
node.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""

SLEEPER = """
import os, sys, time
out = os.environ["OUT"]
if os.path.exists(os.path.join(out, "marker")):
    print("second run")
    sys.exit(0)
open(os.path.join(out, "marker"), "w").write("1")
print("first run", flush=True)
open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
time.sleep(60)
"""


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.script = root / "harness.py"
        self.script.write_text(HARNESS)
        self.data = root / "data"
        self.data.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Client:
        (self.data / "kubeconfig").unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.data)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"harness did not start: {line!r}"
        return Client.from_kubeconfig(str(self.data / "kubeconfig"))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.stop()


def wait(client: Client, name: str, predicate: object, timeout: float = 15.0) -> Obj:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    got: Obj = {}
    while time.monotonic() < deadline:
        got = client.get(POD, NS, name)
        if predicate(got):
            return got
        time.sleep(0.05)
    raise AssertionError(f"pod {name} status: {got.get('status')}")


def test_kill9_of_the_node_kills_its_pods_and_a_restart_runs_them_again(harness: Harness, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    client = harness.start()
    client.create(POD, pod("sleeper", SLEEPER, restart="OnFailure", env=[{"name": "OUT", "value": str(out)}]))
    wait(client, "sleeper", lambda p: (out / "pid").exists() and "running" in container_status(p).get("state", {}))
    pid = int((out / "pid").read_text())
    assert os.path.exists(f"/proc/{pid}")

    harness.kill9()
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}"), "the pod process outlived the node (no PDEATHSIG)"

    client = harness.start()
    done = wait(client, "sleeper", lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"))
    cs = container_status(done)
    assert done["status"]["phase"] == "Succeeded"
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["reason"] == "ContainerStatusUnknown"
    assert cs["state"]["terminated"]["reason"] == "Completed"
    kubectl = [KUBECTL, "--kubeconfig", str(harness.data / "kubeconfig"), "logs", "sleeper"]
    assert subprocess.run(kubectl, capture_output=True, text=True, check=True).stdout == "second run\n"
    previous = subprocess.run([*kubectl, "--previous"], capture_output=True, text=True, check=True)
    assert previous.stdout == "first run\n"
