"""The one-line start-up error of a command whose listening port cannot be had."""

from __future__ import annotations

import errno


def port_problem(flag: str, port: int, address: str, error: OSError, *, zero: str = "0 (any free port)") -> str:
    """``--port 8443: address already in use; pick another port or 0 ...``: names the flag the user set,
    so the fix is plain (a second replica on one host, a leftover process, a port below 1024)."""
    if error.errno == errno.EADDRINUSE:
        return f"{flag} {port}: address already in use on {address}; pick another port or {zero}"
    if error.errno == errno.EACCES:
        return f"{flag} {port}: permission denied on {address} (ports below 1024 need privileges); pick another port"
    return f"{flag} {port}: cannot listen on {address}: {error.strerror or error}"
