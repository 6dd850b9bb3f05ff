"""Where an import reads from: one small interface, implementations found by URL scheme.

A source is a sequential ``Reader`` (``readinto``/``close``) that also says what it can do, in its
``capabilities``, once it is open: its size when known, whether it can continue after an interruption
(ranges tied to one version of the file), whether it can be read at random (a remote convert, no
scratch), its content type, and whether the end of its data was proven (a length that was met, a
chunked terminator) rather than assumed from a closed connection. The pipeline plans from these
capabilities, never from the source's class.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from importer.errors import SourceError
from importer.http_options import HttpOptions


@dataclass
class Capabilities:
    size: int | None = None
    resumable: bool = False  # continues after an interruption where it stopped (same version)
    random_access: bool = False  # ``range_export()`` works: byte ranges of one version, verified
    local_path: str | None = None  # a local file qemu-img can open itself
    content_type: str | None = None
    digest: str | None = None  # what names the exact content read (a registry image's manifest digest)
    # the digest of the bytes before this body that the sender declares (a resumed upload's Upload-Prefix-Digest)
    prefix: str | None = None
    # after random reads (a remote convert): proves that what was read is the version meant (a registry
    # layer's digest), raising an ``importer.errors.Error`` otherwise; None when random reads need no proof
    verify: Callable[[], None] | None = None


class RangeReader(Protocol):
    """Random reads of one version of a source (see ``capabilities.random_access``)."""

    resumes: int
    received: int

    def pread(self, view: memoryview, offset: int) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    capabilities: Capabilities  # known once open() returned
    resumes: int  # times the source continued after an interruption
    position: int  # bytes read so far

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        """Start reading; with ``start`` and the ``validator`` of an earlier run, continue that run's
        version at ``start`` and return True, else start at byte 0 and return False."""
        ...

    def readinto(self, buf: memoryview | bytearray) -> int: ...

    def close(self) -> None: ...

    @property
    def validator(self) -> str | None:
        """What identifies the version read (ETag or Last-Modified), for a later run to continue it."""
        ...

    def range_reader(self) -> RangeReader:
        """A reader of byte ranges of the same version, one per thread."""
        ...

    @property
    def end_verified(self) -> bool:
        """After the last read: the data is known to be complete (not just a closed connection)."""
        ...


def scheme_of(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme
    return "file" if scheme == "" or len(scheme) == 1 else scheme  # a path, or a Windows drive letter


def opener(url: str) -> Callable[[str, HttpOptions], Source]:
    """The constructor of the source for ``url``'s scheme; ``SourceError`` for an unsupported one."""
    scheme = scheme_of(url)
    if scheme in ("http", "https"):
        from importer.sources.http import HttpSource  # not loaded for blank and local jobs

        def http_or_s3(u: str, options: HttpOptions) -> Source:
            if options.s3:
                from importer.sources.s3 import S3Source

                return S3Source(u, options)
            return HttpSource(u, options)

        return http_or_s3
    if scheme == "docker":
        from importer.sources.registry import RegistrySource

        return RegistrySource
    if scheme == "file":
        from importer.sources.file import FileSource

        return lambda u, _options: FileSource.from_url(u)
    raise SourceError(f"unsupported source {url!r}: use an http(s) URL, a docker:// image, a file:// URL or a path")
