"""Where an import writes: a raw file, a block device, or a directory (archive content).

``SparseWriter`` turns a stream of raw disk bytes into the target without writing zeros: all-zero
blocks become holes in a file; on a block device they are zeroed with ``fallocate`` (which the kernel
turns into discard/write-zeroes) unless the device is known to read back zeros already. Nothing is ever
written past the capacity.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import tempfile
from dataclasses import dataclass

from importer import digest as vdigest
from importer.errors import CapacityExceeded, PermanentError
from importer.formats import vhd_fixed_footer_size

log = logging.getLogger(__name__)

BLOCK = 64 * 1024
_ZEROS = bytes(BLOCK)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4
# Writeback starts every WINDOW bytes instead of all at the final fsync; with ``drop_cache`` the window
# before is waited for and dropped from the page cache, so a large import does not fill the cache.
WINDOW = 64 << 20
DIGEST_BLOCK = vdigest.BLOCK
MAX_LEAVES = 8 << 20  # inline digest of a disk whose holes are skipped: up to 256 GiB of it (32 B a MiB)
_ZERO_DIGEST_BLOCK = bytes(DIGEST_BLOCK)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Target:
    """A resolved import target. ``capacity`` is None for a file whose size comes from the image."""

    path: str
    kind: str  # "file", "block" or "dir"
    capacity: int | None
    existed: bool

    @property
    def is_block(self) -> bool:
        return self.kind == "block"


def resolve_target(path: str, *, size: int | None, archive: bool) -> Target:
    """Inspect ``path`` and decide how to write it. Errors say what to change."""
    existed = os.path.exists(path)
    if archive:
        if existed and not os.path.isdir(path):
            raise PermanentError(f"target {path} must be a directory for contentType archive")
        return Target(path, "dir", size, existed)
    if existed:
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(path, os.O_RDONLY)
            try:
                dev_size = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
            if size is not None and size > dev_size:
                raise PermanentError(f"--size {size} is larger than the block device {path} ({dev_size} bytes)")
            return Target(path, "block", size or dev_size, True)
        if stat.S_ISDIR(st.st_mode):
            raise PermanentError(
                f"target {path} is a directory: give a file path (e.g. {path}/disk.img), or use "
                "contentType archive to extract a tar into it"
            )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PermanentError(f"the directory of target {path} does not exist")
    if size is not None:
        _check_file_can_hold(parent, size)
    return Target(path, "file", size, existed)


def _check_file_can_hold(directory: str, size: int) -> None:
    """Refuse a capacity the file system cannot give a file (ext4: 16 TiB), before the target is
    touched: a sparse truncate of a temporary file in the same directory is the test."""
    limit = (1 << 63) - 1
    if size > limit:
        raise PermanentError(f"image size {size} is larger than any file can be ({limit} bytes)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cdi-size-", dir=directory)
    except OSError as e:
        raise PermanentError(f"cannot create a file in {directory}: {e.strerror}") from e
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        if e.errno in (errno.EFBIG, errno.EINVAL):
            raise PermanentError(f"image size {size} is larger than a file in {directory} can be "
                                 f"({os.strerror(e.errno)}: the file system's limit)") from e
        raise PermanentError(f"cannot make a file of {size} bytes in {directory}: {e.strerror}") from e
    finally:
        os.close(fd)
        os.unlink(tmp)


class SparseWriter:
    """Writes a raw stream at increasing offsets, leaving holes for zero blocks.

    ``device_zeroed``: a block device known to read back zeros (freshly provisioned), so zero blocks
    need no work at all. The last 512 bytes of a stream may spill past the capacity: a fixed VHD is raw
    data plus a 512-byte footer, recognised and cut in ``finish()``.
    """

    def __init__(self, target: Target, *, device_zeroed: bool = False, resume_at: int = 0,
                 digest: bool = False, drop_cache: bool = False, detect_vhd: bool = True,
                 truncate: bool = True) -> None:
        self.target = target
        self._detect_vhd = detect_vhd  # a raw stream may be a fixed VHD; a converted disk never is
        self.capacity = target.capacity
        flags = os.O_RDWR | os.O_CLOEXEC
        if target.kind == "file":
            flags |= os.O_CREAT | (0 if resume_at else os.O_TRUNC)
        try:
            self.fd = os.open(target.path, flags, 0o644)
        except OSError as e:
            raise PermanentError(f"cannot open target {target.path}: {e.strerror}") from e
        if resume_at and target.kind == "file" and truncate:
            os.ftruncate(self.fd, resume_at)  # whatever a killed run wrote past its checkpoint goes
        self.offset = resume_at
        self.data_bytes = 0
        self._zero_from: int | None = None  # start of a pending run of zeros (block devices)
        self._device_zeroed = device_zeroed or target.kind == "file"
        self._spill = bytearray()  # bytes past the capacity, at most 512
        self.vhd_fixed = False
        self._drop_cache = drop_cache
        self._started_to = self._dropped_to = resume_at  # writeback windows
        # the volume digest, computed while writing: the hashes of the 1 MiB blocks written, concatenated
        # (None: not possible); the zeros after them up to the capacity cost nothing per block
        self._leaves: bytearray | None = bytearray() if digest and resume_at % DIGEST_BLOCK == 0 else None
        self._tail: bytes | None = None  # a last, partial digest block
        self.digest: str | None = None
        if self._leaves is not None and resume_at:
            self._leaves = self._read_leaves(resume_at)

    def write(self, buf: bytes | bytearray, n: int | None = None) -> None:
        """Write ``buf[:n]`` at the current offset. ``buf`` is a bytes-like object supporting
        ``startswith`` so that zero blocks are found by memcmp without copies (MEASURED.md)."""
        if n is None:
            n = len(buf)
        if self.capacity is not None and self.offset + n > self.capacity:
            room = max(0, self.capacity - self.offset)
            if len(self._spill) + n - room > 512:
                raise CapacityExceeded(
                    f"image is larger than the volume capacity {self.capacity} bytes "
                    f"(data continues past byte {self.capacity})"
                )
            self._spill += buf[room:n]
            n = room
        if self._leaves is not None:
            self._hash(buf, n)
        pos = 0
        while pos < n:
            end = min(pos + BLOCK, n)
            zero = buf.startswith(_ZEROS[: end - pos], pos)
            while end < n:
                nxt = min(end + BLOCK, n)
                if buf.startswith(_ZEROS[: nxt - end], end) != zero:
                    break
                end = nxt
            if zero:
                self._skip(end - pos)
            else:
                self._flush_zeros()
                self._pwrite(memoryview(buf)[pos:end])
            pos = end
        self._writeback()

    def _hash(self, buf: bytes | bytearray, n: int) -> None:
        assert self._leaves is not None
        if self._tail is not None or self.offset % DIGEST_BLOCK:
            self._leaves = None  # writes not aligned to digest blocks: the digest is taken afterwards
            return
        view = memoryview(buf)
        pos = 0
        while pos + DIGEST_BLOCK <= n:
            if buf.startswith(_ZERO_DIGEST_BLOCK, pos):
                self._leaves += vdigest.zero_leaf(DIGEST_BLOCK)
            else:
                self._leaves += vdigest.leaf(view[pos:pos + DIGEST_BLOCK])
            pos += DIGEST_BLOCK
        if pos < n:
            self._tail = bytes(view[pos:n])

    def _read_leaves(self, length: int) -> bytearray:
        """Block hashes of what an interrupted run already wrote (a resumed import)."""
        leaves = bytearray()
        buf = bytearray(DIGEST_BLOCK)
        for off in range(0, length, DIGEST_BLOCK):
            got = os.preadv(self.fd, [buf], off)
            if got < DIGEST_BLOCK:
                buf[got:] = bytes(DIGEST_BLOCK - got)
            leaves += vdigest.leaf(memoryview(buf))
        return leaves

    def _finish_digest(self, final: int) -> None:
        if self._leaves is None or self.vhd_fixed:
            return
        leaves = self._leaves
        pos = len(leaves) // len(vdigest.zero_leaf(DIGEST_BLOCK)) * DIGEST_BLOCK
        if self._tail is not None:
            size = min(DIGEST_BLOCK, final - pos)
            leaves += vdigest.leaf(self._tail + bytes(size - len(self._tail)))
        self.digest = vdigest.combine(final, leaves)  # the zero blocks after the data up to ``final``

    def _writeback(self) -> None:
        """Start writing the last window to disk; with drop_cache, release the one before."""
        if self.offset - self._started_to < WINDOW:
            return
        _libc.sync_file_range(self.fd, self._started_to, self.offset - self._started_to, SYNC_FILE_RANGE_WRITE)
        if self._drop_cache and self._started_to > self._dropped_to:
            length = self._started_to - self._dropped_to
            _libc.sync_file_range(self.fd, self._dropped_to, length,
                                  SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
            os.posix_fadvise(self.fd, self._dropped_to, length, os.POSIX_FADV_DONTNEED)
            self._dropped_to = self._started_to
        self._started_to = self.offset

    def skip(self, length: int) -> None:
        """Leave ``length`` bytes of zeros at the current offset (a hole), without a buffer of them."""
        if self.capacity is not None and self.offset + length > self.capacity:
            raise CapacityExceeded(f"image is larger than the volume capacity {self.capacity} bytes "
                                   f"(data continues past byte {self.capacity})")
        if self._leaves is not None:
            grown = len(self._leaves) + len(vdigest.zero_leaf(DIGEST_BLOCK)) * (length // DIGEST_BLOCK)
            if self._tail is not None or self.offset % DIGEST_BLOCK or grown > MAX_LEAVES:
                self._leaves = None  # the digest is taken afterwards (holes cost it nothing)
            else:
                self._leaves += vdigest.zero_leaf(DIGEST_BLOCK) * (length // DIGEST_BLOCK)
                if length % DIGEST_BLOCK:
                    self._tail = bytes(length % DIGEST_BLOCK)
        self._skip(length)
        self._writeback()

    def scatter(self, *, zero: bool = True) -> None:
        """From now on data may also come at offsets below ``offset`` (``write_at``): the digest is
        then taken after the writes, and a block device is zeroed from here to the capacity at once
        (each byte is written at most once after this, so nothing written is zeroed again).
        ``zero=False``: a resumed run that had scattered already (it zeroed then; data is there now)."""
        self._leaves = None
        self._flush_zeros()
        end = self.capacity if self.capacity is not None else self.offset
        if zero and not self._device_zeroed and end > self.offset:
            self._zero_device(self.offset, end - self.offset)
        self._device_zeroed = True

    def write_at(self, offset: int, buf: bytes | bytearray) -> None:
        """Write ``buf`` at ``offset`` (after ``scatter``), leaving its zero blocks as holes."""
        if self.capacity is not None and offset + len(buf) > self.capacity:
            raise CapacityExceeded(f"image is larger than the volume capacity {self.capacity} bytes")
        view = memoryview(buf)
        pos = 0
        while pos < len(buf):
            end = min(pos + BLOCK, len(buf))
            if not buf.startswith(_ZEROS[: end - pos], pos):
                done = 0
                while done < end - pos:
                    done += os.pwrite(self.fd, view[pos + done:end], offset + pos + done)
                self.data_bytes += end - pos
            pos = end

    def sync(self) -> int:
        """Make everything up to ``offset`` durable; returns that offset (a resume point)."""
        self._flush_zeros()
        os.fdatasync(self.fd)
        return self.offset

    def _skip(self, length: int) -> None:
        if self._zero_from is None:
            self._zero_from = self.offset
        self.offset += length

    def _flush_zeros(self) -> None:
        if self._zero_from is None:
            return
        start, self._zero_from = self._zero_from, None
        if not self._device_zeroed and self.offset > start:
            self._zero_device(start, self.offset - start)

    def _zero_device(self, start: int, length: int) -> None:
        try:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, start, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                raise
        chunk = bytes(1 << 20)
        end = start + length
        while start < end:
            start += os.pwrite(self.fd, chunk[: min(len(chunk), end - start)], start)

    def _pwrite(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.offset + done)
        self.offset += len(view)
        self.data_bytes += len(view)

    def finish(self, *, end: int = 0) -> int:
        """Complete the volume; returns the size of the image written (before growing to capacity).
        ``end``: where the image ends when its last bytes are zeros that were never written."""
        image_size = max(self.offset + len(self._spill), end)
        if self._detect_vhd and image_size >= 512 and image_size % 512 == 0:
            tail = bytearray(512)
            in_file = 512 - len(self._spill)
            if in_file > 0:
                # bytes in a pending zero run were never written: they are zeros, not what the
                # device or the file's end happens to hold
                tail_start = self.offset - in_file
                read_end = self.offset if self._zero_from is None else max(tail_start, self._zero_from)
                if read_end > tail_start:
                    _pread(self.fd, memoryview(tail)[: read_end - tail_start], tail_start)
            tail[in_file:] = self._spill
            disk_size = vhd_fixed_footer_size(bytes(tail))
            if disk_size is not None and disk_size == image_size - 512:
                self.vhd_fixed = True
                image_size -= 512
                self.offset = min(self.offset, image_size)
                if in_file > 0:
                    self._zero_tail(image_size, in_file)
                self._spill.clear()
        if self._spill:
            raise CapacityExceeded(
                f"image is larger than the volume capacity {self.capacity} bytes "
                f"(it has {image_size} bytes)"
            )
        final = self.capacity if self.capacity is not None else image_size
        self._finish_digest(final)
        self.offset = max(self.offset, image_size)
        if self.target.kind == "file":
            os.ftruncate(self.fd, final)
        else:
            if self._zero_from is not None or self.offset < final:
                start = self._zero_from if self._zero_from is not None else self.offset
                self._zero_from = None
                if not self._device_zeroed:
                    self._zero_device(start, final - start)
        os.fsync(self.fd)
        return image_size

    def _zero_tail(self, start: int, length: int) -> None:
        if self.target.kind == "file":
            os.ftruncate(self.fd, start)
        else:
            os.pwrite(self.fd, bytes(length), start)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pread(fd: int, view: memoryview, offset: int) -> int:
    return os.preadv(fd, [view], offset)


def remove_partial(target: Target) -> None:
    """Remove what this run created after a failure that leaves the target useless."""
    if target.kind == "file" and not target.existed:
        try:
            os.unlink(target.path)
        except FileNotFoundError:
            pass
