"""The local node's Node object, as a kubelet registers and heartbeats its own.

At start the node creates (or takes over) ``Node/<node_name>`` with kubelet's labels, addresses,
capacity and nodeInfo, and sets condition Ready True; while it runs it refreshes the conditions'
heartbeats, and when it stops it marks Ready Unknown ("Kubelet stopped posting node status."), as the
node lifecycle controller does for a silent kubelet. ``kubectl get nodes`` then shows what it shows on a
cluster: NAME STATUS ROLES AGE VERSION.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
from pathlib import Path

from cdi.kube import NODE, AlreadyExists, ApiError, Client, Obj, now_iso
from cdi.node.settings import NodeSettings

log = logging.getLogger(__name__)

HEARTBEAT = 20.0  # seconds between heartbeats (kubelet's nodeStatusUpdateFrequency is 10 s)
KUBELET_VERSION = "v1.32.0-cdi"
RUNTIME_VERSION = "cdi-local://0.1.0"


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _conditions(ready: str, reason: str, message: str, previous: list[Obj]) -> list[Obj]:
    stamp = now_iso()
    wanted = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", ready, reason, message),
    ]
    before = {c.get("type"): c for c in previous}
    out = []
    for ctype, status, why, text in wanted:
        old = before.get(ctype) or {}
        changed = old.get("status") != status
        out.append({"type": ctype, "status": status, "reason": why, "message": text,
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp if changed else old.get("lastTransitionTime", stamp)})
    return out


class NodeRegistration:
    """Creates and heartbeats the Node object of the local node."""

    def __init__(self, client: Client, settings: NodeSettings) -> None:
        self.client = client
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="node-heartbeat", daemon=True)

    def desired(self) -> Obj:
        name = self.settings.node_name
        disk = shutil.disk_usage(self.settings.data_dir)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory // 1024}Ki",
                    "ephemeral-storage": f"{disk.total // 1024}Ki", "pods": str(self.settings.max_running_pods)}
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": _arch(),
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": _arch(),
                "node-role.kubernetes.io/cdi-local": ""}},
            "spec": {},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": name}],
                "capacity": capacity, "allocatable": dict(capacity),
                "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                             "containerRuntimeVersion": RUNTIME_VERSION, "osImage": _os_image(),
                             "kernelVersion": platform.release(), "operatingSystem": "linux",
                             "architecture": _arch(), "machineID": "", "systemUUID": "", "bootID": ""},
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            },
        }

    def start(self) -> None:
        try:
            self.post("True", "KubeletReady", "kubelet is posting ready status")
        except ApiError as e:
            log.warning("cannot register node name=%s error=%s", self.settings.node_name, e)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.post("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
        except ApiError as e:
            log.info("cannot mark node stopped name=%s error=%s", self.settings.node_name, e)

    def post(self, ready: str, reason: str, message: str) -> None:
        want = self.desired()
        node = self.client.find(NODE, None, self.settings.node_name)
        if node is None:
            status = want.pop("status")
            try:
                node = self.client.create(NODE, want)
                log.info("registered node name=%s", self.settings.node_name)
            except AlreadyExists:
                node = self.client.get(NODE, None, self.settings.node_name)
            want["status"] = status
        previous = (node.get("status") or {}).get("conditions") or []
        status = {**want["status"], "conditions": _conditions(ready, reason, message, previous)}
        self.client.patch(NODE, None, self.settings.node_name, {"status": status}, status=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.post("True", "KubeletReady", "kubelet is posting ready status")
            except ApiError as e:
                log.warning("node heartbeat failed error=%s", e)
