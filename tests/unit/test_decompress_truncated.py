"""Every decompressor, and tar, reports a stream that stops before its end instead of yielding a short
image: a cut connection or a truncated file must never pass for the whole data."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import tarfile

import pytest

from importer import archive
from importer.errors import FormatError
from importer.stream import CHUNK, open_decompressor

DATA = bytes(range(256)) * 4096 + b"tail" * 50_000  # 1.2 MB, compressible but not trivially


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readinto(self, buf: memoryview | bytearray) -> int:
        return self._f.readinto(buf)

    def close(self) -> None:
        pass


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def _read_all(kind: str, data: bytes) -> bytes:
    reader = open_decompressor(kind, _Bytes(data))
    out = bytearray()
    buf = bytearray(CHUNK)
    try:
        while n := reader.readinto(buf):
            out += buf[:n]
    finally:
        reader.close()
    return bytes(out)


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "bzip2"])
def test_whole_stream_decodes(kind: str) -> None:
    assert _read_all(kind, _compress(kind, DATA)) == DATA


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "bzip2"])
@pytest.mark.parametrize("keep", [0.5, 0.95, -1])
def test_truncated_stream_is_an_error(kind: str, keep: float) -> None:
    whole = _compress(kind, DATA)
    cut = whole[:-1] if keep == -1 else whole[: int(len(whole) * keep)]
    with pytest.raises(FormatError, match=f"the {kind} stream ends early"):
        _read_all(kind, cut)


def _tar(data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("disk.img")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_truncated_tar_member_is_an_error() -> None:
    whole = _tar(DATA)
    reader = archive.MemberReader(archive.open_stream(_Bytes(whole[: len(whole) // 2])), _Bytes(b""))
    buf = bytearray(CHUNK)
    with pytest.raises(FormatError, match="the tar stream ends early"):
        while reader.readinto(buf):
            pass


def test_truncated_tar_extraction_is_an_error(tmp_path) -> None:
    whole = _tar(DATA)
    with pytest.raises(FormatError, match="the tar stream ends early"):
        archive.extract(_Bytes(whole[: len(whole) // 2]), str(tmp_path / "out"), capacity=None)
