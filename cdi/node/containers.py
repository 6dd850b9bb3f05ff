"""Starting containers and turning their exits into kubelet-style state, with restart back-off.

A pod's files live under ``data_dir/pods/<uid>/``: ``work/`` (working directory and ``HOME``),
``volumes/<name>/`` (Secret, ConfigMap and emptyDir volumes), ``logs/<container>/<restartCount>.log``
(stdout and stderr of each run; the one before is ``previous``), ``termination/<container>`` (the
host file behind ``terminationMessagePath``) and ``state.json`` (pid and start time of each live
process, so a restarted node can kill what an earlier run left behind).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from cdi.kube import Client, Obj, now_iso
from cdi.node.images import ImageError, resolve
from cdi.node.podspec import ConfigError, container_env, expand
from cdi.node.ports import PortMap
from cdi.node.process import ProcessRecord, exit_code, kill_recorded, spawn
from cdi.node.settings import NodeSettings
from cdi.node.status import ContainerRuntime, PodRuntime

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
COMPONENT = "kubelet"


def log_path(rt: PodRuntime, name: str, run: int) -> Path:
    return rt.dir / "logs" / name / f"{run}.log"


def termination_file(rt: PodRuntime, name: str) -> Path:
    return rt.dir / "termination" / name


def tail_bytes(path: Path, lines: int, limit: int) -> bytes:
    """The last ``lines`` lines of a file, at most ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


