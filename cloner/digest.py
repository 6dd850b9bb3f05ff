"""The volume digest of a source as it reads once written into a larger target (zeros past its end).

A Filesystem target the upload server writes is grown to the target's image size, as an import is; its
digest then covers that size. To compare, the source side computes the digest of its own bytes followed
by zeros up to that size, reading only the source's data extents (the format is ``importer.digest``'s).
"""

from __future__ import annotations

import os

from cloner.copy import data_extents
from importer.digest import BLOCK, combine, leaf, volume_digest, zero_leaf


def padded_digest(path: str, size: int, total: int) -> str:
    """Digest of the first ``size`` bytes of ``path`` followed by zeros up to ``total`` bytes."""
    if total <= size:
        return volume_digest(path, size)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        extents = data_extents(fd, size)
        extents = [(0, size)] if extents is None else extents
        buf = bytearray(BLOCK)
        leaves = []
        for off in range(0, total, BLOCK):
            n = min(BLOCK, total - off)
            have = max(0, min(n, size - off))
            if have == 0 or not any(s < off + have and e > off for s, e in extents):
                leaves.append(zero_leaf(n))
                continue
            view = memoryview(buf)[:n]
            view[:] = bytes(n)
            if os.preadv(fd, [view[:have]], off) != have:
                raise OSError(f"short read at {off} of {path}")
            leaves.append(leaf(view))
        return combine(total, leaves)
    finally:
        os.close(fd)
