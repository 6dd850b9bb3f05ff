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
from collections.abc import Iterable
from typing import Any

import jsonpatch

from cdi.api import admission
from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import Invalid, status_object, to_status

log = logging.getLogger(__name__)

Obj = dict[str, Any]
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ADMITTED_OPERATIONS = ("CREATE", "UPDATE")


class ReviewError(Exception):
    """The body is not an AdmissionReview request this server can answer (HTTP 400)."""


class Reviewer:
    """Reviews for a set of kinds (the custom kinds the chart's webhook configurations name)."""

    def __init__(self, kinds: Iterable[ResourceKind]) -> None:
        self.kinds = {(k.group, k.version, k.kind): k for k in kinds}

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
                response.update(_defaults(kind, obj))
            else:
                errors = admission.validation_errors(kind, copy.deepcopy(obj), copy.deepcopy(old))
                if errors:
                    name = str((obj.get("metadata") or {}).get("name") or request.get("name") or "")
                    code, status = to_status(Invalid.of(kind, name, errors))
                    status.pop("apiVersion")
                    status.pop("kind")
                    status.pop("metadata")
                    status.pop("status")
                    response.update(allowed=False, status=status)
        log.info("admission review uid=%s kind=%s op=%s name=%s/%s mutating=%s allowed=%s dryRun=%s",
                 request["uid"], key[2], operation, request.get("namespace", ""), request.get("name", ""),
                 mutating, response["allowed"], bool(request.get("dryRun")))
        return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}


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


def _defaults(kind: ResourceKind, obj: Obj) -> Obj:
    """The response fields of a mutation: a JSON Patch from `obj` to `obj` with defaults, if any."""
    defaulted = copy.deepcopy(obj)
    admission.apply_defaults(kind, defaulted)
    patch = jsonpatch.make_patch(obj, defaulted).patch
    if not patch:
        return {}
    encoded = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"patchType": "JSONPatch", "patch": encoded}


def bad_request(message: str) -> Obj:
    """The Status answered (HTTP 400) when a body is not an AdmissionReview request."""
    return status_object(400, "BadRequest", message)
