"""Where the streaming qcow2 converter puts bytes: the volume, cluster by cluster at guest offsets
(``GuestWriter``), and the spool of bytes that passed before the table that claims them (``Spool``)."""

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

    def __init__(self, parent: str | None, limit: int | None) -> None:
        self.parent = parent
        self.limit = limit
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

    def _write(self, offset: int, part: bytes) -> None:
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

    def __init__(self, target: Target, size: int, *, device_zeroed: bool) -> None:
        self.size = size
        self.writer = SparseWriter(target, device_zeroed=device_zeroed, digest=True, drop_cache=True,
                                   detect_vhd=False)
        self.window = bytearray(WINDOW)
        self.start = 0
        self.dirty = False
        self.scattered = False

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
