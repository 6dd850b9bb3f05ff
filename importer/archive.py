"""tar handling: pick the disk image out of a tar (contentType kubevirt), or extract a whole tar into a
directory safely (contentType archive).

Extraction refuses absolute paths, ``..`` components, links that point outside the directory, and
device files and FIFOs, with a message naming the member; the total size is held to the capacity.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from typing import IO, Any, cast

from importer.errors import CapacityExceeded, FormatError, UnsafeImage
from importer.stream import CHUNK, Reader


class _TarInput:
    """What ``tarfile`` in stream mode wants: ``read(n)``."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(CHUNK if n < 0 else n)
        view = memoryview(buf)
        have = 0
        while have < len(buf):  # tarfile treats a short read as the end of the stream
            got = self.reader.readinto(view[have:])
            if not got:
                break
            have += got
        return bytes(buf[:have])


def _tar_error(e: tarfile.TarError) -> FormatError:
    if "unexpected end" in str(e):
        return FormatError("the tar stream ends early: the file is truncated, or the connection was cut "
                           "before its end")
    return FormatError(f"corrupt tar archive: {e}")


def open_stream(reader: Reader) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=cast(IO[bytes], _TarInput(reader)), mode="r|", bufsize=CHUNK)
    except tarfile.TarError as e:
        raise FormatError(f"corrupt tar archive: {e}") from e


class MemberReader:
    """The one regular file of a tar stream, as a Reader (a second one is refused at its end)."""

    def __init__(self, tar: tarfile.TarFile, reader: Reader) -> None:
        self._tar = tar
        self._reader = reader
        member = None
        try:
            for m in tar:
                if m.isfile():
                    member = m
                    break
        except tarfile.TarError as e:
            raise FormatError(f"corrupt tar archive: {e}") from e
        if member is None:
            raise FormatError("the tar archive contains no file: expected one disk image")
        self.name = member.name
        self.size = member.size
        f = tar.extractfile(member)
        assert f is not None
        self._file = f
        self._checked = False

    def readinto(self, buf: memoryview | bytearray) -> int:
        try:
            n = int(cast(Any, self._file).readinto(buf))
            if n == 0 and len(buf):
                self._refuse_more()
            return n
        except tarfile.TarError as e:
            raise _tar_error(e) from e

    def _refuse_more(self) -> None:
        """At the end of the disk image: CDI expects one disk in a tar, so a second regular file means
        the import would silently pick one of several disks."""
        if self._checked:
            return
        self._checked = True
        others = []
        while (m := self._tar.next()) is not None:  # next(), not iteration: that starts over at the first
            if m.isfile():
                others.append(m.name)
        if others:
            raise FormatError(f"the archive holds more than one disk image: {', '.join([self.name, *others])}")

    def close(self) -> None:
        self._tar.close()
        self._reader.close()


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafeImage(f"tar member {name!r} has an absolute path; refused")
    if ".." in parts:
        raise UnsafeImage(f"tar member {name!r} contains '..'; refused")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeImage(f"tar member {name!r} is a device file or FIFO; refused")
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise UnsafeImage(f"tar member {name!r} links to {target!r}, outside the volume; refused")


def extract(reader: Reader, dest: str, *, capacity: int | None) -> tuple[int, int]:
    """Extract every member into ``dest``; returns (files, bytes). Raises before writing a bad member."""
    os.makedirs(dest, exist_ok=True)
    files = total = 0
    tar = open_stream(reader)
    try:
        for member in tar:
            _check_member(member)
            if member.isfile():
                total += member.size
                if capacity is not None and total > capacity:
                    raise CapacityExceeded(
                        f"archive content ({total} bytes so far) is larger than the volume capacity "
                        f"{capacity} bytes"
                    )
                files += 1
            try:
                tar.extract(member, dest, filter="data")
            except tarfile.FilterError as e:
                raise UnsafeImage(f"tar member {member.name!r} refused: {e}") from e
    except tarfile.TarError as e:
        raise _tar_error(e) from e
    finally:
        tar.close()
    return files, total
