"""The saved state of a streaming qcow2 conversion, so that a new process continues an interrupted
upload at the exact byte of the qcow2 file where the last durable checkpoint was taken.

A state is a small JSON document (where the stream is, the header, the ranges still wanted, the spool's
ranges) and the binary blobs it names (arrays of pending table offsets and cluster keys, a partly read
table, the writer's unwritten window). The file is written atomically and fsynced; the checkpoint that
points at it records its sha256, so a torn or altered state is refused, never half used.

Its size is bounded by what the converter holds in memory anyway: the window (1 MiB), the pending L2
table list (12 bytes a table, at most qemu's 4 Mi L1 entries), the cluster keys of L2 tables read but not
yet streamed past (8 bytes a cluster; for qemu-img's layout one table: 64 KiB with 64 KiB clusters), a
partly read table (at most the L1's 32 MiB) and 16 bytes per range of the spool. For an image qemu-img
wrote, about 1.1 MiB; the spool's data, when the layout needs one, stays in its own file beside it.

Identity: the state carries a chained sha256 of the header and of every L1 and L2 table the converter
read (``chain``), in the order it reads them (the header, the L1, the L2 tables by file offset).
``file_identity`` computes the same value from a local qcow2 file, so a client can declare which image
it sends (``Upload-Image-Id``) and a resume with another image is refused before a byte is used; at the
end of the stream the converter checks that the tables it read are those the declaration names.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

from importer import qcow2_header as q
from importer.errors import FormatError

MAGIC = b"CDI-QCOW2-STATE-1\n"
IDENTITY_PREFIX = "qcow2-tables:sha256:"


class StateError(FormatError):
    """A saved state that cannot be used: the upload must start again from byte 0."""


def encode(meta: dict[str, Any], blobs: list[bytes]) -> bytes:
    meta = {**meta, "blobs": [len(b) for b in blobs]}
    head = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack(">Q", len(head)), head, *blobs])


def decode(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise StateError("the saved state of the interrupted qcow2 upload is not one this version wrote")
    pos = len(MAGIC) + 8
    (length,) = struct.unpack_from(">Q", data, len(MAGIC))
    try:
        meta = json.loads(data[pos:pos + length])
    except ValueError as e:
        raise StateError(f"the saved state of the interrupted qcow2 upload is damaged: {e}") from e
    pos += length
    blobs = []
    for size in meta.pop("blobs"):
        blobs.append(data[pos:pos + size])
        pos += size
    if pos != len(data):
        raise StateError("the saved state of the interrupted qcow2 upload has the wrong length")
    return meta, blobs


def save(path: str, data: bytes) -> str:
    """Write ``data`` durably at ``path``; returns its sha256 (the checkpoint names it)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load(path: str, digest: str | None) -> bytes:
    """The state at ``path`` whose sha256 the checkpoint recorded; anything else is refused."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StateError(f"the saved state of the interrupted qcow2 upload cannot be read: {e}") from e
    if digest is None or hashlib.sha256(data).hexdigest() != digest:
        raise StateError("the saved state of the interrupted qcow2 upload does not match its resume point "
                         "(torn or altered)")
    return data


# -- identity ---------------------------------------------------------------------------------------

def chain(previous: bytes, piece: bytes | bytearray | memoryview) -> bytes:
    """One more table in the identity: sha256(previous || piece)."""
    h = hashlib.sha256(previous)
    h.update(piece)
    return h.digest()


def identity(value: bytes) -> str:
    return IDENTITY_PREFIX + value.hex()


def file_identity(path: str) -> str | None:
    """The identity of the qcow2 image in the local file ``path`` (None for anything else): its header,
    its L1 table and its L2 tables by file offset, chained as the converter reads them."""
    with open(path, "rb") as f:
        head = f.read(2 << 20)
        if not head.startswith(q.MAGIC):
            return None
        try:
            h = q.parse(head, capacity=None)
        except FormatError:
            return None  # the server says what is wrong with it
        value = chain(b"", head[:h.header_end])
        if not h.l1_needed:
            return identity(value)
        f.seek(h.l1_offset)
        l1 = f.read(h.l1_needed * 8)
        value = chain(value, l1)
        entries = struct.unpack(f">{len(l1) // 8}Q", l1[: len(l1) // 8 * 8])
        for offset in sorted(e & q.L1E_OFFSET_MASK for e in entries if e & q.L1E_OFFSET_MASK):
            f.seek(offset)
            value = chain(value, f.read(h.cluster_size))
    return identity(value)
