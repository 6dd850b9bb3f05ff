"""HTTP(S) source: one version of one file, read in order or at random, through a bad network.

Built on the standard library's ``http.client`` because the bulk body is read with ``readinto`` into
the caller's reused buffer, several times faster than higher-level clients (MEASURED.md).

What the server says is checked, not believed:

- The first request asks for the first ``PROBE`` bytes with ``Range``. A 206 proves that ranges work
  (a server may advertise ``Accept-Ranges: bytes`` and still answer 200); a 200 is simply the whole
  file, read in order. Later requests continue from the last byte received.
- Every later request is tied to the first answer's validator (a strong ETag, else Last-Modified):
  ``If-Range`` when the stream continues, ``If-Match``/``If-Unmodified-Since`` for random reads, and
  the ETag, Last-Modified and Content-Range that come back are compared with the first answer. A file
  that changed raises ``SourceChanged``: the import starts again on the new version, never mixes two.
- The end of the data is proven: a Content-Length met, a chunked terminator, or the end of the ranges
  announced by Content-Range; after a body whose length was not announced, a range request past the
  end must get 416. A Content-Length that disagrees with the body or with Content-Range is an error
  naming the server's mistake.
- A transfer that delivers less than ``speed_limit`` bytes/s for ``speed_time`` seconds is dropped
  (as curl's --speed-limit/--speed-time), measured across reconnects: a reconnect does not restart the
  window. Reconnects that make no progress are bounded (``max_stalled_retries`` for stalls,
  ``retries`` for errors); a reconnect after progress is free.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from importer.errors import NetworkError, RestartFromZero, SourceChanged, SourceError, Stalled, TemporaryError
from importer.http_options import HttpOptions
from importer.sources import Capabilities
from importer.sources.http_client import (
    NETWORK_ERRORS,
    Attempts,
    Client,
    LowSpeed,
    Meter,
    Version,
    check_lengths,
    content_range,
    read_some,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE = 1 << 20  # bytes asked for by the first request: what format detection reads (formats.SNIFF_BYTES)


class HttpSource:
    """Sequential reader of one version of one URL, resuming where a dropped connection stopped.

    ``readinto`` returns 0 only at the end of the data; ``end_verified`` then says whether that end was
    proven. ``range_reader()`` gives random access to the same version when ``capabilities``
    say so.
    """

    def __init__(self, url: str, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()
        self.client = Client(url, self.options)
        self.capabilities = Capabilities()
        self.version: Version | None = None
        self.size: int | None = None
        self.position = 0
        self.resumes = 0
        self.received = 0  # body bytes received, all requests included
        self._end_verified = False
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._resp_end: int | None = None  # position after the last byte the current answer announced
        self._length_known = False  # the current answer announced its length (or is chunked)
        self._announced: int | None = None  # the Content-Length of a 200
        self._ranged = False  # the first answer was a 206
        self._refused_total: int | None = None  # the file size a 412/416 answer gave
        self._meter = Meter(self.options)
        self._attempts = Attempts(self.options, url)
        self._attempt_bytes = 0

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def end_verified(self) -> bool:
        return self._end_verified

    @property
    def validator(self) -> str | None:
        """What a resume point keeps of this version: its validator, ETag, Last-Modified and (without a
        strong ETag) the final URL; None when the server gives no validator."""
        if self.version is None or self.version.validator is None:
            return None
        return self.version.identity

    # -- opening -------------------------------------------------------------------------------

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        """Send the first request. With ``start`` and the ``validator`` of an earlier run, ask for the
        rest of that version; returns True when the server continues there, False when reading starts
        at byte 0 (the file changed, or no ranges)."""
        if start and validator:
            status = self._first({"Range": f"bytes={start}-", "If-Range": Version.if_range_of(validator)})
            if status == 206 and self.position == start and self.validator == validator:
                return True
            if status == 206 and self.position == start:  # If-Range ignored: the answer names another version
                log.warning("the file changed since the interrupted import (version %s, now %s)", validator,
                            self.validator)
            self._close_response()
            self.position = 0
        status = self._first({"Range": f"bytes=0-{PROBE - 1}"})
        if status == 416 and self._refused_total == 0:  # an empty file has no byte 0 to give
            self.size = 0
            self.capabilities = Capabilities(size=0)
            self._end_verified = True
            return False
        if status in (412, 416):
            raise SourceError(f"the server refused a range request from byte 0 (HTTP {status}) at {self.url}")
        if self.position != 0:
            raise SourceError(f"the server answered a range request from byte 0 at byte {self.position}")
        return False

    def _first(self, extra: dict[str, str]) -> int:
        """Send a first request; adopt a 200 or 206; return the status (412 and 416 adopt nothing)."""
        def attempt() -> int:
            self._meter.reset()
            self._conn, resp = self.client.get(extra)
            if resp.status in (412, 416):
                self._refused_total = content_range(resp)[2]
                resp.close()
                self._close_response()
                return resp.status
            self._take(resp)
            return resp.status

        return self._retrying(attempt)

    def _take(self, resp: http.client.HTTPResponse) -> None:
        """Adopt the first answer: the version, the size and what the server proved it can do."""
        self.version = Version(resp, self.client.url)
        content_type = resp.getheader("Content-Type")
        length = resp.getheader("Content-Length")
        if resp.status == 206:
            first, last, total = check_lengths(resp, self.url)
            self.size = total
            self.position = first
            self._resp_end = last + 1
            self._length_known = True
            self._ranged = ranges = True
        else:
            self.size = int(length) if length and length.isdigit() else None
            self._announced = self.size
            self.position = 0
            self._resp_end = self.size
            self._length_known = self.size is not None or bool(getattr(resp, "chunked", False))
            ranges = False
        self._resp = resp
        validated = ranges and self.version.validator is not None
        self.capabilities = Capabilities(
            size=self.size, resumable=validated, random_access=validated and self.size is not None,
            content_type=content_type,
        )
        if ranges and not validated:
            log.info("server honours ranges but sends no ETag or Last-Modified: reading once, in order")

    # -- reading -------------------------------------------------------------------------------

    def readinto(self, buf: memoryview | bytearray) -> int:
        """Fill ``buf`` with the next bytes; 0 only at the end of the data."""
        while True:
            if self._resp is None:
                if self._end_verified or not self._next_answer(None):
                    return 0
                continue
            view = memoryview(buf)
            if self._resp_end is not None:
                view = view[: max(0, self._resp_end - self.position)]
            try:
                n = read_some(self._resp, view) if len(view) else 0
                self._meter.add(n)
            except (LowSpeed, *NETWORK_ERRORS) as e:
                self._recover(e)
                continue
            if n:
                self.position += n
                self.received += n
                self._attempt_bytes += n
                return n
            if not self._next_answer(self._resp):
                return 0

    def _next_answer(self, resp: http.client.HTTPResponse | None) -> bool:
        """The current answer ended (or none is open): continue with the next one, or prove the end.
        Returns False at the end of the data."""
        ended_early = (resp is not None and self._resp_end is not None and self.position < self._resp_end)
        if ended_early:
            self._recover(ConnectionError(f"connection closed at byte {self.position} of {self._resp_end}"))
            return True
        self._close_response()
        if self.size is not None and self.position >= self.size:
            return self._prove_end()
        if self.size is None and self._resp_end is None:  # a body of unknown length ended
            if not self._length_known:
                log.info("body without Content-Length ended at byte %d; checking the end", self.position)
            return self._prove_end() if self.capabilities.resumable else self._unverified_end()
        # the announced range is done and more follows: ask for the rest
        self._continue(drop=None)
        return True

    def _unverified_end(self) -> bool:
        self._end_verified = self._length_known  # a chunked terminator proves the end; a closed connection not
        return False

    def _prove_end(self) -> bool:
        """After the last byte of a file of known size: a range request past it must get 416."""
        if not self.capabilities.resumable:
            self._end_verified = self._length_known
            return False
        assert self.version is not None
        version = self.version

        def attempt() -> bool:
            conn, resp = self.client.get({"Range": f"bytes={self.position}-", **version.conditions(continuing=True)})
            status = resp.status
            _, _, total = content_range(resp)
            resp.close()
            conn.close()
            if status != 416:  # a new version met at the end is a change, not a short file
                version.check(resp, self.client.url)
            if status == 416 and self.size is not None and total is not None and total != self.size:
                raise SourceChanged(f"the file at {self.url} changed during the import ({self.size} bytes, now "
                                    f"{total})")
            if status in (206, 416) and total == self.position:  # 416, or a sloppy 206 of nothing
                self._end_verified = True
                return False
            if status == 416:
                if total is not None and total != self.position:
                    raise SourceError(f"the server's data ended at byte {self.position} but it says the file has "
                                      f"{total} bytes (HTTP 416 at {self.url})")
                self._end_verified = True
                return False
            if status == 206:
                raise SourceError(
                    f"the server said the file has {self.size} bytes (Content-Length/Content-Range) but a range "
                    f"request from byte {self.position} returned more data (file size {total}) at {self.url}: its "
                    "Content-Length is smaller than the file"
                )
            if status == 412:
                raise SourceChanged(f"the file at {self.url} changed during the import")
            self._end_verified = True  # the announced length was met; a 200 here proves nothing more
            return False

        return self._retrying(attempt)

    def _recover(self, error: BaseException) -> None:
        """The connection failed mid-answer: continue at ``position`` (after a pause when no progress)."""
        self._close_response()
        if not self.capabilities.resumable:
            why = "sends no ETag or Last-Modified" if self._ranged else "does not support range requests"
            raise RestartFromZero(f"transfer interrupted at byte {self.position} ({error}); server {why}",
                                  cut_at=self.position, announced=self._announced)
        self.resumes += 1
        log.warning("http transfer interrupted at=%d error=%s resuming=range", self.position, error)
        self._continue(drop=error)

    def _continue(self, drop: BaseException | None) -> None:
        """Ask for the data from ``position`` on, of the same version."""
        assert self.version is not None
        if drop is not None:
            delay = self._attempts.failed(drop, self._attempt_bytes, self.position)
            if delay:
                time.sleep(delay)
                self._meter.pause(delay)
        self._attempt_bytes = 0
        # an interrupted answer is continued to its own end (the first one only covers format detection)
        upto = str(self._resp_end - 1) if drop is not None and self._resp_end is not None else ""

        def attempt() -> None:
            extra = {"Range": f"bytes={self.position}-{upto}", **self.version.conditions(continuing=True)}  # type: ignore[union-attr]
            conn, resp = self.client.get(extra)
            if resp.status == 206:
                first, last, total = check_lengths(resp, self.url)
                self.version.check(resp, self.url)  # type: ignore[union-attr]
                if first != self.position:
                    resp.close()
                    conn.close()
                    raise RestartFromZero(f"server resumed at byte {first} instead of byte {self.position}")
                if self.size is not None and total is not None and total != self.size:
                    resp.close()
                    conn.close()
                    raise SourceChanged(f"the file at {self.url} changed size during the import "
                                        f"({self.size} bytes, now {total})")
                self._conn, self._resp, self._resp_end = conn, resp, last + 1
                return
            resp.close()
            conn.close()
            if resp.status == 416 and self.size is None:  # a file of unknown size ends here
                self._end_verified = True
                return
            if resp.status == 416:
                _, _, total = content_range(resp)
                announced = self._announced if self._announced is not None else self.size
                raise SourceError(
                    f"the server's Content-Length {announced} is larger than the file: its data ends at byte "
                    f"{self.position}" + (f" (HTTP 416, file size {total})" if total is not None else " (HTTP 416)")
                    + f" at {self.url}"
                )
            if resp.status == 412:
                raise SourceChanged(f"the file at {self.url} changed during the import")
            raise SourceChanged(
                f"transfer interrupted at byte {self.position}; the server answered the resume with the whole "
                "body (the file changed or ranges are not honoured)"
            )

        self._retrying(attempt)

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Run one request, retrying network errors and server errors (5xx) with back-off."""
        while True:
            try:
                return fn()
            except (LowSpeed, *NETWORK_ERRORS) as e:
                error: BaseException = e
            except TemporaryError as e:
                if isinstance(e, (RestartFromZero, Stalled, NetworkError)):
                    raise
                error = e
            self._close_response()
            delay = self._attempts.failed(error, 0, self.position)
            log.warning("http request failed error=%s retry_in=%.2fs", error, delay)
            time.sleep(delay)
            self._meter.pause(delay)

    def range_reader(self) -> RangeReader:
        """Random reads of the version opened; only when ``capabilities.random_access``."""
        assert self.version is not None and self.size is not None
        return RangeReader(self.client, self.version, self.size)

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._close_response()


