"""A local file (a path or a ``file://`` URL): sequential reads, and qemu-img may open it directly."""

from __future__ import annotations

import os
import urllib.parse

from importer.errors import SourceError
from importer.sources import Capabilities, RangeReader


class FileSource:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except FileNotFoundError as e:
            raise SourceError(f"source file {path} does not exist") from e
        except IsADirectoryError as e:
            raise SourceError(f"source {path} is a directory, not an image file") from e
        except PermissionError as e:
            raise SourceError(f"source file {path} is not readable: permission denied") from e
        self.size: int | None = os.fstat(self._f.fileno()).st_size
        self.capabilities = Capabilities(size=self.size, local_path=self.path)
        self.position = 0
        self.resumes = 0
        os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    @classmethod
    def from_url(cls, url: str) -> FileSource:
        parts = urllib.parse.urlsplit(url)
        return cls(urllib.parse.unquote(parts.path) if parts.scheme == "file" else url)

    @property
    def end_verified(self) -> bool:
        return True

    @property
    def validator(self) -> str | None:
        return None

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        return False  # opened by the constructor; a local file is read again from the start

    def range_reader(self) -> RangeReader:
        raise NotImplementedError("qemu-img opens a local file itself")

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = self._f.readinto(buf) or 0
        self.position += n
        return n

    def close(self) -> None:
        self._f.close()
