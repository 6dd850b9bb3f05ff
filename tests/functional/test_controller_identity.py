"""`cdi controller` says at start as whom it runs, and warns when that is an all-powerful system:masters
user (a kubeconfig left in $KUBECONFIG silently makes it the admin)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cdi.kube import Client
from cdi.kube.kinds import SERVICEACCOUNT
from tests.functional.apiserver_fixtures import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("identity"))
    yield c
    c.server.stop()


def first_lines(kubeconfig: Path, log: Path) -> str:
    """Start `cdi controller`, wait until it has said it started, stop it; its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cdi.cli.main", "controller", "--kubeconfig", str(kubeconfig),
                                 "--workers", "1"], stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 30
        while "controllers started" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
    return log.read_text()


def test_the_admin_is_named_and_warned_about(cluster: Cluster, tmp_path: Path) -> None:
    text = first_lines(cluster.kubeconfig, tmp_path / "admin.log")
    assert "as admin (groups: system:masters" in text
    assert "warning: running as a member of system:masters" in text
    # the warning sends the user to a README section: it must be there, under that very name
    named = re.search(r'README section "([^"]+)"', text)
    assert named, text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"\n## {named.group(1)}\n" in readme, named.group(1)


def test_a_service_account_is_named_without_a_warning(cluster: Cluster, tmp_path: Path) -> None:
    admin = Client.from_kubeconfig(str(cluster.kubeconfig))
    admin.create(SERVICEACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                  "metadata": {"name": "ctl", "namespace": "default"}})
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": admin.request_token("default", "ctl", seconds=600)["status"]["token"]}
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    text = first_lines(kubeconfig, tmp_path / "sa.log")
    assert "as system:serviceaccount:default:ctl (groups: system:serviceaccounts" in text
    assert "system:masters" not in text
