"""Fixtures for API server tests: a real server on 127.0.0.1, a kubeconfig, kubectl and the client.

Import the fixtures into a test module (`from tests.functional.apiserver_fixtures import ...`); each
module gets its own server on an ephemeral port.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from cdi.apiserver import Settings
from cdi.apiserver.server import ApiServer

KUBECTL = os.environ.get("CDI_KUBECTL", "/usr/bin/kubectl")


@dataclass
class Cluster:
    server: ApiServer
    kubeconfig: Path
    workdir: Path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this server; with `check`, fail the test on a non-zero exit."""
        full_env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.workdir),
            **(env or {}),
        }
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(self, manifest: dict | str, *extra: str) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-f", "-", *extra, input=text)

    def api_client(self) -> client.ApiClient:
        """The official kubernetes client configured from the written kubeconfig."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))


def start_cluster(workdir: Path, **settings: object) -> Cluster:
    token = secrets.token_urlsafe(24)
    server = ApiServer(
        Settings(token=token, db_path=str(workdir / "objects.db"), **settings),  # type: ignore[arg-type]
        tls_dir=workdir / "tls",
    ).start()
    kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
    return Cluster(server, kubeconfig, workdir)


def make_cdi_namespace(kubeconfig: Path) -> None:
    """The cdi namespace, as the chart and `cdi serve` make it (the controllers keep their signers there
    and may not create namespaces)."""
    from cdi.kube import NAMESPACE, Client

    Client.from_kubeconfig(str(kubeconfig)).create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": "cdi"}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("apiserver"), watch_history=50)
    yield c
    c.server.stop()


def datavolume(name: str, **spec: object) -> dict:
    """A DataVolume manifest; by default an http import into 1Gi of `storage`."""
    body = spec or {
        "source": {"http": {"url": "https://images.example.com/fedora.qcow2"}},
        "storage": {"resources": {"requests": {"storage": "1Gi"}}},
    }
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": body,
    }
