"""HTTP(S) source: a sequential reader that resumes where a dropped connection stopped.

Built on the standard library's ``http.client`` because the bulk body is read with ``readinto`` into
the caller's reused buffer, which is several times faster than higher-level clients' iteration
(MEASURED.md). A resume is a ``Range`` request from the last byte received, tied to the original
entity with ``If-Range`` (ETag, else Last-Modified); a server that ignores it answers 200 and the
transfer must start again from byte 0 (``RestartFromZero``).
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

from importer.errors import RestartFromZero, SourceError, TemporaryError
from importer.http_options import HttpOptions, parse_header

log = logging.getLogger(__name__)

__all__ = ["HttpOptions", "HttpSource", "parse_header"]

MAX_REDIRECTS = 10
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


class HttpSource:
    """Sequential, resumable reader of one URL.

    ``open()`` sends the GET and follows redirects; afterwards ``size``, ``etag``, ``accepts_ranges``,
    ``content_type`` and ``url`` (the final one) are known. ``readinto`` never returns short of the end
    because of a network error: it reconnects up to ``retries`` times.
    """

    def __init__(self, url: str, options: HttpOptions | None = None) -> None:
        self.original_url = url
        self.url = url
        self.options = options or HttpOptions()
        self.size: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.accepts_ranges = False
        self.content_type: str | None = None
        self.position = 0
        self.resumes = 0
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._ssl_context: ssl.SSLContext | None = None

    # -- connection --------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            if self.options.insecure:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=self.options.ca_file)
                if self.options.ca_file:
                    ctx.load_default_certs()
            self._ssl_context = ctx
        return self._ssl_context

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "cdi-importer/0.1", "Accept-Encoding": "identity"}
        if self.options.user is not None and _same_origin(url, self.original_url):
            token = f"{self.options.user}:{self.options.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        for name, value in self.options.headers:
            headers[name] = value
        return headers

    def _request(self, url: str, extra: dict[str, str]) -> tuple[str, http.client.HTTPResponse]:
        """GET ``url`` following redirects; returns the final URL and the open response."""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, parts.port, timeout=self.options.timeout, context=self._context()
                )
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(host, parts.port, timeout=self.options.timeout)
            else:
                raise SourceError(f"unsupported URL scheme {parts.scheme!r} in {url}: use http or https")
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            try:
                conn.request("GET", path, headers={**self._headers(url), **extra})
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise SourceError(
                    f"TLS certificate of {host} not trusted ({e.verify_message}): give the CA with "
                    "certConfigMap / --ca-file, or skip verification explicitly"
                ) from e
            except _NETWORK_ERRORS:
                conn.close()
                raise
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.close()
                conn.close()
                if not location:
                    raise SourceError(f"HTTP {resp.status} redirect without a Location header at {url}")
                url = urllib.parse.urljoin(url, location)
                continue
            self._conn = conn
            return url, resp
        raise SourceError(f"more than {MAX_REDIRECTS} redirects starting at {self.original_url}")

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        """Send the first GET (with retries on network errors and 5xx answers).

        With ``start`` and the ``validator`` (ETag or Last-Modified) of an earlier attempt, ask for the
        rest of the same entity; returns True when the server continues at ``start``, False when it
        sent the whole body (changed file, no ranges) and reading starts at byte 0.
        """
        extra = {"Range": f"bytes={start}-", "If-Range": validator} if start and validator else {}
        self._resp = self._with_retries("connect", lambda: self._start(extra))
        self.position = 0
        if extra and self._resp.status == 206:
            first = (self._resp.getheader("Content-Range") or "").removeprefix("bytes ").split("-")[0]
            total = (self._resp.getheader("Content-Range") or "").rpartition("/")[2]
            if first == str(start):
                self.position = start
                self.size = int(total) if total.isdigit() else None
                self.accepts_ranges = True
                return True
            self._close_response()
            self._resp = self._with_retries("connect", lambda: self._start({}))
        return False

    @property
    def validator(self) -> str | None:
        """What ties a later range request to this entity: a strong ETag, else Last-Modified."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def _start(self, extra: dict[str, str]) -> http.client.HTTPResponse:
        url, resp = self._request(self.original_url, extra)
        self.url = url
        status = resp.status
        if status in (200, 206):
            return resp
        body = resp.read(512).decode("utf-8", "replace").strip().splitlines()
        resp.close()
        hint = f" ({body[0][:120]})" if body else ""
        if status in (401, 403):
            raise SourceError(
                f"access denied: HTTP {status} {resp.reason} at {url}{hint}; check the credentials "
                "(secretRef / --user, --password-file) and extra headers"
            )
        if status == 404:
            raise SourceError(f"not found: HTTP 404 at {url}; check the URL")
        if status == 416:
            raise RestartFromZero(f"server refused the range request (HTTP 416) at {url}")
        if status in (408, 429) or status >= 500:
            raise TemporaryError(f"server error: HTTP {status} {resp.reason} at {url}{hint}")
        raise SourceError(f"unexpected HTTP {status} {resp.reason} at {url}{hint}")

    def _with_retries(self, what: str, fn: Callable[[], http.client.HTTPResponse]) -> http.client.HTTPResponse:
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                resp = fn()
                if what == "connect":
                    self._read_headers(resp)
                return resp
            except (TemporaryError, *_NETWORK_ERRORS) as e:
                if isinstance(e, RestartFromZero) or attempt == self.options.retries:
                    if isinstance(e, TemporaryError):
                        raise
                    raise TemporaryError(f"cannot reach {self.original_url}: {e}") from e
                log.warning("http %s failed attempt=%d error=%s retry_in=%.1fs", what, attempt + 1, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _read_headers(self, resp: http.client.HTTPResponse) -> None:
        length = resp.getheader("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        self.etag = resp.getheader("ETag")
        self.last_modified = resp.getheader("Last-Modified")
        self.accepts_ranges = (resp.getheader("Accept-Ranges") or "").lower() == "bytes"
        self.content_type = resp.getheader("Content-Type")

    # -- reading -----------------------------------------------------------------------------

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` with the next bytes; 0 only at the true end of the body."""
        while True:
            if self._resp is None:
                raise ValueError("source is not open")
            try:
                n = self._resp.readinto(buf)
            except _NETWORK_ERRORS as e:
                self._resume(e)
                continue
            if n == 0 and self.size is not None and self.position < self.size:
                self._resume(ConnectionError(f"connection closed at byte {self.position} of {self.size}"))
                continue
            self.position += n
            return n

    def _resume(self, error: BaseException) -> None:
        """Reconnect and continue at ``position``; RestartFromZero when the server cannot."""
        self._close_response()
        validator = self.validator
        if not self.accepts_ranges or not validator:
            why = "does not support range requests" if not self.accepts_ranges else "sends no ETag or Last-Modified"
            raise RestartFromZero(f"transfer interrupted at byte {self.position} ({error}); server {why}")
        self.resumes += 1
        log.warning("http transfer interrupted at=%d error=%s resuming=range", self.position, error)
        extra = {"Range": f"bytes={self.position}-", "If-Range": validator}

        def again() -> http.client.HTTPResponse:
            resp = self._start(extra)
            if resp.status == 200:
                resp.close()
                raise RestartFromZero(
                    f"transfer interrupted at byte {self.position}; the server answered the resume with the "
                    "whole body (the file changed or ranges are not honoured)"
                )
            start = (resp.getheader("Content-Range") or "").removeprefix("bytes ").split("-")[0]
            if start != str(self.position):
                resp.close()
                raise RestartFromZero(f"server resumed at {start!r} instead of byte {self.position}")
            return resp

        self._resp = self._with_retries("resume", again)

    def read_range(self, start: int, length: int) -> bytes:
        """One ranged GET (used to peek at the end of a file, e.g. a VHD footer)."""
        _, resp = self._request(self.url, {"Range": f"bytes={start}-{start + length - 1}"})
        try:
            if resp.status != 206:
                raise SourceError(f"HTTP {resp.status} for a range request at {self.url}")
            return resp.read()
        finally:
            resp.close()

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._close_response()


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def is_network_error(e: BaseException) -> bool:
    return isinstance(e, (*_NETWORK_ERRORS, socket.timeout))
