"""The virt-launcher of the compact VM runtime: ``python -m vm_runtime.launcher``.

It runs one VirtualMachineInstance as one qemu process and reports on it, the way a KubeVirt
launcher pod does. Everything comes from the environment:

``VMI_SPEC_FILE`` / ``VMI_SPEC``
    The VMI as a JSON file path, or the JSON itself.
``CDI_VOLUME_<NAME>``
    Path backing the dataVolume / persistentVolumeClaim volume ``<NAME>`` (``spec.volumes[].name``
    upper-cased, every character other than A-Z and 0-9 replaced by ``_``): a directory holding
    ``disk.img`` (Filesystem mode), a raw image file or a block device (Block mode).
``LAUNCHER_WORK_DIR``
    Where sockets, the cloud-init ISO, empty disks and EFI variables go (default: the current
    directory). Sockets move to a short /tmp directory if the path is too long for a unix socket.
``GUEST_CONSOLE_LOG``
    The guest serial output (default ``<work dir>/guest-console.log``), appended by qemu itself.
``LAUNCHER_STATUS_FILE``
    JSON status, rewritten atomically at each change (default ``<work dir>/launcher-status.json``).
``CDI_ACCEL``, ``CDI_QEMU_SYSTEM``, ``CDI_OVMF_DIR``, ``CDI_RUNTIME_DIR``
    See ``vm_runtime.accel`` and ``vm_runtime.qemu_cmd``.
``CDI_VOLUME_MOUNTS``, ``TERMINATION_MESSAGE_PATH``
    Set by the local node when the launcher runs as the ``compute`` container of a launcher pod:
    every path above is then an in-pod path (e.g. ``/var/run/kubevirt-private/vmi-disks/disk0``)
    and is translated to its host path through the mounts (``cdi.podenv.PathMap``). The final
    status (a compact JSON subset) is written as the container's termination message.

Every status change is also printed on stdout as one line ``{"launcherStatus": {...}}`` (the
compact subset: phase, reason, message, accel, accelReason, exitCode), so a controller can follow the
guest through the pod's log without access to the node's files.

The status file holds ``phase`` (Scheduled, Running, Succeeded, Failed), ``reason`` (a CamelCase
word) and ``message``, ``accel`` and ``accelReason``, ``qemuPid``, ``consoleSocket`` (connect one
interactive client with ``vm_runtime.console``), ``qmpSocket``, ``guestConsoleLog``, ``qemuStatus``,
``command``, ``startedAt``/``finishedAt``, ``qemuExitCode``, ``exitCode`` and, on failure,
``qemuStderr``. SIGTERM (or SIGINT) asks the guest to power off (QMP ``system_powerdown``), waits
``spec.terminationGracePeriodSeconds`` (default 30; a second signal cuts it short), then ends qemu
with QMP ``quit`` and, failing that, SIGKILL. Exit code 0 when the guest powered off by itself or
on request, 1 when qemu failed to start, crashed or the guest stopped on an error, 2 for an invalid
spec or volume.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdi.podenv import MountsError, PathMap
from vm_runtime.accel import choose_accel
from vm_runtime.qemu_cmd import QemuCommand, VolumeError, build_command, prepare, socket_dir_for
from vm_runtime.status import StatusFile
from vm_runtime.supervisor import Outcome, QemuSupervisor
from vm_runtime.vmi_spec import SpecError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class ConfigError(Exception):
    """The launcher's environment is incomplete or malformed."""


def volume_env_name(volume_name: str) -> str:
    """The environment variable carrying the path of volume ``volume_name``."""
    return "CDI_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume_name.upper())


def load_vmi(environ: Mapping[str, str]) -> dict[str, Any]:
    if environ.get("VMI_SPEC_FILE"):
        source = environ["VMI_SPEC_FILE"]
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise ConfigError(f"VMI_SPEC_FILE {source}: {e.strerror}") from e
    elif environ.get("VMI_SPEC"):
        source, text = "VMI_SPEC", environ["VMI_SPEC"]
    else:
        raise ConfigError("set VMI_SPEC_FILE (a path) or VMI_SPEC (the VirtualMachineInstance JSON)")
    try:
        vmi = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{source} is not valid JSON: {e}") from e
    if not isinstance(vmi, dict):
        raise ConfigError(f"{source} must hold a JSON object")
    return vmi


REPORTED_FIELDS = ("phase", "reason", "message", "accel", "accelReason", "exitCode", "qemuExitCode")


