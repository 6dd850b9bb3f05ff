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

Identity: besides the image's size, the point records the digest of every byte of the file received
up to it (``Prefix``: the header, the tables seen and the data), so a resume must prove it sends the
rest of that same file: the client sends ``importer.digest.volume_digest`` of its file's first
``offset`` bytes, and another image (even one whose header and tables are the same) is refused before
a byte of it is used.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
from typing import Any

from importer import digest
from importer.errors import FormatError

MAGIC = b"CDI-QCOW2-STATE-1\n"


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


def versioned(path: str, digest: str) -> str:
    """Where the state of digest ``digest`` lives: one file per state, so the point saved after it never
    names a state a kill left half-replaced (the point and its state are two files, not one write)."""
    return f"{path}.{digest[:16]}"


def save(path: str, data: bytes) -> str:
    """Write ``data`` durably beside ``path`` under its digest; returns its sha256 (the checkpoint names
    it). The state the previous point names stays until ``prune`` after the new point is saved."""
    digest = hashlib.sha256(data).hexdigest()
    final = versioned(path, digest)
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return digest


def prune(path: str, keep: str | None) -> None:
    """Remove every saved state beside ``path`` but the one of digest ``keep`` (None: all of them)."""
    for name in glob.glob(glob.escape(path) + ".*"):
        if keep is None or name != versioned(path, keep):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass


def load(path: str, digest: str | None) -> bytes:
    """The state beside ``path`` whose sha256 the checkpoint recorded; anything else is refused."""
    if digest is None:
        raise StateError("the resume point of the interrupted qcow2 upload names no saved state")
    try:
        with open(versioned(path, digest), "rb") as f:
            data = f.read()
    except OSError as e:
        raise StateError(f"the saved state of the interrupted qcow2 upload cannot be read: {e}") from e
    if hashlib.sha256(data).hexdigest() != digest:
        raise StateError("the saved state of the interrupted qcow2 upload does not match its resume point "
                         "(torn or altered)")
    return data


# -- what was received ----------------------------------------------------------------------------

class Prefix:
    """The digest of the file's bytes received so far, as ``importer.digest.volume_digest`` takes it
    over the first ``pos`` bytes of the file (1 MiB blocks): a client resuming at ``pos`` proves with it
    that it sends the rest of the same file (``Upload-Prefix-Digest``). 32 bytes a MiB, and the bytes
    of the block under way (none when checkpoints fall on whole MiB, as the converter's chunks do)."""

    def __init__(self, leaves: bytes = b"", partial: bytes = b"") -> None:
        self.leaves = bytearray(leaves)
        self.partial = bytearray(partial)
        self.size = len(self.leaves) // 32 * digest.BLOCK + len(self.partial)

    def update(self, view: memoryview) -> None:
        self.size += len(view)
        if self.partial:
            take = min(len(view), digest.BLOCK - len(self.partial))
            self.partial += view[:take]
            view = view[take:]
            if len(self.partial) == digest.BLOCK:
                self.leaves += hashlib.sha256(self.partial).digest()
                self.partial = bytearray()
        whole = len(view) // digest.BLOCK * digest.BLOCK
        # plain SHA-256 (a zero block's hash is the same): comparing a memoryview with zeros is slow
        for at in range(0, whole, digest.BLOCK):
            self.leaves += hashlib.sha256(view[at:at + digest.BLOCK]).digest()
        if whole < len(view):
            self.partial += view[whole:]

    def digest(self) -> str:
        tail = [hashlib.sha256(self.partial).digest()] if self.partial else []
        return digest.combine(self.size, bytes(self.leaves) + b"".join(tail))
