"""Scratch space: a private directory beside the target (or under --scratch-dir), removed when the
import ends, and removed by the next import when a killed one left it behind. A worker pod without a
scratch mount has no place for it (parent None): asking for it raises ``ScratchSpaceRequired``, and its
controller gives it a scratch claim.

The owner holds an exclusive ``flock`` on a lock file inside the directory for as long as it lives;
the kernel releases it when the process dies, however it dies. Another import that can take the lock
knows that nobody owns the directory any more. (A pid would not do: importer pods reuse pids, and
do not see each other's.)
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import shutil
import tempfile
import time
from types import TracebackType

from importer.errors import ScratchSpaceRequired

log = logging.getLogger(__name__)

PREFIX = ".cdi-scratch-"
LOCK = ".owner.lock"
GRACE = 60.0  # a directory younger than this without a lock file may be being created right now


class Scratch:
    """``with Scratch(parent) as path:`` a fresh directory, gone afterwards (parent None: there is no
    scratch space here, and entering raises ``ScratchSpaceRequired``)."""

    def __init__(self, parent: str | None) -> None:
        self.parent = parent
        self.path = ""
        self._fd = -1

    def __enter__(self) -> str:
        if self.parent is None:
            raise ScratchSpaceRequired()
        os.makedirs(self.parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=PREFIX, dir=self.parent)
        self._fd = os.open(os.path.join(self.path, LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        remove_stale(self.parent, keep=self.path)
        return self.path

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove_stale(parent: str, *, keep: str = "") -> None:
    """Remove scratch directories under ``parent`` whose owner is gone."""
    for path in glob.glob(os.path.join(parent, PREFIX + "*")):
        if path == keep or not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                young = time.time() - os.stat(path).st_mtime < GRACE
            except FileNotFoundError:
                continue
            if not young:
                log.info("removing scratch space left by a killed import path=%s", path)
                shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            pass
        try:
            log.info("removing scratch space left by a killed import path=%s", path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
