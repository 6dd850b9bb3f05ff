"""Where the streaming qcow2 converter puts bytes: the volume, cluster by cluster at guest offsets
(``GuestWriter``), and the spool of bytes that passed before the table that claims them (``Spool``).

Both can be made durable at a checkpoint and taken up again by a new process (a resumed upload): the
spool then lives in a file of its own beside the resume point instead of in scratch space, and the
writer's state is its window (the guest bytes not yet written) and where it stands."""

from __future__ import annotations

import logging
import os
from bisect import bisect_right

from importer.errors import CapacityExceeded
from importer.scratch import Scratch
from importer.target import SparseWriter, Target

log = logging.getLogger(__name__)

WINDOW = 1 << 20  # guest bytes assembled before the writer sees them: the digest's block size
_ZERO_WINDOW = bytes(WINDOW)
_SPOOL_BLOCK = 64 << 10
_ZERO_SPOOL = bytes(_SPOOL_BLOCK)


class Spool:
    """Bytes that streamed past before any table claimed them, sparse at their file offsets."""

    def __init__(self, parent: str | None, limit: int | None, *, path: str | None = None) -> None:
        self.parent = parent
        self.limit = limit
        self.path = path  # a durable spool (kept for a resume) instead of one in scratch space
        self._scratch: Scratch | None = None
        self.fd = -1
        self.allocated = 0
        self.peak = 0
        self.starts: list[int] = []  # kept ranges, ascending and disjoint (zeros were not written)
        self.ends: list[int] = []

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        if self._scratch is not None:
            self._scratch.__exit__(None, None, None)

    def keep(self, offset: int, view: memoryview) -> None:
        if self.ends and self.ends[-1] == offset:
            self.ends[-1] = offset + len(view)
        else:
            self.starts.append(offset)
            self.ends.append(offset + len(view))
        for pos in range(0, len(view), _SPOOL_BLOCK):
            part = bytes(view[pos:pos + _SPOOL_BLOCK])  # a copy, compared by memcmp
            if part != _ZERO_SPOOL[:len(part)]:
                self._write(offset + pos, part)

    def _open(self, *, fresh: bool) -> None:
        assert self.path is not None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if fresh else 0), 0o600)

    def sync(self) -> None:
        """Make what was kept durable (a checkpoint)."""
        if self.fd >= 0:
            os.fdatasync(self.fd)

    def state(self) -> dict[str, object]:
        return {"starts": self.starts, "ends": self.ends, "allocated": self.allocated, "peak": self.peak}

    def restore(self, state: dict[str, object]) -> None:
        """Take up the spool a checkpoint described; bytes kept after it are overwritten as they come again."""
        self.starts, self.ends = list(state["starts"]), list(state["ends"])  # type: ignore[call-overload]
        self.allocated, self.peak = int(state["allocated"]), int(state["peak"])  # type: ignore[call-overload]
        if self.allocated:
            if self.path is None or not os.path.exists(self.path):
                raise FileNotFoundError(f"the spool of the interrupted conversion is missing: {self.path}")
            self._open(fresh=False)

    def _write(self, offset: int, part: bytes) -> None:
        if self.fd < 0 and self.path is not None:
            log.info("qcow2 tables come after the data they map: keeping that data beside the volume path=%s",
                     self.path)
            self._open(fresh=True)
        if self.fd < 0:
            self._scratch = Scratch(self.parent)
            path = self._scratch.__enter__()
            log.info("qcow2 tables come after the data they map: keeping that data in scratch path=%s", path)
            self.fd = os.open(os.path.join(path, "spool"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.allocated += len(part)
        if self.limit is not None and self.allocated > self.limit:
            raise CapacityExceeded(f"image file is larger than the volume capacity allows: more than "
                                   f"{self.limit} bytes of it would need scratch space")
        self.peak = max(self.peak, self.allocated)
        done = 0
        while done < len(part):
            done += os.pwrite(self.fd, part[done:], offset + done)

    def holds(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def read(self, start: int, end: int) -> bytes:
        if self.fd < 0:
            return bytes(end - start)
        data = os.pread(self.fd, end - start, start)
        return data + bytes(end - start - len(data))


class GuestWriter:
    """Clusters at guest offsets into the sparse writer: assembled in 1 MiB windows so that zero
    detection and the inline digest work as for a raw stream; a cluster that comes back to an
    earlier window switches the writer to writes at any offset (the digest is then taken after)."""

    def __init__(self, target: Target, size: int, *, device_zeroed: bool,
                 resume: tuple[dict[str, object], bytes] | None = None) -> None:
        """``resume``: the state and window a checkpoint saved (``state()``): the volume holds what was
        written before it, the window what was assembled but not written."""
        self.size = size
        self.window = bytearray(WINDOW)
        self.start = 0
        self.dirty = False
        self.scattered = False
        if resume is None:
            self.writer = SparseWriter(target, device_zeroed=device_zeroed, digest=True, drop_cache=True,
                                       detect_vhd=False)
            return
        state, window = resume
        self.start, self.scattered = int(state["start"]), bool(state["scattered"])  # type: ignore[call-overload]
        # in order: whatever a killed run wrote past the window goes; scattered: writes at any offset come
        # again with the same bytes, so nothing is cut or zeroed again
        self.writer = SparseWriter(target, device_zeroed=device_zeroed, digest=not self.scattered, drop_cache=True,
                                   detect_vhd=False, resume_at=self.start, truncate=not self.scattered)
        if self.scattered:
            self.writer.scatter(zero=False)
        elif window:
            self.window[:] = window
            self.dirty = True

    def state(self) -> tuple[dict[str, object], bytes]:
        """Where the writer stands and its unwritten window, for a checkpoint (after ``sync``)."""
        window = bytes(self.window) if self.dirty and not self.scattered else b""
        return {"start": self.start, "scattered": self.scattered}, window

    def sync(self) -> None:
        """Make every byte written so far durable (the window is not: it goes into the checkpoint)."""
        self.writer.sync()

    def put(self, guest: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data)[: max(0, self.size - guest)]
        while len(data):
            if self.scattered:
                self.writer.write_at(guest, bytes(data))
                return
            if guest < self.start:
                self._flush()
                self.writer.scatter()
                self.scattered = True
                continue
            if guest >= self.start + WINDOW:
                self._flush()
                nxt = guest // WINDOW * WINDOW
                self.writer.skip(nxt - self.start)
                self.start = nxt
                continue
            at = guest - self.start
            n = min(len(data), WINDOW - at)
            self.window[at:at + n] = data[:n]
            self.dirty = True
            guest += n
            data = data[n:]

    def _flush(self) -> None:
        """Write the window and move past it."""
        if self.scattered:
            return
        n = min(WINDOW, self.size - self.start)
        if self.dirty:
            self.writer.write(self.window, n)
            self.window[:] = _ZERO_WINDOW
            self.dirty = False
        else:
            self.writer.skip(n)
        self.start += n

    def finish(self) -> str | None:
        if not self.scattered and self.start < self.size and self.dirty:
            self._flush()
        self.writer.finish(end=self.size)  # the zeros after the last cluster cost nothing
        return self.writer.digest

    def close(self) -> None:
        self.writer.close()
