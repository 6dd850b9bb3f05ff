"""End to end: ``cdi serve`` and kubectl as two users; a clone within a namespace copies on the node, a
clone across namespaces is refused until a RoleBinding allows it and then streams, and a restart of
``cdi serve`` in between grants nothing new (the clone token is signed with the key in the data dir)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.serve import KUBECTL, Serve, dv_manifest

pytestmark = pytest.mark.slow


def as_user(kubeconfig: Path, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], input=input, capture_output=True,
                          text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def wait_phase(kubeconfig: Path, ns: str, name: str, serve: Serve, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        phase = as_user(kubeconfig, "get", "dv", name, "-n", ns, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            return phase
        assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
        time.sleep(0.2)


def test_clones_with_kubectl_as_two_users_through_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = Serve(data).start()
    users = {}
    try:
        for name in ("alice", "bob"):
            added = subprocess.run([sys.executable, "-m", "cdi.cli.main", "user", "add", name, "--namespace", name,
                                    "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
            assert added.returncode == 0, added.stderr
            users[name] = data / "users" / f"{name}.kubeconfig"
            serve.kubectl("create", "namespace", name)
            serve.kubectl("create", "rolebinding", f"{name}-admin", "--clusterrole=admin", f"--user={name}", "-n", name)
        alice, bob = users["alice"], users["bob"]
        as_user(alice, "apply", "-f", "-", input=yaml.safe_dump(dv_manifest("golden", {"blank": {}}, size="16Mi")))
        assert wait_phase(alice, "alice", "golden", serve) == "Succeeded"
        mine = dv_manifest("mine", {"pvc": {"namespace": "alice", "name": "golden"}}, size="16Mi")
        as_user(alice, "apply", "-f", "-", input=yaml.safe_dump(mine))
        assert wait_phase(alice, "alice", "mine", serve) == "Succeeded"
        method = as_user(alice, "get", "dv", "mine", "-o",
                         r"jsonpath={.metadata.annotations.cdi\.kubevirt\.io/storage\.clone\.method}").stdout
        assert method in ("reflink", "sparse")
        theirs = yaml.safe_dump(dv_manifest("theirs", {"pvc": {"namespace": "alice", "name": "golden"}}, size="16Mi"))
        refused = as_user(bob, "apply", "-n", "bob", "-f", "-", input=theirs, check=False)
        assert "User bob has insufficient permissions in clone source namespace alice" in refused.stderr
    finally:
        serve.stop()
    serve = Serve(data).start()
    try:
        refused = as_user(bob, "apply", "-n", "bob", "-f", "-", input=theirs, check=False)
        assert "User bob has insufficient permissions in clone source namespace alice" in refused.stderr
        as_user(alice, "create", "rolebinding", "bob-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer",
                "--user=bob", "-n", "alice")
        assert as_user(bob, "auth", "can-i", "create", "datavolumes", "--subresource=source", "-n",
                       "alice").stdout.strip() == "yes"
        as_user(bob, "apply", "-n", "bob", "-f", "-", input=theirs)
        assert wait_phase(bob, "bob", "theirs", serve) == "Succeeded", serve.log.read_text()[-3000:]
        method = as_user(bob, "get", "dv", "theirs", "-n", "bob", "-o",
                         r"jsonpath={.metadata.annotations.cdi\.kubevirt\.io/storage\.clone\.method}").stdout
        assert method == "stream"
    finally:
        serve.stop()
