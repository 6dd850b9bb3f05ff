"""HTTP plumbing of the http source: one client per URL (TLS, credentials, redirects, statuses to
errors), the version of the file an import reads (its validator, the conditions that tie a request to
it, the check of what comes back), curl's low-speed check and the bookkeeping of failed tries.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
import urllib.parse

from importer.errors import NetworkError, SourceChanged, SourceError, Stalled, TemporaryError
from importer.http_options import HttpOptions

MAX_REDIRECTS = 10
NETWORK_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


class LowSpeed(Exception):
    """Less than the speed limit for the speed time on one connection."""


class Meter:
    """curl's low-speed check: fewer than ``limit`` bytes in ``period`` seconds. The window runs across
    reconnects (a server that sends one byte per connection is as stalled as one that sends nothing);
    only the pauses between tries are left out."""

    def __init__(self, options: HttpOptions) -> None:
        self.limit = options.speed_limit
        self.period = options.speed_time
        self.reset()

    def reset(self) -> None:
        self._start = time.monotonic()
        self._count = 0

    def add(self, n: int) -> None:
        if self.limit <= 0:
            return
        self._count += n
        now = time.monotonic()
        if now - self._start >= self.period:
            count, elapsed = self._count, now - self._start
            self._start, self._count = now, 0
            if count < self.limit * elapsed:
                raise LowSpeed(f"{count} bytes in {elapsed:.1f}s")

    def pause(self, seconds: float) -> None:
        """Leave a back-off pause out of the window."""
        self._start += seconds


class Attempts:
    """Failures of one transfer: how long to wait before the next try, or give up."""

    def __init__(self, options: HttpOptions, url: str) -> None:
        self.options = options
        self.url = url
        self.errors = 0
        self.stalls = 0
        self.delay = options.backoff
        # a try that delivered this much was healthy: stalls before it are forgiven
        self.progress_bytes = max(1, int(options.speed_limit * options.speed_time))

    def failed(self, error: BaseException, received: int, position: int) -> float:
        """``received``: bytes the failed try delivered. A try that delivered bytes before a network
        error made progress: reconnect at once. A stall counts unless the try before it delivered a
        healthy period's worth (``speed_limit * speed_time``)."""
        opts = self.options
        if received >= self.progress_bytes:
            self.stalls = 0
        if isinstance(error, (LowSpeed, TimeoutError)):
            self.stalls += 1
            if self.stalls > opts.max_stalled_retries:
                raise Stalled(
                    f"the server stalled: less than {opts.speed_limit} bytes/s for {opts.speed_time:g}s at byte "
                    f"{position}, {self.stalls} times in a row, at {self.url} (limits: --speed-limit, "
                    "--speed-time, --max-stalled-retries)"
                )
        elif received > 0:
            self.errors = 0
            self.delay = opts.backoff
            return 0.0
        else:
            self.errors += 1
            if self.errors > opts.retries:
                if isinstance(error, TemporaryError):
                    raise error
                raise NetworkError(f"cannot reach {self.url}: {error} ({self.errors} tries without progress)")
        delay, self.delay = self.delay, min(self.delay * 2, 30.0)
        return delay


def read_some(resp: http.client.HTTPResponse, view: memoryview) -> int:
    """Read what one receive gives, not a whole buffer: ``HTTPResponse.readinto`` waits until the
    buffer is full, so a server sending 1 KiB/s would hold it for minutes between speed checks."""
    fp = resp.fp
    if fp is None or getattr(resp, "chunked", False):
        return resp.readinto(view)
    if resp.length is not None:
        view = view[: resp.length]
        if not len(view):
            resp.close()
            return 0
    n = fp.readinto1(view)
    if resp.length is not None:
        resp.length -= n
        if resp.length == 0:
            resp.close()  # the body is complete: a kept-alive connection can carry the next request
    return n


