"""The in-cluster ServiceAccount token file as the kubelet (or a person) writes it: whitespace around the
token is no part of it, and no error ever shows the token."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cdi.kube import ApiError, Client
from cdi.kube import client as kube_client
from cdi.kube.kinds import SERVICEACCOUNT
from tests.functional.apiserver_fixtures import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("incluster"))
    yield c
    c.server.stop()


def mounted(cluster: Cluster, where: Path, token: str) -> tuple[str, dict[str, str]]:
    where.mkdir(exist_ok=True)
    (where / "token").write_text(token)
    (where / "ca.crt").write_bytes(cluster.server.ca_pem or b"")
    url = urllib.parse.urlsplit(cluster.server.url)
    return str(where), {"KUBERNETES_SERVICE_HOST": str(url.hostname), "KUBERNETES_SERVICE_PORT": str(url.port)}


def test_a_token_file_with_a_trailing_newline_is_used_stripped(cluster: Cluster, tmp_path: Path) -> None:
    where, env = mounted(cluster, tmp_path / "sa", f"  {cluster.server.settings.token}\n")
    client = Client.in_cluster(where, environ=env)
    assert client.whoami()


def test_a_rotated_token_is_read_again_stripped(cluster: Cluster, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    admin = Client.from_kubeconfig(str(cluster.kubeconfig))
    admin.create(SERVICEACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                  "metadata": {"name": "rotated", "namespace": "default"}})
    monkeypatch.setattr(kube_client._TokenFileLoader, "refresh_period", timedelta(0))  # re-read on every request
    where, env = mounted(cluster, tmp_path / "sa", f"{cluster.server.settings.token}\n")
    client = Client.in_cluster(where, environ=env)
    first = client.whoami()
    sa_token = admin.request_token("default", "rotated", seconds=3600)["status"]["token"]
    Path(where, "token").write_text(f"{sa_token}\n\n")  # the kubelet rotated it
    assert client.whoami() != first
    assert "rotated" in client.whoami()


def test_a_token_the_http_layer_refuses_is_never_printed(cluster: Cluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-token-part"
    where, env = mounted(cluster, tmp_path / "sa", f"{secret}\nsecond-line-{secret}\n")
    client = Client.in_cluster(where, environ=env)
    with pytest.raises(ApiError) as e:
        client.whoami()
    assert secret not in str(e.value) and "bearer token" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_token_file_of_whitespace_is_refused_clearly(cluster: Cluster, tmp_path: Path) -> None:
    where, env = mounted(cluster, tmp_path / "sa", " \n")
    with pytest.raises(ApiError, match="only whitespace"):
        Client.in_cluster(where, environ=env)
