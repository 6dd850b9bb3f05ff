"""Disk images made by the tests: a raw disk with random data and zero runs, and its conversions made
by the real qemu-img and compressors."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
from pathlib import Path


def make_raw(
    path: Path, size: int = 8 << 20, *, seed: int = 1, data_ratio: float = 0.4, chunk: int = 256 << 10
) -> Path:
    """A raw disk of ``size`` bytes: chunks of random data (about ``data_ratio``) and zeros."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(chunk, size - written)
            if rnd.random() < data_ratio:
                f.write(rnd.randbytes(n))
            else:
                f.seek(n, os.SEEK_CUR)
            written += n
        f.truncate(size)
    return path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def convert(raw: Path, fmt: str, dest: Path, *options: str) -> Path:
    opts = ["-o", ",".join(options)] if options else []
    qemu_img("convert", "-f", "raw", "-O", fmt, *opts, str(raw), str(dest))
    return dest


def compress(path: Path, kind: str) -> Path:
    if kind == "gzip":
        out = Path(str(path) + ".gz")
        with open(path, "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        return out
    ext, cmd = {"xz": (".xz", ["xz", "-T2", "-1", "-k", "-f"]), "zstd": (".zst", ["zstd", "-q", "-f", "-k"]),
                "bzip2": (".bz2", ["bzip2", "-k", "-f", "-1"])}[kind]
    subprocess.run([*cmd, str(path)], check=True)
    return Path(str(path) + ext)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) of the data regions, found with SEEK_DATA/SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def padded(data: bytes, size: int, path: Path) -> Path:
    """``data`` then zeros up to ``size`` bytes, written sparse at ``path``: what a volume of ``size``
    holds after an upload of ``data``."""
    path.write_bytes(data)
    os.truncate(path, size)
    return path
