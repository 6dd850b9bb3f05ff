"""The web console's server: the pages under ``/ui/``, and the API, upload proxy and VM console
websocket relayed on the same origin.

The browser only ever talks to this server, so the page needs no CORS and no second certificate.
It holds no credentials of its own: every relayed request carries the user's own
``Authorization`` header to the API server (or the upload token to the upload proxy), so RBAC
decides what each person sees. A websocket cannot carry that header from a browser; the page
sends the token as kube-apiserver's ``base64url.bearer.authorization.k8s.io.<token>``
subprotocol and this server turns it back into the header upstream.

Sign-in: ``cdi serve`` prints a link with a one-time code in the URL fragment (fragments never
reach a server log or a Referer). The page posts the code to ``/ui/session`` and gets the admin
token once; the code is then spent. Anyone else pastes a token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
CODE_LIFETIME = 3600.0  # a sign-in link left unused in a terminal stops working after an hour
TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io."
CONSOLE_PROTOCOL = "plain.kubevirt.io"
UPLOAD_PREFIXES = ("/v1beta1/upload", "/v1alpha1/upload")
# a relayed watch ends after this long (kube's own clients pick timeoutSeconds the same way); the page
# then lists and watches again with the token it holds now, so a removed user's stream does not last
WATCH_TIMEOUT_RANGE = (1800, 3600)
SIGN_IN_LINK_SPENT = "This sign-in link was already used or has expired; ask for a new one or sign in with a token."
DRAIN_TIMEOUT = 120.0  # how long an upload whose upstream failed is read on before the answer
TOKEN_REFUSED = "the token was not accepted: sign in again"
# request headers passed upstream; cookies and the browser's own headers stay here
REQUEST_HEADERS = ("authorization", "content-type", "accept", "content-range", "upload-length",
                   "x-cdi-content-type", "content-length")
RESPONSE_HEADERS = ("content-type", "content-encoding", "content-range", "upload-offset", "upload-length",
                    "warning", "retry-after", "content-length")
SECURITY_HEADERS = {
    # scripts only from here (no inline code, no CDN); xterm sets inline styles on its elements
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def static_dir() -> Path:
    return Path(str(resources.files("cdi.console") / "static"))


@dataclass
class SignInCode:
    """One code, exchanged once for the admin token, then spent."""

    value: str
    expires: float
    spent: bool = False


class SignIn:
    def __init__(self, admin_token: str, lifetime: float = CODE_LIFETIME) -> None:
        self._admin_token = admin_token
        self._lifetime = lifetime
        self._codes: list[SignInCode] = []
        self._lock = threading.Lock()

    def new_code(self) -> str:
        code = SignInCode(secrets.token_urlsafe(32), time.monotonic() + self._lifetime)
        with self._lock:
            self._codes.append(code)
        return code.value

    def exchange(self, offered: str) -> str | None:
        """The admin token for a fresh code (once), else None."""
        now = time.monotonic()
        with self._lock:
            found = None
            for code in self._codes:  # compare with each in constant time
                if hmac.compare_digest(code.value.encode(), offered.encode()):
                    found = code
            self._codes = [c for c in self._codes if not c.spent and c.expires > now and c is not found]
            if found is None or found.spent or found.expires <= now:
                return None
            found.spent = True
            return self._admin_token


class SecurityHeaders:
    """Adds the page's security headers to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, _relative(v) if k.lower() == b"location" else v)
                           for k, v in message.get("headers") or []]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _relative(location: bytes) -> bytes:
    """A redirect's target as a path on this server: an absolute one would echo the request's Host
    header, which anyone can set."""
    parts = urllib.parse.urlsplit(location.decode("latin-1"))
    return urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment)).encode("latin-1")


def has_dot_segments(path: str) -> bool:
    """True for a path with a ``.`` or ``..`` segment (also percent-encoded): relayed as it is, it would
    reach the upstream's other paths (``/apis/../metrics``), not only the prefixes the console serves."""
    decoded = path
    for _ in range(3):  # %252e%252e decodes twice
        decoded = urllib.parse.unquote(decoded)
    return any(seg in (".", "..") for seg in re.split(r"[/\\]", decoded))


