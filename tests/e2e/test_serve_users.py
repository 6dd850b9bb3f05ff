"""End to end: a user of ``cdi serve`` added with ``cdi user add`` imports into their namespace, and
users and ServiceAccount tokens outlive a restart (the token file and signing key are in the data dir)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.serve import KUBECTL, Serve, dv_manifest

pytestmark = pytest.mark.slow


def as_user(serve: Serve, kubeconfig: Path, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], input=input, capture_output=True,
                          text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}\n{serve.log.read_text()[-2000:]}")
    return proc


def test_a_user_imports_in_their_namespace_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = Serve(data).start()
    try:
        added = subprocess.run([sys.executable, "-m", "cdi.cli.main", "user", "add", "alice", "--namespace", "alice",
                                "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        alice = data / "users" / "alice.kubeconfig"
        serve.kubectl("create", "namespace", "alice")
        serve.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "alice")
        as_user(serve, alice, "apply", "-f", "-", input=yaml.safe_dump(dv_manifest("mine", {"blank": {}})))
        deadline = time.monotonic() + 90
        while as_user(serve, alice, "get", "dv", "mine", "-o", "jsonpath={.status.phase}").stdout != "Succeeded":
            assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
            time.sleep(0.2)
        denied = as_user(serve, alice, "get", "pvc", "-n", "default", check=False)
        assert "cannot list resource \"persistentvolumeclaims\"" in denied.stderr
        as_user(serve, alice, "create", "serviceaccount", "robot")
        token = as_user(serve, alice, "create", "token", "robot").stdout.strip()
    finally:
        serve.stop()
    serve = Serve(data).start()
    try:
        assert as_user(serve, alice, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == "alice"
        config = yaml.safe_load(serve.kubeconfig.read_text())["clusters"][0]["cluster"]
        ca = data / "tls" / "ca.crt"
        r = requests.get(config["server"] + "/api", headers={"Authorization": f"Bearer {token}"}, verify=str(ca),
                         timeout=10)
        assert r.status_code == 200
    finally:
        serve.stop()
