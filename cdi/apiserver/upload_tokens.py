"""``upload.cdi.kubevirt.io/v1beta1`` UploadTokenRequest: create returns a signed upload token.

``POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests`` with
``spec.pvcName`` answers 201 with the same object and ``status.token``, as CDI's API server does;
nothing is stored, and every other verb is refused (405). The token is signed by the signer registered
with ``set_token_signer`` (``cdi serve`` registers one whose key lives in its data directory); an API
server without one answers 503, so no token is ever issued with a key nobody can check.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request, Response

from cdi.api.upload import UPLOAD_GROUP, UPLOADTOKENREQUEST
from cdi.apiserver import limits, options
from cdi.apiserver.errors import STATUS_TABLE, ApiServerError, BadRequest, Invalid, MethodNotAllowed
from cdi.apiserver.routes import json_response
from cdi.uploadtoken import Signer

log = logging.getLogger(__name__)

PATH = f"/apis/{UPLOAD_GROUP}/v1beta1/namespaces/{{ns}}/uploadtokenrequests"
Obj = dict[str, Any]


class ServiceUnavailable(ApiServerError):
    """503: no signer registered."""


STATUS_TABLE.setdefault(ServiceUnavailable, (503, "ServiceUnavailable"))


def token_request(body: Any, ns: str, signer: Signer) -> Obj:
    """The answer to a create: the request with its token, or Invalid/BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be an UploadTokenRequest object")
    meta: Obj = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    name = str(meta.get("name") or "")
    if not name and meta.get("generateName"):
        name = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
    if meta.get("namespace") not in (None, "", ns):
        raise BadRequest("the namespace of the provided object does not match the namespace sent on the request")
    spec: Obj = body["spec"] if isinstance(body.get("spec"), dict) else {}
    pvc = spec.get("pvcName")
    if not name:
        raise Invalid.of(UPLOADTOKENREQUEST, name, ["metadata.name: Required value: name or generateName is required"])
    if not isinstance(pvc, str) or not pvc:
        raise Invalid.of(UPLOADTOKENREQUEST, name, ["spec.pvcName: Required value: Missing PVC name"])
    token = signer.upload_token(ns, pvc)
    log.info("upload token issued ns=%s pvc=%s request=%s", ns, pvc, name)
    return {"apiVersion": UPLOADTOKENREQUEST.api_version, "kind": UPLOADTOKENREQUEST.kind,
            "metadata": {**meta, "name": name, "namespace": ns, "creationTimestamp": None},
            "spec": {"pvcName": pvc}, "status": {"token": token}}


def install(app: FastAPI) -> None:
    """Add the UploadTokenRequest route to an app made by ``create_app`` (before its catch-all routes)."""
    app.state.upload_token_signer = None

    @app.post(PATH)
    async def _create(request: Request, ns: str) -> Response:
        signer: Signer | None = app.state.upload_token_signer
        if signer is None:
            raise ServiceUnavailable("this API server issues no upload tokens: no signing key is configured")
        opts = options.parse("CreateOptions", request.query_params)
        body = limits.decode(await request.body(), "Can not unmarshal Request body to struct")
        out = token_request(body, ns, signer)
        if opts.dry_run:
            out["status"] = {}
        return json_response(out, 201)

    @app.api_route(PATH, methods=["GET", "PUT", "PATCH", "DELETE"])
    @app.api_route(PATH + "/{name}", methods=["GET", "PUT", "PATCH", "DELETE", "POST"])
    async def _other(request: Request, ns: str) -> Response:
        raise MethodNotAllowed(f"the server does not allow this method on the requested resource "
                               f"({request.method} uploadtokenrequests.{UPLOAD_GROUP})")


def set_token_signer(app: FastAPI, signer: Signer | None) -> None:
    """Register (or remove) the signer of upload tokens (which signs clone tokens too, as in CDI)."""
    app.state.upload_token_signer = signer
    clone_check = getattr(app.state, "clone_check", None)
    if clone_check is not None:
        clone_check.signer = signer
