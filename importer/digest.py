"""Volume digest: a content checksum of a raw volume that does not depend on how it was written.

The volume is cut into 1 MiB blocks; each block's SHA-256 is taken (all-zero blocks, including holes
found with SEEK_HOLE, use a precomputed hash and are never read); the digest is the SHA-256 of the
volume size and the block hashes in order. So the same disk imported from qcow2, raw.xz or raw, sparse
or not, gives the same digest, and a 100 GiB sparse volume with 1 GiB of data costs about 1 GiB of reads
(holes cost no reads and no memory: their block hashes are fed to the root in large pieces).
Written as ``sha256-1m:<hex>``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BLOCK = 1 << 20
PREFIX = "sha256-1m"
_ZERO = bytes(BLOCK)
_ZERO_LEAF = hashlib.sha256(_ZERO).digest()
BATCH = 256  # data blocks hashed per batch


def zero_leaf(n: int) -> bytes:
    return _ZERO_LEAF if n == BLOCK else hashlib.sha256(_ZERO[:n]).digest()


def leaf(view: memoryview | bytes) -> bytes:
    """The hash of one block (all-zero blocks cost a memcmp, not a hash)."""
    n = len(view)
    if n == BLOCK and bytes(view[:64]) == _ZERO[:64] and view == _ZERO:
        return _ZERO_LEAF
    return hashlib.sha256(view).digest()


def combine(size: int, leaves: list[bytes] | bytes | bytearray) -> str:
    """The digest of a volume of ``size`` bytes from its block hashes, in order (a list, or the hashes
    concatenated); blocks past the hashes given up to ``size`` are zeros."""
    root = hashlib.sha256(struct.pack(">Q", size))
    joined = b"".join(leaves) if isinstance(leaves, list) else leaves
    root.update(joined)
    add_zero_leaves(root, len(joined) // len(_ZERO_LEAF) * BLOCK, size)
    return f"{PREFIX}:{root.hexdigest()}"


_ZERO_RUN = _ZERO_LEAF * 32768  # the hashes of 32 GiB of zero blocks, fed to the root at once


def add_zero_leaves(root: Any, start: int, end: int) -> None:
    """Feed the hashes of the zero blocks from ``start`` (block-aligned) to ``end`` to ``root``, in big
    pieces: a hole costs no Python work per block and no memory."""
    whole = max(0, (end - start) // BLOCK)
    while whole:
        k = min(whole, 32768)
        root.update(_ZERO_RUN[: k * len(_ZERO_LEAF)])
        whole -= k
    rest = (end - start) % BLOCK if end > start else 0
    if rest:
        root.update(zero_leaf(rest))


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) ranges that may hold data, block-aligned; the whole file where SEEK_DATA fails."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == 6:  # ENXIO: no data past pos
                return
            yield (pos, size)
            return
        yield (start // BLOCK * BLOCK, min(size, -(-end // BLOCK) * BLOCK))
        pos = end


def volume_digest(path: str, size: int | None = None, *, threads: int = 2) -> str:
    """Digest of the first ``size`` bytes of the file or block device at ``path`` (default: all).

    Data blocks are read and hashed by ``threads`` threads (preadv and sha256 release the GIL), holes
    are never read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    local = threading.local()

    def data_leaf(offset: int, n: int) -> bytes:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(BLOCK)
        view = memoryview(buf)[:n]
        if os.preadv(fd, [view], offset) != n:
            raise OSError(f"short read at {offset} of {path}")
        if n == BLOCK and buf.startswith(_ZERO):
            return _ZERO_LEAF
        return hashlib.sha256(view).digest()

    try:
        if size is None:
            size = os.lseek(fd, 0, os.SEEK_END)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        root = hashlib.sha256(struct.pack(">Q", size))
        pos = 0
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for start, end in _data_extents(fd, size):
                start = max(start, pos)
                if start >= end:
                    continue
                add_zero_leaves(root, pos, start)  # a hole: known zeros, never read
                # data blocks in bounded batches: memory does not grow with the extent
                for batch in range(start, end, BATCH * BLOCK):
                    stop = min(end, batch + BATCH * BLOCK)
                    offsets = range(batch, stop, BLOCK)
                    for leaf_hash in pool.map(lambda off: data_leaf(off, min(BLOCK, size - off)), offsets):
                        root.update(leaf_hash)
                pos = end
            add_zero_leaves(root, pos, size)
        return f"{PREFIX}:{root.hexdigest()}"
    finally:
        os.close(fd)
