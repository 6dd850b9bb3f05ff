"""How to reach an http(s) source: CDI's http source fields as the importer receives them.

Kept apart from ``http_source`` so that jobs can be described without loading the HTTP client.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HttpOptions:
    """How to reach an HTTP source: CDI's http source fields, as the importer receives them."""

    user: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 30.0  # seconds to connect, or to wait for any byte
    retries: int = 5  # reconnects after errors that made no progress
    backoff: float = 0.5  # first pause before such a reconnect, doubled each time
    speed_limit: int = 16 << 10  # bytes/s; slower for speed_time seconds is a stall (0: no check)
    speed_time: float = 60.0
    max_stalled_retries: int = 3  # reconnects after stalls that made no progress
    architecture: str | None = None  # a registry image's platform, when not this machine's (CDI's platform)
    s3: bool = False  # an S3 object: requests signed with AWS SigV4 (user/password: accessKeyId/secretKey)


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` to a pair; raises ValueError naming the bad header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \r\n"):
        raise ValueError(f"invalid header {text!r}: write it as 'Name: value'")
    return name.strip(), value.strip()
