"""Readers that the pipeline stacks on each other: every one has ``readinto(buf) -> int``.

- ``Peekable``: look at the first bytes without consuming them (format detection).
- ``Tap``: counts bytes for progress, feeds the source checksum, enforces a byte limit.
- ``ReadAhead``: a thread that reads the next chunks while the consumer works on this one, so the
  network, the decompressor and the writer overlap (they all release the GIL).
- ``open_decompressor``: gzip (isal), zstd (the ``zstd`` program), xz (the ``xz`` program,
  multi-threaded on multi-block files), bzip2; each reports a stream that ends early.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol, cast

from importer.errors import CapacityExceeded, Error, FormatError, ToolError
from importer.procutil import die_with_parent

CHUNK = 1 << 20
# Read-ahead buffers: small enough to stay in the CPU cache while the kernel copies socket data into
# them (1 MiB buffers made loopback reads 2-3x slower on this machine).
READ_AHEAD_CHUNK = 128 << 10


class Reader(Protocol):
    def readinto(self, buf: memoryview | bytearray) -> int: ...

    def close(self) -> None: ...


class Peekable:
    """Lets the pipeline look at the first ``n`` bytes, then read them again."""

    def __init__(self, inner: Reader) -> None:
        self.inner = inner
        self._head = b""
        self._offset = 0

    def peek(self, n: int) -> bytes:
        if self._offset:
            raise ValueError("peek after reading")
        if len(self._head) >= n:
            return self._head[:n]
        buf = bytearray(n)
        view = memoryview(buf)
        have = len(self._head)
        view[:have] = self._head
        while have < n:
            got = self.inner.readinto(view[have:])
            if not got:
                break
            have += got
        self._head = bytes(buf[:have])
        return self._head

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._offset < len(self._head):
            n = min(len(buf), len(self._head) - self._offset)
            buf[:n] = self._head[self._offset : self._offset + n]
            self._offset += n
            return n
        self._head = b""
        return self.inner.readinto(buf)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = CHUNK
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def close(self) -> None:
        self.inner.close()


class Tap:
    """Counts bytes, feeds a hash, calls ``on_bytes`` and stops past ``limit`` (a decompression bomb)."""

    def __init__(
        self,
        inner: Reader,
        *,
        hasher: hashlib._Hash | None = None,
        on_bytes: Callable[[int], None] | None = None,
        limit: int | None = None,
        limit_message: str = "",
    ) -> None:
        self.inner = inner
        self.hasher = hasher
        self.on_bytes = on_bytes
        self.limit = limit
        self.limit_message = limit_message
        self.count = 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = self.inner.readinto(buf)
        if n:
            self.count += n
            if self.limit is not None and self.count > self.limit:
                raise CapacityExceeded(self.limit_message or f"data exceeds the limit of {self.limit} bytes")
            if self.hasher is not None:
                self.hasher.update(memoryview(buf)[:n])
            if self.on_bytes is not None:
                self.on_bytes(n)
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(CHUNK if n < 0 else n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def close(self) -> None:
        self.inner.close()


class ReadAhead:
    """Reads ``depth`` chunks ahead of the consumer in a thread. Errors surface in ``readinto``.

    Until ``start()`` it reads only what is asked for, in the caller's thread: format detection then
    costs no bytes beyond what it looks at, which matters when the plan is to read the source at
    random instead (a remote convert)."""

    def __init__(self, inner: Reader, *, chunk: int = READ_AHEAD_CHUNK, depth: int = 16) -> None:
        self.inner = inner
        self._chunk = chunk
        self._full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue(depth)
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(depth + 2):
            self._free.put(bytearray(chunk))
        self._current: tuple[bytearray, int] | None = None
        self._offset = 0
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._started = False
        self._direct = threading.Lock()  # a decompressor's feeder thread may be reading directly

    def start(self) -> None:
        with self._direct:
            if not self._started:
                self._started = True
                self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                buf = self._free.get()
                n = _fill(self.inner, memoryview(buf))
                if n == 0:
                    self._full.put(None)
                    return
                self._full.put((buf, n))
        except BaseException as e:  # handed to the consumer, which raises it
            self._full.put(e)

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._done:
            return 0
        if not self._started:
            with self._direct:
                if not self._started:
                    return self.inner.readinto(buf)
        if self._current is None:
            item = self._full.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._current, self._offset = item, 0
        data, size = self._current
        n = min(len(buf), size - self._offset)
        buf[:n] = memoryview(data)[self._offset : self._offset + n]
        self._offset += n
        if self._offset == size:
            self._free.put(data)
            self._current = None
        return n

    def close(self) -> None:
        self._stop.set()
        while self._started and self._thread.is_alive():
            try:  # unblock a producer waiting for a free buffer or a queue slot
                self._full.get_nowait()
            except queue.Empty:
                self._free.put(bytearray(0))
            self._thread.join(0.05)
        self.inner.close()


def _fill(reader: Reader, view: memoryview) -> int:
    """Read until ``view`` is full or the stream ends."""
    have = 0
    while have < len(view):
        n = reader.readinto(view[have:])
        if not n:
            break
        have += n
    return have


def read_full(reader: Reader, view: memoryview) -> int:
    return _fill(reader, view)


class _FileLike:
    """Adapts a Reader to the ``read()`` that gzip/bz2/zstandard expect of their input."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(CHUNK if n is None or n < 0 else n)
        got = self.reader.readinto(buf)
        return bytes(buf[:got])

    def readinto(self, buf: memoryview | bytearray) -> int:
        return self.reader.readinto(buf)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.reader.close()


