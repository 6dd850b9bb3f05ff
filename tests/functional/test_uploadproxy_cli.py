"""`cdi upload-proxy` on its own (the chart's cdi-uploadproxy pod), against a real API server."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi.uploadtoken import Signer, public_key_pem
from tests.functional.apiserver_fixtures import Cluster, cluster  # noqa: F401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rsa_pkcs1(path: Path) -> rsa.RSAPrivateKey:
    """An RSA key in the PEM form Helm's genPrivateKey "rsa" writes (PKCS#1, "RSA PRIVATE KEY")."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return key


def test_public_key_pem_takes_a_private_or_public_key_and_refuses_anything_else(tmp_path: Path) -> None:
    key = _rsa_pkcs1(tmp_path / "k.pem")
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_key_pem((tmp_path / "k.pem").read_bytes()) == public
    assert public_key_pem(public) == public
    with pytest.raises(ValueError):
        public_key_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.slow
def test_upload_proxy_checks_tokens_over_tls(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    ca = trustme.CA()
    cert = ca.issue_cert("cdi-uploadproxy.cdi.svc", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    _rsa_pkcs1(tmp_path / "token.pem")
    base = [sys.executable, "-m", "cdi.cli.main", "upload-proxy", "--tls-cert", str(tmp_path / "tls.crt"),
            "--tls-key", str(tmp_path / "tls.key"), "--kubeconfig", str(cluster.kubeconfig), "--address", "127.0.0.1"]
    (tmp_path / "junk.pem").write_text("not a key")
    bad = subprocess.run([*base, "--token-key", str(tmp_path / "junk.pem")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and f"--token-key {tmp_path / 'junk.pem'}: not a readable PEM key" in bad.stderr
    port = _free_port()
    proc = subprocess.Popen([*base, "--token-key", str(tmp_path / "token.pem"), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"listening on https://127.0.0.1:{port}" in line, line
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30) as http:
            missing = http.post("/v1beta1/upload", content=b"x")
            assert missing.status_code == 400
            forged = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048)).upload_token("default", "p")
            refused = http.post("/v1beta1/upload", content=b"x", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
            key = serialization.load_pem_private_key((tmp_path / "token.pem").read_bytes(), password=None)
            token = Signer(key).upload_token("default", "no-such-pvc")  # type: ignore[arg-type]
            valid = http.post("/v1beta1/upload", content=b"x", headers={"Authorization": f"Bearer {token}"})
            assert valid.status_code == 503, valid.text  # past the token check, the PVC is looked up
            assert "no-such-pvc" in valid.text
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
