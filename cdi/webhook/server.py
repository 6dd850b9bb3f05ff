"""The webhook server over HTTPS: `/mutate` and `/validate` answer AdmissionReviews (`review.py`).

kube-apiserver only calls webhooks over TLS, so the server always runs with a certificate and key
(the chart's Secret, signed by the CA in the webhook configurations' `caBundle`). `/healthz` is the
probe. A body that is not JSON or not an AdmissionReview request is answered 400 with a Status, as
kube-apiserver then reports the webhook call as failed (and applies the failurePolicy).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from cdi.api.registry import ResourceKind
from cdi.webhook.review import Check, Reviewer, ReviewError, bad_request

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's own request limit is 3 MiB


def create_app(kinds: Iterable[ResourceKind], checks: Sequence[Check] = ()) -> FastAPI:
    reviewer = Reviewer(kinds, checks)
    app = FastAPI(title="cdi admission webhooks", docs_url=None, redoc_url=None, openapi_url=None)

    async def _review(request: Request, *, mutating: bool) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse(bad_request(f"request body larger than {MAX_BODY} bytes"), status_code=400)
        try:
            review: Any = json.loads(body)
            # the checks may ask the API server (blocking calls): off the event loop
            answer = await run_in_threadpool(reviewer.mutate if mutating else reviewer.validate, review)
        except (ValueError, ReviewError) as e:  # json.JSONDecodeError is a ValueError
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


class WebhookServer:
    """The webhook app under uvicorn with TLS, in a background thread (tests) or in the foreground."""

    def __init__(self, kinds: Iterable[ResourceKind], *, cert_file: str, key_file: str, host: str = "127.0.0.1",
                 port: int = 0, checks: Sequence[Check] = ()) -> None:
        self.host = host
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                   socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(create_app(kinds, checks), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, ssl_certfile=cert_file, ssl_keyfile=key_file)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the calling thread until SIGTERM/SIGINT (uvicorn's handlers)."""
        log.info("webhook server listening url=%s", self.url)
        self._server.run(sockets=[self._sock])

    def start(self) -> WebhookServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"webhook-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"webhook server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
