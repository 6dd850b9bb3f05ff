"""The webhook server over HTTPS: `/mutate` and `/validate` answer AdmissionReviews (`review.py`).

kube-apiserver only calls webhooks over TLS, so the server always runs with a certificate and key
(the chart's Secret, signed by the CA in the webhook configurations' `caBundle`). `/healthz` is the
probe. A body that is not JSON or not an AdmissionReview request is answered 400 with a Status, as
kube-apiserver then reports the webhook call as failed (and applies the failurePolicy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import BadRequest
from cdi.apiserver.limits import MAX_DEPTH, allow_deep_documents, decode
from cdi.tlsserver import TlsServer
from cdi.webhook.review import Check, Reviewer, ReviewError, bad_request

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's own request limit is 3 MiB


def create_app(kinds: Iterable[ResourceKind], checks: Sequence[Check] = ()) -> FastAPI:
    reviewer = Reviewer(kinds, checks)
    allow_deep_documents()  # as the embedded server: documents up to kube's depth limit are decoded
    app = FastAPI(title="cdi admission webhooks", docs_url=None, redoc_url=None, openapi_url=None)

    async def _review(request: Request, *, mutating: bool) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse(bad_request(f"request body larger than {MAX_BODY} bytes"), status_code=400)
        try:
            review: Any = decode(body, "the AdmissionReview")  # as the embedded server: too deep is a 400
            # the checks may ask the API server (blocking calls): off the event loop
            answer = await run_in_threadpool(reviewer.mutate if mutating else reviewer.validate, review)
        except RecursionError:
            log.warning("bad admission request path=%s error=nested too deeply", request.url.path)
            return JSONResponse(bad_request(f"the AdmissionReview: exceeded max depth of {MAX_DEPTH}"),
                                status_code=400)
        except (BadRequest, ValueError, ReviewError) as e:
            log.warning("bad admission request path=%s error=%s", request.url.path, e)
            return JSONResponse(bad_request(str(e)), status_code=400)
        return JSONResponse(answer)

    @app.post("/mutate")
    async def _mutate(request: Request) -> JSONResponse:
        return await _review(request, mutating=True)

    @app.post("/validate")
    async def _validate(request: Request) -> JSONResponse:
        return await _review(request, mutating=False)

    @app.get("/healthz")
    async def _healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app


class WebhookServer(TlsServer):
    """The webhook app over TLS (`cdi.tlsserver`)."""

    def __init__(self, kinds: Iterable[ResourceKind], *, cert_file: str, key_file: str, host: str = "127.0.0.1",
                 port: int = 0, checks: Sequence[Check] = ()) -> None:
        super().__init__(create_app(kinds, checks), cert_file=cert_file, key_file=key_file, host=host, port=port,
                         name="webhook")

    def start(self) -> WebhookServer:
        super().start()
        return self
