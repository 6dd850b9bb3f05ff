"""The in-memory state of pods on the node, and the pod status a kubelet would report from it.

``PodRuntime`` and ``ContainerRuntime`` hold what the pod runner knows; ``pod_status`` turns that into
``status`` (phase by kubelet's rules, conditions PodScheduled/Initialized/ContainersReady/Ready,
``containerStatuses`` with state, lastState, ready, started, restartCount), keeping each condition's
``lastTransitionTime`` while its status does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdi.kube import Obj, now_iso
from cdi.node.podspec import PodVolumes
from cdi.node.process import Process

POD_IP = "127.0.0.1"


@dataclass
class ContainerRuntime:
    name: str
    spec: Obj
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    process: Process | None = None
    next_start: float = 0.0  # time.monotonic() before which a restart waits (back-off)
    exit_seen: bool = False  # the current process's exit has been turned into state
    ever_ran: bool = False  # a start after this one is a restart (restartCount + 1)
    container_id: str = ""

    @property
    def running(self) -> bool:
        return self.process is not None and not self.process.exited.is_set()

    @property
    def finished(self) -> bool:
        """Terminated for good (the pod's restartPolicy does not start it again)."""
        return "terminated" in self.state


@dataclass
class PodRuntime:
    uid: str
    namespace: str
    name: str
    pod: Obj
    dir: Path
    seq: int  # order of first sight, after creationTimestamp, for fair admission
    containers: dict[str, ContainerRuntime] = field(default_factory=dict)
    scheduled: bool = False
    unschedulable: str = ""  # why the pod cannot be scheduled yet
    admitted: bool = False  # holds slots for its containers
    stalled: bool = False  # no container could start (missing Secret, image refused): holds no slot meanwhile
    volumes: PodVolumes | None = None
    start_time: str | None = None
    terminating: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def claims(self) -> set[str]:
        vols = (self.pod.get("spec") or {}).get("volumes") or []
        return {v["persistentVolumeClaim"].get("claimName", "") for v in vols if "persistentVolumeClaim" in v}

    @property
    def live(self) -> bool:
        return any(c.running for c in self.containers.values())

    @property
    def restart_policy(self) -> str:
        return str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")

    def order(self) -> tuple[str, int]:
        return str(self.pod.get("metadata", {}).get("creationTimestamp", "")), self.seq


def pod_phase(rt: PodRuntime) -> str:
    """kubelet's getPhase for pods without init containers."""
    if not rt.scheduled or not rt.containers:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in rt.containers.values():
        if "running" in c.state:
            running += 1
        elif "terminated" in c.state:
            stopped += 1
            succeeded += c.state["terminated"].get("exitCode") == 0
        elif "terminated" in c.last_state:
            stopped += 1  # waiting to restart
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if rt.restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if rt.restart_policy == "Never" else "Running"


def _condition(old: dict[str, Obj], ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
    status = "True" if ok else "False"
    prev = old.get(ctype) or {}
    cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None,
                 "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == status else now_iso()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def container_status(c: ContainerRuntime) -> Obj:
    running = "running" in c.state
    status: Obj = {
        "name": c.name, "state": c.state, "lastState": c.last_state, "ready": running,
        "restartCount": c.restart_count, "image": str(c.spec.get("image") or ""), "imageID": "",
        "started": running,
    }
    if c.container_id:
        status["containerID"] = c.container_id
    return status


def pod_status(rt: PodRuntime, old_status: Obj) -> Obj:
    """The status to report for ``rt``; ``old_status`` supplies condition transition times."""
    old = {c.get("type", ""): c for c in old_status.get("conditions") or []}
    if not rt.scheduled:
        return {"phase": "Pending", "conditions": [
            _condition(old, "PodScheduled", False, "Unschedulable", rt.unschedulable)]}
    phase = pod_phase(rt)
    unready = [c.name for c in rt.containers.values() if "running" not in c.state]
    if phase == "Succeeded":
        reason, message = "PodCompleted", ""
    elif unready:
        reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    else:
        reason = message = ""
    conditions = [
        _condition(old, "PodReadyToStartContainers", True),
        _condition(old, "Initialized", True),
        _condition(old, "Ready", not unready, reason, message),
        _condition(old, "ContainersReady", not unready, reason, message),
        _condition(old, "PodScheduled", True),
    ]
    status: dict[str, Any] = {
        "phase": phase, "conditions": conditions, "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}],
        "podIP": POD_IP, "podIPs": [{"ip": POD_IP}], "qosClass": "BestEffort",
        "containerStatuses": [container_status(c) for c in rt.containers.values()],
    }
    if rt.start_time:
        status["startTime"] = rt.start_time
    return status


def restore_container(c: ContainerRuntime, status: Obj) -> None:
    """Take restartCount, state and lastState from a container status reported earlier."""
    c.restart_count = int(status.get("restartCount") or 0)
    c.state = dict(status.get("state") or c.state)
    c.last_state = dict(status.get("lastState") or {})
    c.exit_seen = True
    c.ever_ran = bool(c.last_state) or "waiting" not in c.state
    c.container_id = str(status.get("containerID") or "")