class RangeReader:
    """Random reads of one version of the file over one keep-alive connection (one per thread).

    Every answer must be a 206 for exactly the range asked, of the same version (If-Match, ETag and
    Content-Range checked); a read cut by the network continues where it stopped."""

    def __init__(self, client: Client, version: Version, size: int) -> None:
        self.client = client
        self.version = version
        self.size = size
        self.options = client.options
        self.resumes = 0
        self.received = 0
        self._conn: http.client.HTTPConnection | None = None
        self._meter = Meter(self.options)

    def pread(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the bytes at ``offset``."""
        if offset + len(view) > self.size:
            raise SourceError(f"read past the end of the file ({offset + len(view)} > {self.size})")
        attempts = Attempts(self.options, self.client.url)
        got = 0
        self._meter.reset()  # the time between reads is the reader's, not the server's
        while got < len(view):
            start = got
            try:
                resp = self._request(offset + got, offset + len(view) - 1)
                while got < len(view):
                    n = read_some(resp, view[got:])
                    self._meter.add(n)
                    if not n:
                        raise ConnectionError(f"connection closed at byte {offset + got}")
                    got += n
                    self.received += n
                if resp.will_close:
                    self.close()
                continue
            except (LowSpeed, *NETWORK_ERRORS) as e:
                error: BaseException = e
            except TemporaryError as e:
                if isinstance(e, (RestartFromZero, Stalled, NetworkError)):
                    self.close()
                    raise
                error = e
            except BaseException:
                self.close()
                raise
            self.close()
            delay = attempts.failed(error, got - start, offset + got)
            self.resumes += 1
            log.warning("http range read interrupted at=%d error=%s retry_in=%.2fs", offset + got, error, delay)
            if delay:
                time.sleep(delay)
                self._meter.pause(delay)

    def _request(self, first: int, last: int) -> http.client.HTTPResponse:
        extra = {"Range": f"bytes={first}-{last}", **self.version.conditions(continuing=False)}
        if self._conn is not None:
            try:  # a kept-alive connection the server has closed in the meantime is not a failure
                self._conn, resp = self.client.get(extra, self._conn)
            except (http.client.RemoteDisconnected, ConnectionError):
                self._conn, resp = self.client.get(extra)
        else:
            self._conn, resp = self.client.get(extra)
        url = self.client.url
        if resp.status == 206:
            try:
                a, b, total = check_lengths(resp, url)
                self.version.check(resp, url)
            except BaseException:
                self.close()
                raise
            if (a, b) != (first, last) or (total is not None and total != self.size):
                self.close()
                if total is not None and total != self.size:
                    raise SourceChanged(f"the file at {url} changed size during the import ({self.size} bytes, "
                                        f"now {total})")
                raise SourceError(f"the server answered the range {first}-{last} with {a}-{b} at {url}")
            return resp
        self.close()
        if resp.status == 412:
            raise SourceChanged(f"the file at {url} changed during the import (the server refused If-Match)")
        if resp.status == 416:
            raise SourceError(f"the server's Content-Length {self.size} is larger than the file: a range "
                              f"request at byte {first} got HTTP 416 at {url}")
        raise RestartFromZero(f"the server answered a range request with the whole file (HTTP {resp.status}) at "
                              f"{url}: ranges are not honoured")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