def relayed_query(query: str) -> str:
    """The query sent upstream: a watch gets a timeoutSeconds of at most WATCH_TIMEOUT_RANGE."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if not any(k == "watch" and v.lower() in ("1", "true") for k, v in pairs):
        return query
    bound = random.randint(*WATCH_TIMEOUT_RANGE)
    asked = [v for k, v in pairs if k == "timeoutSeconds"]
    if asked and asked[-1].isdigit() and 0 < int(asked[-1]) <= bound:
        return query
    pairs = [(k, v) for k, v in pairs if k != "timeoutSeconds"] + [("timeoutSeconds", str(bound))]
    return urllib.parse.urlencode(pairs)


class Relay:
    """Streams requests to an upstream HTTPS server (the API server or the upload proxy)."""

    def __init__(self, base_url: str, context: ssl.SSLContext) -> None:
        self.base_url = base_url
        # no read timeout: watches and uploads stream for as long as they last
        self.client = httpx.AsyncClient(base_url=base_url, verify=context,
                                        timeout=httpx.Timeout(30.0, read=None, write=None), trust_env=False)

    async def handle(self, request: Request) -> Response:
        raw_path = (request.scope.get("raw_path") or b"").decode("latin-1")
        if has_dot_segments(request.url.path) or has_dot_segments(raw_path):
            return _status(404, "the console relays no path with . or .. segments")
        headers = {k: v for k, v in request.headers.items() if k in REQUEST_HEADERS}
        has_body = request.method in ("POST", "PUT", "PATCH") or "content-length" in headers
        query = relayed_query(request.url.query)
        upstream = self.client.build_request(
            request.method, request.url.path, params=query.encode() or None, headers=headers,
            content=_body(request) if has_body else None)
        try:
            resp = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            log.info("relay failed url=%s%s error=%s", self.base_url, request.url.path, repr(e))
            if has_body:
                await _drain(request)
            return _status(502, f"the console could not relay {request.url.path} to {self.base_url}: "
                                f"{str(e) or type(e).__name__} (the upstream went away; try again)")
        out = {k: v for k, v in resp.headers.items() if k in RESPONSE_HEADERS}
        if request.method == "HEAD":
            await resp.aclose()
            return Response(status_code=resp.status_code, headers=out)
        out.pop("content-length", None)

        async def relayed() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.HTTPError as e:  # the upstream went away mid-answer: only this stream ends
                log.info("relay ended early url=%s%s error=%s", self.base_url, request.url.path, e)
            finally:  # also when the browser went away mid-stream: the upstream watch ends with it
                await resp.aclose()

        return StreamingResponse(relayed(), status_code=resp.status_code, headers=out)

    async def aclose(self) -> None:
        await self.client.aclose()


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _drain(request: Request) -> None:
    """Reads (and drops) what is left of a request body before answering early. The HTTP/2 server
    forgets a stream once answered, and a DATA frame still arriving for it would tear down the whole
    connection, with the page's other streams (its watches)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while True:
                message = await request.receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return


def _status(code: int, message: str) -> JSONResponse:
    reason = {502: "BadGateway", 400: "BadRequest", 401: "Unauthorized", 404: "NotFound"}.get(code, "Error")
    return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                         "reason": reason, "code": code}, status_code=code)


def token_from_protocols(protocols: list[str]) -> str | None:
    for p in protocols:
        if p.startswith(TOKEN_PROTOCOL):
            encoded = p[len(TOKEN_PROTOCOL):]
            try:
                token = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True).decode()
            except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
                return None
            return token or None
    return None


def close_reason(message: str) -> str:
    """A websocket close reason holds at most 123 bytes: keep what a person needs of kube's message
    (who may not do what), dropping the object's name prefix and the API group when too long."""
    text = message
    if len(text.encode()) > 123:
        text = re.sub(r' in API group "[^"]*"', "", text)
    if len(text.encode()) > 123 and "is forbidden: " in text:
        text = text.split("is forbidden: ", 1)[1]
    return text.encode()[:123].decode(errors="ignore")


def refusal(handshake_status: int, probe_status: int | None, probe_message: str) -> tuple[int, str]:
    """The websocket close (4000 + HTTP status, reason) for a refused console: an unknown token is
    4401 whatever the handshake said, so the page asks the user to sign in again."""
    if 401 in (handshake_status, probe_status):
        return 4401, TOKEN_REFUSED
    if probe_status == handshake_status and probe_message:
        return 4000 + handshake_status, probe_message
    return 4000 + handshake_status, f"the API server refused the console ({handshake_status}): is the instance running?"


class ConsoleBridge:
    """The VM serial console websocket, relayed to the API server with the user's token as a header."""

    def __init__(self, api_url: str, context: ssl.SSLContext, api: Relay) -> None:
        self.ws_base = "wss://" + api_url.split("://", 1)[1]
        self.context = context
        self.api = api

    async def handle(self, ws: WebSocket) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        protocols = [p.strip() for p in (ws.headers.get("sec-websocket-protocol") or "").split(",")]
        token = token_from_protocols(protocols)
        await ws.accept(subprotocol=CONSOLE_PROTOCOL if CONSOLE_PROTOCOL in protocols else None)
        if not token:
            await ws.close(code=4401, reason="sign in first: no token was offered")
            return
        path = ws.url.path
        try:
            upstream = await connect(self.ws_base + path, ssl=self.context, subprotocols=[CONSOLE_PROTOCOL],  # type: ignore[list-item]
                                     additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=15,
                                     max_size=None)
        except InvalidStatus as e:
            close_code, why = await self._why(path, token, e.response.status_code)
            await ws.close(code=close_code, reason=close_reason(why))
            return
        except (OSError, InvalidHandshake, TimeoutError) as e:
            await ws.close(code=4502, reason=f"the console could not reach the API server: {e}"[:120])
            return
        log.info("console relay opened path=%s", path)

        async def to_guest() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                await upstream.send(msg.get("bytes") or (msg.get("text") or "").encode())

        async def to_browser() -> None:
            async for data in upstream:
                await ws.send_bytes(data if isinstance(data, bytes) else data.encode())

        tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_browser())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                with contextlib.suppress(ConnectionClosed, WebSocketDisconnect, OSError):
                    t.result()
        finally:
            for t in tasks:
                t.cancel()
            await upstream.close()
            with contextlib.suppress(RuntimeError):
                await ws.close(code=1000, reason="the console closed")

    async def _why(self, path: str, token: str, code: int) -> tuple[int, str]:
        """The close code and message for a refused handshake (a websocket refusal carries no message):
        the same path asked over HTTP meets the same access check and answers with kube's Status."""
        try:
            resp = await self.api.client.get(path, headers={"Authorization": f"Bearer {token}"})
            message = str(resp.json().get("message") or resp.reason_phrase)
            return refusal(code, resp.status_code, message)
        except (httpx.HTTPError, ValueError):
            return refusal(code, None, "")


