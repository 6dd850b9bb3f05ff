"""Answers to `admission.k8s.io/v1` AdmissionReview requests, without HTTP.

kube-apiserver sends one AdmissionReview per request it admits: `request.uid`, `kind`, `operation`
(CREATE, UPDATE, DELETE, CONNECT), `object` and, for an update or delete, `oldObject`. The answer
is an AdmissionReview of the same apiVersion whose `response` echoes the uid and says `allowed`;
a refusal carries a meta/v1 Status (code, reason, message and the field causes), a mutation a
base64 RFC 6902 JSON Patch with `patchType: JSONPatch`.

The checks are the embedded API server's own (`cdi.api.admission`): the mutating review applies
the kind's defaults, the validating review runs the kind's validation and words a refusal as the
embedded server does (`DataVolume.cdi.kubevirt.io "x" is invalid: spec...`, code 422). Deletes,
connects and subresource writes (`status`) have nothing to check and are allowed; so is a kind the
webhook does not serve, with a warning, since refusing it would block a cluster on a misconfigured
webhook rule rather than on anything wrong with the object.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jsonpatch

from cdi.api import admission
from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import ApiServerError, Invalid, status_object, to_status
from cdi.apiserver.rbac import CURRENT_USER, User

log = logging.getLogger(__name__)

Obj = dict[str, Any]
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ADMITTED_OPERATIONS = ("CREATE", "UPDATE")
_WEBHOOK_PREFIX = re.compile(r'^admission webhook "[^"]+" denied the request: ')
# An admission check of the embedded server (e.g. the clone check): raises ApiServerError to refuse,
# may add to the object (the clone token).
Check = Callable[[ResourceKind, Obj, "Obj | None"], None]


class ReviewError(Exception):
    """The body is not an AdmissionReview request this server can answer (HTTP 400)."""


class Reviewer:
    """Reviews for a set of kinds (the custom kinds the chart's webhook configurations name)."""

    def __init__(self, kinds: Iterable[ResourceKind], checks: Sequence[Check] = ()) -> None:
        self.kinds = {(k.group, k.version, k.kind): k for k in kinds}
        self.checks = list(checks)  # run by the mutating review, as CDI's datavolume-mutate does

    def mutate(self, review: Obj) -> Obj:
        return self._answer(review, mutating=True)

    def validate(self, review: Obj) -> Obj:
        return self._answer(review, mutating=False)

    def _answer(self, review: Obj, *, mutating: bool) -> Obj:
        request = _request(review)
        response: Obj = {"uid": request["uid"], "allowed": True}
        gvk = request.get("kind") or {}
        key = (str(gvk.get("group", "")), str(gvk.get("version", "")), str(gvk.get("kind", "")))
        kind = self.kinds.get(key)
        operation = request.get("operation")
        if kind is None:
            response["warnings"] = [f"the cdi webhook does not admit {key[2]} of "
                                    f"{key[0] or 'core'}/{key[1]}; check the webhook configuration's rules"]
        elif operation in ADMITTED_OPERATIONS and not request.get("subResource"):
            obj = request.get("object")
            if not isinstance(obj, dict):
                raise ReviewError(f"request.object must be an object for {operation}")
            old = request.get("oldObject") if operation == "UPDATE" else None
            if operation == "UPDATE" and not isinstance(old, dict):
                raise ReviewError("request.oldObject must be an object for UPDATE")
            if mutating:
                response.update(self._mutate(kind, request, obj, old))
            else:
                errors = admission.validation_errors(kind, copy.deepcopy(obj), copy.deepcopy(old))
                if errors:
                    name = str((obj.get("metadata") or {}).get("name") or request.get("name") or "")
                    _, status = to_status(Invalid.of(kind, name, errors))
                    response.update(allowed=False, status=_short(status))
        log.info("admission review uid=%s kind=%s op=%s name=%s/%s mutating=%s allowed=%s dryRun=%s",
                 request["uid"], key[2], operation, request.get("namespace", ""), request.get("name", ""),
                 mutating, response["allowed"], bool(request.get("dryRun")))
        return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}


    def _mutate(self, kind: ResourceKind, request: Obj, obj: Obj, old: Obj | None) -> Obj:
        """Defaults, then the checks on the defaulted object as the requesting user; a patch or a refusal."""
        changed = copy.deepcopy(obj)
        changed.setdefault("metadata", {}).setdefault("namespace", request.get("namespace", ""))
        admission.apply_defaults(kind, changed)
        info = request.get("userInfo") or {}
        token = CURRENT_USER.set(User(str(info.get("username") or ""), str(info.get("uid") or ""),
                                      tuple(info.get("groups") or ()), dict(info.get("extra") or {})))
        try:
            for check in self.checks:
                check(kind, changed, copy.deepcopy(old))
        except ApiServerError as e:
            _, status = to_status(e)
            # kube-apiserver words the refusal itself ('admission webhook "x" denied the request: ...'):
            # the embedded server's own wording of it must not be doubled
            status["message"] = _WEBHOOK_PREFIX.sub("", str(status.get("message", "")))
            return {"allowed": False, "status": _short(status)}
        except Exception as e:  # the cluster could not be asked: refuse, saying why (failurePolicy is for outages)
            log.exception("admission check failed kind=%s", kind.kind)
            message = f"cdi webhook could not check the request: {e}"
            return {"allowed": False, "status": _short(status_object(500, "InternalError", message))}
        finally:
            CURRENT_USER.reset(token)
        if "namespace" not in (obj.get("metadata") or {}):
            changed["metadata"].pop("namespace", None)  # ours, not the request's: no patch for it
        return _patch(obj, changed)


def _short(status: Obj) -> Obj:
    """A Status as an AdmissionResponse carries it: code, reason, message, details."""
    return {k: v for k, v in status.items() if k in ("code", "reason", "message", "details")}


def _request(review: Obj) -> Obj:
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise ReviewError("the body must be an AdmissionReview")
    if review.get("apiVersion") not in API_VERSIONS:
        raise ReviewError(f"unsupported AdmissionReview apiVersion {review.get('apiVersion')!r}; "
                          f"supported: {', '.join(API_VERSIONS)}")
    request = review.get("request")
    if not isinstance(request, dict) or not request.get("uid"):
        raise ReviewError("the AdmissionReview has no request with a uid")
    return request


def _patch(obj: Obj, changed: Obj) -> Obj:
    """The response fields of a mutation: a JSON Patch from `obj` to `changed`, if they differ."""
    patch = jsonpatch.make_patch(obj, changed).patch
    if not patch:
        return {}
    encoded = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"patchType": "JSONPatch", "patch": encoded}


def bad_request(message: str) -> Obj:
    """The Status answered (HTTP 400) when a body is not an AdmissionReview request."""
    return status_object(400, "BadRequest", message)
