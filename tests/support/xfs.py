"""An XFS filesystem with reflink on a loop device, mounted in a test's directory (needs root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


class Unavailable(Exception):
    """This machine cannot make the filesystem (no root, no losetup, no mkfs.xfs, no loop device)."""


@contextlib.contextmanager
def xfs_mount(work: Path, size: int = 512 << 20) -> Iterator[Path]:
    """Yields the mount point; unmounts and detaches the loop device afterwards."""
    if os.geteuid() != 0:
        raise Unavailable("needs root for losetup and mount")
    for tool in ("losetup", "mkfs.xfs", "mount", "umount"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (mkfs.xfs is in Debian's xfsprogs)")
    backing = work / "xfs.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"no loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    mnt = work / "xfs"
    mnt.mkdir()
    mounted = False
    try:
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev], check=True, capture_output=True)
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)
