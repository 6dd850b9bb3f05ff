"""A fault-injecting HTTP server on 127.0.0.1 for tests and benchmarks: the servers that lie, stall and
change that an importer meets on a bad network.

Each path is a ``Fault`` (what goes wrong) over a file. Faults, combinable:

- ``drop_p``/``drop_every``: every ``drop_every`` body bytes sent (counted over all answers, so short
  range answers are hit too) the connection in use is dropped with probability ``drop_p`` (seeded,
  so a run is repeatable);
- ``length``: ``exact`` (Content-Length), ``none`` (no Content-Length: the body ends when the
  connection closes), ``chunked``, ``large``/``small`` (a Content-Length ``length_error`` bytes larger
  or smaller than the body; the whole body is sent, then the connection is closed);
- ``ranges``: False answers a Range request with 200 and the whole file (``advertise_ranges`` still
  sends ``Accept-Ranges: bytes``, as some servers do);
- ``swap_to``/``swap_after``: once ``swap_after`` body bytes were sent in total, later requests get
  another file with a new ETag and Last-Modified (the answer in flight keeps the old one, as after an
  atomic rename); ``if_match``/``if_range`` False make the server ignore those validators;
  ``constant_etag`` builds the ETag from the path alone, so it stays the same across versions (as
  servers whose ETag comes from the path or inode) while Last-Modified and the bytes change;
- ``answer_bytes``: each answer sends at most that many body bytes, then the connection is closed;
  after ``give_up_after`` requests every answer is a 500 (so a client that never gives up still ends);
- ``rate`` (bytes per second) and ``stall_after`` (once that many body bytes were sent in total, send
  nothing more and keep connections open until the server stops).

``FaultServer.redirect`` makes a path answer 302 to another after its first requests (a mirror
switched mid-import).

``sent`` counts the body bytes written to sockets, so a test or benchmark can say how many bytes the
server sent per byte of image.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    path: str
    drop_p: float = 0.0
    drop_every: int = 1 << 20
    seed: int = 0
    length: str = "exact"  # exact, none, chunked, large, small
    length_error: int = 4096
    chunked_end: bool = True  # False: a chunked body ends without its terminator (the connection closes)
    ranges: bool = True
    advertise_ranges: bool = True
    etag: bool = True
    last_modified: bool = True
    if_match: bool = True
    if_range: bool = True
    constant_etag: bool = False
    swap_to: str | None = None
    swap_after: int = 0
    rate: int | None = None
    stall_after: int | None = None
    answer_bytes: int | None = None
    give_up_after: int | None = None
    # observed
    sent: int = 0
    drops: int = 0
    swapped: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _rnd: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rnd.seed(self.seed)
        self.until_drop = self.drop_every

    def current(self) -> tuple[str, str, str]:
        """The file served now, its ETag and Last-Modified."""
        path = self.swap_to if self.swapped and self.swap_to else self.path
        version = 2 if self.swapped else 1
        st = os.stat(path)
        name = self.path if self.constant_etag else f"{path}-{st.st_size}-{version}"
        etag = '"' + hashlib.md5(name.encode()).hexdigest()[:16] + '"'
        modified = email.utils.formatdate(1_700_000_000 + version * 3600, usegmt=True)
        return path, etag, modified

    def count(self, n: int) -> None:
        with self._lock:
            self.sent += n
            if self.swap_to and not self.swapped and self.sent >= self.swap_after:
                self.swapped = True

    def passed_drop_point(self, n: int, *, more: bool) -> bool:
        """After ``n`` more bytes: True when a drop point was reached, the dice say drop, and the
        answer has ``more`` to send (a connection dropped after a complete answer loses nothing)."""
        with self._lock:
            self.until_drop -= n
            if self.until_drop > 0:
                return False
            self.until_drop = self.drop_every
            if self._rnd.random() < self.drop_p and more:
                self.drops += 1
                return True
            return False


class _Dropped(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?")[0]
        redirect = self.server.redirects.get(path)
        if redirect is not None and redirect[1] <= 0:
            self.send_response(302)
            self.send_header("Location", redirect[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if redirect is not None:
            self.server.redirects[path] = (redirect[0], redirect[1] - 1)
        fault = self.server.faults.get(path)
        if fault is None:
            return self._simple(404, b"not found")
        fault.requests.append(dict(self.headers.items()))
        if fault.give_up_after is not None and len(fault.requests) > fault.give_up_after:
            return self._simple(500, b"giving up", fault)
        path, etag, modified = fault.current()
        size = os.path.getsize(path)
        if fault.if_match and self.headers.get("If-Match") not in (None, etag, "*"):
            return self._simple(412, b"precondition failed", fault)
        unmodified = self.headers.get("If-Unmodified-Since")
        if fault.if_match and unmodified is not None and unmodified != modified:
            return self._simple(412, b"precondition failed", fault)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and fault.ranges and (if_range is None or not fault.if_range or if_range in (etag, modified)):
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start = int(a)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                fault.statuses.append(416)
                return None
            end = min(int(b), size - 1) if b else size - 1
            status = 206
        fault.statuses.append(status)
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if fault.advertise_ranges:
            self.send_header("Accept-Ranges", "bytes")
        if fault.etag:
            self.send_header("ETag", etag)
        if fault.last_modified:
            self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        close_after = False
        if fault.length == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif fault.length == "none":
            self.send_header("Connection", "close")
            close_after = True
        elif fault.length in ("large", "small"):
            sign = 1 if fault.length == "large" else -1
            self.send_header("Content-Length", str(length + sign * fault.length_error))
            close_after = True
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return None
        try:
            self._body(fault, path, start, length)
        except _Dropped:
            self._hang_up()
            return None
        except OSError:  # the client hung up
            self.close_connection = True
            return None
        if close_after:
            self.wfile.flush()
            self._hang_up()
        return None

    def _body(self, fault: Fault, path: str, start: int, length: int) -> None:
        piece = 64 << 10
        if fault.rate:
            piece = max(256, fault.rate // 20)
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < length:
                want = min(piece, length - sent)
                if fault.drop_p:
                    want = min(want, fault.until_drop)
                if fault.stall_after is not None:
                    if fault.sent >= fault.stall_after:
                        self.wfile.flush()
                        self.server.stopping.wait()
                        raise _Dropped
                    want = min(want, fault.stall_after - fault.sent)
                if fault.answer_bytes is not None:
                    if sent >= fault.answer_bytes:
                        raise _Dropped
                    want = min(want, fault.answer_bytes - sent)
                data = f.read(want)
                if not data:
                    break
                if fault.rate and self.server.stopping.wait(len(data) / fault.rate):
                    raise _Dropped
                if fault.length == "chunked":
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)
                sent += len(data)
                fault.count(len(data))
                if fault.drop_p and fault.passed_drop_point(len(data), more=sent < length):
                    raise _Dropped
        if fault.length == "chunked" and fault.chunked_end:
            self.wfile.write(b"0\r\n\r\n")
        elif fault.length == "chunked":
            raise _Dropped

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _simple(self, status: int, body: bytes, fault: Fault | None = None) -> None:
        if fault is not None:
            fault.statuses.append(status)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    faults: dict[str, Fault]
    redirects: dict[str, tuple[str, int]]
    stopping: threading.Event

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up are what this server is for."""


class FaultServer:
    """``with FaultServer() as s: f = s.add('/a.img', Fault(path=..., drop_p=0.3)); s.url('/a.img')``."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.faults = {}
        self._server.redirects = {}
        self._server.stopping = threading.Event()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, path: str, fault: Fault) -> Fault:
        self._server.faults[path] = fault
        return fault

    def redirect(self, path: str, location: str, *, after: int = 0) -> None:
        """Answer requests for ``path`` after the first ``after`` with a 302 to ``location``."""
        self._server.redirects[path] = (location, after)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
