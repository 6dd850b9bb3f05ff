"""Request bodies read as streams, never whole: Content-Length, chunked, and one multipart/form-data part.

Each reader has ``readinto`` (0 at the end) and ``complete``, true only once the body's own framing
proved its end: the announced length met, the chunked terminator read, the closing boundary seen. A
connection that closes early leaves ``complete`` false, which the pipeline treats as a cut upload.
"""

from __future__ import annotations

import email.parser
import email.utils
import io
import select
import struct
import time
from typing import Any, Protocol

from importer.errors import NetworkError

MAX_LINE = 8192


class BodyError(Exception):
    """The body's framing is broken (a bad chunk size, a form without the ``file`` part)."""


class Reader(Protocol):
    def readinto(self, buf: memoryview | bytearray) -> int: ...

    @property
    def complete(self) -> bool: ...


def _read(stream: io.BufferedIOBase, view: memoryview) -> int:
    try:
        return stream.readinto(view) or 0
    except OSError:  # a reset or a TLS connection closed without close_notify: the body is cut
        return 0


class LengthBody:
    def __init__(self, stream: io.BufferedIOBase, length: int) -> None:
        self.stream = stream
        self.left = length
        self.cut = False

    @property
    def complete(self) -> bool:
        return self.left == 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self.left <= 0 or self.cut:
            return 0
        view = memoryview(buf)[: min(len(buf), self.left)]
        n = _read(self.stream, view)
        if n == 0:
            self.cut = True
        self.left -= n
        return n


class ChunkedBody:
    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.stream = stream
        self.left = 0
        self.done = False
        self.cut = False

    @property
    def complete(self) -> bool:
        return self.done

    def _line(self) -> bytes:
        try:
            line = self.stream.readline(MAX_LINE)
        except OSError:  # a reset or a TLS connection closed without close_notify: the body is cut
            line = b""
        if not line:
            self.cut = True
        return line

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self.done or self.cut:
            return 0
        if self.left == 0:
            line = self._line()
            if self.cut:
                return 0
            try:
                self.left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise BodyError(f"bad chunk size line {line[:40]!r}") from e
            if self.left == 0:
                while self._line() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = not self.cut
                return 0
        view = memoryview(buf)[: min(len(buf), self.left)]
        n = _read(self.stream, view)
        if n == 0:
            self.cut = True
            return 0
        self.left -= n
        if self.left == 0 and self._line() not in (b"\r\n", b"\n"):
            self.cut = True
        return n


class DeclaredLength:
    """A body whose size the client declared (a form's file part or a raw body with ``Upload-Length``, a
    chunked ranged body by its range): it must hold exactly that many bytes, else the upload fails. A
    declared size is what makes a form upload resumable like a raw one."""

    def __init__(self, inner: Any, size: int, what: str = "the form's file", header: str = "its Upload-Length") -> None:
        self.inner = inner
        self.size = size
        self.seen = 0
        self.what, self.header = what, header

    @property
    def complete(self) -> bool:
        return self.inner.complete and self.seen == self.size

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = self.inner.readinto(buf)
        self.seen += n
        if self.seen > self.size:
            raise BodyError(f"{self.what} holds more than the {self.size} bytes {self.header} declares")
        if n == 0 and self.inner.complete and self.seen != self.size:
            # ended early, like a cut connection: what arrived stays held for a resume
            raise NetworkError(f"{self.what} holds {self.seen} bytes, not the {self.size} {self.header} declares")
        return n


