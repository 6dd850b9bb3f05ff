"""The upload proxy: checks the upload token, waits for the PVC's upload server, streams the body to it.

As CDI's cdi-uploadproxy: a request on one of CDI's upload paths must carry ``Authorization: Bearer
<token>``; a missing or malformed header is 400, a token that fails its signature or has expired is
401, a token that is not for uploading into a PVC is 400. The proxy then waits (up to 10 s, as CDI)
for the PVC to be ready for an upload (``cdi.kubevirt.io/storage.pod.ready``), answers 503 with the
reason when it does not exist, is no upload target or already finished, and forwards the request to
the upload server behind the PVC's Service, over TLS with a client certificate from the client
signer, streaming the body both ways and relaying the server's status. Archive PVCs get the archive
path. Error bodies are HTML-escaped; CORS headers let a browser upload with a form.
"""

from __future__ import annotations

import html
import http.client
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cdi.controller.upload_pod import ANN_CONTENT_TYPE, ANN_POD_READY, ANN_UPLOAD_TARGET, SERVICE_PORT, upload_name
from cdi.controller.upload_tls import CLIENT_NAME, CLIENT_SIGNER, SERVER_SIGNER, ensure_signers, issue, read_pair
from cdi.kube import PVC, Client
from cdi.uploadtoken import OPERATION_UPLOAD, TokenError, Validator
from uploadproxy.body import answered, close_lingering

log = logging.getLogger(__name__)

SYNC = ("/v1beta1/upload", "/v1alpha1/upload")
ASYNC = ("/v1beta1/upload-async", "/v1alpha1/upload-async")
FORM = ("/v1beta1/upload-form", "/v1alpha1/upload-form", "/v1beta1/upload-form-async", "/v1alpha1/upload-form-async")
PROXY_PATHS = (*SYNC, *ASYNC, *FORM)
AUTH = re.compile(r"(?i)^Bearer\s+([A-Za-z0-9\-\._~\+\/]+)$")
WAIT_READY = 10.0
WAIT_INTERVAL = 0.25
CONNECT_RETRY = 10.0
IDLE_TIMEOUT = float(os.environ.get("CDI_UPLOAD_IDLE_TIMEOUT") or 30)  # seconds without a byte from the client
CHUNK = 1 << 20
# upload-format and upload-prefix-digest: a qcow2 resume (what HEAD says is held, and the client's proof
# that it sends the rest of the same file)
RELAYED = ("content-range", "range", "upload-offset", "upload-length", "upload-format", "retry-after")
FORWARDED = ("content-type", "x-cdi-content-type", "content-range", "content-length", "transfer-encoding",
             "upload-length", "upload-prefix-digest")
# (namespace, service name, port) -> (address, port) of a ready pod behind the Service
Resolver = Callable[[str, str, int], tuple[str, int]]
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PUT, GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Range, X-CDI-Content-Type, Upload-Length, "
                                    "Upload-Prefix-Digest",
    "Access-Control-Expose-Headers": "Content-Range, Range, Upload-Offset, Upload-Length, Upload-Format",
}


class ClientGone(Exception):
    """The client's body stopped early: the upload server must see the cut, not wait for more."""


class EarlyAnswer(Exception):
    """The upload server answered before the whole body was sent (a refusal)."""


class NotReady(Exception):
    """The PVC cannot take an upload now (503 with this message)."""


