"""In-process hooks through which the rest of `cdi serve` plugs into the API server.

Today there is one: the provider of `pods/log`. The local node registers a function that returns
the log text of a pod's container (a string, or an iterable of chunks for `--follow`); it may raise
`cdi.apiserver.errors.NotFound` or `BadRequest` to answer with that Status, or return None for
"no logs". Without a provider every log request gets 404 "no logs".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogRequest:
    """What `kubectl logs` asked for (GET .../pods/{name}/log query parameters)."""

    namespace: str
    pod: str
    container: str | None
    follow: bool = False
    tail_lines: int | None = None
    timestamps: bool = False
    previous: bool = False
    since_seconds: int | None = None
    limit_bytes: int | None = None


LogChunks = str | bytes | Iterable[str | bytes]
LogProvider = Callable[[LogRequest], LogChunks | None]


class Hooks:
    """Registered hooks of one API server instance."""

    def __init__(self) -> None:
        self.log_provider: LogProvider | None = None

    def set_log_provider(self, provider: LogProvider | None) -> None:
        """Register (or with None, remove) the function serving pods/log."""
        log.info("pods/log provider %s", "registered" if provider else "removed")
        self.log_provider = provider
