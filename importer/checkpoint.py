"""Resume points of an interrupted import, so that a new process continues where a killed one stopped.

A raw image read straight from a source that continues at an offset (an http(s) server that honours
ranges, a ranged upload) can be resumed: the bytes written are then exactly the bytes of the source up
to the last durable offset. A qcow2 converted as it streams from such a source (an upload sent whole)
can be resumed too: its point is an offset in the qcow2 file, and the converter's saved state
(``qcow2_resume``, its sha256 in ``state``) and its spool live in companion files beside the point.
The point names the URL, the entity validator (ETag or Last-Modified, or an upload's size), the target
and its capacity; any difference and the import starts over. It lives beside a file target, or in the
working directory for a block device.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

# Bytes between durable resume points (each costs an fdatasync of the target): at most this many, and
# at least a 16th of the image, so that an image smaller than the maximum still gets resume points
# (with a fixed 256 MiB one, a killed import of a smaller image started again from byte 0).
INTERVAL = int(os.environ.get("CDI_RESUME_INTERVAL", 256 << 20))
MIN_INTERVAL = 1 << 20


def interval_for(size: int | None) -> int:
    """Bytes between resume points for an image of ``size`` bytes."""
    if size is None or "CDI_RESUME_INTERVAL" in os.environ:
        return INTERVAL
    return max(MIN_INTERVAL, min(INTERVAL, size // 16))


@dataclass
class Checkpoint:
    url: str
    validator: str
    size: int | None
    target: str
    capacity: int | None
    offset: int
    format: str = "raw"  # "qcow2": ``offset`` is in the qcow2 file, the converter's state is beside
    state: str | None = None  # the sha256 of the qcow2 converter's saved state
    prefix: str | None = None  # qcow2: the digest of the file's bytes up to ``offset`` (qcow2_resume.Prefix)


def path_for(target_path: str, kind: str, workdir: str | None = None) -> str:
    if kind == "file":
        head, tail = os.path.split(os.path.abspath(target_path))
        return os.path.join(head, f".{tail}.cdi-resume.json")
    digest = hashlib.sha1(os.path.abspath(target_path).encode()).hexdigest()[:12]
    return os.path.join(workdir or os.getcwd(), f".cdi-resume-{digest}.json")


def state_path(path: str) -> str:
    """The qcow2 converter's saved state beside the point at ``path``."""
    return path + ".qcow2-state"


def spool_path(path: str) -> str:
    """The qcow2 converter's spool (bytes no table claimed yet) beside the point at ``path``."""
    return path + ".spool"


def load(path: str) -> Checkpoint | None:
    try:
        with open(path) as f:
            return Checkpoint(**json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.warning("ignoring unreadable resume point path=%s error=%s", path, e)
        return None


def save(path: str, point: Checkpoint) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(point), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(path: str) -> None:
    """Remove the point and its companions (the point first: without it they are never read)."""
    for name in (path, spool_path(path), *glob.glob(glob.escape(state_path(path)) + "*")):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
