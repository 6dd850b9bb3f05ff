"""Errors of the API server and their mapping to kube-apiserver `Status` objects.

Domain code raises subclasses of `ApiServerError` carrying the words kube-apiserver would use; the
HTTP layer turns them into a `Status` body with one table (`STATUS_TABLE`) from error class to HTTP
code and reason. Anything that is not an `ApiServerError` is a 500 logged with its traceback.
"""

from __future__ import annotations

from typing import Any

from cdi.api.registry import ResourceKind

Obj = dict[str, Any]

CAUSE_REASONS = {
    "Invalid value": "FieldValueInvalid",
    "Required value": "FieldValueRequired",
    "Forbidden": "FieldValueForbidden",
    "Unsupported value": "FieldValueNotSupported",
    "Duplicate value": "FieldValueDuplicate",
    "Not found": "FieldValueNotFound",
    "Too long": "FieldValueTooLong",
}


class ApiServerError(Exception):
    """Root of all API server errors: a message a client can act on, plus optional details."""

    def __init__(self, message: str, *, details: Obj | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def _details(kind: ResourceKind, name: str) -> Obj:
    d: Obj = {"name": name, "kind": kind.plural}
    if kind.group:
        d["group"] = kind.group
    return d


class NotFound(ApiServerError):
    @classmethod
    def of(cls, kind: ResourceKind, name: str) -> NotFound:
        return cls(f'{kind.group_resource} "{name}" not found', details=_details(kind, name))


class AlreadyExists(ApiServerError):
    @classmethod
    def of(cls, kind: ResourceKind, name: str) -> AlreadyExists:
        return cls(f'{kind.group_resource} "{name}" already exists', details=_details(kind, name))


class Conflict(ApiServerError):
    @classmethod
    def modified(cls, kind: ResourceKind, name: str) -> Conflict:
        return cls(
            f'Operation cannot be fulfilled on {kind.group_resource} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            details=_details(kind, name),
        )

    @classmethod
    def precondition(cls, kind: ResourceKind, name: str, what: str) -> Conflict:
        return cls(
            f'Operation cannot be fulfilled on {kind.group_resource} "{name}": {what}',
            details=_details(kind, name),
        )


class Invalid(ApiServerError):
    """422: field errors `<field>: <detail>` become `details.causes`."""

    @classmethod
    def of(cls, kind: ResourceKind, name: str, errors: list[str]) -> Invalid:
        details: Obj = {"name": name, "kind": kind.kind}
        if kind.group:
            details["group"] = kind.group
        return cls.named(kind.qualified_kind, name, errors, details=details)

    @classmethod
    def named(cls, qualified_kind: str, name: str, errors: list[str], *, details: Obj | None = None) -> Invalid:
        """`<Kind.group> "<name>" is invalid: ...` for any kind, e.g. CreateOptions.meta.k8s.io."""
        causes = []
        for e in errors:
            fld, sep, msg = e.partition(": ")
            if not sep:
                fld, msg = "", e
            reason = next((r for p, r in CAUSE_REASONS.items() if msg.startswith(p)), "FieldValueInvalid")
            causes.append({"reason": reason, "message": msg, "field": fld})
        joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        if details is None:
            kind, _, group = qualified_kind.partition(".")
            details = {"name": name, "kind": kind}
            if group:
                details["group"] = group
        details = {**details, "causes": causes}
        return cls(f'{qualified_kind} "{name}" is invalid: {joined}', details=details)


class BadRequest(ApiServerError):
    pass


class Unauthorized(ApiServerError):
    pass


class Forbidden(ApiServerError):
    pass


class MethodNotAllowed(ApiServerError):
    pass


class NotAcceptable(ApiServerError):
    pass


class UnsupportedMediaType(ApiServerError):
    pass


class Expired(ApiServerError):
    """410 Gone: the asked resourceVersion is older than the kept watch history."""

    @classmethod
    def too_old(cls, asked: int, oldest: int) -> Expired:
        return cls(f"too old resource version: {asked} ({oldest})")


class Timeout(ApiServerError):
    pass


class RequestEntityTooLarge(ApiServerError):
    """413: a request body over kube's limit, or an object larger than the store accepts."""


class InternalError(ApiServerError):
    """500 with a message safe to show; the cause stays in the server log."""


# Error class -> (HTTP status, Status.reason). The single place where domain errors meet HTTP.
STATUS_TABLE: dict[type[ApiServerError], tuple[int, str]] = {
    BadRequest: (400, "BadRequest"),
    Unauthorized: (401, "Unauthorized"),
    Forbidden: (403, "Forbidden"),
    NotFound: (404, "NotFound"),
    MethodNotAllowed: (405, "MethodNotAllowed"),
    NotAcceptable: (406, "NotAcceptable"),
    AlreadyExists: (409, "AlreadyExists"),
    Conflict: (409, "Conflict"),
    Expired: (410, "Expired"),
    UnsupportedMediaType: (415, "UnsupportedMediaType"),
    RequestEntityTooLarge: (413, "RequestEntityTooLarge"),
    Invalid: (422, "Invalid"),
    InternalError: (500, "InternalError"),
    Timeout: (504, "Timeout"),
}


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A meta/v1 Status with status Failure."""
    out: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = details
    return out


def to_status(err: ApiServerError) -> tuple[int, Obj]:
    """The HTTP code and Status body for an error."""
    for cls in type(err).__mro__:
        if cls in STATUS_TABLE:
            code, reason = STATUS_TABLE[cls]
            return code, status_object(code, reason, err.message, err.details)
    return 500, status_object(500, "InternalError", err.message, err.details)
