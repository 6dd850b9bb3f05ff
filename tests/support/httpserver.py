"""A real HTTP(S) server on 127.0.0.1 for tests: serves files from a directory with the behaviours an
importer meets in the wild, chosen per path by query-free route options.

Behaviours (``Route``): Range and ETag support or not, basic auth, a redirect chain, dropping the
connection after N bytes (the first K times), an HTML page with status 200, extra headers required.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    path: str | None = None  # file served; None for pure behaviour routes
    ranges: bool = True
    etag: bool = True
    user: str | None = None
    password: str | None = None
    redirect_to: str | None = None
    redirect_status: int = 302
    drop_after: int | None = None  # close the connection after this many body bytes
    drops: int = 1  # how many times to drop
    html: bool = False
    status: int = 200
    require_headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    rate: int | None = None  # bytes per second, to make a transfer last
    fail_first: int = 0  # answer 503 to this many requests first
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet tests
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            return self._simple(404, b"not found")
        route.requests.append(dict(self.headers.items()))
        if route.fail_first > 0:
            route.fail_first -= 1
            return self._simple(503, b"try again later")
        if route.user is not None:
            token = base64.b64encode(f"{route.user}:{route.password}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {token}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="images"')
                self.send_header("Content-Length", "12")
                self.end_headers()
                self.wfile.write(b"unauthorized")
                return None
        for name, value in route.require_headers.items():
            if self.headers.get(name) != value:
                return self._simple(403, f"missing header {name}".encode())
        if route.redirect_to is not None:
            self.send_response(route.redirect_status)
            self.send_header("Location", route.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if route.html:
            page = b"<!DOCTYPE html><html><head><title>Login</title></head><body>sign in</body></html>"
            return self._simple(200, page, ctype="text/html; charset=utf-8")
        if route.status != 200:
            return self._simple(route.status, b"error")
        assert route.path is not None
        size = os.path.getsize(route.path)
        st = os.stat(route.path)
        etag = '"' + hashlib.md5(f"{st.st_mtime_ns}-{size}".encode()).hexdigest() + '"'
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and route.ranges:
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range == etag or (not route.etag):
                spec = rng.removeprefix("bytes=")
                a, _, b = spec.partition("-")
                start = int(a)
                end = min(int(b), size - 1) if b else size - 1
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if route.etag:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        length = end - start + 1
        if route.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return None
        limit = None
        if route.drop_after is not None and route.drops > 0 and start < route.drop_after < start + length:
            route.drops -= 1
            limit = route.drop_after - start
        with open(route.path, "rb") as f:
            f.seek(start)
            left = length
            sent = 0
            while left > 0:
                data = f.read(min(1 << 20 if not route.rate else max(4096, route.rate // 10), left))
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    self.wfile.write(data[: limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if route.rate:
                    time.sleep(len(data) / route.rate)
                if route.chunked:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)
                sent += len(data)
                left -= len(data)
            if route.chunked:
                self.wfile.write(b"0\r\n\r\n")
        return None

    def _simple(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up early (a resume test, a killed importer) are expected here."""


class HttpServer:
    """``with HttpServer() as s: s.add('/a.img', Route(path=...)); s.url('/a.img')``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.routes = {}
        self.scheme = "http"
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, path: str, route: Route) -> Route:
        self._server.routes[path] = route
        return route

    def url(self, path: str) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> HttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
