"""The launcher's JSON status file, the one thing a VMI controller reads to follow a guest.

Each change rewrites the whole file through a temporary file and ``os.replace``, so a reader never
sees half a document. ``read_status`` is the reader's side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

PHASES = ("Scheduled", "Running", "Succeeded", "Failed")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"phase": "Scheduled", "startedAt": _now()}

    def update(self, **fields: Any) -> None:
        phase = fields.get("phase")
        if phase is not None and phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.data.update(fields)
        self._write()

    def finish(self, phase: str, **fields: Any) -> None:
        self.update(phase=phase, finishedAt=_now(), **fields)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def read_status(path: Path | str) -> dict[str, Any] | None:
    """The launcher's last status, or None before it wrote one."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None
