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
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdi.apiserver.clone_admission import CloneSourceCheck
    from cdi.webhook.review import Check

log = logging.getLogger(__name__)


def _clone_check(args: argparse.Namespace) -> CloneSourceCheck:
    """CDI's clone authorization against the cluster (SubjectAccessReviews), with the token signer if given."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cdi.apiserver.clone_admission import CloneSourceCheck
    from cdi.kube.client import Client
    from cdi.uploadtoken import Signer
    from cdi.webhook.cluster import ClusterAuthorizer

    client = Client.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Client.in_cluster(args.service_account_dir)
    cluster = ClusterAuthorizer(client)
    check = CloneSourceCheck(cluster, cluster.namespace_exists, cluster.find_datasource)
    if args.token_key:
        key = serialization.load_pem_private_key(Path(args.token_key).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{args.token_key} does not hold an RSA private key")
        check.signer = Signer(key)
    return check


def _run(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from cdi.api import crdgen, default_registry
    from cdi.cli.listen import port_problem
    from cdi.kube.errors import ApiError
    from cdi.webhook import WebhookServer

    try:  # a wrong or unreadable pair is a start-up error that names the files, not a traceback
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        print(f"cdi webhook: cannot load --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {e}", file=sys.stderr)
        return 2
    checks: list[Check] = []
    if not args.no_clone_check:
        try:
            checks.append(_clone_check(args))
        except (OSError, ValueError, ApiError, ConfigException) as e:  # no credentials, or a bad token key
            print(f"cdi webhook: clone check: {e} (pass --kubeconfig, run in a pod, or --no-clone-check)",
                  file=sys.stderr)
            return 2
    try:
        server = WebhookServer(crdgen.crd_kinds(default_registry()), cert_file=args.tls_cert, key_file=args.tls_key,
                               host=args.address, port=args.port, checks=checks)
    except OSError as e:
        print(f"cdi webhook: {port_problem('--port', args.port, args.address, e)}", file=sys.stderr)
        return 2
    server.run()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "serve the admission webhooks (validating and mutating) of a cluster install over TLS"
    p = sub.add_parser("webhook", help=text, description=text)
    p.add_argument("--tls-cert", required=True, help="PEM certificate (chain) the server presents")
    p.add_argument("--tls-key", required=True, help="PEM private key of the certificate")
    p.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0; :: for IPv6)")
    p.add_argument("--kubeconfig", default=None,
                   help="API server of the clone check's SubjectAccessReviews (default: in-cluster configuration)")
    p.add_argument("--service-account-dir", default="/var/run/secrets/kubernetes.io/serviceaccount",
                   help=argparse.SUPPRESS)
    p.add_argument("--token-key", default=None, metavar="PEM",
                   help="RSA private key to sign clone tokens with (the upload token key); without it none are put")
    p.add_argument("--no-clone-check", action="store_true",
                   help="skip CDI's clone authorization (no API server access needed)")
    p.set_defaults(func=_run)
