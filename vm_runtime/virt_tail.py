"""Follow the guest's serial console log and print it: the ``guest-console-log`` container.

KubeVirt's launcher pod has a second container, ``guest-console-log`` (its ``virt-tail``), whose only
job is to copy the serial console log to its stdout, so ``kubectl logs POD -c guest-console-log``
shows what the guest printed. This is ours:

    python -m vm_runtime.virt_tail     # GUEST_CONSOLE_LOG, LAUNCHER_STATUS_FILE from the environment

Paths are in-pod paths translated through ``CDI_VOLUME_MOUNTS`` as in the launcher. It waits for the
log to appear, copies what is written, and ends (after copying the rest) when the launcher's status
file reports a final phase, when the launcher process is gone, or on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from cdi.podenv import PathMap

POLL = 0.1
_stop = False


def _on_term(signum: int, frame: FrameType | None) -> None:
    global _stop
    _stop = True


def _launcher_done(status_file: Path) -> bool:
    """The launcher reported a final phase, or its process no longer exists."""
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return False
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    pid = status.get("launcherPid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return False


def follow(log: Path, status_file: Path, out: int) -> None:
    """Copy ``log`` to the file descriptor ``out`` until the launcher is done."""
    f = None
    try:
        while True:
            done = _stop or _launcher_done(status_file)
            if f is None and log.exists():
                f = open(log, "rb")  # noqa: SIM115 - held for the whole loop
            if f is not None:
                while chunk := f.read(65536):
                    os.write(out, chunk)
            if done:
                return
            time.sleep(POLL)
    finally:
        if f is not None:
            f.close()


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    paths = PathMap(os.environ)
    workdir = os.environ.get("LAUNCHER_WORK_DIR") or os.getcwd()
    log = Path(paths(os.environ.get("GUEST_CONSOLE_LOG") or os.path.join(workdir, "guest-console.log")))
    status = Path(paths(os.environ.get("LAUNCHER_STATUS_FILE") or os.path.join(workdir, "launcher-status.json")))
    follow(log, status, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