def _ends_early(kind: str) -> FormatError:
    return FormatError(f"the {kind} stream ends early: the file is truncated, or the connection was cut "
                       "before its end")


class _Decoded:
    """A decompressing reader, wrapping library errors into FormatError. A stream that stops before
    its end-of-stream marker is an error, never a short image."""

    def __init__(self, kind: str, stream: Any, inner: Reader) -> None:
        self.kind = kind
        self._stream = stream
        self._inner = inner

    def readinto(self, buf: memoryview | bytearray) -> int:
        try:
            return int(self._stream.readinto(buf) or 0)
        except Error:
            raise
        except EOFError as e:
            raise _ends_early(self.kind) from e
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise FormatError(f"corrupt {self.kind} data: {e}") from e

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._inner.close()


class ToolDecoder:
    """Decompresses through a program reading stdin and writing stdout (``xz``: multi-threaded on
    multi-block files, where python's lzma is single-threaded at about 28 MB/s; ``zstd``: the only
    decoder here that reports a stream cut inside a frame, which python's zstandard reader ignores).
    A thread feeds stdin; ``readinto`` reads stdout; a non-zero exit is an error."""

    def __init__(self, kind: str, cmd: list[str], inner: Reader) -> None:
        self.kind = kind
        self.cmd = cmd
        self.inner = inner
        self._proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            preexec_fn=die_with_parent,
        )
        self._error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name=f"{kind}-feed", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        assert self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = self.inner.readinto(view)
                if not n:
                    break
                done = 0
                while done < n:  # os.write may write part of the buffer (e.g. when a signal arrives)
                    done += os.write(fd, view[done:n])
        except BrokenPipeError:
            pass
        except BaseException as e:
            self._error = e
            self._proc.kill()
        finally:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def readinto(self, buf: memoryview | bytearray) -> int:
        assert self._proc.stdout is not None
        n = cast(Any, self._proc.stdout).readinto(buf) or 0
        if n == 0:
            self._feeder.join()
            if self._error is not None:
                raise self._error
            rc = self._proc.wait()
            if rc != 0:
                stderr = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                lowered = stderr.lower()
                if "unexpected end" in lowered or "premature end" in lowered or "truncated" in lowered:
                    raise _ends_early(self.kind)
                raise FormatError(f"corrupt {self.kind} data: {stderr or f'{self.cmd[0]} exited with {rc}'}")
        return n

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        self._feeder.join(1)
        self.inner.close()


def _tool(env: str, name: str, package: str) -> str:
    path = os.environ.get(env, shutil.which(name) or name)
    if shutil.which(path) is None:
        raise ToolError(f"the {name} program is needed to decompress {name} images; install {package}")
    return path


def open_decompressor(kind: str, inner: Reader) -> Reader:
    """A reader yielding the decompressed bytes of ``inner``."""
    if kind == "gzip":
        from isal import igzip

        return _Decoded("gzip", igzip.GzipFile(fileobj=cast(IO[bytes], _FileLike(inner)), mode="rb"), inner)
    if kind == "zstd":
        # --memory bounds the window a hostile frame may ask for (zstd's own default, made explicit)
        return ToolDecoder("zstd", [_tool("CDI_ZSTD", "zstd", "zstd"), "-dcq", "--no-progress", "--memory=128MB"],
                           inner)
    if kind == "xz":
        # 96 MiB keeps two decoder threads on xz -6 blocks (24 MiB) while bounding memory (bench/RESULTS.md)
        return ToolDecoder("xz", [_tool("CDI_XZ", "xz", "xz-utils"), "-dc", "-T0", "--memlimit-mt=96MiB", "-q"], inner)
    if kind == "bzip2":
        return _Decoded("bzip2", bz2.BZ2File(cast(IO[bytes], _FileLike(inner)), mode="rb"), inner)
    raise ValueError(f"unknown compression {kind}")
