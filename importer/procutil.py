"""Child processes that die with the importer: qemu-img, xz and zstd must not outlive a killed worker."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent() -> None:
    """For ``preexec_fn``: the kernel sends SIGKILL to the child when its parent thread exits."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
