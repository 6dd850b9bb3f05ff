"""The qcow2 header and table entries, read as qemu reads them, for converting an image as it streams.

Only what a reader of the active disk needs: the geometry (cluster size, virtual size, where the L1
table and the refcount table are), the features that change how entries read (extended L2 entries,
the compression type), and the features an untrusted image must not use (backing files, external
data files, encryption, features we do not know). Each refusal says what was found, in the words the
importer uses for the same refusal when qemu-img reads the image (``importer/qemu_img.check_safe``).
Where qemu would fail to read an image (a table that is not cluster-aligned, an L1 too small for the
disk), the image is refused too: a streamed conversion never succeeds where qemu-img would not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import zlib
from dataclasses import dataclass

from importer.errors import CapacityExceeded, FormatError, UnsafeImage

MAGIC = b"QFI\xfb"
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
MAX_L1_BYTES = 32 << 20  # qemu's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # qemu's QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA = 1024
MAX_SNAPSHOT_TABLE = 64 << 20
SECTOR = 512

INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = (1 << i for i in range(5))
KNOWN_INCOMPAT = (1 << 5) - 1
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
EXT_END, EXT_BACKING_FORMAT, EXT_DATA_FILE = 0, 0xE2792ACA, 0x44415441


@dataclass(frozen=True)
class Header:
    version: int
    cluster_bits: int
    size: int  # virtual size
    l1_size: int  # entries
    l1_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    compression: str  # "zlib" or "zstd"
    extended_l2: bool
    header_end: int  # bytes of the first cluster the header and its extensions use
    nb_snapshots: int
    snapshots_offset: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def l1_coverage(self) -> int:
        """Guest bytes one L1 entry (one L2 table) maps."""
        return self.l2_entries * self.cluster_size

    @property
    def l1_needed(self) -> int:
        """L1 entries that map the virtual disk (the rest, if any, hold saved VM state)."""
        return -(-self.size // self.l1_coverage)

    @property
    def csize_shift(self) -> int:
        return 62 - (self.cluster_bits - 8)

    def compressed_range(self, entry: int) -> tuple[int, int]:
        """(file offset, length) of a compressed cluster's data, as qemu computes it: whole 512-byte
        sectors counted from the sector the data starts in."""
        offset = entry & ((1 << self.csize_shift) - 1)
        sectors = ((entry >> self.csize_shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return offset, sectors * SECTOR - (offset & (SECTOR - 1))


def _u32(buf: bytes, at: int) -> int:
    return int(struct.unpack_from(">I", buf, at)[0])


def _u64(buf: bytes, at: int) -> int:
    return int(struct.unpack_from(">Q", buf, at)[0])


def header_bytes_needed(head: bytes) -> int:
    """How much of the file start ``parse`` wants: the first cluster (at most 2 MiB)."""
    if len(head) < 24 or not head.startswith(MAGIC):
        raise FormatError("not a qcow2 image: the header is missing")
    bits = _u32(head, 20)
    if not 9 <= bits <= 21:
        raise FormatError(f"qcow2 cluster size 2^{bits} is invalid (qemu allows 512 B to 2 MiB)")
    return 1 << bits


def parse(head: bytes, *, capacity: int | None) -> Header:
    """The header of the qcow2 image whose first cluster is ``head``; refuses what we never convert."""
    cluster_size = header_bytes_needed(head)
    if len(head) < min(cluster_size, 104):
        raise FormatError("qcow2 image is truncated inside its header")
    version = _u32(head, 4)
    if version not in (2, 3):
        raise FormatError(f"qcow2 version {version} is not supported (only 2 and 3)")
    backing_offset, backing_size = _u64(head, 8), _u32(head, 16)
    bits = _u32(head, 20)
    size, crypt = _u64(head, 24), _u32(head, 32)
    l1_size, l1_offset = _u32(head, 36), _u64(head, 40)
    rt_offset, rt_clusters = _u64(head, 48), _u32(head, 56)
    nb_snapshots, snapshots_offset = _u32(head, 60), _u64(head, 64)
    incompat = 0
    header_length, compression_type = 72, 0
    autoclear = 0
    if version == 3:
        incompat, header_length, autoclear = _u64(head, 72), _u32(head, 100), _u64(head, 88)
        if header_length < 104 or header_length > cluster_size or header_length % 8:
            raise FormatError(f"qcow2 header length {header_length} is invalid")
        if _u32(head, 96) > 6:
            raise FormatError("qcow2 refcount order is invalid")
        if header_length > 104:
            compression_type = head[104]
    if backing_offset:
        name = head[backing_offset:backing_offset + min(backing_size, 1023)].decode("utf-8", "replace") \
            if backing_offset < len(head) else f"at offset {backing_offset}"
        raise UnsafeImage(f"image has a backing file ({name!r}); images with backing files are refused")
    if crypt:
        raise UnsafeImage("image is encrypted; encrypted images are not supported")
    extensions, header_end = _extensions(head, header_length, cluster_size)
    if incompat & INCOMPAT_DATA_FILE:
        name = extensions.get(EXT_DATA_FILE, b"").decode("utf-8", "replace")
        raise UnsafeImage(f"image uses an external data file ({name!r}); refused")
    if incompat & ~KNOWN_INCOMPAT:
        raise UnsafeImage(f"image uses qcow2 features this importer does not know (incompatible feature bits "
                          f"{incompat & ~KNOWN_INCOMPAT:#x}); refused")
    if autoclear & AUTOCLEAR_DATA_FILE_RAW:  # no data file (refused above), so qemu cannot open it
        raise FormatError("qcow2 header says its data is raw in an external data file, but it has none")
    if incompat & INCOMPAT_CORRUPT:
        raise FormatError("image is marked corrupt by qemu; repair it with qemu-img check -r all first")
    compression = _compression(compression_type, bool(incompat & INCOMPAT_COMPRESSION))
    extended_l2 = bool(incompat & INCOMPAT_EXTL2)
    if extended_l2 and bits < 14:
        raise FormatError("qcow2 extended L2 entries need clusters of at least 16 KiB")
    if capacity is not None and size // SECTOR * SECTOR > capacity:
        raise CapacityExceeded(f"image virtual size {size} is larger than the volume capacity {capacity}")
    if not rt_clusters or rt_clusters * cluster_size > MAX_REFTABLE_BYTES or rt_offset % cluster_size \
            or rt_offset + rt_clusters * cluster_size >= 1 << 63:
        raise FormatError("qcow2 reference count table is missing, too large or not aligned")
    if nb_snapshots > MAX_SNAPSHOTS or snapshots_offset % cluster_size or snapshots_offset >= 1 << 62:
        raise FormatError("qcow2 snapshot table is too large or not aligned")
    size = size // SECTOR * SECTOR  # qemu's disk is whole sectors
    header = Header(version, bits, size, l1_size, l1_offset, rt_offset, rt_clusters, compression, extended_l2,
                    header_end, nb_snapshots, snapshots_offset)
    if l1_size * 8 > MAX_L1_BYTES:
        raise FormatError(f"qcow2 L1 table of {l1_size} entries is too large")
    if l1_size < -(-size // header.l1_coverage):  # qemu counts the header's size before rounding it
        raise FormatError(f"qcow2 L1 table of {l1_size} entries is too small for a disk of {size} bytes")
    if l1_offset % cluster_size or (l1_size and l1_offset == 0) or l1_offset + l1_size * 8 >= 1 << 63:
        raise FormatError(f"qcow2 L1 table offset {l1_offset:#x} is invalid")
    return header


def _compression(kind: int, flagged: bool) -> str:
    if kind not in (0, 1):
        raise FormatError(f"qcow2 compression type {kind} is unknown")
    if flagged != (kind != 0):  # qemu: the feature bit is set exactly when the type is not zlib
        raise FormatError("qcow2 compression type and its incompatible feature bit disagree")
    return "zstd" if kind else "zlib"


def _extensions(head: bytes, start: int, cluster_size: int) -> tuple[dict[int, bytes], int]:
    """Header extensions (type -> data) between the header and the end of the first cluster, and
    where they end."""
    found: dict[int, bytes] = {}
    pos = start
    end = min(len(head), cluster_size)
    while pos + 8 <= end:
        kind, length = _u32(head, pos), _u32(head, pos + 4)
        if kind == EXT_END:
            return found, pos + 8
        if pos + 8 + length > end:
            raise FormatError("qcow2 header extension runs past the first cluster")
        found[kind] = head[pos + 8:pos + 8 + length]
        pos += 8 + (length + 7) // 8 * 8
    return found, min(pos, end)


def snapshot_entry(entry: bytes, *, version: int, cluster_size: int) -> int:
    """Check one snapshot table entry (its fixed 40 bytes) as qemu does when it opens the image;
    returns the entry's whole length (before its padding to 8 bytes). Snapshots are never read, but an image whose
    snapshot table qemu would refuse is refused too."""
    l1_offset, l1_size = _u64(entry, 0), _u32(entry, 8)
    id_size, name_size = struct.unpack_from(">HH", entry, 12)
    extra = _u32(entry, 36)
    if extra > MAX_SNAPSHOT_EXTRA or (version >= 3 and extra < 16):
        raise FormatError("qcow2 snapshot table entry has invalid extra data")
    if l1_size * 8 > MAX_L1_BYTES or l1_offset % cluster_size or l1_offset + l1_size * 8 >= 1 << 63:
        raise FormatError("qcow2 snapshot L1 table is too large or not aligned")
    return 40 + extra + id_size + name_size


# -- compressed clusters ------------------------------------------------------------------------------

def decompress(kind: str, data: bytes | bytearray, cluster_size: int) -> bytes:
    """One compressed cluster, as qemu decompresses it: exactly ``cluster_size`` bytes must come out
    (qemu reads sector-rounded input, so bytes after the stream's end are ignored)."""
    if kind == "zlib":
        try:
            out = zlib.decompressobj(-12).decompress(bytes(data), cluster_size)
        except zlib.error as e:
            raise FormatError(f"corrupt compressed qcow2 cluster: {e}") from e
    else:
        out = _zstd_cluster(bytes(data), cluster_size)
    if len(out) != cluster_size:
        raise FormatError(f"corrupt compressed qcow2 cluster: it holds {len(out)} bytes, not {cluster_size}")
    return out


class _Buffer(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


_zstd: ctypes.CDLL | None = None


def _libzstd() -> ctypes.CDLL:
    global _zstd
    if _zstd is None:
        lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Buffer), ctypes.POINTER(_Buffer)]
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        _zstd = lib
    return _zstd


