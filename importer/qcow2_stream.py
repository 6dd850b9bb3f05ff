"""qcow2 -> raw from a stream read once, front to back: no seeking back, scratch only where the layout
forces it.

A qcow2 file is tables (header, refcount table, L1, L2) and clusters. qemu-img writes each table
before the clusters it maps, so a reader that remembers where the tables it has seen point can place
every cluster as it streams past: the header says where the L1 table is, the L1 where the L2 tables
are, each L2 where its clusters are and at which guest offset they belong.

What the stream offers next is matched against the *wanted* ranges (``_Need``): tables to parse,
clusters to write, compressed clusters to inflate, refcount blocks to pass over. Bytes nobody wants
yet may still be wanted by a table that comes later (a resized image keeps its L1 at the end, a
snapshot moves tables): until the L1 and every L2 table it names have been read, such bytes go to a
sparse spool file in scratch space, at their offset, and a table that turns up later takes its
ranges from there. Only that part of an image costs scratch; for qemu-img's own layout it is none.
Once every table is known, unwanted bytes (leaked clusters, snapshot data) are dropped.

Refusals: what ``qcow2_header`` refuses; a table or cluster that is not aligned as qemu requires, a
zero flag in a version 2 image, invalid subcluster bitmaps, a normal cluster used twice, a range
wanted after it passed while the spool was not keeping it, anything past the end of the file (a
truncated image: qemu would read zeros), a compressed cluster that does not inflate to exactly one
cluster. Each is a ``FormatError`` that says where.

Memory: one chunk, the L1 entries the disk needs (at most 32 MiB, qemu's limit), 8 bytes per data
cluster of an L2 table read whose clusters have not streamed past yet (for qemu-img's layout, at
most one L2 table's worth: 64 KiB for 64 KiB clusters), one object per allocated L2 table not yet
read, and 32 bytes of digest per MiB of disk before the last data cluster.

Resume: with ``on_checkpoint``, every ``interval`` bytes of the file (at a chunk's end) the volume and
the spool are made durable and the walker's whole state goes to ``on_checkpoint(offset, state, prefix)``
(``qcow2_resume`` says what it holds and its bound; ``prefix``: the digest of the file's bytes up to
``offset``); ``resume`` takes such a state up in a new process whose ``reader`` starts at that offset of
the same file.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import struct
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from importer import qcow2_header as q
from importer import qcow2_resume
from importer.errors import FormatError
from importer.qcow2_output import GuestWriter, Spool
from importer.stream import CHUNK, Reader, read_full
from importer.target import Target

log = logging.getLogger(__name__)



@dataclass
class StreamResult:
    virtual_size: int
    digest: str | None  # the volume digest when the clusters came in guest order, else None
    scratch_bytes: int  # the spool's peak allocation
    data_clusters: int
    in_order: bool


Checkpoint = Callable[[int, bytes, str], None]


@dataclass
class Durable:
    """How a conversion keeps resume points: ``on_checkpoint(offset, state, prefix)`` every ``interval``
    bytes of the file, the spool in ``spool_path``; ``resume``: the state to continue from (its reader
    starts at the state's offset) and ``prefix``: the digest of the file's first ``offset`` bytes the
    sender declares (``qcow2_resume.Prefix``), which must be the state's."""

    on_checkpoint: Checkpoint | None = None
    interval: int = 0
    spool_path: str | None = None
    resume: bytes | None = None
    prefix: str | None = None


def convert_stream(reader: Reader, target: Target, *, scratch_parent: str | None, device_zeroed: bool = False,
                   spool_limit: int | None = None, durable: Durable | None = None,
                   chunk: int = CHUNK) -> StreamResult:
    """Convert the qcow2 image read from ``reader`` (from its first byte to its end) into ``target``.

    For any sequential source: an upload body, an http body without ranges, a decompressed registry
    layer. ``scratch_parent``: where a spool directory is made if the layout needs one
    (None: nowhere, and such a layout raises ``ScratchSpaceRequired``);
    ``spool_limit``: its bound in bytes (default: the capacity plus a tenth plus 64 MiB, as the
    scratch path allows). The target is complete and sized when this returns; on an error it is
    partly written and the caller removes it."""
    if spool_limit is None and target.capacity is not None:
        spool_limit = target.capacity + target.capacity // 10 + (64 << 20)
    durable = durable or Durable()
    with Spool(scratch_parent, spool_limit, path=durable.spool_path) as spool:
        walker = _Walker(reader, target, spool, device_zeroed=device_zeroed, durable=durable, chunk=chunk)
        return walker.run()


class _Need:
    """A range of the file some table wants; ``start`` moves as its bytes arrive."""

    plain = True  # a table or a normal cluster: no other table or cluster may use its bytes

    def __init__(self, start: int, end: int, *, optional: bool = False) -> None:
        self.start, self.end = start, end
        self.optional = optional  # refcount metadata: passed over when present, never needed

    @property
    def piece_end(self) -> int:
        return self.end

    def take(self, view: memoryview) -> None:
        self.start += len(view)

    @property
    def done(self) -> bool:
        return self.start >= self.end


class _Table(_Need):
    def __init__(self, start: int, length: int, on_done: Callable[[bytes], None], what: str, *,
                 optional: bool = False) -> None:
        super().__init__(start, start + length, optional=optional)
        self.buf = bytearray()
        self.on_done = on_done
        self.what = what

    def take(self, view: memoryview) -> None:
        self.buf += view
        super().take(view)
        if self.done:
            self.on_done(bytes(self.buf))
            self.buf = bytearray()


class _Tables(_Need):
    """The L2 tables the L1 table names, in file order: one need for all of them (16 bytes a table),
    so a hostile L1 naming millions of tables costs no object per table."""

    def __init__(self, offsets: array[int], indexes: array[int], size: int,
                 on_table: Callable[[int, bytes], None]) -> None:
        super().__init__(offsets[0], offsets[0] + size)
        self.offsets, self.indexes, self.size, self.on_table = offsets, indexes, size, on_table
        self.i = 0
        self.buf = bytearray()
        self.what = "an L2 table"

    @property
    def piece_end(self) -> int:
        return self.offsets[self.i] + self.size

    @property
    def done(self) -> bool:
        return self.i >= len(self.offsets)

    def take(self, view: memoryview) -> None:
        self.buf += view
        self.start += len(view)
        if self.start >= self.piece_end:
            data, self.buf = bytes(self.buf), bytearray()
            index = self.indexes[self.i]
            self.i += 1
            if self.i < len(self.offsets):
                self.start = self.offsets[self.i]
            self.on_table(index, data)


class _Snapshots(_Need):
    """The snapshot table, checked entry by entry as it passes (its length is known only then). Each
    entry is padded to 8 bytes, except that the file may end before the last entry's padding."""

    def __init__(self, h: q.Header) -> None:
        super().__init__(h.snapshots_offset, h.snapshots_offset + 40)
        self.h = h
        self.left = h.nb_snapshots
        self.entry_start = h.snapshots_offset
        self.buf = bytearray()
        self.what = "snapshot table"

    def take(self, view: memoryview) -> None:
        self.buf += view
        self.start += len(view)
        while self.start >= self.end and self.left:
            length = q.snapshot_entry(bytes(self.buf[:40]), version=self.h.version, cluster_size=self.h.cluster_size)
            if self.end < self.entry_start + length:
                self.end = self.entry_start + length
                continue
            if self.end - self.h.snapshots_offset > q.MAX_SNAPSHOT_TABLE:
                raise FormatError("qcow2 snapshot table is too large")
            self.left -= 1
            self.entry_start += (length + 7) // 8 * 8
            self.buf = bytearray()
            if self.left:  # the padding before the next entry is not wanted
                self.start, self.end = self.entry_start, self.entry_start + 40

    @property
    def done(self) -> bool:
        return not self.left


class _Compressed(_Need):
    plain = False  # compressed clusters share sectors with each other

    def __init__(self, start: int, length: int, guest: int, walker: _Walker) -> None:
        super().__init__(start, start + length)
        self.origin = start
        self.buf = bytearray()
        self.guest = guest
        self.walker = walker

    def take(self, view: memoryview) -> None:
        self.buf += view
        super().take(view)
        if self.done:
            self.walker.inflate(self)


class _Clusters(_Need):
    """The normal clusters of one L2 table in file order: keys are ``host | index`` (hosts are
    cluster-aligned and an index is smaller than a cluster)."""

    def __init__(self, keys: array[int], guest_base: int, cluster: int, writer: GuestWriter,
                 masks: dict[int, int]) -> None:
        self.keys = keys
        self.i = 0
        self.cluster = cluster
        self.guest_base = guest_base
        self.writer = writer
        self.masks = masks  # index -> allocated-subcluster bitmap, for partly allocated clusters
        host = keys[0] & ~(cluster - 1)
        super().__init__(host, keys[-1] & ~(cluster - 1))
        self.host = host

    @property
    def piece_end(self) -> int:
        return self.host + self.cluster

    @property
    def done(self) -> bool:
        return self.i >= len(self.keys)

    def data_end(self) -> int:
        """Where the allocated data of the current cluster ends in the file: subclusters that are
        not allocated need not be in the file at all (qemu leaves them out at its end)."""
        mask = self.masks.get(self.keys[self.i] & (self.cluster - 1))
        return self.host + (self.cluster if mask is None else mask.bit_length() * (self.cluster // 32))

    def take(self, view: memoryview) -> None:
        index = self.keys[self.i] & (self.cluster - 1)
        into = self.start - self.host
        guest = self.guest_base + index * self.cluster + into
        mask = self.masks.get(index)
        if mask is None:
            self.writer.put(guest, view)
        else:
            sub = self.cluster // 32
            for k in range(into // sub, -(-(into + len(view)) // sub)):
                if mask >> k & 1:
                    a, b = max(into, k * sub), min(into + len(view), (k + 1) * sub)
                    self.writer.put(guest - into + a, view[a - into:b - into])
        self.start += len(view)
        if self.start >= self.piece_end:
            self.i += 1
            if self.i < len(self.keys):
                self.host = self.keys[self.i] & ~(self.cluster - 1)
                self.start = self.host


class _Walker:
    def __init__(self, reader: Reader, target: Target, spool: Spool, *, device_zeroed: bool,
                 durable: Durable, chunk: int = CHUNK) -> None:
        self.reader = reader
        self.durable = durable
        self.chunk = chunk
        self.received = qcow2_resume.Prefix()  # the digest of the file's bytes so far (checkpoints only)
        self.target = target
        self.spool = spool
        self.device_zeroed = device_zeroed
        self.heap: list[tuple[int, int, _Need]] = []
        self.seq = itertools.count()
        self.pos = 0  # the stream offset of the chunk being worked on
        self.view = memoryview(b"")
        self.l1_read = False
        self.l2_pending = 0
        self.clusters = 0
        self.h: q.Header
        self.out: GuestWriter

    # -- the stream ------------------------------------------------------------------------------

    def run(self) -> StreamResult:
        if self.durable.resume is not None:
            self._restore(self.durable.resume)
            n = 1
        else:
            first = bytearray(2 << 20)
            n = read_full(self.reader, memoryview(first))
            self.h = q.parse(bytes(first[:n]), capacity=self.target.capacity)
            self.out = GuestWriter(self.target, self.h.size, device_zeroed=self.device_zeroed)
        h = self.h
        try:
            if self.durable.resume is None:
                self._start(memoryview(first)[:n])
            buf = bytearray(self.chunk)
            interval = self.durable.interval or (1 << 62)
            next_point = self.pos + interval
            while n:
                n = read_full(self.reader, memoryview(buf))
                if n:
                    self._chunk(memoryview(buf)[:n])
                    if self.durable.on_checkpoint is not None and self.pos >= next_point:
                        self._checkpoint(self.durable.on_checkpoint)
                        next_point = self.pos + interval
            self._at_end()
            digest = self.out.finish()
        finally:
            self.out.close()
        return StreamResult(h.size, digest, self.spool.peak, self.clusters, not self.out.scattered)

    def _start(self, first: memoryview) -> None:
        h = self.h
        self.add(_Need(0, h.header_end))
        if h.refcount_table_offset:
            self.add(_Table(h.refcount_table_offset, h.refcount_table_clusters * h.cluster_size,
                            self._refcount_table, "refcount table", optional=True))
        if h.nb_snapshots:
            self.add(_Snapshots(h))
        if h.l1_needed:
            self.add(_Table(h.l1_offset, h.l1_needed * 8, self._l1, "L1 table"))
        else:
            self.l1_read = True
        self._chunk(first)

    # -- checkpoints -----------------------------------------------------------------------------

    def _checkpoint(self, on_checkpoint: Checkpoint) -> None:
        """Make the volume and the spool durable up to ``pos``, then hand over the state that continues there."""
        self.out.sync()
        self.spool.sync()
        on_checkpoint(self.pos, self.state(), self.received.digest())

    def state(self) -> bytes:
        blobs: list[bytes] = []

        def blob(data: bytes | bytearray | array[int]) -> int:
            blobs.append(data.tobytes() if isinstance(data, array) else bytes(data))
            return len(blobs) - 1

        needs = [_save_need(need, blob) for _, _, need in sorted(self.heap, key=lambda e: (e[0], e[1]))]
        writer, window = self.out.state()
        meta = {"pos": self.pos, "header": asdict(self.h), "l1_read": self.l1_read, "l2_pending": self.l2_pending,
                "clusters": self.clusters, "received": blob(self.received.leaves),
                "received_partial": blob(self.received.partial), "needs": needs, "spool": self.spool.state(),
                "writer": writer, "window": blob(window)}
        return qcow2_resume.encode(meta, blobs)

    def _restore(self, data: bytes) -> None:
        meta, blobs = qcow2_resume.decode(data)
        try:
            self.received = qcow2_resume.Prefix(blobs[meta["received"]], blobs[meta["received_partial"]])
            if self.received.digest() != self.durable.prefix:
                raise qcow2_resume.StateError(
                    f"the bytes sent before byte {meta['pos']} were of another file than the one now continued "
                    f"(its Upload-Prefix-Digest is {self.durable.prefix}, not {self.received.digest()}): "
                    "upload the image again from byte 0")
            self.h = q.Header(**meta["header"])
            self.pos = int(meta["pos"])
            self.l1_read, self.l2_pending = bool(meta["l1_read"]), int(meta["l2_pending"])
            self.clusters = int(meta["clusters"])
            self.spool.restore(meta["spool"])
            self.out = GuestWriter(self.target, self.h.size, device_zeroed=self.device_zeroed,
                                   resume=(meta["writer"], blobs[meta["window"]]))
        except (KeyError, TypeError, ValueError, IndexError, FileNotFoundError) as e:
            raise qcow2_resume.StateError(f"the saved state of the interrupted qcow2 upload is unusable: {e}") from e
        try:
            for saved in meta["needs"]:
                heapq.heappush(self.heap, (int(saved["start"]), next(self.seq), self._load_need(saved, blobs)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            self.out.close()
            raise qcow2_resume.StateError(f"the saved state of the interrupted qcow2 upload is unusable: {e}") from e

    def _load_need(self, saved: dict[str, Any], blobs: list[bytes]) -> _Need:
        kind, start, end = saved["kind"], int(saved["start"]), int(saved["end"])
        need: _Need
        if kind == "need":
            need = _Need(start, end, optional=bool(saved["optional"]))
        elif kind == "table":
            done = {"L1 table": self._l1, "refcount table": self._refcount_table}[saved["what"]]
            need = _Table(start, end - start, done, saved["what"], optional=bool(saved["optional"]))
            need.buf = bytearray(blobs[saved["buf"]])
        elif kind == "tables":
            offsets, indexes = array("Q"), array("I")
            offsets.frombytes(blobs[saved["offsets"]])
            indexes.frombytes(blobs[saved["indexes"]])
            need = _Tables(offsets, indexes, int(saved["size"]), self._l2)
            need.buf = bytearray(blobs[saved["buf"]])
        elif kind == "snapshots":
            need = _Snapshots(self.h)
            need.left, need.entry_start = int(saved["left"]), int(saved["entry_start"])
            need.buf = bytearray(blobs[saved["buf"]])
        elif kind == "compressed":
            need = _Compressed(start, end, int(saved["guest"]), self)
            need.origin = int(saved["origin"])
            need.buf = bytearray(blobs[saved["buf"]])
        elif kind == "clusters":
            keys = array("Q")
            keys.frombytes(blobs[saved["keys"]])
            masks = {int(k): int(v) for k, v in saved["masks"]}
            need = _Clusters(keys, int(saved["guest_base"]), self.h.cluster_size, self.out, masks)
            need.host = int(saved["host"])
        else:
            raise ValueError(f"unknown range kind {kind!r}")
        need.start, need.end = start, end
        return need

    def _chunk(self, view: memoryview) -> None:
        if self.durable.on_checkpoint is not None:
            self.received.update(view)
        start, end = self.pos, self.pos + len(view)
        self.view = view
        taken: list[tuple[int, int]] = []
        compressed: list[tuple[int, int, _Need]] = []
        while self.heap and self.heap[0][0] < end:
            _, seq, need = heapq.heappop(self.heap)
            a = need.start
            if a < start:  # a table or cluster named twice: its bytes passed with the chunk before
                raise FormatError(f"qcow2 image uses the bytes at offset {a:#x} twice (a table or cluster "
                                  "is named twice): refused")
            b = min(need.piece_end, end)
            need.take(view[a - start:b - start])
            if need.plain:
                taken.append((a, b))
            else:
                compressed.append((a, b, need))
            if not need.done:
                heapq.heappush(self.heap, (need.start, seq, need))
        plain = sorted(taken)
        for (_, b1), (a2, _) in zip(plain, plain[1:], strict=False):
            if a2 < b1:
                raise FormatError(f"qcow2 image uses the bytes at offset {a2:#x} twice (a table or cluster "
                                  "overlaps another): refused")
        if self.keeping:
            # a compressed cluster's first and last sectors are kept too: qemu packs compressed clusters
            # byte after byte, so they may also hold the end or the start of another compressed cluster
            # whose L2 table has not been read yet
            for a, b in _gaps(start, end, plain + _compressed_inside(compressed)):
                self.spool.keep(a, view[a - start:b - start])
        self.pos = end

    @property
    def keeping(self) -> bool:
        """Some table is still unread, so bytes nobody wants yet may be wanted later."""
        return not self.l1_read or self.l2_pending > 0

    def add(self, need: _Need) -> None:
        """Want ``need``'s range: from the stream when it is still ahead, else from the chunk at hand
        or the spool. A range that passed while nothing kept it is refused."""
        chunk_start = self.pos
        while not need.done and need.start < chunk_start:
            a = need.start
            b = min(need.piece_end, chunk_start)
            if not self.spool.holds(a, b):
                if need.optional:
                    return  # a refcount block behind us: nothing to skip any more
                raise FormatError(f"qcow2 image is not laid out as a valid image: the range at offset {a:#x} "
                                  "is wanted by a table read later, but was read as something else")
            need.take(memoryview(self.spool.read(a, b)))
        if not need.done:
            heapq.heappush(self.heap, (need.start, next(self.seq), need))

    def _at_end(self) -> None:
        for _, _, need in sorted(self.heap):
            if need.optional:
                continue
            if isinstance(need, _Compressed) and need.end - self.pos < q.SECTOR and need.start == self.pos:
                # qemu reads a last compressed cluster's sector-rounded tail past the end as zeros
                need.take(memoryview(bytes(need.end - need.start)))
                continue
            while isinstance(need, _Clusters) and not need.done and need.data_end() <= self.pos:
                need.take(memoryview(bytes(need.piece_end - need.start)))  # unallocated subclusters
            if isinstance(need, _Clusters) and need.done:
                continue
            what = getattr(need, "what", "a data cluster")
            raise FormatError(f"image is truncated: {what} at offset {need.start:#x} lies past the end of the "
                              f"file ({self.pos} bytes)")
        self.heap.clear()

    # -- tables ----------------------------------------------------------------------------------

    def _refcount_table(self, data: bytes) -> None:
        for entry in struct.unpack(f">{len(data) // 8}Q", data):
            block = entry & ~0x1FF
            if block and block % self.h.cluster_size == 0 and block >= self.pos:
                self.add(_Need(block, block + self.h.cluster_size, optional=True))

    def _l1(self, data: bytes) -> None:
        h = self.h
        self.l1_read = True
        keys = []  # offset << 22 | index: an L1 has at most 2^22 entries (qemu's 32 MiB)
        for index, entry in enumerate(struct.unpack(f">{len(data) // 8}Q", data)):
            offset = entry & q.L1E_OFFSET_MASK
            if not offset:
                continue
            if offset % h.cluster_size:
                raise FormatError(f"qcow2 L2 table offset {offset:#x} is not aligned to a cluster")
            keys.append(offset << 22 | index)
        del data
        if keys:
            keys.sort()
            self.l2_pending = len(keys)
            offsets, indexes = array("Q", (k >> 22 for k in keys)), array("I", (k & (1 << 22) - 1 for k in keys))
            del keys
            self.add(_Tables(offsets, indexes, h.cluster_size, self._l2))

    def _l2(self, index: int, data: bytes) -> None:
        h = self.h
        self.l2_pending -= 1
        base = index * h.l1_coverage
        count = min(h.l2_entries, -(-(h.size - base) // h.cluster_size))
        words = struct.unpack(f">{count * h.l2_entry_size // 8}Q", data[:count * h.l2_entry_size])
        keys = array("Q")
        masks: dict[int, int] = {}
        compressed: list[_Compressed] = []
        step = 2 if h.extended_l2 else 1
        for i in range(count):
            entry = words[i * step]
            bitmap = words[i * step + 1] if h.extended_l2 else 0
            if entry & q.OFLAG_COMPRESSED:
                if bitmap:
                    raise FormatError(f"qcow2 compressed cluster {index}:{i} has a subcluster bitmap")
                start, length = h.compressed_range(entry)
                compressed.append(_Compressed(start, length, base + i * h.cluster_size, self))
                continue
            host = entry & q.L2E_OFFSET_MASK
            if host % h.cluster_size:  # qemu refuses it even for a zero or unallocated subcluster
                raise FormatError(f"qcow2 cluster offset {host:#x} is not aligned to a cluster")
            if h.extended_l2:
                if bitmap >> 32 & bitmap & 0xFFFFFFFF or (not host and bitmap & 0xFFFFFFFF):
                    raise FormatError(f"qcow2 cluster {index}:{i} has an invalid subcluster bitmap")
                alloc = bitmap & 0xFFFFFFFF
                if not host or not alloc:
                    continue
                if alloc != 0xFFFFFFFF:
                    masks[i] = alloc
            elif entry & q.OFLAG_ZERO:
                if h.version < 3:
                    raise FormatError(f"qcow2 version 2 image has a zero cluster entry ({index}:{i}): corrupt")
                continue
            if not host:
                continue
            keys.append(host | i)
        self.clusters += len(keys) + len(compressed)
        if keys:
            ordered = array("Q", sorted(keys))
            self.add(_Clusters(ordered, base, h.cluster_size, self.out, masks))
        for need in compressed:
            self.add(need)

    def inflate(self, need: _Compressed) -> None:
        self.out.put(need.guest, q.decompress(self.h.compression, need.buf, self.h.cluster_size))
        need.buf = bytearray()


def _compressed_inside(pieces: list[tuple[int, int, _Need]]) -> list[tuple[int, int]]:
    """The parts of the compressed clusters read in a chunk that no other cluster can share. qemu packs
    compressed clusters byte after byte and names each by whole sectors, so a cluster's first and last
    sectors may also hold the end or the start of other clusters, whose L2 table may come later (qemu
    allocates a new L2 table before it fills the rest of a cluster of compressed data)."""
    inside = []
    for a, b, need in pieces:
        lo, hi = -(-a // q.SECTOR) * q.SECTOR, min(b, need.end - q.SECTOR)
        if lo < hi:
            inside.append((lo, hi))
    return inside


def _save_need(need: _Need, blob: Callable[[bytes | bytearray | array[int]], int]) -> dict[str, Any]:
    """One wanted range as a checkpoint keeps it (the arrays from where it stands, the rest dropped)."""
    saved: dict[str, Any] = {"start": need.start, "end": need.end}
    if isinstance(need, _Table):
        saved.update(kind="table", what=need.what, optional=need.optional, buf=blob(need.buf))
    elif isinstance(need, _Tables):
        saved.update(kind="tables", offsets=blob(need.offsets[need.i:]), indexes=blob(need.indexes[need.i:]),
                     size=need.size, buf=blob(need.buf))
    elif isinstance(need, _Snapshots):
        saved.update(kind="snapshots", left=need.left, entry_start=need.entry_start, buf=blob(need.buf))
    elif isinstance(need, _Compressed):
        saved.update(kind="compressed", guest=need.guest, origin=need.origin, buf=blob(need.buf))
    elif isinstance(need, _Clusters):
        saved.update(kind="clusters", keys=blob(need.keys[need.i:]), guest_base=need.guest_base,
                     masks=sorted(need.masks.items()), host=need.host)
    else:
        saved.update(kind="need", optional=need.optional)
    return saved


def _gaps(start: int, end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, end) outside every range in ``taken``."""
    gaps = []
    pos = start
    for a, b in sorted(taken):
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < end:
        gaps.append((pos, end))
    return gaps
