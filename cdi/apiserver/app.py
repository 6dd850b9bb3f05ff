"""The FastAPI application of the embedded API server: settings, authentication, routes.

`create_app(settings)` wires the store, the object semantics, discovery, OpenAPI and the resource
handlers into one app. Every request must carry `Authorization: Bearer <token>`: the admin token
(superuser), a static user's token or a ServiceAccount token (`authn`), and RBAC must allow what
it asks (`rbac`, with kube's default roles from `bootstrap_policy`); errors become kube `Status`
objects through `errors.to_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdi import metrics
from cdi.api import default_registry
from cdi.api.registry import Registry
from cdi.apiserver import (
    bootstrap_policy,
    crds,
    discovery,
    kubevirt_subresources,
    openapi,
    openapi_v2,
    reviews,
    upload_tokens,
)
from cdi.apiserver.authn import Authenticator, StaticTokens
from cdi.apiserver.clone_admission import DATASOURCES, CloneSourceCheck
from cdi.apiserver.errors import ApiServerError, NotFound, status_object, to_status
from cdi.apiserver.hooks import Hooks, LogProvider
from cdi.apiserver.limits import BodyLimit, allow_deep_documents
from cdi.apiserver.objects import Objects
from cdi.apiserver.rbac import Authorizer
from cdi.apiserver.rbac_admission import EscalationCheck
from cdi.apiserver.routes import JSON, ResourceHandlers, json_response
from cdi.apiserver.serviceaccounts import DEFAULT_ISSUER, TokenIssuer, keep_default_service_accounts
from cdi.apiserver.store import Store

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """Settings of the embedded API server."""

    # The admin's bearer token (user "admin" in system:masters, allowed everything). Required; an
    # empty token is refused at start.
    token: str
    # SQLite database file holding the objects (":memory:" keeps nothing across restarts).
    db_path: str = ":memory:"
    # Number of watch events kept for watches that resume from an older resourceVersion; a watch
    # from before the kept history gets 410 Gone.
    watch_history: int = 1000
    # Seconds between BOOKMARK events on an idle watch that asked for them.
    bookmark_interval: float = 15.0
    # Serve aggregated discovery (apidiscovery.k8s.io/v2) when asked; False forces clients to the
    # legacy per-group discovery documents.
    aggregated_discovery: bool = True
    # Namespaces that exist from the start.
    initial_namespaces: tuple[str, ...] = field(default=("default", "kube-system"))
    # Static users: kube's token file (`token,user,uid,"group1,group2"` per line), read again when
    # it changes. None: only the admin token and ServiceAccount tokens are known.
    users_file: str | None = None
    # PEM file of the EC P-256 key signing ServiceAccount tokens (created, owner-only, when missing).
    # None: a key made for this process, so its tokens do not survive a restart.
    service_account_key_file: str | None = None
    # The `iss` of ServiceAccount tokens, also the audience they are issued for by default.
    service_account_issuer: str = DEFAULT_ISSUER

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the API server needs a non-empty bearer token")
        if self.watch_history < 1:
            raise ValueError("watch_history must be at least 1")
        if self.bookmark_interval <= 0:
            raise ValueError("bookmark_interval must be positive")


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes a 500 Status on a connection that stays usable.

    An exception handler for `Exception` would answer but then re-raise to the server, which closes
    the keep-alive connection without saying so: the client's next request on it fails.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # The exception's text may name files, queries or internals: it goes to the log only.
            log.exception("internal error method=%s path=%s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for a Status: the server can only drop the connection
            message = "Internal error occurred: the server could not complete the request (see its log)"
            await json_response(status_object(500, "InternalError", message), 500)(scope, receive, send)


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    """Build the API server app; `registry` defaults to `cdi.api.default_registry()`."""
    registry = registry or default_registry()
    crds.register(registry)
    allow_deep_documents()
    store = Store(settings.db_path, history=settings.watch_history)
    objects = Objects(store, registry)
    for ns in settings.initial_namespaces:
        objects.ensure_namespace(ns)
    bootstrap_policy.ensure(objects)
    crds.ensure(objects, registry)
    authorizer = Authorizer(store)
    clone_check = CloneSourceCheck(authorizer, lambda ns: store.get("/namespaces", "", ns) is not None,
                                   lambda ns, name: store.get(DATASOURCES, ns, name))
    objects.admission += [EscalationCheck(authorizer), clone_check]
    issuer = TokenIssuer(objects, key_file=settings.service_account_key_file,
                         issuer=settings.service_account_issuer)
    authenticator = Authenticator(settings.token, StaticTokens(settings.users_file), issuer)
    hooks = Hooks()
    handlers = ResourceHandlers(objects, registry, hooks, bookmark_interval=settings.bookmark_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service_accounts = asyncio.create_task(keep_default_service_accounts(objects))
        yield
        store.hub.close()  # end open watches so the server can stop
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(service_accounts, 5)

    app = FastAPI(
        title="cdi embedded API server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.clone_check = clone_check
    app.state.store = store
    app.state.objects = objects
    app.state.registry = registry
    app.state.hooks = hooks
    app.state.metrics_registry = None
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit)
    app.add_middleware(reviews.AccessFilter, authenticator=authenticator, authorizer=authorizer)
    app.state.authorizer = authorizer
    kubevirt_subresources.install(app, objects, registry)  # before the catch-all /apis/{group} routes
    reviews.install(app, authorizer, issuer)  # likewise
    upload_tokens.install(app)

    @app.exception_handler(ApiServerError)
    async def _api_error(request: Request, exc: ApiServerError) -> Response:
        code, body = to_status(exc)
        log.debug(
            "error method=%s path=%s code=%d message=%s", request.method, request.url.path, code, exc.message
        )
        return json_response(body, code)

    def _discovery(request: Request, core: bool, legacy: dict[str, Any]) -> Response:
        version = discovery.aggregated_version(request.headers.get("accept"))
        if version and settings.aggregated_discovery:
            media = discovery.AGGREGATED_V2 if version == "v2" else discovery.AGGREGATED_V2BETA1
            return json_response(discovery.aggregated(registry, core=core, version=version), media_type=media)
        return json_response(legacy)

    @app.get("/api")
    async def _api(request: Request) -> Response:
        host = request.headers.get("host", "127.0.0.1")
        return _discovery(request, True, discovery.api_versions(host))

    @app.get("/apis")
    async def _apis(request: Request) -> Response:
        return _discovery(request, False, discovery.api_group_list(registry))

    @app.get("/api/v1")
    async def _api_v1() -> Response:
        return json_response(discovery.resource_list(registry, "", "v1"))

    @app.get("/apis/{group}")
    async def _apis_group(group: str) -> Response:
        if group not in registry.groups():
            raise NotFound("the server could not find the requested resource")
        return json_response(discovery.api_group(registry, group))

    @app.get("/apis/{group}/{version}")
    async def _apis_gv(group: str, version: str) -> Response:
        if version not in registry.groups().get(group, []):
            raise NotFound("the server could not find the requested resource")
        return json_response(discovery.resource_list(registry, group, version))

    @app.get("/version")
    async def _version() -> Response:
        return json_response(discovery.VERSION_INFO)

    @app.get("/healthz")
    @app.get("/readyz")
    @app.get("/livez")
    async def _health() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/metrics")
    async def _metrics() -> Response:
        registry = app.state.metrics_registry
        body = metrics.exposition(registry) if registry is not None else b""
        return Response(body, media_type=metrics.CONTENT_TYPE)

    @app.get("/openapi/v2")
    async def _openapi_v2(request: Request) -> Response:
        media = openapi_v2.negotiate(request.headers.get("accept"))
        doc = openapi_v2.document(registry)
        if media == openapi_v2.PROTOBUF:
            # kube answers with the legacy name: Go's mime parser refuses the '@' of the new one.
            return Response(openapi_v2.to_protobuf(doc), media_type=openapi_v2.PROTOBUF_LEGACY)
        return json_response(doc)

    @app.get("/openapi/v3")
    async def _openapi_root() -> Response:
        return json_response(openapi.root_document(registry))

    @app.get("/openapi/v3/{path:path}")
    async def _openapi_gv(path: str) -> Response:
        parts = path.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) == 2 and parts[1] == "v1":
            return json_response(openapi.gv_document(registry, "", "v1"))
        if parts[:1] == ["apis"] and len(parts) == 3 and parts[2] in registry.groups().get(parts[1], []):
            return json_response(openapi.gv_document(registry, parts[1], parts[2]))
        raise NotFound("the server could not find the requested resource")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    @app.api_route("/api/v1/{path:path}", methods=methods)
    async def _core(request: Request, path: str) -> Response:
        return await handlers.handle(request, "", "v1", path)

    @app.api_route("/apis/{group}/{version}/{path:path}", methods=methods)
    async def _grouped(request: Request, group: str, version: str, path: str) -> Response:
        return await handlers.handle(request, group, version, path)

    log.info("api server app created kinds=%d db=%s", len(list(registry)), settings.db_path)
    return app


def set_log_provider(app: FastAPI, provider: LogProvider | None) -> None:
    """Register the function serving `pods/log` on an app made by `create_app`."""
    hooks: Hooks = app.state.hooks
    hooks.set_log_provider(provider)


def set_metrics_registry(app: FastAPI, registry: CollectorRegistry | None) -> None:
    """What `/metrics` serves (CDI's metrics of the controllers running in this process)."""
    app.state.metrics_registry = registry


__all__ = ["JSON", "Settings", "create_app", "set_log_provider", "set_metrics_registry"]