def _zstd_cluster(src: bytes, cluster_size: int) -> bytes:
    """qemu's qcow2_zstd_decompress with libzstd itself: frames are decoded until the cluster is full,
    and the last one must end exactly there (python's zstandard reader does not report a frame cut
    short, so it is not used here)."""
    lib = _libzstd()
    dst = ctypes.create_string_buffer(cluster_size)
    src_buf = ctypes.create_string_buffer(src, len(src))
    out = _Buffer(ctypes.cast(dst, ctypes.c_void_p), cluster_size, 0)
    inp = _Buffer(ctypes.cast(src_buf, ctypes.c_void_p), len(src), 0)
    ctx = lib.ZSTD_createDCtx()
    if not ctx:
        raise MemoryError("libzstd could not create a decompression context")
    ret = 0
    try:
        while out.pos < out.size:
            last_in, last_out = inp.pos, out.pos
            ret = lib.ZSTD_decompressStream(ctx, ctypes.byref(out), ctypes.byref(inp))
            if lib.ZSTD_isError(ret) or (inp.pos <= last_in and out.pos <= last_out):
                raise FormatError("corrupt zstd-compressed qcow2 cluster")
    finally:
        lib.ZSTD_freeDCtx(ctx)
    if ret:
        raise FormatError("corrupt zstd-compressed qcow2 cluster: it holds more than one cluster of data")
    return dst.raw