class MultipartFile:
    """The content of the form part named ``file`` (CDI's upload-form), streamed.

    Holds at most one buffer plus the boundary's length of the part in memory: the bytes that might be
    the start of the closing delimiter are kept back until the next read shows they are not.
    """

    def __init__(self, inner: Reader, boundary: bytes, *, chunk: int = 1 << 20) -> None:
        self.inner = inner
        self.delim = b"\r\n--" + boundary
        self.chunk = chunk
        self.pending = bytearray()
        self.in_part = False
        self.ended_part = False
        self.eof = False
        self._open_part()

    @property
    def complete(self) -> bool:
        return self.ended_part and self.inner.complete

    def _fill(self) -> bool:
        if self.eof:
            return False
        buf = bytearray(self.chunk)
        n = self.inner.readinto(buf)
        if n == 0:
            self.eof = True
            return False
        self.pending += memoryview(buf)[:n]
        return True

    def _open_part(self) -> None:
        """Skip to the headers of the ``file`` part and past them."""
        self.pending = bytearray(b"\r\n")  # the first delimiter has no CRLF before it
        while True:
            while (i := self.pending.find(self.delim)) < 0:
                if len(self.pending) > MAX_LINE * 4 + len(self.delim):
                    del self.pending[: -len(self.delim)]
                if not self._fill():
                    raise BodyError("the form has no part named file (http: no such file)")
            del self.pending[: i + len(self.delim)]
            while len(self.pending) < 2 and self._fill():
                pass
            if self.pending.startswith(b"--"):  # the closing delimiter: no more parts
                raise BodyError("the form has no part named file (http: no such file)")
            while (j := self.pending.find(b"\r\n\r\n")) < 0:
                if len(self.pending) > MAX_LINE * 4 or not self._fill():
                    raise BodyError("a form part's headers are missing or too long")
            headers = bytes(self.pending[:j]).decode("latin-1")
            del self.pending[: j + 4]
            if form_name(headers) == "file":
                self.in_part = True
                return

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self.ended_part:
            return 0
        while True:
            i = self.pending.find(self.delim)
            if i >= 0:
                if i == 0:
                    self.ended_part = True
                    self._drain()
                    return 0
                n = min(i, len(buf))
            else:
                n = min(len(self.pending) - len(self.delim) + 1, len(buf))
            if n > 0:
                memoryview(buf)[:n] = self.pending[:n]
                del self.pending[:n]
                return n
            if not self._fill():
                return 0  # cut: ``complete`` stays false

    def _drain(self) -> None:
        """Read the rest of the form (other parts, the closing boundary) so the body's end is proven."""
        while self._fill():
            del self.pending[: max(0, len(self.pending) - len(self.delim) - 4)]


def form_name(headers: str) -> str | None:
    """A part's form name as Go's ``Part.FormName``: the ``name`` parameter of a ``form-data``
    Content-Disposition, compared as sent (``File`` is not ``file``)."""
    msg = email.parser.HeaderParser().parsestr(headers.split("\r\n", 1)[1] if headers.startswith("\r\n")
                                               else headers)
    if msg.get_content_disposition() != "form-data":
        return None
    name = msg.get_param("name", header="content-disposition")
    return email.utils.collapse_rfc2231_value(name) if name is not None else None


def boundary_of(content_type: str) -> bytes:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise BodyError("multipart/form-data without a boundary")


def close_lingering(sock: Any, seconds: float = 2.0) -> None:
    """Close a connection whose peer may still be sending (an early refusal): read and drop what comes
    for a moment first, so that our answer is not lost to a reset (a lingering close, as web servers do)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(1 << 16):
                break
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def answered(sock: Any) -> bool:
    """The peer has sent something (an early answer) while we are still sending."""
    if sock is None:
        return False
    if getattr(sock, "pending", None) and sock.pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


EXTENT_HEADER = struct.Struct(">QQ")
EXTENTS_TYPE = "application/x-cdi-extents"
_ZEROS = memoryview(bytes(1 << 20))


class ExtentsBody:
    """A disk image sent as its data extents only (``cdi image-upload --sparse``), read as the whole image.

    The body is a sequence of records, each a 16-byte header (offset and length, big-endian) and that
    many bytes of data; offsets ascend and extents do not overlap. Reading yields the image of
    ``size`` bytes: the extents' data where they are, zeros between and after them, so zeros never
    cross the wire and the pipeline still sees (and digests) the whole disk.
    """

    def __init__(self, inner: Reader, size: int) -> None:
        self.inner = inner
        self.size = size
        self.pos = 0  # offset in the image
        self.next_offset: int | None = None  # where the current extent starts
        self.left = 0  # bytes of the current extent not yet read
        self.ended = False
        self.header = bytearray(EXTENT_HEADER.size)

    @property
    def complete(self) -> bool:
        return self.ended and self.pos == self.size and self.inner.complete

    def _next(self) -> None:
        have = 0
        while have < len(self.header):
            n = self.inner.readinto(memoryview(self.header)[have:])
            if n == 0:
                if have:
                    raise BodyError("the extents body ends inside an extent header")
                self.ended = True
                self.next_offset = self.size
                return
            have += n
        offset, length = EXTENT_HEADER.unpack(self.header)
        if offset < self.pos or length == 0 or offset + length > self.size:
            raise BodyError(f"extent at {offset} of {length} bytes is out of order or past the image's {self.size}")
        self.next_offset, self.left = offset, length

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        if self.pos >= self.size:
            if not self.ended:
                self._next()
                if not self.ended:
                    raise BodyError("extents past the end of the image")
            return 0
        if self.next_offset is None or (self.left == 0 and self.pos >= self.next_offset):
            self._next()
        assert self.next_offset is not None
        if self.pos < self.next_offset:  # a gap: zeros
            n = min(len(view), self.next_offset - self.pos, len(_ZEROS))
            view[:n] = _ZEROS[:n]
            self.pos += n
            return n
        n = self.inner.readinto(view[: min(len(view), self.left)])
        if n == 0:
            return 0  # cut: ``complete`` stays false
        self.left -= n
        self.pos += n
        return n
