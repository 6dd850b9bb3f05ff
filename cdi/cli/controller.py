"""``cdi controller``: the controllers alone, against any API server (a cluster's or ``cdi serve``'s).

Credentials: ``--kubeconfig`` (anything kubectl reads), else the pod's in-cluster configuration (the
ServiceAccount token and CA under /var/run/secrets/kubernetes.io/serviceaccount and
KUBERNETES_SERVICE_HOST/PORT). With ``--leader-elect`` the replicas share a ``coordination.k8s.io``
Lease and only its holder reconciles; a leader that cannot renew stops reconciling and exits 1, as
kube's controllers do, so its Deployment restarts it as a candidate.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

README_SECTION = "Controllers: `cdi controller`, `--no-controllers`, metrics"  # how to run with the ServiceAccount


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cdi.controller.resources import ControllerSettings
    from cdi.kube.client import SERVICE_ACCOUNT_DIR
    from cdi.kube.leader import LeaseConfig

    d, lease = ControllerSettings(), LeaseConfig()
    p = sub.add_parser("controller", help="run the controllers against an API server (cluster mode)",
                       description="Run the DataVolume, upload and clone controllers (and the VM runtime with "
                                   "--vm) against a Kubernetes API server or `cdi serve --no-controllers`.")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                   help="kubeconfig to use (default $KUBECONFIG, else the in-cluster ServiceAccount)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--service-account-dir", default=SERVICE_ACCOUNT_DIR,
                   help=f"where the in-cluster token and ca.crt are (default {SERVICE_ACCOUNT_DIR})")
    p.add_argument("--workers", type=int, default=4, help="reconciler threads per controller")
    p.add_argument("--vm", action="store_true", help="also run the VM runtime (off where KubeVirt is installed)")
    p.add_argument("--importer-image", default=d.importer_image)
    p.add_argument("--uploadserver-image", default=d.uploadserver_image)
    p.add_argument("--cloner-image", default=d.cloner_image)
    p.add_argument("--filesystem-overhead", type=float, default=d.filesystem_overhead)
    p.add_argument("--progress-interval", type=float, default=d.progress_interval)
    p.add_argument("--storage-class", default=None, help="storage class of DataVolumes that name none")
    p.add_argument("--clone-host-assisted", action="store_true")
    p.add_argument("--clone-token-key", default=None, metavar="PEM",
                   help="public key the API's admission signs clone tokens with (cdi serve: DATA_DIR/upload-token.pub);"
                        " without it only same-namespace clones run")
    p.add_argument("--worker-pod-config", default=None, metavar="YAML",
                   help="resources, nodeSelector, tolerations, affinity, imagePullSecrets for worker pods")
    p.add_argument("--leader-elect", action="store_true", help="reconcile only while holding the Lease")
    p.add_argument("--lease-name", default=lease.name)
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE") or lease.namespace)
    p.add_argument("--identity", default=None, help="this replica's name in the Lease (default hostname_uuid)")
    p.add_argument("--lease-duration", type=float, default=lease.lease_duration, help="seconds")
    p.add_argument("--renew-deadline", type=float, default=lease.renew_deadline, help="seconds")
    p.add_argument("--retry-period", type=float, default=lease.retry_period, help="seconds")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)")
    p.add_argument("--metrics-address", default="0.0.0.0")  # noqa: S104 (a pod's port)
    p.set_defaults(func=run_controller)


def _settings(args: argparse.Namespace) -> object:
    from cdi.controller.resources import ControllerSettings, WorkerPodConfig

    placement = WorkerPodConfig.from_file(args.worker_pod_config) if args.worker_pod_config else WorkerPodConfig()
    if not 0 <= args.filesystem_overhead < 1:
        raise ValueError("--filesystem-overhead must be in [0, 1)")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.progress_interval <= 0:
        raise ValueError("--progress-interval must be positive")
    return ControllerSettings(importer_image=args.importer_image, uploadserver_image=args.uploadserver_image,
                              cloner_image=args.cloner_image, filesystem_overhead=args.filesystem_overhead,
                              progress_interval=args.progress_interval, storage_class=args.storage_class,
                              clone_host_assisted=args.clone_host_assisted, worker_pod=placement)


def run_controller(args: argparse.Namespace) -> int:
    from cdi import metrics
    from cdi.cli.listen import port_problem
    from cdi.clonetoken import TokenCheck
    from cdi.controller.run import Controllers, RunOptions
    from cdi.kube import ApiError, Client, Forbidden
    from cdi.kube.leader import LeaderElector, LeaseConfig

    try:
        settings = _settings(args)
        lease = LeaseConfig(name=args.lease_name, namespace=args.lease_namespace,
                            identity=args.identity or f"{socket.gethostname()}_{uuid.uuid4()}",
                            lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                            retry_period=args.retry_period)
        lease.validate()
        tokens = TokenCheck(Path(args.clone_token_key).read_bytes()) if args.clone_token_key else None
        client = (Client.from_kubeconfig(args.kubeconfig, context=args.context) if args.kubeconfig
                  else Client.in_cluster(args.service_account_dir))
        user = client.user_info()
    except Forbidden as e:
        print(f"cdi controller: error: the API server refused the credentials ({e.status}: {e}); check the "
              f"token of the kubeconfig or the ServiceAccount", file=sys.stderr)
        return 2
    except (ValueError, OSError, ApiError) as e:
        print(f"cdi controller: error: {e}", file=sys.stderr)
        return 2
    controllers = Controllers(client, settings, RunOptions(workers=args.workers, vm=args.vm),  # type: ignore[arg-type]
                              clone_tokens=tokens)
    if args.metrics_port:
        try:
            metrics.serve(metrics.new_registry(controllers.metrics), args.metrics_port, args.metrics_address)
        except OSError as e:
            problem = port_problem("--metrics-port", args.metrics_port, args.metrics_address, e, zero="0 (off)")
            print(f"cdi controller: error: {problem}", file=sys.stderr)
            return 2
    stop, lost = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    groups = [str(g) for g in user.get("groups") or []]
    print(f"cdi controller: API server {client.server} as {user.get('username') or '?'} (groups: "
          f"{', '.join(groups) or 'none'})", file=sys.stderr, flush=True)
    if "system:masters" in groups:
        print("cdi controller: warning: running as a member of system:masters, allowed everything; run it with "
              f'the cdi-controller ServiceAccount\'s token (README section "{README_SECTION}") so it has only the '
              "rules it needs", file=sys.stderr, flush=True)
    elector = None
    if args.leader_elect:
        def lose() -> None:
            lost.set()
            stop.set()

        def lead() -> None:
            print(f"cdi controller: leading as {lease.identity}; controllers started", file=sys.stderr, flush=True)
            controllers.start()

        elector = LeaderElector(client, lease, on_started=lead, on_stopped=lose).start()
        print(f"cdi controller: campaigning for lease {lease.namespace}/{lease.name} as {lease.identity}",
              file=sys.stderr, flush=True)
    else:
        controllers.start()
        print("cdi controller: controllers started", file=sys.stderr, flush=True)
    stop.wait()
    controllers.stop()
    if elector is not None:
        elector.stop(release=not lost.is_set())
    if lost.is_set():
        print("cdi controller: lost the leader lease; stopped reconciling", file=sys.stderr, flush=True)
        return 1
    return 0
