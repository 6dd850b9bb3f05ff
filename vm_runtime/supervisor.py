"""Watch one running qemu process over QMP and decide how its run ended.

``QemuSupervisor.run`` connects to qemu's QMP socket (``qemu.qmp.QMPClient``), reports the run
state, reacts to events (a guest that stops on a KVM internal error or a panic is ended and counted
as failed, since qemu would otherwise sit paused forever), carries out a graceful stop when asked
(``system_powerdown``, then ``quit`` after the grace period, then SIGKILL) and returns an
``Outcome``: succeeded or not, a CamelCase reason and a sentence. It also copies qemu's stderr to
the launcher's stderr and keeps its tail for the status file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError

from vm_runtime.qemu_cmd import QemuCommand

log = logging.getLogger(__name__)

QMP_CONNECT_TIMEOUT = 30.0
QUIT_TIMEOUT = 10.0
STDERR_KEEP = 200  # lines
_FATAL_STATES = {
    "internal-error": "GuestInternalError",
    "guest-panicked": "GuestPanicked",
    "io-error": "GuestIOError",
}


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reason: str
    message: str
    qemu_exit_code: int | None


class QemuSupervisor:
    def __init__(
        self, proc: asyncio.subprocess.Process, cmd: QemuCommand, *, on_state: Callable[[str], None]
    ) -> None:
        self.proc = proc
        self.cmd = cmd
        self.on_state = on_state
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_KEEP)
        self.qmp: QMPClient | None = None
        self.shutdown_reason: str | None = None
        self.fatal: tuple[str, str] | None = None
        self.stop_phase: str | None = None  # None | "powerdown" | "quit" | "kill"

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_lines)

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(text)
            print(f"qemu: {text}", file=sys.stderr, flush=True)

    async def _connect(self, exited: asyncio.Task[int]) -> QMPClient | None:
        """Connect once qemu listens; None if qemu ended first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_CONNECT_TIMEOUT
        while not exited.done() and loop.time() < deadline:
            if self.cmd.qmp_socket.exists():
                client = QMPClient(self.cmd.spec.name if self.cmd.spec else "vm")
                try:
                    await client.connect(str(self.cmd.qmp_socket))
                    return client
                except (QMPError, OSError):
                    pass
            await asyncio.sleep(0.05)
        return None

    async def _query_status(self) -> None:
        if self.qmp is None:
            return
        try:
            reply = await self.qmp.execute("query-status")
        except (QMPError, OSError):
            return
        status = str(reply.get("status", "unknown")) if isinstance(reply, dict) else "unknown"
        self.on_state(status)
        if status in _FATAL_STATES and self.fatal is None:
            self.fatal = (_FATAL_STATES[status], f"the guest stopped with qemu status {status!r}")
            log.error("guest stopped status=%s", status)
            await self._quit()

    async def _watch_events(self, listener: EventListener) -> None:
        async for event in listener:
            name = str(event["event"])
            raw = event.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            log.info("qmp event=%s data=%s", name, data)
            if name == "SHUTDOWN":
                self.shutdown_reason = str(data.get("reason", "unknown"))
            elif name == "GUEST_PANICKED" and self.fatal is None:
                self.fatal = ("GuestPanicked", f"the guest kernel panicked: {data}")
                await self._quit()
            elif name in ("STOP", "RESUME", "RESET"):
                await self._query_status()

    async def _quit(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(QMPError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self.qmp.execute("quit"), 5)

    async def _stop(
        self,
        exited: asyncio.Task[int],
        grace_period: int,
        force_stop: Callable[[], bool],
        stop_event: asyncio.Event,
    ) -> None:
        """Power the guest down, then quit qemu, then kill it, each step only if still needed."""
        loop = asyncio.get_running_loop()
        if grace_period > 0 and self.qmp is not None:
            self.stop_phase = "powerdown"
            log.info("stopping guest action=system_powerdown grace_period=%d", grace_period)
            with contextlib.suppress(QMPError, OSError):
                await self.qmp.execute("system_powerdown")
            deadline = loop.time() + grace_period
            while not exited.done() and loop.time() < deadline and not force_stop():
                stop_event.clear()
                waiter = asyncio.ensure_future(stop_event.wait())
                await asyncio.wait(
                    {exited, waiter}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        if exited.done():
            return
        self.stop_phase = "quit"
        log.info("stopping guest action=quit")
        await self._quit()
        await asyncio.wait({exited}, timeout=QUIT_TIMEOUT)
        if not exited.done():
            self.stop_phase = "kill"
            log.warning("stopping guest action=kill pid=%d", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def run(
        self, *, stop_event: asyncio.Event, grace_period: int, force_stop: Callable[[], bool]
    ) -> Outcome:
        pumps = [
            asyncio.ensure_future(self._pump(self.proc.stderr)),
            asyncio.ensure_future(self._pump(self.proc.stdout)),
        ]
        exited: asyncio.Task[int] = asyncio.ensure_future(self.proc.wait())
        watcher: asyncio.Future[None] | None = None
        try:
            self.qmp = await self._connect(exited)
            if self.qmp is None and not exited.done():
                self.proc.kill()
                await exited
                await asyncio.gather(*pumps)
                return Outcome(
                    False,
                    "QemuStartFailed",
                    f"no QMP socket at {self.cmd.qmp_socket} within {QMP_CONNECT_TIMEOUT:g}s",
                    self.proc.returncode,
                )
            if self.qmp is not None:
                listener = EventListener()
                self.qmp.register_listener(listener)
                watcher = asyncio.ensure_future(self._watch_events(listener))
                await self._query_status()
            stopper = asyncio.ensure_future(stop_event.wait())
            await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._stop(exited, grace_period, force_stop, stop_event)
            await exited
            stopper.cancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            if self.qmp is not None:
                # disconnect() re-raises whatever ended the connection (EOFError once qemu exited)
                with contextlib.suppress(Exception):
                    await self.qmp.disconnect()
            if not exited.done():
                self.proc.kill()
                await exited
            await asyncio.gather(*pumps, return_exceptions=True)
        return self._outcome(connected=self.qmp is not None)

    def _outcome(self, *, connected: bool) -> Outcome:
        rc = self.proc.returncode
        if self.fatal is not None:
            return Outcome(False, self.fatal[0], self.fatal[1], rc)
        last = self.stderr_lines[-1] if self.stderr_lines else "no error output"
        what = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        if not connected:
            return Outcome(False, "QemuStartFailed", f"qemu {what} before it was ready: {last}", rc)
        if self.stop_phase == "powerdown" and rc == 0:
            return Outcome(True, "Stopped", "the guest powered off on request", rc)
        if self.stop_phase in ("quit", "kill"):
            how = "quit" if self.stop_phase == "quit" else "killed"
            return Outcome(
                True, "StoppedAfterGracePeriod", f"the guest did not power off in time; qemu was {how}", rc
            )
        if rc == 0:
            if self.shutdown_reason in (None, "guest-shutdown"):
                return Outcome(True, "GuestShutdown", "the guest powered itself off", rc)
            return Outcome(True, "Shutdown", f"qemu shut down: {self.shutdown_reason}", rc)
        return Outcome(False, "QemuCrashed", f"qemu {what}: {last}", rc)
