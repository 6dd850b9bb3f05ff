"""Pod addresses on one machine: a host port for every container port, and Services resolved to them.

In a cluster each pod has its own IP and listens on its container ports; here every pod is a process
on 127.0.0.1, so the node gives each declared container port (``spec.containers[].ports``) a free host
port, once per pod, and tells the container in its environment:

``CDI_PORTS``             JSON ``{"<containerPort>": hostPort}`` for every port of the pod
``CDI_PORT_<containerPort>`` the host port of one container port (e.g. ``CDI_PORT_8443=40123``)

The mapping is recorded on the pod as the annotation ``cdi.kubevirt.io/local-ports`` (same JSON), so
that anyone reading the pod through the API (the upload proxy) can reach it. ``resolve_service`` does
what kube-proxy does for a ClusterIP Service: it picks a ready pod matching the Service's selector and
returns the address and host port behind the Service port's ``targetPort``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

from cdi.kube import POD, SERVICE, ApiError, Client, NotFound, Obj

log = logging.getLogger(__name__)

ANN_PORTS = "cdi.kubevirt.io/local-ports"
POD_IP = "127.0.0.1"


class ServiceUnavailable(Exception):
    """The Service does not exist, or no ready pod backs it (kube-proxy would refuse the connection)."""


def declared_ports(pod: Obj) -> list[int]:
    out: list[int] = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            port = p.get("containerPort")
            if isinstance(port, int) and port not in out:
                out.append(port)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((POD_IP, 0))
        return int(s.getsockname()[1])


class PortMap:
    """Host ports of the pods this node runs, allocated once per pod uid."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._by_uid: dict[str, dict[int, int]] = {}

    def env(self, pod: Obj) -> dict[str, str]:
        """The container environment for ``pod``'s ports; allocates and records them on first use."""
        ports = declared_ports(pod)
        if not ports:
            return {}
        meta = pod["metadata"]
        with self._lock:
            mapping = self._by_uid.get(meta["uid"])
            if mapping is None:
                mapping = self._by_uid[meta["uid"]] = {p: _free_port() for p in ports}
        text = json.dumps({str(k): v for k, v in mapping.items()}, sort_keys=True)
        if (meta.get("annotations") or {}).get(ANN_PORTS) != text:
            try:
                self.client.patch(POD, meta["namespace"], meta["name"],
                                  {"metadata": {"annotations": {ANN_PORTS: text}}})
            except ApiError as e:
                log.warning("[%s/%s] cannot record ports error=%s", meta["namespace"], meta["name"], e)
            log.info("[%s/%s] ports %s", meta["namespace"], meta["name"], text)
        env = {"CDI_PORTS": text}
        env.update({f"CDI_PORT_{k}": str(v) for k, v in mapping.items()})
        return env

    def forget(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _target(svc: Obj, port: int) -> Any:
    for p in (svc.get("spec") or {}).get("ports") or []:
        if p.get("port") == port:
            return p.get("targetPort", port)
    raise ServiceUnavailable(f"service {svc['metadata']['name']} has no port {port}")


def _container_port(pod: Obj, target: Any) -> int | None:
    if isinstance(target, int):
        return target
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


def resolve_service(client: Client, namespace: str, name: str, port: int) -> tuple[str, int]:
    """(address, port) of a ready pod behind Service ``namespace/name`` port ``port``."""
    try:
        svc = client.get(SERVICE, namespace, name)
    except NotFound as e:
        raise ServiceUnavailable(f"service {namespace}/{name} does not exist") from e
    selector = (svc.get("spec") or {}).get("selector") or {}
    if not selector:
        raise ServiceUnavailable(f"service {namespace}/{name} has no selector")
    target = _target(svc, port)
    pods, _ = client.list(POD, namespace, label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        if not _ready(pod):
            continue
        cport = _container_port(pod, target)
        ann = (pod["metadata"].get("annotations") or {}).get(ANN_PORTS)
        if cport is None or not ann:
            continue
        host_port = json.loads(ann).get(str(cport))
        if host_port:
            return (pod.get("status") or {}).get("podIP") or POD_IP, int(host_port)
    raise ServiceUnavailable(f"no ready endpoint for service {namespace}/{name} port {port}")
