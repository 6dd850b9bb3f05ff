"""Local processes of containers: start them safely, record them, and stop them for good.

Every container process starts in its own session (so its process group id is its pid) with
``PR_SET_PDEATHSIG = SIGKILL``: when the thread that forked it dies (with ``kill -9`` of ``cdi
serve``, the whole process) the kernel kills it, so no orphan outlives the node. The death signal
follows the *forking thread*, which is why the pod runner spawns only from its long-lived workers.

A ``ProcessRecord`` (pid and the process start time in clock ticks from ``/proc/<pid>/stat``)
identifies a process across restarts of the node: ``kill_recorded`` kills a leftover (and the rest
of its session, which the death signal does not reach) only when the start time still matches, so
a reused pid is never killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_ticks: int

    def to_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> ProcessRecord:
        return cls(int(data["pid"]), int(data["start_ticks"]))


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def _last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _child_setup(parent: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    last_cap = _last_capability()

    def setup() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
        # Least privilege: a worker reads and writes files its user owns (volumes, its pod directory,
        # /dev/kvm) and needs no capability. With the bounding set empty, the program this child
        # execs has no capabilities even as root (no CAP_DAC_OVERRIDE over other users' files, no
        # mount, ptrace, module loading or raw I/O), and no_new_privs keeps setuid programs from
        # giving any back.
        for cap in range(last_cap + 1):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


class Process:
    """One running container process. Only ``reap`` (the waiter thread) collects it, and signals go
    out under the same lock, so a signal never reaches a reused pid."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        ticks = start_ticks(popen.pid)
        self.record = ProcessRecord(popen.pid, ticks or 0)
        self.returncode: int | None = None
        self.exited = threading.Event()
        self._lock = threading.Lock()

    def reap(self) -> int:
        """Block until the process exits; kill what is left of its group, collect it, return its code."""
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # a zombie keeps the pid (and pgid) ours
        except ChildProcessError:
            pass
        with self._lock:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # as a kubelet stops the whole cgroup
            except (ProcessLookupError, PermissionError):
                pass
            self.returncode = self.popen.wait()
        self.exited.set()
        return self.returncode

    def signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None:
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def spawn(argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> Process:
    """Start ``argv`` with stdout and stderr appended to ``log_path``, in a new session, killed with us.

    Call from a thread that lives as long as the node (see the module docstring). Raises OSError
    (FileNotFoundError for a missing executable).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup(os.getpid()), close_fds=True,
        )
    return Process(popen)


def _session_members(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (field 6 of /proc/<pid>/stat)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # zombies are dead already
            members.append(int(entry.name))
    return members


def kill_recorded(record: ProcessRecord) -> bool:
    """SIGKILL what is left of a container's session from an earlier run of the node; True if any was.

    PR_SET_PDEATHSIG reaches only the container's own process, so its children may outlive a
    ``kill -9`` of the node. They stay in the session the container started (its sid is the recorded
    pid), and the kernel does not hand out a pid still used as a session id, so: if the recorded pid
    is the same process (same start time) or no process at all, every member of that session is ours.
    """
    ticks = start_ticks(record.pid)
    if ticks is not None and ticks != record.start_ticks:
        return False  # the pid now belongs to another process: its session is not ours
    members = _session_members(record.pid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as e:
            log.warning("cannot kill leftover pid=%d error=%s", pid, e)
    if not members:
        return False
    log.info("killed leftover processes session=%d pids=%s", record.pid, members)
    deadline = time.monotonic() + 5
    while _session_members(record.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def exit_code(returncode: int) -> int:
    """Popen's return code as a container exit code: 128 + signal for a killed process."""
    return 128 - returncode if returncode < 0 else returncode