class ReportingStatus(StatusFile):
    """The status file, also reported as JSON lines on stdout and, when final, as termination message."""

    def __init__(self, path: Path, termination_path: str | None) -> None:
        super().__init__(path)
        self.termination_path = termination_path
        self._last: dict[str, Any] = {}

    def _write(self) -> None:
        super()._write()
        compact = {k: self.data[k] for k in REPORTED_FIELDS if k in self.data}
        if compact != self._last:
            self._last = compact
            print(json.dumps({"launcherStatus": compact}, sort_keys=True), flush=True)
        if self.termination_path and self.data.get("finishedAt"):
            try:
                Path(self.termination_path).write_text(json.dumps(compact, sort_keys=True)[:4000])
            except OSError as e:
                log.warning("cannot write the termination message path=%s error=%s", self.termination_path, e)


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL if the launcher dies, so no guest outlives its launcher."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Launcher:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        try:
            self.paths = PathMap(environ)
            self.mounts_error = ""
        except MountsError as e:
            self.paths, self.mounts_error = PathMap({}), str(e)
        self.workdir = Path(self._host(environ.get("LAUNCHER_WORK_DIR")) or os.getcwd()).absolute()
        self.status = ReportingStatus(
            Path(self._host(environ.get("LAUNCHER_STATUS_FILE")) or self.workdir / "launcher-status.json"),
            environ.get("TERMINATION_MESSAGE_PATH"),
        )
        self.console_log = Path(self._host(environ.get("GUEST_CONSOLE_LOG")) or self.workdir / "guest-console.log")
        self.stop_requests = 0
        self._stop_event = asyncio.Event()

    def _host(self, path: str | None) -> str | None:
        """The host path of an in-pod path (unchanged outside a local-node pod)."""
        return self.paths(path) if path else None

    def request_stop(self, signum: int) -> None:
        self.stop_requests += 1
        log.info("stop requested signal=%s count=%d", signal.Signals(signum).name, self.stop_requests)
        self._stop_event.set()

    def _resolve_volume(self, name: str, kind: str, claim: str) -> Path:
        var = volume_env_name(name)
        value = self.environ.get(var)
        if not value:
            raise VolumeError(f"volume {name!r} ({kind} {claim!r}) has no path: set {var}")
        return Path(self.paths(value))

    def fail(self, reason: str, message: str, code: int, **extra: Any) -> int:
        log.error("failed reason=%s message=%s", reason, message)
        print(f"launcher: {reason}: {message}", file=sys.stderr)
        self.status.finish("Failed", reason=reason, message=message, exitCode=code, **extra)
        return code

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status.update(
            phase="Scheduled",
            workDir=str(self.workdir),
            guestConsoleLog=str(self.console_log),
            launcherPid=os.getpid(),
        )
        try:
            if self.mounts_error:
                raise ConfigError(self.mounts_error)
            spec_file = self._host(self.environ.get("VMI_SPEC_FILE"))
            vmi = load_vmi({**self.environ, "VMI_SPEC_FILE": spec_file} if spec_file else self.environ)
            # Synchronous on purpose: no helper threads may exist when qemu is forked with a preexec_fn.
            choice = choose_accel()
            self.status.update(accel=choice.accel, accelReason=choice.reason)
            log.info("accel accel=%s reason=%r", choice.accel, choice.reason)
            cmd = build_command(
                vmi,
                accel=choice.accel,
                workdir=self.workdir,
                resolve_volume=self._resolve_volume,
                console_log=self.console_log,
                socket_dir=socket_dir_for(self.workdir),
            )
            prepare(cmd)
        except (ConfigError, SpecError, ValueError) as e:
            return self.fail("InvalidSpec", str(e), EXIT_INVALID)
        except VolumeError as e:
            return self.fail("VolumeError", str(e), EXIT_INVALID)
        except (OSError, RuntimeError) as e:
            return self.fail("PrepareFailed", str(e), EXIT_FAILED)
        if self._stop_event.is_set():
            self.status.finish(
                "Succeeded",
                reason="StoppedBeforeStart",
                message="stop requested before qemu started",
                exitCode=EXIT_OK,
            )
            return EXIT_OK
        return await self._run_qemu(cmd)

    async def _run_qemu(self, cmd: QemuCommand) -> int:
        assert cmd.spec is not None
        for sock in (cmd.qmp_socket, cmd.serial_socket):
            sock.unlink(missing_ok=True)
        self.status.update(
            command=cmd.argv, consoleSocket=str(cmd.serial_socket), qmpSocket=str(cmd.qmp_socket)
        )
        log.info("starting qemu command=%s", cmd.shell())
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            return self.fail("QemuStartFailed", f"cannot run {cmd.argv[0]}: {e}", EXIT_FAILED)
        self.status.update(qemuPid=proc.pid)
        supervisor = QemuSupervisor(proc, cmd, on_state=self._on_state)
        outcome = await supervisor.run(
            stop_event=self._stop_event,
            grace_period=cmd.spec.grace_period,
            force_stop=lambda: self.stop_requests > 1,
        )
        if cmd.qmp_socket.parent != self.workdir:  # a short socket dir made by socket_dir_for
            shutil.rmtree(cmd.qmp_socket.parent, ignore_errors=True)
        return self._report(outcome, supervisor)

    def _on_state(self, qemu_status: str) -> None:
        if qemu_status == "running":
            self.status.update(phase="Running", qemuStatus=qemu_status)
        else:
            self.status.update(qemuStatus=qemu_status)

    def _report(self, outcome: Outcome, supervisor: QemuSupervisor) -> int:
        stderr = supervisor.stderr_text()
        self.status.update(qemuStatus="exited")
        if outcome.succeeded:
            log.info("finished reason=%s message=%s", outcome.reason, outcome.message)
            self.status.finish(
                "Succeeded",
                reason=outcome.reason,
                message=outcome.message,
                qemuExitCode=outcome.qemu_exit_code,
                exitCode=EXIT_OK,
            )
            return EXIT_OK
        return self.fail(
            outcome.reason,
            outcome.message,
            EXIT_FAILED,
            qemuExitCode=outcome.qemu_exit_code,
            qemuStderr=stderr,
        )


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LAUNCHER_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # it logs every disconnect as an error
    launcher = Launcher(os.environ)
    sys.exit(asyncio.run(launcher.run()))


if __name__ == "__main__":
    main()