def content_range(resp: http.client.HTTPResponse) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header; None for what is missing or ``*``."""
    value = (resp.getheader("Content-Range") or "").strip().removeprefix("bytes").strip()
    span, _, total = value.partition("/")
    first, _, last = span.partition("-")

    def num(s: str) -> int | None:
        return int(s) if s.strip().isdigit() else None

    return num(first), num(last), num(total)


class Client:
    """Requests to one URL: TLS, credentials, extra headers, redirects, status codes to errors."""

    def __init__(self, url: str, options: HttpOptions) -> None:
        self.original_url = url
        self.url = url
        self.options = options
        self._ssl_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def timeout(self) -> float:
        if self.options.speed_limit > 0:
            return min(self.options.timeout, self.options.speed_time)
        return self.options.timeout

    def _context(self) -> ssl.SSLContext:
        with self._lock:
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
        if self.options.user is not None and same_origin(url, self.original_url):
            token = f"{self.options.user}:{self.options.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        for name, value in self.options.headers:
            headers[name] = value
        return headers

    def request_headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        """All the headers of one GET of ``url`` (a signing client adds its signature here)."""
        return {**self._headers(url), **extra}

    def connect(self, url: str) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, parts.port, timeout=self.timeout(), context=self._context())
        if parts.scheme == "http":
            return http.client.HTTPConnection(host, parts.port, timeout=self.timeout())
        raise SourceError(f"unsupported URL scheme {parts.scheme!r} in {url}: use http or https")

    def get(self, extra: dict[str, str], conn: http.client.HTTPConnection | None = None,
            ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """GET following redirects, reusing ``conn`` when it is to the right place. Statuses other than
        200, 206, 412 and 416 become errors; the caller checks those four."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            if conn is None:
                conn = self.connect(url)
            parts = urllib.parse.urlsplit(url)
            path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
            try:
                conn.request("GET", path, headers=self.request_headers(url, extra))
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise SourceError(
                    f"TLS certificate of {parts.hostname} not trusted ({e.verify_message}): give the CA with "
                    "certConfigMap / --ca-file, or skip verification explicitly"
                ) from e
            except BaseException:
                conn.close()
                raise
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.close()
                conn.close()
                conn = None
                if not location:
                    raise SourceError(f"HTTP {resp.status} redirect without a Location header at {url}")
                url = urllib.parse.urljoin(url, location)
                continue
            self.url = url
            if resp.status not in (200, 206, 412, 416):
                conn.close()
                self._raise_for(resp, url)
            return conn, resp
        raise SourceError(f"more than {MAX_REDIRECTS} redirects starting at {self.original_url}")

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse, url: str) -> None:
        status = resp.status
        try:
            body = resp.read(512).decode("utf-8", "replace").strip().splitlines()
        except NETWORK_ERRORS:
            body = []
        resp.close()
        hint = f" ({body[0][:120]})" if body else ""
        if status in (401, 403):
            raise SourceError(
                f"access denied: HTTP {status} {resp.reason} at {url}{hint}; check the credentials "
                "(secretRef / --user, --password-file) and extra headers"
            )
        if status == 404:
            raise SourceError(f"not found: HTTP 404 at {url}; check the URL")
        if status in (408, 429) or status >= 500:
            raise TemporaryError(f"server error: HTTP {status} {resp.reason} at {url}{hint}")
        raise SourceError(f"unexpected HTTP {status} {resp.reason} at {url}{hint}")


class Version:
    """What identifies the file read: the validator and size of the first answer."""

    def __init__(self, resp: http.client.HTTPResponse, url: str | None = None) -> None:
        self.etag = resp.getheader("ETag")
        self.last_modified = resp.getheader("Last-Modified")
        self.url = url  # where the first answer came from, redirects followed

    @property
    def identity(self) -> str:
        """Everything that names this version, for a resume point: the If-Range validator, the ETag,
        Last-Modified and, without a strong ETag, the URL the redirects ended at."""
        return json.dumps([self.validator, self.etag, self.last_modified, None if self.strong else self.url])

    @staticmethod
    def if_range_of(identity: str) -> str:
        """The If-Range validator in an ``identity`` (or the identity itself, a bare validator)."""
        try:
            value = json.loads(identity)
        except ValueError:
            return identity
        return str(value[0]) if isinstance(value, list) and value and value[0] else identity

    @property
    def strong(self) -> bool:
        return bool(self.etag and not self.etag.startswith("W/"))

    @property
    def validator(self) -> str | None:
        """A strong ETag, else Last-Modified: what ties a later request to this version."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def conditions(self, *, continuing: bool) -> dict[str, str]:
        """Headers that make the server refuse another version: If-Range for a continuation (a changed
        file then comes whole, with 200), If-Match/If-Unmodified-Since for a random read (412)."""
        validator = self.validator
        if validator is None:
            return {}
        if continuing:
            return {"If-Range": validator}
        if validator == self.etag:
            return {"If-Match": validator}
        return {"If-Unmodified-Since": validator}

    def check(self, resp: http.client.HTTPResponse, url: str) -> None:
        """Raise SourceChanged when the answer names another version than the first: its ETag AND its
        Last-Modified must both be the first answer's. Some servers build the ETag from the path or
        inode, so it stays the same while the bytes change; only Last-Modified then tells."""
        if self.url is not None and url != self.url and not self.strong:
            # without a strong ETag, the same Last-Modified and size at another URL is no proof of the same file
            raise SourceChanged(f"the file changed during the import: {self.url} now leads to {url}, and the "
                                "server gives no strong ETag to prove it is the same file")
        for name, first in (("ETag", self.etag), ("Last-Modified", self.last_modified)):
            now = resp.getheader(name)
            if first is not None and now != first:
                raise SourceChanged(f"the file at {url} changed during the import ({name} {first} became {now})")


def check_lengths(resp: http.client.HTTPResponse, url: str) -> tuple[int, int, int | None]:
    """A 206's (first, last, total); its Content-Length must agree with its Content-Range."""
    first, last, total = content_range(resp)
    if first is None or last is None or last < first:
        resp.close()
        raise SourceError(f"the server answered a range request with HTTP 206 but no valid Content-Range at {url}")
    length = resp.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) != last - first + 1:
        resp.close()
        word = "larger" if int(length) > last - first + 1 else "smaller"
        raise SourceError(
            f"the server's Content-Length {length} is {word} than the {last - first + 1} bytes of its "
            f"Content-Range {first}-{last} at {url}: the server miscounts its body"
        )
    return first, last, total


def same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)
