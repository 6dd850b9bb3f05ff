"""A container's view of the local node's volume contract, shared by every worker program.

On the local node a pod's containers are plain processes that cannot see mounts, so the node
passes ``CDI_VOLUME_MOUNTS``, a JSON object ``{mountPath or devicePath: host path}``, and a worker
translates every in-pod path it is given through it (``PathMap``). In a real cluster the variable
is absent and every path is used as it is; on the local node a path outside the pod's mounts and
working directory is refused, so that a pod cannot read or write the host's files. Low level on
purpose: the importer and the VM launcher both import it, and it imports nothing of the control plane.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Mapping


class MountsError(ValueError):
    """``CDI_VOLUME_MOUNTS`` is present but is not a JSON object of strings."""


class PathMap:
    """Translates in-pod paths to host paths with the longest matching mount (identity without one)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        text = env.get("CDI_VOLUME_MOUNTS", "")
        try:
            mounts = json.loads(text) if text else {}
        except ValueError as e:
            raise MountsError(f"CDI_VOLUME_MOUNTS is not valid JSON: {e}") from e
        if not isinstance(mounts, dict):
            raise MountsError("CDI_VOLUME_MOUNTS must be a JSON object {mountPath: hostPath}")
        self.mounts: dict[str, str] = {k.rstrip("/") or "/": str(v) for k, v in mounts.items()}
        self.confined = bool(text)  # the local node's pods: only their mounts and working directory

    def __call__(self, path: str) -> str:
        """The host path of ``path``; on the local node, a path outside the pod is a MountsError.

        A pod on the local node is a host process, so an in-pod path that is neither under one of
        its mounts nor under its working directory would reach the host's own files (``/etc``,
        another pod's volume): refused, with ``..`` resolved first so that it cannot climb out.
        """
        if not self.confined:
            return path
        clean = posixpath.normpath(path) if path.startswith("/") else path
        for mount in sorted(self.mounts, key=len, reverse=True):
            if clean == mount or clean.startswith(mount.rstrip("/") + "/"):
                return self.mounts[mount] + clean[len(mount):]
        workdir = os.path.realpath(os.getcwd())
        full = os.path.realpath(clean)
        if full == workdir or full.startswith(workdir + "/"):
            return full
        raise MountsError(f"{path} is outside the pod's volumes ({', '.join(sorted(self.mounts)) or 'none'})")

    def below(self, path: str) -> list[str]:
        """Host paths of ``path`` and of every mount inside it (e.g. /extraheaders/secret0)."""
        prefix = path.rstrip("/") + "/"
        inside = [host for mount, host in sorted(self.mounts.items()) if mount.startswith(prefix)]
        try:
            return [self(path), *inside]
        except MountsError:
            return inside

    def exists(self, path: str) -> bool:
        try:
            return path in self.mounts or os.path.exists(self(path))
        except MountsError:
            return False


def write_termination(payload: dict[str, object], env: Mapping[str, str] | None = None) -> None:
    """Write a worker's JSON termination message to ``$TERMINATION_MESSAGE_PATH`` (kubelet's default
    ``/dev/termination-log`` otherwise), where the controller reads how the run ended. Best effort: a
    message that cannot be written is logged, and the exit code still tells."""
    path = (os.environ if env is None else env).get("TERMINATION_MESSAGE_PATH", "/dev/termination-log")
    try:
        with open(path, "w") as f:
            json.dump(payload, f)
    except OSError as e:
        logging.getLogger(__name__).warning("cannot write termination message path=%s error=%s", path, e)
