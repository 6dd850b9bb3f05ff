"""The upload token API of a cluster: `upload.cdi.kubevirt.io/v1beta1` as an aggregated API server.

In CDI, UploadTokenRequest is not a CRD: kube-apiserver's aggregation layer (an APIService) forwards
`/apis/upload.cdi.kubevirt.io/v1beta1/...` to CDI's own API server, which signs the token. This is
that server for the chart (`cdi upload-api`, beside the upload proxy, with the same token key):

- who is asking: kube-apiserver connects with its front-proxy client certificate (signed by the
  requestheader CA of `kube-system/extension-apiserver-authentication`; no other client gets past
  the TLS handshake) and names the user in `X-Remote-User`, `X-Remote-Group` and `X-Remote-Extra-*`;
- may they: a SubjectAccessReview for `create uploadtokenrequests.upload.cdi.kubevirt.io` in the
  namespace (the aggregation layer authorizes nothing itself), refused 403 as kube words it;
- the answer: the embedded server's own (`cdi.apiserver.upload_tokens.token_request`), 201.

Discovery (`/apis`, the group, the version) tells the aggregator what is served. kube's
requestheader-allowed-names are not checked: any certificate of the requestheader CA is accepted.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from cdi.api.registry import Registry
from cdi.api.upload import UPLOAD_GROUP, UPLOADTOKENREQUEST
from cdi.apiserver import discovery
from cdi.apiserver.clone_admission import Authorizes
from cdi.apiserver.errors import ApiServerError, BadRequest, Forbidden, Unauthorized, to_status
from cdi.apiserver.rbac import Attributes, User
from cdi.apiserver.upload_tokens import token_request
from cdi.uploadtoken import Signer

log = logging.getLogger(__name__)

Obj = dict[str, Any]
VERSION = "v1beta1"


def remote_user(headers: Any) -> User:
    """The user kube-apiserver's front proxy names (X-Remote-*); 401 when it names none."""
    name = headers.get("x-remote-user")
    if not name:
        raise Unauthorized("Unauthorized: the request names no user (X-Remote-User)")
    groups = tuple(headers.getlist("x-remote-group"))
    extra: dict[str, list[str]] = {}
    for key, value in headers.items():
        if key.lower().startswith("x-remote-extra-"):
            extra.setdefault(urllib.parse.unquote(key[len("x-remote-extra-"):]).lower(), []).append(value)
    return User(name, "", groups, extra)


def create_app(signer: Signer, authorizer: Authorizes) -> FastAPI:
    registry = Registry([UPLOADTOKENREQUEST])
    app = FastAPI(title="cdi upload API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiServerError)
    async def _error(request: Request, err: ApiServerError) -> JSONResponse:
        code, body = to_status(err)
        return JSONResponse(body, status_code=code)

    @app.get("/healthz")
    async def _healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/apis")
    async def _apis() -> JSONResponse:
        return JSONResponse(discovery.api_group_list(registry))

    @app.get(f"/apis/{UPLOAD_GROUP}")
    async def _group() -> JSONResponse:
        return JSONResponse(discovery.api_group(registry, UPLOAD_GROUP))

    @app.get(f"/apis/{UPLOAD_GROUP}/{VERSION}")
    async def _version() -> JSONResponse:
        return JSONResponse(discovery.resource_list(registry, UPLOAD_GROUP, VERSION))

    @app.post(f"/apis/{UPLOAD_GROUP}/{VERSION}/namespaces/{{ns}}/uploadtokenrequests")
    async def _create(request: Request, ns: str) -> Response:
        user = remote_user(request.headers)
        attrs = Attributes(user, "create", True, group=UPLOAD_GROUP, version=VERSION, namespace=ns,
                           resource="uploadtokenrequests")
        decision = await run_in_threadpool(authorizer.authorize, attrs)
        if not decision.allowed:
            raise Forbidden.of(UPLOADTOKENREQUEST, "", f'User "{user.name}" cannot create resource '
                               f'"uploadtokenrequests" in API group "{UPLOAD_GROUP}" in the namespace "{ns}"')
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise BadRequest(f"Can not unmarshal Request body to struct: {e}") from e
        out = token_request(body, ns, signer)
        if request.query_params.get("dryRun") == "All":
            out["status"] = {}
        log.info("upload token request user=%s ns=%s pvc=%s", user.name, ns, out["spec"]["pvcName"])
        return JSONResponse(out, status_code=201)

    return app
