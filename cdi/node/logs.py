"""``kubectl logs`` for pods of the local node: the ``pods/log`` provider of the embedded API server.

Serves a container's current run (``logs/<container>/<restartCount>.log``) or, with ``previous``,
the run before; honours ``tailLines``, ``limitBytes`` and ``follow`` (new output is streamed until that
run's process exits). ``timestamps`` and ``sinceSeconds`` are not supported: the log files carry no
per-line times, so they are ignored.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cdi.apiserver.errors import BadRequest
from cdi.apiserver.hooks import LogChunks, LogRequest
from cdi.node.containers import log_path
from cdi.node.pods import PodRunner
from cdi.node.process import Process

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
POLL = 0.1


def read_tail(path: Path, lines: int | None) -> bytes:
    """The whole file, or its last ``lines`` lines, read backwards in chunks for big files."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if lines is None:
                f.seek(0)
                return f.read()
            if lines <= 0:
                return b""
            pos, data = size, b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(CHUNK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


class PodLogs:
    """Callable handed to ``ApiServer.set_log_provider``."""

    def __init__(self, runner: PodRunner) -> None:
        self.runner = runner

    def __call__(self, req: LogRequest) -> LogChunks | None:
        rt = self.runner.find(req.namespace, req.pod)
        if rt is None:
            return None
        name = req.container or next(iter(rt.containers), "")
        c = rt.containers.get(name)
        if c is None:
            raise BadRequest(f"container {name} is not valid for pod {req.pod}")
        if req.previous:
            if c.restart_count == 0 or not c.ever_ran:
                raise BadRequest(f'previous terminated container "{name}" in pod "{req.pod}" not found')
            run = c.restart_count - 1
        else:
            if not c.ever_ran:
                reason = c.state.get("waiting", {}).get("reason", "ContainerCreating")
                raise BadRequest(f'container "{name}" in pod "{req.pod}" is waiting to start: {reason}')
            run = c.restart_count
        path = log_path(rt, name, run)
        lines = req.tail_lines if req.tail_lines is not None and req.tail_lines >= 0 else None
        data = read_tail(path, lines)
        limit = req.limit_bytes if req.limit_bytes and req.limit_bytes > 0 else None
        if limit is not None:
            data = data[:limit]
        process = c.process if run == c.restart_count else None
        if not req.follow or process is None or (limit is not None and len(data) >= limit):
            return data
        return self._follow(path, data, process, limit)

    def _follow(self, path: Path, first: bytes, process: Process, limit: int | None) -> Iterator[bytes]:
        """Yield ``first``, then what the run appends, until its process has exited and all is read."""
        sent = len(first)
        if first:
            yield first
        try:
            offset = path.stat().st_size
        except FileNotFoundError:
            offset = 0
        with open(path, "rb") if path.exists() else open(os.devnull, "rb") as f:
            f.seek(offset)
            while True:
                done = process.exited.is_set()  # read once more after the exit: output may trail it
                chunk = f.read(CHUNK)
                if chunk:
                    if limit is not None:
                        chunk = chunk[:limit - sent]
                    sent += len(chunk)
                    yield chunk
                    if limit is not None and sent >= limit:
                        return
                    continue
                if done:
                    return
                time.sleep(POLL)
