"""The READY, STATUS and RESTARTS cells of a Pod, as kube-apiserver's table printer computes them.

Follows kubernetes/pkg/printers/internalversion `printPod`: the status starts from the phase (or
`status.reason`); an init container that has not finished gives `Init:<reason>`, `Init:N/M`,
`Init:ExitCode:N`; otherwise the containers are read from the last to the first, so the first
container's waiting or terminated reason wins (`CrashLoopBackOff`, `ErrImagePull`,
`ContainerCreating`, `Completed`, `Error`, `ExitCode:N`, `Signal:N`); `Completed` with a container
still running becomes `Running` (or `NotReady`); a pod being deleted shows `Terminating` unless it
already finished. RESTARTS is the sum of restart counts, with `(<age> ago)` of the last restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cdi.api.duration import human_duration

Obj = dict[str, Any]

TERMINAL_PHASES = ("Succeeded", "Failed")


def _terminated_reason(term: Obj, prefix: str = "") -> str:
    if term.get("reason"):
        return prefix + str(term["reason"])
    if term.get("signal"):
        return f"{prefix}Signal:{term['signal']}"
    return f"{prefix}ExitCode:{term.get('exitCode', 0)}"


def _condition_true(status: Obj, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def _has_condition(status: Obj, kind: str) -> bool:
    return any(c.get("type") == kind for c in status.get("conditions") or [])


def _restartable(spec: Obj) -> set[str]:
    return {c.get("name") for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"}


def summary(pod: Obj) -> tuple[str, str, int, str | None]:
    """(READY, STATUS, restarts, last restart time) of a pod."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    sidecars = _restartable(spec)
    total = len(spec.get("containers") or []) + len(sidecars)
    ready = 0
    restarts = 0
    sidecar_restarts = 0
    last_restart: str | None = None

    def note_restart(cs: Obj) -> None:
        nonlocal last_restart
        finished = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
        if finished and (last_restart is None or str(finished) > last_restart):
            last_restart = str(finished)

    reason = str(status.get("reason") or status.get("phase") or "Pending")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    init_specs = spec.get("initContainers") or []
    initializing = False
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        if cs.get("restartCount"):
            note_restart(cs)
        state = cs.get("state") or {}
        term = state.get("terminated")
        waiting = state.get("waiting") or {}
        is_sidecar = cs.get("name") in sidecars
        if is_sidecar:
            sidecar_restarts += int(cs.get("restartCount") or 0)
            if cs.get("started") and cs.get("ready") and state.get("running") is not None:
                ready += 1
        if term is not None and int(term.get("exitCode") or 0) == 0:
            continue
        if is_sidecar and cs.get("started"):
            continue
        if term is not None:
            reason = _terminated_reason(term, "Init:")
        elif waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = "Init:" + str(waiting["reason"])
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break
    if not initializing or _condition_true(status, "Initialized"):
        restarts = sidecar_restarts
        running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount") or 0)
            if cs.get("restartCount"):
                note_restart(cs)
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            term = state.get("terminated")
            if waiting.get("reason"):
                reason = str(waiting["reason"])
            elif term is not None:
                reason = _terminated_reason(term)
            elif cs.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed" and running:
            reason = "Running" if _has_condition(status, "Ready") else "NotReady"
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif meta.get("deletionTimestamp") and status.get("phase") not in TERMINAL_PHASES:
        reason = "Terminating"
    return f"{ready}/{total}", reason, restarts, last_restart


def ready_cell(pod: Obj) -> str:
    return summary(pod)[0]


def status_cell(pod: Obj) -> str:
    return summary(pod)[1]


def restarts_cell(pod: Obj, now: datetime | None = None) -> str:
    _, _, restarts, last = summary(pod)
    if not restarts or not last:
        return str(restarts)
    try:
        when = datetime.strptime(last[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return str(restarts)
    ago = human_duration(((now or datetime.now(UTC)) - when).total_seconds())
    return f"{restarts} ({ago} ago)"
