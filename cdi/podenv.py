"""A container's view of the local node's volume contract, shared by every worker program.

On the local node a pod's containers are plain processes that cannot see mounts, so the node
passes ``CDI_VOLUME_MOUNTS``, a JSON object ``{mountPath or devicePath: host path}``, and a worker
translates every in-pod path it is given through it (``PathMap``). In a real cluster the variable
is absent and every path is used as it is. Low level on purpose: the importer and the VM launcher
both import it, and it imports nothing of the control plane.
"""

from __future__ import annotations

import json
import os
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

    def __call__(self, path: str) -> str:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if path == mount or path.startswith(mount + "/"):
                return self.mounts[mount] + path[len(mount):]
        return path

    def below(self, path: str) -> list[str]:
        """Host paths of ``path`` and of every mount inside it (e.g. /extraheaders/secret0)."""
        prefix = path.rstrip("/") + "/"
        return [self(path)] + [host for mount, host in sorted(self.mounts.items()) if mount.startswith(prefix)]

    def exists(self, path: str) -> bool:
        return path in self.mounts or os.path.exists(self(path))
