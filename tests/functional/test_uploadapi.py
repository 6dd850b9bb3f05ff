"""The upload token API as kube-apiserver's aggregation layer calls it: front-proxy TLS, X-Remote-* user,
a SubjectAccessReview (answered by a real API server's RBAC), the token the upload proxy accepts."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi.kube import Client
from cdi.tlsserver import TlsServer
from cdi.uploadapi import create_app
from cdi.uploadtoken import Signer, Validator, public_pem
from cdi.webhook.cluster import ClusterAuthorizer
from tests.functional.apiserver_fixtures import Cluster, cluster  # noqa: F401

PATH = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests"
BODY = {"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "req"}, "spec": {"pvcName": "disk"}}


class Api:
    def __init__(self, server: TlsServer, server_ca: trustme.CA, front_proxy: trustme.CA, key: rsa.RSAPrivateKey):
        self.server, self.server_ca, self.front_proxy, self.key = server, server_ca, front_proxy, key

    def client(self, client_ca: trustme.CA | None) -> httpx.Client:
        ctx = ssl.create_default_context()
        self.server_ca.configure_trust(ctx)
        if client_ca is not None:
            client_ca.issue_cert("front-proxy-client").configure_cert(ctx)
        return httpx.Client(base_url=self.server.url, verify=ctx, timeout=30)


@pytest.fixture(scope="module")
def api(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:  # noqa: F811
    d = tmp_path_factory.mktemp("upload-api")
    cluster.kubectl("create", "namespace", "up")
    cluster.kubectl("create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", "up")
    server_ca, front_proxy = trustme.CA(), trustme.CA()
    cert = server_ca.issue_cert("cdi-upload-api.cdi.svc", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "tls.crt"))
    front_proxy.cert_pem.write_to_path(str(d / "front-proxy-ca.crt"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = create_app(Signer(key), ClusterAuthorizer(Client.from_kubeconfig(str(cluster.kubeconfig))))
    server = TlsServer(app, cert_file=str(d / "tls.crt"), key_file=str(d / "tls.key"),
                       client_ca_file=str(d / "front-proxy-ca.crt"), name="upload-api").start()
    yield Api(server, server_ca, front_proxy, key)
    server.stop()


def test_a_user_who_may_create_uploadtokenrequests_gets_a_token_the_proxy_accepts(api: Api) -> None:
    with api.client(api.front_proxy) as http:
        resp = http.post(PATH.format(ns="up"), json=BODY,
                         headers={"X-Remote-User": "bob", "X-Remote-Group": "system:authenticated"})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert (out["kind"], out["metadata"]["namespace"], out["spec"]) == ("UploadTokenRequest", "up", {"pvcName": "disk"})
    claims = Validator(public_pem(api.key)).validate(out["status"]["token"])
    assert (claims.namespace, claims.name, claims.operation) == ("up", "disk", "Upload")


def test_refusals_as_kube_words_them(api: Api) -> None:
    with api.client(api.front_proxy) as http:
        alice = http.post(PATH.format(ns="up"), json=BODY, headers={"X-Remote-User": "alice"})
        assert alice.status_code == 403
        assert alice.json()["message"] == (
            'uploadtokenrequests.upload.cdi.kubevirt.io is forbidden: User "alice" cannot create resource '
            '"uploadtokenrequests" in API group "upload.cdi.kubevirt.io" in the namespace "up"')
        other_ns = http.post(PATH.format(ns="default"), json=BODY, headers={"X-Remote-User": "bob"})
        assert other_ns.status_code == 403
        nobody = http.post(PATH.format(ns="up"), json=BODY)
        assert nobody.status_code == 401
        no_pvc = http.post(PATH.format(ns="up"), json={**BODY, "spec": {}}, headers={"X-Remote-User": "bob"})
        assert no_pvc.status_code == 422 and "spec.pvcName: Required value" in no_pvc.json()["message"]
        resources = http.get("/apis/upload.cdi.kubevirt.io/v1beta1").json()["resources"]
        assert [(r["name"], r["verbs"]) for r in resources] == [("uploadtokenrequests", ["create"])]


@pytest.mark.parametrize("who", ["no client certificate", "another CA"])
def test_only_the_front_proxy_gets_through_the_handshake(api: Api, who: str) -> None:
    client_ca = None if who == "no client certificate" else trustme.CA()
    with api.client(client_ca) as http, pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        http.post(PATH.format(ns="up"), json=BODY, headers={"X-Remote-User": "bob"})


def test_cli_refuses_a_missing_client_ca_saying_so(tmp_path: Path, cluster: Cluster) -> None:  # noqa: F811
    key = tmp_path / "key.pem"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(key))  # an EC key: not RSA
    proc = subprocess.run([sys.executable, "-m", "cdi.cli.main", "upload-api", "--tls-cert", "x", "--tls-key", "y",
                           "--token-key", str(key), "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cdi upload-api: not an RSA private key" in proc.stderr


@pytest.mark.slow
def test_cli_reads_the_front_proxy_ca_from_the_cluster_and_names_what_is_missing(tmp_path: Path,
                                                                                  cluster: Cluster) -> None:  # noqa: F811
    key = tmp_path / "rsa.pem"
    key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    cmd = [sys.executable, "-m", "cdi.cli.main", "upload-api", "--tls-cert", "x", "--tls-key", "y",
           "--token-key", str(key), "--kubeconfig", str(cluster.kubeconfig)]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "extension-apiserver-authentication" in missing.stderr, missing.stderr
    cluster.kubectl("create", "configmap", "extension-apiserver-authentication", "-n", "kube-system",
                    "--from-literal=requestheader-client-ca-file=not a pem")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cdi upload-api:" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