def create_app(*, api_url: str, upload_url: str, ca_pem: bytes, sign_in: SignIn) -> tuple[Starlette, list[Relay]]:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    api = Relay(api_url, context)
    uploads = Relay(upload_url, context)
    bridge = ConsoleBridge(api_url, context, api)

    async def session(request: Request) -> Response:
        try:
            body = await request.json()
            code = str(body["code"])
        except (ValueError, KeyError, TypeError):
            return _status(400, "send {\"code\": \"...\"} from the sign-in link")
        token = sign_in.exchange(code)
        if token is None:
            log.warning("console sign-in code refused client=%s", request.client.host if request.client else "?")
            return _status(401, SIGN_IN_LINK_SPENT)
        log.info("console sign-in code exchanged")
        return JSONResponse({"token": token}, headers={"Cache-Control": "no-store"})

    async def root(_: Request) -> Response:
        return RedirectResponse("/ui/")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [
        Route("/", root),
        Route("/ui", root),
        Route("/ui/session", session, methods=["POST"]),
        Mount("/ui", StaticFiles(directory=str(static_dir()), html=True)),
        WebSocketRoute("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console",
                       bridge.handle),
        # /api and /apis themselves too: kubectl asks them for discovery, and a redirect breaks it
        Route("/api", api.handle, methods=methods),
        Route("/api/{rest:path}", api.handle, methods=methods),
        Route("/apis", api.handle, methods=methods),
        Route("/apis/{rest:path}", api.handle, methods=methods),
        Route("/version", api.handle, methods=["GET"]),
        *[Route(p + "{rest:path}", uploads.handle, methods=["POST", "PUT", "HEAD", "OPTIONS"])
          for p in UPLOAD_PREFIXES],
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # paths are relayed as asked, never redirected
    app.add_middleware(SecurityHeaders)
    return app, [api, uploads]


class ConsoleServer:
    """The console on its own address, over the API server's certificate, run by hypercorn in a thread.

    HTTP/2 (hypercorn, ALPN h2) matters here: each open page keeps several watches streaming, and a
    browser allows only six HTTP/1.1 connections per host, shared by all its tabs, so a second tab (or
    the streams of a page just left, which Chromium keeps for a while) would stall every request.
    """

    def __init__(self, *, api_url: str, upload_url: str, ca_pem: bytes, cert_file: str, key_file: str,
                 admin_token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        from hypercorn.config import Config

        self.host = host
        self.sign_in = SignIn(admin_token)
        self.app, self._relays = create_app(api_url=api_url, upload_url=upload_url, ca_pem=ca_pem,
                                            sign_in=self.sign_in)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)  # connections wait in the backlog until the loop runs
        self.port: int = self._sock.getsockname()[1]
        self._config = Config()
        # hypercorn owns (and closes) the descriptor it is given: a duplicate, so ours stays ours
        self._config.bind = [f"fd://{os.dup(self._sock.fileno())}"]
        self._config.errorlog = log  # its messages through our logging, not its own stderr handler
        self._config.certfile = cert_file
        self._config.keyfile = key_file
        self._config.graceful_timeout = 2
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/ui/"

    def sign_in_link(self) -> str:
        """A new one-time link signing the admin in (the code rides in the fragment, never sent in a request)."""
        return f"{self.url}#code={self.sign_in.new_code()}"

    def _run(self) -> None:
        from hypercorn.asyncio import serve

        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        self._loop.call_soon(self._started.set)
        try:
            self._loop.run_until_complete(serve(self.app, self._config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
            for relay in self._relays:
                self._loop.run_until_complete(relay.aclose())
        finally:
            self._loop.close()

    def start(self) -> ConsoleServer:
        if not (static_dir() / "index.html").exists():
            raise RuntimeError(f"the console's pages are missing from {static_dir()}")
        self._thread = threading.Thread(target=self._run, name=f"console-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"web console did not start on {self.url}")
        log.info("web console started url=%s", self.url)
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
