"""``cdi start|stop|restart VM`` and ``cdi console VM``: virtctl's VM verbs against the API server.

start/stop/restart call KubeVirt's subresources (``PUT /apis/subresources.kubevirt.io/v1/
namespaces/NS/virtualmachines/VM/start``); the server's refusals ("VM is not running", "Always does
not support manual start requests") are printed as they come. ``console`` opens the console
websocket (subprotocol ``plain.kubevirt.io``) and attaches the terminal in raw mode; Ctrl+] leaves.
Standard input may also be a pipe, which is how tests drive it.

The kubeconfig comes from ``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config`` or
``./cdi-data/kubeconfig`` (what ``cdi serve`` writes), first found; its current context gives the
server, CA and bearer token.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ESCAPE = b"\x1d"  # Ctrl+]
SUBPROTOCOL = "plain.kubevirt.io"


class CliError(Exception):
    """A failure to report to the user in one line."""


@dataclass
class Endpoint:
    server: str
    token: str
    namespace: str
    ssl_context: ssl.SSLContext | None

    def url(self, path: str, *, websocket: bool = False) -> str:
        base = self.server.rstrip("/")
        if websocket:
            base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        return base + path


def kubeconfig_path(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else [*os.environ.get("KUBECONFIG", "").split(os.pathsep),
                                              str(Path.home() / ".kube" / "config"), "cdi-data/kubeconfig"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise CliError("no kubeconfig found: pass --kubeconfig (cdi serve writes DATA_DIR/kubeconfig)")


def load_endpoint(path: Path, namespace: str | None) -> Endpoint:
    try:
        cfg: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CliError(f"cannot read kubeconfig {path}: {e}") from e

    def named(section: str, name: str) -> dict[str, Any]:
        for item in cfg.get(section) or []:
            if item.get("name") == name:
                return dict(item.get(section[:-1]) or {})
        raise CliError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    context = named("contexts", str(cfg.get("current-context") or ""))
    cluster = named("clusters", str(context.get("cluster") or ""))
    user = named("users", str(context.get("user") or ""))
    server = str(cluster.get("server") or "")
    if not server:
        raise CliError(f"kubeconfig {path}: the cluster has no server")
    ctx: ssl.SSLContext | None = None
    if server.startswith("https"):
        ctx = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            ctx.load_verify_locations(cafile=str(cluster["certificate-authority"]))
    token = str(user.get("token") or "")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return Endpoint(server, token, namespace or str(context.get("namespace") or "default"), ctx)


def vm_action(ep: Endpoint, action: str, name: str) -> None:
    path = f"/apis/subresources.kubevirt.io/v1/namespaces/{ep.namespace}/virtualmachines/{name}/{action}"
    req = urllib.request.Request(ep.url(path), data=b"{}", method="PUT",
                                 headers={"Authorization": f"Bearer {ep.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ep.ssl_context, timeout=30) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message") or str(e)
        except ValueError:
            message = str(e)
        raise CliError(message) from e
    except urllib.error.URLError as e:
        raise CliError(f"cannot reach the API server at {ep.server}: {e.reason}") from e


def console(ep: Endpoint, name: str, stdin_fd: int, stdout_fd: int) -> str:
    """Relay between the console websocket and the descriptors until Ctrl+] or the end; say why."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    from vm_runtime.console import raw_terminal

    path = f"/apis/subresources.kubevirt.io/v1/namespaces/{ep.namespace}/virtualmachineinstances/{name}/console"
    try:
        ws = connect(ep.url(path, websocket=True), ssl=ep.ssl_context, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                     additional_headers={"Authorization": f"Bearer {ep.token}"}, open_timeout=15)
    except InvalidStatus as e:
        raise CliError(f"cannot open the console of {name}: is the VMI running? (HTTP {e.response.status_code})") from e
    except (InvalidHandshake, OSError, TimeoutError) as e:
        raise CliError(f"cannot open the console of {name}: {e}") from e
    why = ["connection closed"]

    def pump_input() -> None:
        while True:
            data = os.read(stdin_fd, 4096)
            if not data:
                why[0] = "end of input"
                break
            if ESCAPE in data:
                head = data.split(ESCAPE, 1)[0]
                if head:
                    ws.send(head)
                why[0] = "escape"
                break
            try:
                ws.send(data)
            except ConnectionClosed:
                return
        ws.close()

    os.write(2, f"Successfully connected to {name} console. Press Ctrl+] to exit.\r\n".encode())
    with raw_terminal(stdin_fd):
        threading.Thread(target=pump_input, name="console-input", daemon=True).start()
        try:
            for message in ws:
                os.write(stdout_fd, message if isinstance(message, bytes) else message.encode())
        except ConnectionClosed:
            pass
    return why[0]


def _run(args: argparse.Namespace) -> int:
    try:
        ep = load_endpoint(kubeconfig_path(args.kubeconfig), args.namespace)
        if args.command == "console":
            why = console(ep, args.vm, sys.stdin.fileno(), sys.stdout.fileno())
            print(f"\r\nconsole: {why}", file=sys.stderr)
        else:
            vm_action(ep, args.command, args.vm)
            print(f"VM {args.vm} was scheduled to {args.command}")
    except CliError as e:
        print(f"cdi {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = {"start": "start a VirtualMachine", "stop": "stop a VirtualMachine",
             "restart": "restart a VirtualMachine", "console": "attach to a VM's serial console (Ctrl+] leaves)"}
    for verb, text in helps.items():
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("vm", metavar="VM", help="name of the VirtualMachine (the VMI for console)")
        p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's, else default)")
        p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
        p.set_defaults(func=_run)
