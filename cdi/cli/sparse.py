"""``cdi image-upload --sparse``: the data extents of a local image, read where they lie in the file.

``qemu-img map`` lists which parts of the disk hold data and, for raw and uncompressed qcow2 images,
where that data lies in the file, so the client reads guest data straight from the file and sends
only it (the upload server fills the gaps with zeros, which never cross the wire, and a qcow2 needs no
conversion on the server). Images this cannot read (compressed clusters, backing files, external data
files, other formats) are refused with a message saying to upload without ``--sparse``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uploadproxy.body import EXTENT_HEADER

QEMU_IMG = os.environ.get("CDI_QEMU_IMG", "qemu-img")


class SparseError(Exception):
    """The image cannot be sent as extents."""


@dataclass(frozen=True)
class Extent:
    start: int  # offset in the disk
    length: int
    offset: int  # offset in the file


def _json(*args: str) -> object:
    proc = subprocess.run([QEMU_IMG, *args, "--output=json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SparseError(f"{QEMU_IMG} {args[0]} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def _has_compressed_clusters(image: Path) -> bool:
    """Whether any L2 entry of the qcow2 marks a compressed cluster (``qemu-img map`` reports an offset
    for those too, pointing at compressed bytes)."""
    with open(image, "rb") as f:
        head = f.read(48)
        cluster = 1 << struct.unpack(">I", head[20:24])[0]
        l1_size, l1_offset = struct.unpack(">I", head[36:40])[0], struct.unpack(">Q", head[40:48])[0]
        f.seek(l1_offset)
        for entry in struct.unpack(f">{l1_size}Q", f.read(8 * l1_size)):
            l2 = entry & 0x00FFFFFFFFFFFE00
            if l2:
                f.seek(l2)
                if any(e & (1 << 62) for e in struct.unpack(f">{cluster // 8}Q", f.read(cluster))):
                    return True
    return False


def data_extents(image: Path) -> tuple[int, list[Extent]]:
    """(virtual size, data extents in disk order, adjacent ones merged)."""
    info = _json("info", str(image))
    assert isinstance(info, dict)
    fmt = str(info.get("format"))
    if fmt not in ("raw", "qcow2"):
        raise SparseError(f"--sparse reads raw and qcow2 images, not {fmt}: upload without --sparse")
    if info.get("backing-filename") or (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise SparseError("the image has a backing file or an external data file: upload without --sparse")
    if info.get("encrypted") or (fmt == "qcow2" and _has_compressed_clusters(image)):
        raise SparseError("the image has compressed or encrypted clusters: upload without --sparse")
    out: list[Extent] = []
    entries = _json("map", "-f", fmt, str(image))
    assert isinstance(entries, list)
    for e in entries:
        if not e.get("data") or e.get("zero"):
            continue
        if "offset" not in e or e.get("depth", 0) != 0:
            raise SparseError("the image has compressed or encrypted clusters: upload without --sparse")
        ext = Extent(int(e["start"]), int(e["length"]), int(e["offset"]))
        last = out[-1] if out else None
        if last and last.start + last.length == ext.start and last.offset + last.length == ext.offset:
            out[-1] = Extent(last.start, last.length + ext.length, last.offset)
        else:
            out.append(ext)
    return int(info["virtual-size"]), out


def body_length(extents: list[Extent]) -> int:
    return sum(EXTENT_HEADER.size + e.length for e in extents)


class _ExtentData:
    """The data of the extents, one after the other, as one stream (what ``ReadAhead`` reads ahead)."""

    def __init__(self, fd: int, extents: list[Extent], image: Path) -> None:
        self.fd, self.image = fd, image
        self._todo = [(e.offset, e.length) for e in extents]
        self._i = 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        while self._i < len(self._todo):
            at, left = self._todo[self._i]
            if left == 0:
                self._i += 1
                continue
            n = os.preadv(self.fd, [memoryview(buf)[: min(len(buf), left)]], at)
            if n <= 0:
                raise SparseError(f"{self.image} ends before its data at {at}")
            self._todo[self._i] = (at + n, left - n)
            return n
        return 0

    def close(self) -> None:
        pass


def send_extents(image: Path, extents: list[Extent], send: Callable[[memoryview], None],
                 advance: Callable[[int], None], *, chunk: int = 1 << 20) -> None:
    """Send each extent's header and data; ``advance`` gets the disk bytes covered (gaps included).
    A thread reads the file ahead while the data before it is sent, so disk and network overlap."""
    from importer.stream import ReadAhead

    buf = bytearray(chunk)
    pos = 0
    with open(image, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        ahead = ReadAhead(_ExtentData(f.fileno(), extents, image), chunk=chunk, depth=8)
        ahead.start()
        try:
            for e in extents:
                advance(e.start - pos)
                send(memoryview(EXTENT_HEADER.pack(e.start, e.length)))
                left = e.length
                while left:
                    n = ahead.readinto(memoryview(buf)[: min(chunk, left)])
                    if n <= 0:
                        raise SparseError(f"{image} ends before the data of its extent at {e.start}")
                    send(memoryview(buf)[:n])
                    advance(n)
                    left -= n
                pos = e.start + e.length
        finally:
            ahead.close()
