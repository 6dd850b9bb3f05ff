"""The sparse writer at our own seam: a real file in tmp_path, checked with SEEK_DATA."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from importer.errors import CapacityExceeded
from importer.target import BLOCK, SparseWriter, Target
from tests.support.images import data_extents


def _writer(path: Path, capacity: int | None) -> SparseWriter:
    return SparseWriter(Target(str(path), "file", capacity, False))


def test_zero_blocks_become_holes(tmp_path: Path) -> None:
    path = tmp_path / "out"
    w = _writer(path, None)
    chunk = bytearray(1 << 20)
    chunk[BLOCK * 3: BLOCK * 4] = b"\x01" * BLOCK
    chunk[-1] = 7
    w.write(chunk)
    w.write(bytes(1 << 20))
    assert w.finish() == 2 << 20
    w.close()
    assert path.stat().st_size == 2 << 20
    assert data_extents(path) == [(BLOCK * 3, BLOCK * 4), ((1 << 20) - BLOCK, 1 << 20)]
    data = path.read_bytes()
    assert data[: 1 << 20] == bytes(chunk)
    assert data[1 << 20:] == bytes(1 << 20)


def test_capacity_is_never_exceeded(tmp_path: Path) -> None:
    path = tmp_path / "out"
    w = _writer(path, 1 << 20)
    w.write(b"\x01" * (1 << 20))
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity 1048576"):
        w.write(b"\x01" * 4096)
    w.close()
    assert path.stat().st_size <= 1 << 20


def test_fixed_vhd_footer_past_capacity_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "out"
    w = _writer(path, 1 << 20)
    footer = bytearray(512)
    footer[:8] = b"conectix"
    footer[48:56] = struct.pack(">Q", 1 << 20)
    footer[60:64] = struct.pack(">I", 2)
    w.write(b"\x02" * (1 << 20) + bytes(footer))
    assert w.finish() == 1 << 20
    assert w.vhd_fixed
    w.close()
    assert path.read_bytes() == b"\x02" * (1 << 20)


def test_short_tail_past_capacity_that_is_no_footer_fails(tmp_path: Path) -> None:
    w = _writer(tmp_path / "out", 1 << 20)
    w.write(b"\x02" * ((1 << 20) + 512))
    with pytest.raises(CapacityExceeded):
        w.finish()
    w.close()


def test_unaligned_tail_kept(tmp_path: Path) -> None:
    path = tmp_path / "out"
    w = _writer(path, None)
    w.write(b"\x03" * 1000)
    assert w.finish() == 1000
    w.close()
    assert path.read_bytes() == b"\x03" * 1000
    assert os.path.getsize(path) == 1000


@pytest.mark.parametrize("capacity", [None, 5 << 20, (5 << 20) + 4096])
def test_digest_taken_while_writing_equals_digest_of_the_file(tmp_path: Path, capacity: int | None) -> None:
    from importer.digest import volume_digest

    path = tmp_path / "out"
    w = SparseWriter(Target(str(path), "file", capacity, False), digest=True)
    block = bytearray(1 << 20)
    block[100] = 1
    w.write(block)
    w.write(bytes(1 << 20))
    w.write(b"\x05" * 1000 + bytes((1 << 20) - 1000))
    w.write(b"\x07" * 5000)  # a last partial block
    w.finish()
    w.close()
    assert w.digest is not None
    assert w.digest == volume_digest(str(path))


def test_digest_of_resumed_write_reads_what_was_written(tmp_path: Path) -> None:
    from importer.digest import volume_digest

    path = tmp_path / "out"
    first = SparseWriter(Target(str(path), "file", None, False), digest=True)
    first.write(b"\x01" * (1 << 20))
    first.sync()
    first.close()
    second = SparseWriter(Target(str(path), "file", None, False), digest=True, resume_at=1 << 20)
    second.write(b"\x02" * (1 << 20))
    second.finish()
    second.close()
    assert path.read_bytes() == b"\x01" * (1 << 20) + b"\x02" * (1 << 20)
    assert second.digest == volume_digest(str(path))