class UploadClient:
    """TLS to the upload servers: their signer's CA, and a client certificate from the client signer."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="cdi-uploadproxy-")

    def context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ctx is None:
                ensure_signers(self.client)
                server_ca, _ = read_pair(self.client, SERVER_SIGNER)
                cert, key = issue(*read_pair(self.client, CLIENT_SIGNER), CLIENT_NAME, client=True)
                d = Path(self._dir.name)
                (d / "client.crt").write_bytes(cert)
                (d / "client.key").touch(mode=0o600)
                (d / "client.key").write_bytes(key)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_verify_locations(cadata=server_ca.decode())
                ctx.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))
                self._ctx = ctx
            return self._ctx


class ProxyHandler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        data = html.escape(text).encode()
        self.send_response(code)
        for k, v in {**CORS, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if code >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _head_reply(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in {**CORS, **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(200)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] == "/healthz":
            self._reply(200, "OK")
        else:
            self._reply(404, "not found")

    def do_PUT(self) -> None:  # noqa: N802
        self.do_POST()

    def do_HEAD(self) -> None:  # noqa: N802
        """How much of an interrupted upload the server holds (``Upload-Offset``), token checked as for POST."""
        self.do_POST()

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path not in PROXY_PATHS:
            self._reply(404, "not found")
            return
        header = self.headers.get("Authorization") or ""
        match = AUTH.match(header.strip())
        if not header or not match:
            self._reply(400)
            return
        try:
            data = self.server.validator.validate(match.group(1))
        except TokenError as e:
            log.info("upload token refused error=%s", e)
            self._reply(401)
            return
        if (data.operation != OPERATION_UPLOAD or not data.name or not data.namespace
                or data.resource.get("resource") != "persistentvolumeclaims"):
            log.info("bad upload token operation=%s resource=%s", data.operation, data.resource)
            self._reply(400)
            return
        try:
            pvc = self.server.wait_ready(data.namespace, data.name)
            target = self._target_path(pvc, data.name, path)
            address = self.server.resolve(data.namespace, upload_name(data.name), SERVICE_PORT)
        except NotReady as e:
            log.info("upload refused ns=%s pvc=%s reason=%s", data.namespace, data.name, e)
            self._reply(503, str(e))
            return
        except Exception as e:  # noqa: BLE001 - the service cannot be found: the client may try again
            log.info("no upload server ns=%s pvc=%s error=%s", data.namespace, data.name, e)
            self._reply(503, f"upload server for PVC {data.name} is not available: {e}")
            return
        self._forward(address, target, data.name)

    def _target_path(self, pvc: dict[str, Any], name: str, path: str) -> str:
        content_type = (pvc["metadata"].get("annotations") or {}).get(ANN_CONTENT_TYPE) or "kubevirt"
        if content_type == "kubevirt":
            return path
        if content_type == "archive":
            return "/v1alpha1/upload-archive" if "alpha" in path else "/v1beta1/upload-archive"
        raise NotReady(f"rejecting upload request for PVC {name} - upload content-type {content_type} is invalid")

    def _connect(self, address: tuple[str, int]) -> http.client.HTTPSConnection:
        deadline = time.monotonic() + CONNECT_RETRY
        while True:
            conn = http.client.HTTPSConnection(address[0], address[1], context=self.server.uploads.context(),
                                               timeout=60)
            try:
                conn.connect()
                return conn
            except ConnectionRefusedError:  # the server's process is starting
                conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _forward(self, address: tuple[str, int], path: str, name: str) -> None:
        try:
            conn = self._connect(address)
        except OSError as e:
            self._reply(503, f"cannot reach the upload server of PVC {name}: {e}")
            return
        try:
            conn.putrequest(self.command, path, skip_accept_encoding=True)
            for key in FORWARDED:
                if self.headers.get(key) is not None:
                    conn.putheader(key, self.headers[key])
            conn.endheaders()
            try:
                if self.command != "HEAD":
                    self._stream_body(conn)
            except (OSError, EarlyAnswer) as e:  # the server answered early (503, 409, 400): relay that
                log.info("upload server stopped reading the body pvc=%s error=%s", name, e)
                self.close_connection = True
            except ClientGone as e:
                log.warning("upload cut pvc=%s: %s", name, e)
                conn.close()  # the upload server sees the body end early and refuses it
                self.close_connection = True
                return
            resp = conn.getresponse()
            body = resp.read(1 << 16) if self.command != "HEAD" else b""
            headers = {k: v for k, v in resp.getheaders() if k.lower() in RELAYED}
            if self.command == "HEAD":
                self._head_reply(resp.status, headers)
            else:
                self._reply(resp.status, body.decode(errors="replace"), headers)
        except (OSError, http.client.HTTPException) as e:
            log.warning("upload forwarding failed pvc=%s error=%s", name, e)
            try:
                self._reply(502, f"upload to PVC {name} failed: {e}")
            except OSError:
                pass
        finally:
            conn.close()

    def _read_client(self, view: memoryview) -> int:
        try:
            return self.rfile.readinto(view) or 0
        except OSError as e:  # reset, or TLS closed without close_notify
            raise ClientGone(f"the client's connection broke: {e}") from e

    def _client_line(self) -> bytes:
        try:
            line = self.rfile.readline(8192)
        except OSError as e:
            raise ClientGone(f"the client's connection broke: {e}") from e
        if not line:
            raise ClientGone("the client closed the connection in the middle of its chunked body")
        return line

    def _stream_body(self, conn: http.client.HTTPSConnection) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:  # relay the chunked framing as it is: the server checks it
                line = self._client_line()
                _send(conn, line)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self._client_line()) not in (b"\r\n", b"\n", b""):
                        _send(conn, trailer)
                    _send(conn, b"\r\n")
                    return
                left = size + 2
                while left:
                    n = self._read_client(view[: min(CHUNK, left)])
                    if n == 0:
                        raise ClientGone("the client closed the connection in the middle of a chunk")
                    _send(conn, view[:n])
                    left -= n
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            n = self._read_client(view[: min(CHUNK, left)])
            if n == 0:
                raise ClientGone(f"the client closed the connection {left} bytes before the end of its body")
            _send(conn, view[:n])
            left -= n


def _send(conn: http.client.HTTPSConnection, data: bytes | memoryview) -> None:
    if answered(conn.sock):
        raise EarlyAnswer("the upload server answered before the end of the body")
    conn.send(data)


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], *, client: Client, validator: Validator, resolve: Resolver,
                 cert_file: str, key_file: str) -> None:
        self.client = client
        self.validator = validator
        self.resolve = resolve
        self.uploads = UploadClient(client)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        super().__init__(address, ProxyHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(60)
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.info("TLS handshake failed peer=%s error=%s", client_address, e)
            request.close()
            return
        request.settimeout(IDLE_TIMEOUT)  # a client that stops sending is cut: the upload server is freed
        try:
            super().finish_request(request, client_address)
        finally:
            close_lingering(request)

    def wait_ready(self, namespace: str, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_READY
        while True:
            pvc = self.client.find(PVC, namespace, name)
            if pvc is None:
                raise NotReady(f"rejecting Upload Request for PVC {name} that doesn't exist")
            ann = pvc["metadata"].get("annotations") or {}
            if ANN_UPLOAD_TARGET not in ann:
                raise NotReady(f"rejecting Upload Request for PVC {name} that is not an upload target")
            if ann.get("cdi.kubevirt.io/storage.pod.phase") == "Succeeded":
                raise NotReady(f"rejecting Upload Request for PVC {name} that already finished uploading")
            if ann.get(ANN_POD_READY) == "true":
                return pvc
            if time.monotonic() > deadline:
                raise NotReady(f"timed out waiting for the upload server of PVC {name} to be ready")
            time.sleep(WAIT_INTERVAL)


class UploadProxy:
    """The proxy on its own port and thread (``cdi serve`` starts one)."""

    def __init__(self, *, client: Client, public_key_pem: bytes, resolve: Resolver, cert_file: str, key_file: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = ProxyServer((host, port), client=client, validator=Validator(public_key_pem),
                                  resolve=resolve, cert_file=cert_file, key_file=key_file)
        self.host = host
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> UploadProxy:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"uploadproxy-{self.port}", daemon=True)
        self._thread.start()
        log.info("upload proxy started url=%s", self.url)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