class Launcher:
    """Starts container processes and records their exits; used by the pod runner's workers only."""

    def __init__(self, client: Client, settings: NodeSettings) -> None:
        self.client = client
        self.settings = settings
        self.ports = PortMap(client)

    def start(self, rt: PodRuntime, c: ContainerRuntime) -> bool:
        """Start ``c``; on a configuration error set its waiting state and return False."""
        assert rt.volumes is not None
        workdir = rt.dir / "work"
        term = termination_file(rt, c.name)
        try:
            program = resolve(c.spec, self.settings.images, self.settings.python)
        except ImageError as e:
            if c.state.get("waiting", {}).get("message") != str(e):
                self.client.event(rt.pod, reason="Failed", type="Warning", component=COMPONENT, message=str(e))
                self.client.event(rt.pod, reason="Failed", type="Warning", component=COMPONENT,
                                  message="Error: ErrImagePull")
            c.state = {"waiting": {"reason": "ErrImagePull", "message": str(e)}}
            log.info("[%s/%s] container=%s image refused error=%s", rt.namespace, rt.name, c.name, e)
            return False
        ignored: list[str] = []
        try:
            env = container_env(self.client, rt.pod, c.spec, node_name=self.settings.node_name,
                                volumes=rt.volumes, workdir=workdir, termination_file=term, ignored=ignored)
            env.update(self.ports.env(rt.pod))  # pods that serve get 127.0.0.1 and their own ports
            argv = [program[0], *(expand(a, env) for a in program[1:])]
        except ConfigError as e:
            if c.state.get("waiting", {}).get("message") != str(e):
                self.client.event(rt.pod, reason="Failed", type="Warning", component=COMPONENT,
                                  message=f"Error: {e}")
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            log.info("[%s/%s] container=%s config error=%s", rt.namespace, rt.name, c.name, e)
            return False
        if ignored and not c.ever_ran:
            self.client.event(rt.pod, reason="EnvIgnored", type="Warning", component=COMPONENT,
                              message=f"container {c.name}: environment variables {', '.join(sorted(ignored))} "
                                      "are not passed on: on this node they would change the host program itself")
        if c.ever_ran:
            c.restart_count += 1
        workdir.mkdir(parents=True, exist_ok=True)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        path = log_path(rt, c.name, c.restart_count)
        for old in path.parent.glob("*.log"):  # keep this run's log and the one before
            if old.stem.isdigit() and int(old.stem) < c.restart_count - 1:
                old.unlink(missing_ok=True)
        c.ever_ran, c.exit_seen = True, False
        started = now_iso()
        try:
            c.process = spawn(argv, env=env, cwd=workdir, log_path=path)
        except OSError as e:
            c.process = None
            path.write_text(f"cannot start {argv[0]}: {e}\n")
            self._finish(rt, c, {"exitCode": 128, "reason": "StartError", "startedAt": started,
                                 "finishedAt": now_iso(), "message": f"failed to start {argv[0]}: {e}"})
            return True
        c.container_id = f"local://{c.process.pid}"
        c.state = {"running": {"startedAt": started}}
        self.save_state(rt)
        log.info("[%s/%s] container=%s started pid=%d restarts=%d argv=%s", rt.namespace, rt.name, c.name,
                 c.process.pid, c.restart_count, argv[:3])
        self.client.event(rt.pod, reason="Started", component=COMPONENT, message=f"Started container {c.name}")
        return True

    def exited(self, rt: PodRuntime, c: ContainerRuntime) -> None:
        """Turn the exit of ``c``'s process into its state (restart policy and back-off included)."""
        assert c.process is not None and c.process.returncode is not None
        returncode = c.process.returncode
        code = exit_code(returncode)
        term: Obj = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                     "startedAt": c.state.get("running", {}).get("startedAt"), "finishedAt": now_iso(),
                     "containerID": c.container_id}
        if returncode < 0:
            term["signal"] = -returncode
        message = self._message(rt, c, code)
        if message:
            term["message"] = message
        c.exit_seen = True
        self.save_state(rt)
        log.info("[%s/%s] container=%s exited code=%d", rt.namespace, rt.name, c.name, code)
        self._finish(rt, c, term)

    def _finish(self, rt: PodRuntime, c: ContainerRuntime, term: Obj) -> None:
        policy = rt.restart_policy
        restart = not rt.terminating and (policy == "Always" or (policy == "OnFailure" and term["exitCode"] != 0))
        if not restart:
            c.state = {"terminated": term}
            return
        c.last_state = {"terminated": term}
        delay = min(self.settings.restart_backoff * 2 ** c.restart_count, self.settings.restart_backoff_max)
        c.next_start = time.monotonic() + delay
        c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
            f"back-off {_duration(delay)} restarting failed container={c.name} pod={rt.name}_{rt.namespace}"
            f"({rt.uid})")}}
        self.client.event(rt.pod, reason="BackOff", type="Warning", component=COMPONENT,
                          message=f"Back-off restarting failed container {c.name} in pod {rt.name}_{rt.namespace}"
                                  f"({rt.uid})")

    def _message(self, rt: PodRuntime, c: ContainerRuntime, code: int) -> str:
        try:
            with open(termination_file(rt, c.name), "rb") as f:
                data = f.read(MESSAGE_LIMIT)
        except OSError:
            data = b""
        if not data and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            data = tail_bytes(log_path(rt, c.name, c.restart_count), FALLBACK_LINES, FALLBACK_BYTES)
        return data.decode(errors="replace")

    # -- restart safety -----------------------------------------------------------------------------

    def save_state(self, rt: PodRuntime) -> None:
        """Record the live processes of ``rt`` (written atomically)."""
        procs = {c.name: c.process.record.to_dict() for c in rt.containers.values() if c.running and c.process}
        data = {"namespace": rt.namespace, "name": rt.name, "uid": rt.uid, "processes": procs}
        rt.dir.mkdir(parents=True, exist_ok=True)
        tmp = rt.dir / "state.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, rt.dir / "state.json")

    def kill_leftovers(self) -> list[str]:
        """Kill processes recorded by an earlier run of the node; return the uids of all pod dirs."""
        uids: list[str] = []
        if not self.settings.pods_dir.exists():
            return uids
        for pod_dir in sorted(self.settings.pods_dir.iterdir()):
            uids.append(pod_dir.name)
            state_file = pod_dir / "state.json"
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            for name, rec in (state.get("processes") or {}).items():
                if kill_recorded(ProcessRecord.from_dict(rec)):
                    log.info("[%s/%s] killed leftover container=%s pid=%s", state.get("namespace"),
                             state.get("name"), name, rec.get("pid"))
            state["processes"] = {}
            state_file.write_text(json.dumps(state))
        return uids


def _duration(seconds: float) -> str:
    """Go's time.Duration formatting, as in kubelet's back-off message (10s, 2m40s, 1.5s)."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s"
