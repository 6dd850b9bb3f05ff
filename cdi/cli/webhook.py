"""``cdi webhook``: the validating and mutating admission webhooks of a cluster install.

kube-apiserver calls it (the chart's ValidatingWebhookConfiguration and
MutatingWebhookConfiguration) for every create and update of the custom kinds the chart's CRDs
declare, and it runs the embedded API server's defaulting and validation on them (`cdi.webhook`).
TLS is mandatory: the certificate and key are the chart's webhook Secret.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from cdi.api import crdgen, default_registry
    from cdi.webhook import WebhookServer

    try:  # a wrong or unreadable pair is a start-up error that names the files, not a traceback
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        print(f"cdi webhook: cannot load --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {e}", file=sys.stderr)
        return 2
    server = WebhookServer(crdgen.crd_kinds(default_registry()), cert_file=args.tls_cert, key_file=args.tls_key,
                           host=args.address, port=args.port)
    server.run()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "serve the admission webhooks (validating and mutating) of a cluster install over TLS"
    p = sub.add_parser("webhook", help=text, description=text)
    p.add_argument("--tls-cert", required=True, help="PEM certificate (chain) the server presents")
    p.add_argument("--tls-key", required=True, help="PEM private key of the certificate")
    p.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0; :: for IPv6)")
    p.set_defaults(func=_run)
