from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from importer.digest import BLOCK, volume_digest


def _reference(data: bytes) -> str:
    root = hashlib.sha256(struct.pack(">Q", len(data)))
    for i in range(0, len(data), BLOCK):
        root.update(hashlib.sha256(data[i: i + BLOCK]).digest())
    return "sha256-1m:" + root.hexdigest()


def test_digest_matches_definition_sparse_and_dense(tmp_path: Path) -> None:
    data = bytearray(5 * BLOCK + 123)
    data[BLOCK + 5] = 1
    data[-1] = 2
    dense = tmp_path / "dense"
    dense.write_bytes(bytes(data))
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(len(data))
        f.seek(BLOCK + 5)
        f.write(b"\x01")
        f.seek(len(data) - 1)
        f.write(b"\x02")
    assert volume_digest(str(dense)) == volume_digest(str(sparse)) == _reference(bytes(data))


def test_digest_differs_for_one_bit_and_for_size(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(bytes(2 * BLOCK))
    b = tmp_path / "b"
    b.write_bytes(bytes(2 * BLOCK - 1) + b"\x01")
    c = tmp_path / "c"
    c.write_bytes(bytes(2 * BLOCK + 1))
    assert len({volume_digest(str(p)) for p in (a, b, c)}) == 3
    assert volume_digest(str(c), 2 * BLOCK) == volume_digest(str(a))
