"""KubeVirt's subresource API (``subresources.kubevirt.io/v1``): start, stop, restart and console.

``PUT .../namespaces/{ns}/virtualmachines/{name}/start|stop|restart`` change the VM the way virt-api
does; the VM controller then acts on the result:

- start: Halted becomes Always (``running: true`` for a VM using the deprecated field); Manual and
  RerunOnFailure get a Start state change request (with a Stop of the finished VMI first when it
  must be replaced); Always and Once refuse (409 "... does not support manual start requests").
- stop: Always and Once become Halted (``running: false``); Manual and RerunOnFailure get a Stop
  request for the running VMI's uid; a VM that is not running gets 409 "VM is not running".
- restart: a Stop (of the VMI's uid) and a Start request; Halted and Once refuse.

Requests go to ``status.stateChangeRequests``; a second start/stop while one is pending is refused
("stop/start already underway"), and a pending start failure back-off is cleared, as in KubeVirt.

``GET .../virtualmachineinstances/{name}/console`` is a websocket (subprotocol ``plain.kubevirt.io``)
bridged to the guest's serial console: a unix socket path obtained from the console provider hook
(``set_console_provider``), which the local node registers. Without one the answer is 404.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from cdi.api.registry import Registry, ResourceKind
from cdi.apiserver import limits, options
from cdi.apiserver.errors import ApiServerError, Conflict, NotFound, to_status
from cdi.apiserver.objects import Objects
from cdi.apiserver.routes import json_response

log = logging.getLogger(__name__)

GROUP = "subresources.kubevirt.io"
PREFIX = f"/apis/{GROUP}/v1"
SUBPROTOCOL = "plain.kubevirt.io"
FINAL = ("Succeeded", "Failed")
Obj = dict[str, Any]
# (namespace, vmi name) -> host path of the guest's serial console unix socket; raises NotFound or
# Conflict (cdi.apiserver.errors) when there is none.
ConsoleProvider = Callable[[str, str], str]


def _conflict(name: str, why: str) -> Conflict:
    return Conflict(f'Operation cannot be fulfilled on virtualmachine.kubevirt.io "{name}": {why}')


def _strategy(vm: Obj) -> str:
    spec = vm.get("spec") or {}
    return str(spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted"))


def _set_running(vm: Obj, running: bool) -> Obj:
    new = copy.deepcopy(vm)
    if new["spec"].get("runStrategy"):
        new["spec"]["runStrategy"] = "Always" if running else "Halted"
    else:
        new["spec"]["running"] = running
    return new


def _with_requests(vm: Obj, *changes: Obj) -> Obj:
    new = copy.deepcopy(vm)
    status = new.setdefault("status", {})
    pending = status.get("stateChangeRequests") or []
    if pending and not (len(changes) == 1 and changes[0]["action"] == "Stop"):
        raise _conflict(vm["metadata"]["name"], "unable to complete request: stop/start already underway")
    status["stateChangeRequests"] = list(changes)
    status.pop("startFailure", None)
    return new


class VmActions:
    """start/stop/restart on stored objects, atomically under the store lock."""

    def __init__(self, objects: Objects, registry: Registry) -> None:
        self.objects = objects
        vm = registry.lookup("kubevirt.io", "v1", "virtualmachines")
        vmi = registry.lookup("kubevirt.io", "v1", "virtualmachineinstances")
        if vm is None or vmi is None:
            raise ValueError("the registry must hold the kubevirt.io/v1 kinds")
        self.vm_kind: ResourceKind = vm
        self.vmi_kind: ResourceKind = vmi

    def run(self, action: str, ns: str, name: str, *, dry_run: bool = False) -> None:
        with self.objects.store.lock:
            vm = self.objects.get(self.vm_kind, ns, name)
            try:
                vmi: Obj | None = self.objects.get(self.vmi_kind, ns, name)
            except NotFound:
                vmi = None
            new, status = getattr(self, f"_{action}")(vm, vmi, _strategy(vm))
            log.info("vm %s ns=%s name=%s", action, ns, name)
            self.objects.update(self.vm_kind, ns, name, new, status=status, dry_run=dry_run)

    def _start(self, vm: Obj, vmi: Obj | None, strategy: str) -> tuple[Obj, bool]:
        name = vm["metadata"]["name"]
        phase = ((vmi or {}).get("status") or {}).get("phase") or ""
        if vmi is not None and phase not in FINAL and phase not in ("", "Unknown"):
            raise _conflict(name, "VM is already running")
        if strategy == "Halted":
            return _set_running(vm, True), False
        if strategy in ("RerunOnFailure", "Manual"):
            if strategy == "RerunOnFailure" and phase == "Failed":
                raise _conflict(name, "RerunOnFailure does not support starting VM from failed state")
            restart = vmi is not None and (phase in FINAL if strategy == "Manual" else phase == "Succeeded")
            changes = [{"action": "Stop", "uid": vmi["metadata"]["uid"]}] if restart and vmi else []
            return _with_requests(vm, *changes, {"action": "Start"}), True
        raise _conflict(name, f"{strategy} does not support manual start requests")

    def _stop(self, vm: Obj, vmi: Obj | None, strategy: str) -> tuple[Obj, bool]:
        name = vm["metadata"]["name"]
        running = vmi is not None and ((vmi.get("status") or {}).get("phase") or "") not in FINAL
        if strategy in ("Always", "Once"):
            return _set_running(vm, False), False
        if not running or vmi is None:
            raise _conflict(name, "VM is not running")
        if strategy == "Halted":
            raise _conflict(name, "Halted only supports manual stop requests with a shorter graceperiod")
        return _with_requests(vm, {"action": "Stop", "uid": vmi["metadata"]["uid"]}), True

    def _restart(self, vm: Obj, vmi: Obj | None, strategy: str) -> tuple[Obj, bool]:
        name = vm["metadata"]["name"]
        if strategy in ("Halted", "Once"):
            raise _conflict(name, f"RunStrategy {strategy} does not support manual restart requests")
        if vmi is None:
            raise _conflict(name, "VM is not running")
        return _with_requests(vm, {"action": "Stop", "uid": vmi["metadata"]["uid"]}, {"action": "Start"}), True


def _resource_list() -> Obj:
    def entry(name: str, kind: str, verbs: list[str]) -> Obj:
        return {"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": verbs}

    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/v1", "resources": [
        entry("virtualmachines/start", "VirtualMachine", ["update"]),
        entry("virtualmachines/stop", "VirtualMachine", ["update"]),
        entry("virtualmachines/restart", "VirtualMachine", ["update"]),
        entry("virtualmachineinstances/console", "VirtualMachineInstance", ["get"]),
    ]}


async def _bridge(ws: WebSocket, path: str) -> None:
    reader, writer = await asyncio.open_unix_connection(path)

    async def to_guest() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def to_client() -> None:
        while chunk := await reader.read(4096):
            await ws.send_bytes(chunk)

    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        writer.close()


def install(app: FastAPI, objects: Objects, registry: Registry) -> None:
    """Add the subresource routes to an app made by ``create_app`` (before its catch-all routes)."""
    app.state.console_provider = None
    if registry.lookup("kubevirt.io", "v1", "virtualmachines") is None:
        return  # an API server without the VM kinds serves no VM subresources
    actions = VmActions(objects, registry)

    @app.get(f"/apis/{GROUP}")
    async def _group() -> Response:
        gv = {"groupVersion": f"{GROUP}/v1", "version": "v1"}
        return json_response({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv],
                              "preferredVersion": gv})

    @app.get(PREFIX)
    async def _resources() -> Response:
        return json_response(_resource_list())

    @app.put(PREFIX + "/namespaces/{ns}/virtualmachines/{name}/{action}")
    async def _vm_action(request: Request, ns: str, name: str, action: str) -> Response:
        if action not in ("start", "stop", "restart"):
            raise NotFound("the server could not find the requested resource")
        body = await request.body()
        sent = limits.decode(body, "Can not unmarshal Request body to struct") if body.strip() else {}
        body_dry_run = sent.get("dryRun") or [] if isinstance(sent, dict) else []
        opts = options.parse("UpdateOptions", request.query_params, body_dry_run=body_dry_run)
        actions.run(action, ns, name, dry_run=opts.dry_run)
        return Response(status_code=202)

    @app.websocket(PREFIX + "/namespaces/{ns}/virtualmachineinstances/{name}/console")
    async def _console(ws: WebSocket, ns: str, name: str) -> None:
        token = f"Bearer {app.state.settings.token}".encode()
        if not hmac.compare_digest((ws.headers.get("authorization") or "").encode(), token):
            await ws.close(code=4401, reason="Unauthorized")
            return
        provider: ConsoleProvider | None = app.state.console_provider
        try:
            if provider is None:
                raise NotFound(f'no console for virtualmachineinstance "{name}": no node serves consoles')
            path = await run_in_threadpool(provider, ns, name)
        except ApiServerError as e:
            code, _ = to_status(e)
            await ws.close(code=4000 + code, reason=e.message[:120])
            return
        await ws.accept(subprotocol=SUBPROTOCOL)
        log.info("console attached ns=%s vmi=%s", ns, name)
        try:
            await _bridge(ws, path)
        except (OSError, WebSocketDisconnect) as e:
            log.info("console ended ns=%s vmi=%s error=%s", ns, name, e)
        try:
            await ws.close()
        except RuntimeError:
            pass


def set_console_provider(app: FastAPI, provider: ConsoleProvider | None) -> None:
    """Register (or remove) the function locating a VMI's serial console socket."""
    log.info("console provider %s", "registered" if provider else "removed")
    app.state.console_provider = provider
