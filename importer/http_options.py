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
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` to a pair; raises ValueError naming the bad header."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \r\n"):
        raise ValueError(f"invalid header {text!r}: write it as 'Name: value'")
    return name.strip(), value.strip()
