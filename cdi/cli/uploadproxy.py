"""``cdi upload-proxy``: the upload proxy on its own, as the chart's cdi-uploadproxy Deployment runs it.

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

from cdi.uploadtoken import public_key_pem


def cluster_dns(namespace: str, name: str, port: int) -> tuple[str, int]:
    """Where a Service answers inside a cluster: its DNS name and its port."""
    return f"{name}.{namespace}.svc", port


def _run(args: argparse.Namespace) -> int:
    from cdi.kube.client import Client
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
    client = (Client.from_kubeconfig(args.kubeconfig) if args.kubeconfig
              else Client.in_cluster(args.service_account_dir))
    proxy = UploadProxy(client=client, public_key_pem=public, resolve=cluster_dns, cert_file=args.tls_cert,
                        key_file=args.tls_key, host=args.address, port=args.port).start()
    print(f"cdi upload-proxy: listening on {proxy.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    proxy.stop()
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
