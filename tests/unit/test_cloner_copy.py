"""The clone worker's same-node copies on real files: content, holes kept, the method chosen."""

from __future__ import annotations

import os
from pathlib import Path

from cloner.copy import BLOCK, clone, data_extents
from importer.digest import volume_digest


def make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for i, off in enumerate(range(0, size, 4 * BLOCK)):
            f.seek(off)
            f.write(os.urandom(BLOCK // 2) + bytes([i % 255 + 1]) * (BLOCK // 2))


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_sparse_copy_keeps_content_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    make_sparse(src, 16 * BLOCK)
    method = clone(str(src), str(dst), 16 * BLOCK, allow_reflink=False)
    assert method == "sparse"
    assert dst.stat().st_size == src.stat().st_size
    assert volume_digest(str(dst)) == volume_digest(str(src))
    assert allocated(dst) <= allocated(src) + BLOCK  # the holes stayed holes


def test_fixed_size_target_is_not_truncated_and_its_old_data_is_zeroed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "block.img"
    make_sparse(src, 8 * BLOCK)
    dst.write_bytes(b"\xff" * (12 * BLOCK))  # a Block volume holding earlier data, bigger than the source
    method = clone(str(src), str(dst), 8 * BLOCK, fixed_target=True)
    assert method == "sparse"
    assert dst.stat().st_size == 12 * BLOCK
    assert volume_digest(str(dst), 8 * BLOCK) == volume_digest(str(src))
    fd = os.open(dst, os.O_RDONLY)
    try:
        assert data_extents(fd, 8 * BLOCK) is not None
    finally:
        os.close(fd)


def test_reflink_is_refused_on_a_filesystem_without_it_and_the_copy_falls_back(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    make_sparse(src, 4 * BLOCK)
    method = clone(str(src), str(dst), 4 * BLOCK)
    fs = os.popen(f"stat -f -c %T {tmp_path}").read().strip()
    assert method == ("reflink" if fs in ("xfs", "btrfs") else "sparse"), fs
    assert volume_digest(str(dst)) == volume_digest(str(src))
