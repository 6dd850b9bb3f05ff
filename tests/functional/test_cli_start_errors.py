"""Start-up mistakes of the cluster-mode commands end in one line and exit 2, never a traceback:
a kubeconfig that is missing or not a kubeconfig, a context it does not have, a port already taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from cdi.cli.main import main
from tests.functional.apiserver_fixtures import Cluster, cluster  # noqa: F401


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _tls(tmp_path: Path) -> list[str]:
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    return ["--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key")]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    token = tmp_path / "token.pem"
    if not token.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return {"controller": ["controller"],
            "upload-proxy": ["upload-proxy", *_tls(tmp_path), "--token-key", str(token), "--port", "0"],
            "upload-api": ["upload-api", *_tls(tmp_path), "--token-key", str(token), "--port", "0"],
            "webhook": ["webhook", *_tls(tmp_path), "--port", "0"]}


@pytest.mark.parametrize("command", ["controller", "upload-proxy", "upload-api", "webhook"])
def test_a_missing_or_wrong_kubeconfig_is_one_line(command: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = _commands(tmp_path)[command]
    missing = tmp_path / "nope.kubeconfig"
    assert main([*argv, "--kubeconfig", str(missing)]) == 2
    assert f"kubeconfig {missing}: no such file" in _one_line(capsys)
    junk = tmp_path / "junk.kubeconfig"
    junk.write_text("hello: world\n")
    assert main([*argv, "--kubeconfig", str(junk)]) == 2
    assert f"kubeconfig {junk}: not a kubeconfig" in _one_line(capsys)


def test_controller_names_a_missing_context_and_the_ones_there(cluster: Cluster,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--kubeconfig", str(cluster.kubeconfig), "--context", "nope"]) == 2
    line = _one_line(capsys)
    assert f"kubeconfig {cluster.kubeconfig}: no context 'nope' (contexts: " in line
    import yaml

    names = [c["name"] for c in yaml.safe_load(cluster.kubeconfig.read_text())["contexts"]]
    assert all(repr(n) in line for n in names)


def test_a_metrics_port_in_use_is_named(cluster: Cluster, taken_port: int,  # noqa: F811
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--kubeconfig", str(cluster.kubeconfig), "--metrics-port", str(taken_port),
                 "--metrics-address", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--metrics-port {taken_port}: address already in use" in err


@pytest.mark.parametrize("command", ["upload-proxy", "upload-api", "webhook"])
def test_a_listen_port_in_use_is_named(command: str, cluster: Cluster, taken_port: int,  # noqa: F811
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a if a != "0" else str(taken_port) for a in _commands(tmp_path)[command]]
    extra = ["--client-ca", str(tmp_path / "tls.crt")] if command == "upload-api" else []
    assert main([*argv, *extra, "--address", "127.0.0.1", "--kubeconfig", str(cluster.kubeconfig)]) == 2
    assert f"--port {taken_port}: address already in use" in _one_line(capsys)
