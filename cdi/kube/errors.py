"""Errors of the API client, independent of the HTTP client underneath (STYLE.md 6).

``client.py`` wraps every ``kubernetes.client.ApiException`` into one of these, chaining the original,
so controllers catch ``NotFound`` or ``Conflict`` and never import the kubernetes package.
"""

from __future__ import annotations

import json


class ApiError(Exception):
    """An API request failed. ``status`` is the HTTP code (0 when the server was not reached)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: a stale resourceVersion on update, or the object already exists (``reason``)."""


class AlreadyExists(Conflict):
    pass


class Invalid(ApiError):
    pass


class Forbidden(ApiError):
    pass


class Gone(ApiError):
    """410: a watch's resourceVersion is too old; relist."""


def from_response(status: int, body: str | bytes | None, fallback: str = "") -> ApiError:
    """Map an HTTP status and a kube ``Status`` body to our error type."""
    message, reason = fallback or f"HTTP {status}", ""
    if body:
        try:
            data = json.loads(body)
            message = data.get("message") or message
            reason = data.get("reason") or ""
        except (ValueError, AttributeError):
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            message = text.strip()[:300] or message
    cls: type[ApiError] = ApiError
    if status == 404:
        cls = NotFound
    elif status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 422:
        cls = Invalid
    elif status in (401, 403):
        cls = Forbidden
    elif status == 410:
        cls = Gone
    return cls(message, status=status, reason=reason)


class PermanentError(Exception):
    """A reconcile failed in a way no retry can fix (a bad spec): record it and stop (STYLE.md 7).

    ``reason`` is a CamelCase word for conditions and events; the message says what to fix.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TemporaryError(Exception):
    """A reconcile cannot finish now; try again after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay
