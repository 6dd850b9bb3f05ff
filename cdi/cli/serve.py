"""``cdi serve``: the API server, the controllers and the local node in one process.

The controllers act as ServiceAccount ``cdi/cdi-controller`` bound to the ClusterRole the chart installs;
``--no-controllers`` leaves them to a separate ``cdi controller``.

On first start it creates the data directory, a bearer token and ``DIR/kubeconfig``, so that
``kubectl --kubeconfig DIR/kubeconfig get dv`` works with nothing else set. Objects live in
``DIR/state.db`` (SQLite), volumes under ``DIR/volumes``; a restart picks up where it stopped.
``--demo`` serves the bundled sample image on 127.0.0.1 and applies a DataVolume importing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ApiSection:
    # Address to listen on; loopback unless you mean to expose the API (it still needs the token).
    address: str = "127.0.0.1"
    # TCP port of the API server (0 picks a free one; the kubeconfig is rewritten on every start).
    port: int = 6443
    # Watch events kept for watches resuming from an old resourceVersion (older ones get 410 Gone).
    watch_history: int = 10000


@dataclass
class NodeSection:
    # Pods (imports) running at the same time on this machine.
    max_running_pods: int = 4
    # First back-off in seconds before a failed pod is restarted (doubles up to 300 s).
    restart_backoff: float = 10.0
    # Real block devices handed out to Block-mode PVCs (smallest that fits); without them, and when
    # none fits, a Block PVC gets a sparse raw file of its exact size.
    block_devices: list[str] = field(default_factory=list)


@dataclass
class ControllerSection:
    # Reconciler threads.
    workers: int = 4
    # Importer image named in importer pods (used by a real cluster's kubelet; ignored locally).
    importer_image: str = "cdi-importer:latest"
    # Fraction of a Filesystem volume kept for the filesystem (CDI's default 0.06).
    filesystem_overhead: float = 0.06
    # Seconds between progress reads of a running import.
    progress_interval: float = 1.0
    # A source slower than speed_limit bytes/s for speed_time seconds has stalled; an importer gives up
    # after max_stalled_retries reconnects that made no progress, and is restarted with back-off.
    speed_limit: int = 16 << 10
    speed_time: float = 60.0
    max_stalled_retries: int = 3
    # Bytes between durable resume points of a raw upload (a dropped upload continues from the last one).
    upload_resume_interval: int = 64 << 20
    # Clone every PVC with the host-assisted stream (cloner pod -> upload server), even on one node.
    clone_host_assisted: bool = False
    # Run the controllers in this process (off: `cdi controller` runs them, against this API server).
    enabled: bool = True
    # Run the VM runtime (VirtualMachine/VirtualMachineInstance controllers) with them.
    vm: bool = True


@dataclass
class UploadProxySection:
    # Address of the upload proxy (HTTPS; uploads need a token from an UploadTokenRequest).
    address: str = "127.0.0.1"
    # TCP port of the upload proxy (0 picks a free one; CDIConfig 'config' publishes the URL).
    port: int = 8443

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}" if self.port else "(a free port chosen at start)"


@dataclass
class ConsoleSection:
    # Address of the web console (HTTPS, same certificate as the API; pages under /ui/).
    address: str = "127.0.0.1"
    # TCP port of the web console (0 picks a free one; the URL is printed at start).
    port: int = 8444

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}/ui/" if self.port else "(a free port chosen at start)"


@dataclass
class ServeConfig:
    # Directory holding the token, kubeconfig, TLS files, state.db and the volumes.
    data_dir: str = "./cdi-data"
    api: ApiSection = field(default_factory=ApiSection)
    node: NodeSection = field(default_factory=NodeSection)
    controller: ControllerSection = field(default_factory=ControllerSection)
    upload_proxy: UploadProxySection = field(default_factory=UploadProxySection)
    console: ConsoleSection = field(default_factory=ConsoleSection)

    def validate(self) -> None:
        """Raise ValueError with a message naming the setting and what it accepts."""
        try:
            ipaddress.ip_address(self.api.address)
        except ValueError as e:
            raise ValueError(f"--address {self.api.address!r} is not an IP address") from e
        if not 0 <= self.api.port <= 65535:
            raise ValueError(f"--port {self.api.port} is out of range 0-65535")
        if not 0 <= self.upload_proxy.port <= 65535:
            raise ValueError(f"--uploadproxy-port {self.upload_proxy.port} is out of range 0-65535")
        try:
            ipaddress.ip_address(self.upload_proxy.address)
        except ValueError as e:
            raise ValueError(f"--uploadproxy-address {self.upload_proxy.address!r} is not an IP address") from e
        if not 0 <= self.console.port <= 65535:
            raise ValueError(f"--console-port {self.console.port} is out of range 0-65535")
        try:
            ipaddress.ip_address(self.console.address)
        except ValueError as e:
            raise ValueError(f"--console-address {self.console.address!r} is not an IP address") from e
        if self.api.watch_history < 1:
            raise ValueError("--watch-history must be at least 1")
        if self.node.max_running_pods < 1:
            raise ValueError("--max-running-pods must be at least 1")
        if self.node.restart_backoff <= 0:
            raise ValueError("--restart-backoff must be positive")
        for dev in self.node.block_devices:
            if not Path(dev).exists():
                raise ValueError(f"--block-device {dev} does not exist")
        if self.controller.workers < 1:
            raise ValueError("--workers must be at least 1")
        if not 0 <= self.controller.filesystem_overhead < 1:
            raise ValueError("--filesystem-overhead must be in [0, 1)")
        if self.controller.progress_interval <= 0:
            raise ValueError("--progress-interval must be positive")
        if self.controller.speed_limit < 0 or self.controller.speed_time <= 0:
            raise ValueError("--speed-limit must not be negative and --speed-time must be positive")
        if self.controller.max_stalled_retries < 0:
            raise ValueError("--max-stalled-retries must not be negative")
        if self.controller.upload_resume_interval < 1 << 20:
            raise ValueError("--upload-resume-interval must be at least 1 MiB")
        parent = Path(self.data_dir).resolve().parent
        if not parent.is_dir():
            raise ValueError(f"--data-dir {self.data_dir}: parent directory {parent} does not exist")

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data_dir"] = str(Path(self.data_dir).resolve())
        data["upload_proxy"]["url"] = self.upload_proxy.url
        data["console"]["url"] = self.console.url
        return data


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help="run the API server, controllers and local node",
                       description="Run cdi on this machine: a Kubernetes-compatible API for DataVolumes.")
    p.add_argument("--data-dir", default=d.data_dir, help=f"state and volumes (default {d.data_dir})")
    p.add_argument("--address", default=d.api.address, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=d.api.port, help=f"API port (default {d.api.port}; 0 = any free)")
    p.add_argument("--watch-history", type=int, default=d.api.watch_history)
    p.add_argument("--max-running-pods", type=int, default=d.node.max_running_pods,
                   help=f"imports running at once (default {d.node.max_running_pods})")
    p.add_argument("--restart-backoff", type=float, default=d.node.restart_backoff,
                   help="first restart back-off of a failed importer, seconds")
    p.add_argument("--block-device", action="append", default=[], metavar="PATH",
                   help="a block device for Block-mode PVCs (repeatable)")
    p.add_argument("--workers", type=int, default=d.controller.workers)
    p.add_argument("--importer-image", default=d.controller.importer_image)
    p.add_argument("--filesystem-overhead", type=float, default=d.controller.filesystem_overhead)
    p.add_argument("--progress-interval", type=float, default=d.controller.progress_interval)
    p.add_argument("--speed-limit", default=str(d.controller.speed_limit), metavar="BYTES",
                   help="importers treat a source slower than this (bytes/s, e.g. 16Ki; 0: off) as stalled")
    p.add_argument("--speed-time", type=float, default=d.controller.speed_time,
                   help="seconds below --speed-limit before a source counts as stalled")
    p.add_argument("--max-stalled-retries", type=int, default=d.controller.max_stalled_retries,
                   help="reconnects after a stall before an importer run fails")
    p.add_argument("--upload-resume-interval", default=str(d.controller.upload_resume_interval), metavar="BYTES",
                   help="bytes between durable resume points of an upload (a quantity: 64Mi, 1Gi, ...)")
    p.add_argument("--clone-host-assisted", action="store_true",
                   help="clone every PVC with the host-assisted stream, even where a local copy would do")
    p.add_argument("--no-controllers", action="store_true",
                   help="serve the API, the upload proxy and the local node only; run `cdi controller` against it")
    p.add_argument("--uploadproxy-address", default=d.upload_proxy.address, help="upload proxy listen address")
    p.add_argument("--uploadproxy-port", type=int, default=d.upload_proxy.port,
                   help=f"upload proxy port (default {d.upload_proxy.port}; 0 = any free)")
    p.add_argument("--console-address", default=d.console.address, help="web console listen address")
    p.add_argument("--console-port", type=int, default=d.console.port,
                   help=f"web console port (default {d.console.port}; 0 = any free)")
    p.add_argument("--show-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--demo", action="store_true", help="serve the sample image and import it into DataVolume 'demo'")
    p.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    cfg = ServeConfig(
        data_dir=args.data_dir,
        api=ApiSection(address=args.address, port=args.port, watch_history=args.watch_history),
        node=NodeSection(max_running_pods=args.max_running_pods, restart_backoff=args.restart_backoff,
                         block_devices=list(args.block_device)),
        controller=ControllerSection(workers=args.workers, importer_image=args.importer_image,
                                     filesystem_overhead=args.filesystem_overhead,
                                     progress_interval=args.progress_interval,
                                     speed_limit=_size_arg("--speed-limit", args.speed_limit),
                                     speed_time=args.speed_time, max_stalled_retries=args.max_stalled_retries,
                                     upload_resume_interval=_size_arg("--upload-resume-interval",
                                                                      args.upload_resume_interval),
                                     clone_host_assisted=args.clone_host_assisted,
                                     enabled=not args.no_controllers),
        upload_proxy=UploadProxySection(address=args.uploadproxy_address, port=args.uploadproxy_port),
        console=ConsoleSection(address=args.console_address, port=args.console_port),
    )
    cfg.validate()
    return cfg


def _size_arg(flag: str, text: str) -> int:
    from cdi.units import QuantityError, parse_size

    try:
        return parse_size(text)
    except QuantityError as e:
        raise ValueError(f"{flag}: {e}") from e


def _token(data_dir: Path) -> str:
    path = data_dir / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def run_serve(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"cdi serve: error: {e}", file=sys.stderr)
        return 2
    if args.show_config:
        print(json.dumps(cfg.as_dict(), indent=2))
        return 0
    from cdi.cli.runtime import ListenerFailed, Runtime  # heavy imports only when serving

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        runtime = Runtime(cfg).start()
    except ListenerFailed as e:
        print(f"cdi serve: error: cannot start: {e} (is another cdi serve using port {e.port}? "
              f"pass another {e.flag}, or 0 for any free port)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cdi serve: error: cannot start: {e}", file=sys.stderr)
        return 1
    kubeconfig = runtime.kubeconfig
    print(f"cdi serve: API at {runtime.api.url}, data in {runtime.data_dir}", file=sys.stderr)
    if runtime.upload_proxy is not None:
        print(f"cdi serve: upload proxy at {runtime.upload_proxy.url}", file=sys.stderr)
    if runtime.console is not None:
        print(f"cdi serve: web console at {runtime.console.url}\n"
              f"  sign in as admin (once, within an hour): {runtime.console.sign_in_link()}", file=sys.stderr)
    print(f"  export KUBECONFIG={kubeconfig}\n  kubectl get dv", file=sys.stderr, flush=True)
    if args.demo:
        runtime.start_demo()
    stop.wait()
    print("cdi serve: stopping", file=sys.stderr)
    runtime.stop()
    return 0
