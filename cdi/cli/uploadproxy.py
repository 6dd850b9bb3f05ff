"""``cdi upload-proxy`` and ``cdi upload-api``: the upload path of a cluster install (the chart's cdi-uploadproxy pod).

``cdi upload-api`` serves the upload token API (``cdi.uploadapi``) to kube-apiserver's aggregation
layer; it signs tokens with ``--token-key`` and trusts the front proxy's client certificates of
``--client-ca`` (default: ``requestheader-client-ca-file`` of ConfigMap
``kube-system/extension-apiserver-authentication``, read at start).


In ``cdi serve`` the proxy runs inside the server; in a cluster it is its own pod. It checks upload
tokens with the public half of the token key (``--token-key`` takes the PEM private key, as the
chart's Secret holds it, or the public key), reads the target PVC through the API server (in-cluster
configuration or ``--kubeconfig``) and reaches the PVC's upload server by the Service's cluster DNS
name (``NAME.NAMESPACE.svc``), over TLS with a client certificate from the controllers' signer.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cdi.uploadtoken import public_key_pem

if TYPE_CHECKING:
    from cdi.kube.client import Client


def cluster_dns(namespace: str, name: str, port: int) -> tuple[str, int]:
    """Where a Service answers inside a cluster: its DNS name and its port."""
    return f"{name}.{namespace}.svc", port


def _run(args: argparse.Namespace) -> int:
    from cdi.cli.listen import port_problem
    from cdi.kube.errors import ApiError
    from uploadproxy.proxy import UploadProxy

    try:
        public = public_key_pem(Path(args.token_key).read_bytes())
    except (OSError, ValueError) as e:
        print(f"cdi upload-proxy: --token-key {args.token_key}: not a readable PEM key: {e}", file=sys.stderr)
        return 2
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        print(f"cdi upload-proxy: cannot load --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {e}",
              file=sys.stderr)
        return 2
    try:
        client = _client(args)
    except ApiError as e:
        print(f"cdi upload-proxy: {e}", file=sys.stderr)
        return 2
    try:
        proxy = UploadProxy(client=client, public_key_pem=public, resolve=cluster_dns, cert_file=args.tls_cert,
                            key_file=args.tls_key, host=args.address, port=args.port).start()
    except OSError as e:
        print(f"cdi upload-proxy: {port_problem('--port', args.port, args.address, e)}", file=sys.stderr)
        return 2
    print(f"cdi upload-proxy: listening on {proxy.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    proxy.stop()
    return 0


def _client(args: argparse.Namespace) -> Client:
    from cdi.kube.client import Client

    return Client.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Client.in_cluster(args.service_account_dir)


def _run_api(args: argparse.Namespace) -> int:
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cdi.cli.listen import port_problem
    from cdi.kube.errors import ApiError
    from cdi.kube.kinds import CONFIGMAP
    from cdi.tlsserver import TlsServer
    from cdi.uploadapi import create_app
    from cdi.uploadtoken import Signer
    from cdi.webhook.cluster import ClusterAuthorizer

    try:
        key = serialization.load_pem_private_key(Path(args.token_key).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        client = _client(args)
        if args.client_ca:
            ca_pem = Path(args.client_ca).read_text()
        else:
            cm = client.get(CONFIGMAP, "kube-system", "extension-apiserver-authentication")
            ca_pem = str((cm.get("data") or {}).get("requestheader-client-ca-file") or "")
            if not ca_pem:
                raise ValueError("kube-system/extension-apiserver-authentication has no requestheader-client-ca-file")
        ssl.create_default_context(cadata=ca_pem)  # a bad CA is a start-up error
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ValueError, ssl.SSLError, ApiError) as e:
        print(f"cdi upload-api: {e}", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", prefix="cdi-requestheader-ca-", suffix=".pem") as ca_file:
        ca_file.write(ca_pem)
        ca_file.flush()
        try:
            server = TlsServer(create_app(Signer(key), ClusterAuthorizer(client)), cert_file=args.tls_cert,
                               key_file=args.tls_key, host=args.address, port=args.port, client_ca_file=ca_file.name,
                               name="upload-api")
        except OSError as e:
            print(f"cdi upload-api: {port_problem('--port', args.port, args.address, e)}", file=sys.stderr)
            return 2
        server.run()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cdi.kube.client import SERVICE_ACCOUNT_DIR

    text = "run the upload proxy alone (cluster mode): uploads with a token go to the PVC's upload server"
    p = sub.add_parser("upload-proxy", help=text, description=text)
    p.add_argument("--tls-cert", required=True, help="PEM certificate the proxy serves HTTPS with")
    p.add_argument("--tls-key", required=True, help="PEM key of that certificate")
    p.add_argument("--token-key", required=True, help="PEM key the upload tokens are signed with (private or public)")
    p.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: the pod's in-cluster configuration)")
    p.add_argument("--service-account-dir", default=SERVICE_ACCOUNT_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)

    text = "serve the upload token API (upload.cdi.kubevirt.io) to kube-apiserver's aggregation layer"
    a = sub.add_parser("upload-api", help=text, description=text)
    a.add_argument("--tls-cert", required=True, help="PEM certificate the server presents (the APIService's CA)")
    a.add_argument("--tls-key", required=True, help="PEM key of that certificate")
    a.add_argument("--token-key", required=True, help="RSA private key (PEM) the upload tokens are signed with")
    a.add_argument("--client-ca", default=None, help="CA of the front proxy's client certificates "
                   "(default: from kube-system/extension-apiserver-authentication)")
    a.add_argument("--port", type=int, default=8444, help="port to listen on (default 8444)")
    a.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    a.add_argument("--kubeconfig", default=None, help="kubeconfig (default: the pod's in-cluster configuration)")
    a.add_argument("--service-account-dir", default=SERVICE_ACCOUNT_DIR, help=argparse.SUPPRESS)
    a.set_defaults(func=_run_api)
