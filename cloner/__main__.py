"""``python -m cloner``: the clone pod's program. Reads its job from the environment, clones, and writes a
JSON termination message (``{"ok": true, "result": {...}}`` or ``{"ok": false, "reason": ..., "message":
..., "permanent": ...}``) as the importer does.

Environment: ``CLONER_SOURCE`` (in-pod path of the source image or device), ``CLONER_SIZE`` (bytes
to clone; default all of the source), and either ``CLONER_TARGET`` (same-node copy;
``CLONER_TARGET_BLOCK=true`` for a Block target whose size is fixed; ``CLONER_REFLINK=false`` to
forbid sharing extents) or ``UPLOAD_URL`` with ``CLIENT_CERT``, ``CLIENT_KEY`` and ``SERVER_CA``
(host-assisted stream). ``CLONER_DIGEST=true`` adds the volume digest of the source (and, on the same
node, of the target); ``CLONER_DIGEST_SIZE`` is the size the target reads as (the source's digest then
covers zeros up to it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

from cdi.metrics import CLONE_PROGRESS, serve_worker_progress
from cdi.podenv import MountsError, PathMap, write_termination
from cloner.copy import clone
from cloner.digest import padded_digest
from cloner.stream import StreamError, send
from importer.digest import volume_digest

log = logging.getLogger("cloner")


class Progress:
    """Prints ``{"progress": "NN.NN%"}`` lines (what the controller reads), at most once a second."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = max(total, 1), 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 1.0 or self.done >= self.total:
            self.last = now
            print(json.dumps({"progress": f"{min(100.0, 100.0 * self.done / self.total):.2f}%"}), flush=True)



def source_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def run(env: Mapping[str, str]) -> dict[str, object]:
    paths = PathMap(env)
    source = paths(env["CLONER_SOURCE"])
    size = int(env.get("CLONER_SIZE") or 0) or source_size(source)
    progress = Progress(size)
    serve_worker_progress(CLONE_PROGRESS, lambda: min(100.0, 100.0 * progress.done / progress.total), env)
    started = time.monotonic()
    result: dict[str, object] = {"size": size}
    if env.get("UPLOAD_URL"):
        send(source, size, env["UPLOAD_URL"], cert=env["CLIENT_CERT"], key=env["CLIENT_KEY"], ca=env["SERVER_CA"],
             progress=progress)
        result["method"] = "stream"
    else:
        target = paths(env["CLONER_TARGET"])
        block = env.get("CLONER_TARGET_BLOCK", "").lower() == "true"
        result["method"] = clone(source, target, size, progress=progress, fixed_target=block,
                                 allow_reflink=env.get("CLONER_REFLINK", "true").lower() != "false")
        if env.get("CLONER_DIGEST", "").lower() == "true":
            result["digest"] = volume_digest(target, size)
    result["seconds"] = round(time.monotonic() - started, 3)
    if env.get("CLONER_DIGEST", "").lower() == "true":
        digest_size = max(size, int(env.get("CLONER_DIGEST_SIZE") or size))
        result["sourceDigestSize"] = digest_size
        result["sourceDigest"] = padded_digest(source, size, digest_size)
    return result


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        result = run(os.environ)
    except StreamError as e:
        log.error("clone stream failed message=%s", e)
        write_termination({"ok": False, "reason": "CloneStreamFailed", "message": str(e), "permanent": False})
        return 1
    except (MountsError, KeyError, ValueError, OSError) as e:
        log.error("clone failed message=%s", e)
        write_termination({"ok": False, "reason": "CloneFailed", "message": f"clone failed: {e}",
                      "permanent": isinstance(e, MountsError | KeyError | ValueError)})
        return 1
    log.info("clone done result=%s", json.dumps(result))
    write_termination({"ok": True, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
