"""Same-node copies of a volume: reflink, sparse in-kernel copy, and block devices with zero detection.

``clone(source, target, size)`` picks the cheapest way that is correct:

- ``reflink``: source and target are regular files on one filesystem that shares extents (XFS with
  reflink, btrfs): one ``FICLONE`` ioctl, constant time whatever the size.
- ``sparse``: the source's data extents (SEEK_DATA/SEEK_HOLE) copied with ``copy_file_range`` (in the
  kernel, no user-space buffers); holes stay holes in a file target, and are zeroed on a device target.
- ``block``: a source without extent information (a block device) read in 1 MiB blocks, all-zero blocks
  skipped (never written), the rest written with ``pwrite``.

A target that is a regular file ends at exactly ``size`` bytes; a device target is never truncated.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLOCK = 1 << 20
_ZERO = bytes(BLOCK)
_FALLBACK = (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.ENOTTY)

Progress = Callable[[int], None]


def data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(start, end) ranges of ``fd`` below ``size`` that may hold data; None when the file cannot say."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            if start >= size:
                break
            end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
            extents.append((start, end))
            pos = end
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data past pos
            return extents
        return None
    return extents


def _is_device(fd: int) -> bool:
    return stat.S_ISBLK(os.fstat(fd).st_mode)


def try_reflink(src: int, dst: int) -> bool:
    """Share the source's extents with the target (FICLONE); False where the filesystem cannot."""
    s, d = os.fstat(src), os.fstat(dst)
    if not (stat.S_ISREG(s.st_mode) and stat.S_ISREG(d.st_mode)) or s.st_dev != d.st_dev:
        return False
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as e:
        if e.errno in (*_FALLBACK, errno.EPERM):
            return False
        raise
    return True


def _copy_range(src: int, dst: int, start: int, end: int, progress: Progress) -> None:
    """Copy bytes [start, end) in the kernel, falling back to pread/pwrite where it refuses."""
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src, dst, min(end - pos, 1 << 30), pos, pos)
        except OSError as e:
            if e.errno not in _FALLBACK:
                raise
            _rw_range(src, dst, pos, end, progress, skip_zero=False)
            return
        if n == 0:
            raise OSError(errno.EIO, f"the source ended at {pos}, before {end}")
        pos += n
        progress(n)


def _rw_range(src: int, dst: int, start: int, end: int, progress: Progress, *, skip_zero: bool) -> None:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    pos = start
    while pos < end:
        want = min(BLOCK, end - pos)
        n = os.preadv(src, [view[:want]], pos)
        if n <= 0:
            raise OSError(errno.EIO, f"the source ended at {pos}, before {end}")
        if not (skip_zero and buf.startswith(_ZERO[:n]) and view[:n] == _ZERO[:n]):
            os.pwrite(dst, view[:n], pos)
        pos += n
        progress(n)


def _punch(fd: int, start: int, length: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length) == 0


def zero_range(fd: int, start: int, end: int) -> None:
    """Make [start, end) of a fixed-size volume read as zeros: a punched hole in a file, BLKZEROOUT on a
    device, written zeros where neither works."""
    if end <= start:
        return
    if _is_device(fd):
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", start, end - start))
            return
        except OSError as e:
            if e.errno not in (*_FALLBACK, errno.ENODEV):
                raise
    elif _punch(fd, start, end - start):
        return
    pos = start
    while pos < end:
        pos += os.pwrite(fd, _ZERO[:min(BLOCK, end - pos)], pos)


def clone(source: str, target: str, size: int, *, progress: Progress = lambda n: None,
          allow_reflink: bool = True, fixed_target: bool = False) -> str:
    """Copy the first ``size`` bytes of ``source`` to ``target``; returns the method used.

    ``fixed_target``: the target is a Block volume (a device, or the file standing for one) whose size
    is not ours to change; otherwise it is a disk image file made to be exactly ``size`` bytes."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        device_target = fixed_target or (os.path.exists(target) and stat.S_ISBLK(os.stat(target).st_mode))
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if device_target else os.O_CREAT | os.O_TRUNC)
        dst = os.open(target, flags, 0o660)
        try:
            method = _clone_fds(src, dst, size, progress, allow_reflink=allow_reflink, device_target=device_target)
            os.fsync(dst)
            return method
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _clone_fds(src: int, dst: int, size: int, progress: Progress, *, allow_reflink: bool,
               device_target: bool) -> str:
    source_size = os.lseek(src, 0, os.SEEK_END)
    if allow_reflink and not device_target and source_size == size and try_reflink(src, dst):
        progress(size)
        return "reflink"
    extents = None if _is_device(src) else data_extents(src, min(size, source_size))
    if not device_target:
        os.ftruncate(dst, size)  # a fresh file: all holes, so only data needs writing
    if extents is None:
        _rw_range(src, dst, 0, min(size, source_size), progress, skip_zero=not device_target)
        return "block"
    pos = 0
    for start, end in extents:
        if device_target:
            zero_range(dst, pos, start)
        progress(start - pos)
        _copy_range(src, dst, start, end, progress)
        pos = end
    if device_target:
        zero_range(dst, pos, min(size, source_size))
    return "sparse"
