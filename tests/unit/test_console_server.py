"""The web console server's small parts: one-time sign-in codes, the websocket token, close reasons."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest

from cdi.console.server import (
    TOKEN_PROTOCOL,
    WATCH_TIMEOUT_RANGE,
    SignIn,
    close_reason,
    create_app,
    refusal,
    token_from_protocols,
)


def test_a_sign_in_code_gives_the_admin_token_once() -> None:
    sign_in = SignIn("admin-token")
    code = sign_in.new_code()
    assert sign_in.exchange("wrong") is None
    assert sign_in.exchange(code[:-1]) is None
    assert sign_in.exchange(code) == "admin-token"
    assert sign_in.exchange(code) is None, "a spent code must not work again"


def test_an_expired_sign_in_code_is_refused() -> None:
    sign_in = SignIn("admin-token", lifetime=-1)
    assert sign_in.exchange(sign_in.new_code()) is None


def test_each_link_has_its_own_code() -> None:
    sign_in = SignIn("t")
    a, b = sign_in.new_code(), sign_in.new_code()
    assert a != b and len(a) >= 40
    assert sign_in.exchange(b) == "t"
    assert sign_in.exchange(a) == "t"


def test_the_token_rides_in_the_websocket_subprotocol() -> None:
    token = "abc.def-ghi_jkl+/="
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    assert token_from_protocols(["plain.kubevirt.io", TOKEN_PROTOCOL + encoded]) == token
    assert token_from_protocols(["plain.kubevirt.io"]) is None
    assert token_from_protocols([TOKEN_PROTOCOL + "!!!"]) is None


def test_close_reasons_keep_who_may_not_do_what_within_123_bytes() -> None:
    message = ('virtualmachineinstances.subresources.kubevirt.io "vm" is forbidden: User "bob" cannot get resource '
               '"virtualmachineinstances/console" in API group "subresources.kubevirt.io" in the namespace "default"')
    reason = close_reason(message)
    assert len(reason.encode()) <= 123
    assert 'User "bob" cannot get resource "virtualmachineinstances/console"' in reason
    assert close_reason("short") == "short"
    assert len(close_reason("é" * 200).encode()) <= 123


# --- the relay, against a real plain-HTTP upstream that echoes what reached it -------------------------

class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/api/v1/dies-midway"):  # an upstream that dies after part of its answer
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _call(app: Any, path: str, *, raw_path: str | None = None, query: str = "", host: str = "evil.example",
          method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app, the path exactly as sent (no client normalises it)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "2", "method": method, "scheme": "https",
             "path": path, "raw_path": (raw_path or path).encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 443)}
    sent: list[dict[str, Any]] = []
    fed = False

    async def receive() -> dict[str, Any]:
        nonlocal fed
        if not fed:
            fed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.fixture
def app(echo_url: str) -> Any:
    application, _ = create_app(api_url=echo_url, upload_url=echo_url, ca_pem=certifi.contents().encode(),
                                sign_in=SignIn("admin-token"))
    return application


@pytest.mark.parametrize("path", ["/api", "/api/", "/apis", "/apis/", "/api/v1/namespaces"])
def test_api_discovery_paths_are_relayed_not_redirected(app: Any, path: str) -> None:
    status, headers, body = _call(app, path)
    assert status == 200 and "location" not in headers, (status, headers)
    assert json.loads(body)["path"] == path


@pytest.mark.parametrize("path,raw", [
    ("/apis/../metrics", None), ("/api/../version", None), ("/api/v1/./x", None),
    ("/apis/%2e%2e/metrics", "/apis/%2e%2e/metrics"), ("/apis/x/..", None), ("/v1beta1/upload/../../metrics", None),
])
def test_paths_with_dot_segments_are_refused_before_relaying(app: Any, path: str, raw: str | None) -> None:
    status, _, body = _call(app, path, raw_path=raw, method="POST" if path.startswith("/v1beta1") else "GET")
    assert status == 404, body
    assert b"metrics" not in body or b"segments" in body


def test_paths_outside_the_relayed_prefixes_are_not_relayed(app: Any) -> None:
    for path in ("/metrics", "/healthz", "/openapi/v2"):
        status, _, _ = _call(app, path)
        assert status == 404, path


def test_no_redirect_echoes_the_host_header(app: Any) -> None:
    for path in ("/", "/ui", "/ui/vendor"):
        status, headers, _ = _call(app, path, host="evil.example")
        if "location" in headers:
            assert "evil.example" not in headers["location"] and headers["location"].startswith("/"), headers
    assert _call(app, "/")[1]["location"] == "/ui/"


def test_a_relayed_watch_is_bounded_in_time(app: Any) -> None:
    _, _, body = _call(app, "/api/v1/namespaces/a/pods", query="watch=1&resourceVersion=5")
    relayed = urllib.parse.parse_qs(urllib.parse.urlsplit(json.loads(body)["path"]).query)
    assert relayed["resourceVersion"] == ["5"]
    assert WATCH_TIMEOUT_RANGE[0] <= int(relayed["timeoutSeconds"][0]) <= WATCH_TIMEOUT_RANGE[1]
    _, _, body = _call(app, "/api/v1/namespaces/a/pods", query="watch=true&timeoutSeconds=99999999")
    assert int(urllib.parse.parse_qs(urllib.parse.urlsplit(json.loads(body)["path"]).query)["timeoutSeconds"][0]) \
        <= WATCH_TIMEOUT_RANGE[1]
    _, _, body = _call(app, "/api/v1/namespaces/a/pods", query="watch=1&timeoutSeconds=5")
    assert "timeoutSeconds=5" in json.loads(body)["path"], "a shorter timeout asked for is kept"
    _, _, body = _call(app, "/api/v1/namespaces/a/pods", query="limit=5")
    assert "timeoutSeconds" not in json.loads(body)["path"], "a list is not a watch"


def test_a_spent_sign_in_link_says_so_without_signing_out(app: Any) -> None:
    status, _, body = _call(app, "/ui/session", method="POST", body=b'{"code": "spent"}')
    assert status == 401
    assert json.loads(body)["message"] == ("This sign-in link was already used or has expired; "
                                           "ask for a new one or sign in with a token.")


def test_a_refused_token_closes_the_vm_console_with_4401() -> None:
    assert refusal(403, 401, "Unauthorized") == (4401, "the token was not accepted: sign in again")
    assert refusal(401, None, "") == (4401, "the token was not accepted: sign in again")
    assert refusal(403, 403, 'User "bob" cannot get') == (4403, 'User "bob" cannot get')
    code, reason = refusal(404, None, "")
    assert code == 4404 and "is the instance running?" in reason


def test_a_taken_console_port_names_the_listener_and_the_port() -> None:
    from cdi.cli.runtime import ListenerFailed, _listening
    from cdi.console.server import ConsoleServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenerFailed) as failed, _listening("web console", "127.0.0.1", port, "--console-port"):
            ConsoleServer(api_url="https://127.0.0.1:1", upload_url="https://127.0.0.1:1",
                          ca_pem=certifi.contents().encode(), cert_file="-", key_file="-", admin_token="t", port=port)
    assert str(failed.value).startswith(f"the web console could not listen on 127.0.0.1:{port}: ")
    assert failed.value.flag == "--console-port" and failed.value.port == port


def test_an_upstream_dying_mid_answer_ends_only_that_stream(app: Any) -> None:
    """The error stays in the relay (it must not reach the HTTP/2 server, which would drop the page's
    whole connection with its other streams)."""
    status, _, body = _call(app, "/api/v1/dies-midway")
    assert status == 200 and 0 < len(body) < 100000


def _dying_upstream(sock: socket.socket) -> None:
    """A watch streams 30 lines; an upload is read for 1 MiB, then the server dies (RST), mid-upload."""
    def handle(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            if not (d := conn.recv(65536)):
                return
            data += d
        if data.startswith(b"GET"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(30):
                line = b'{"n":%d}\n' % i
                conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
                time.sleep(0.05)
            conn.sendall(b"0\r\n\r\n")
            conn.close()
            return
        got = len(data)
        while got < 1 << 20 and (d := conn.recv(65536)):
            got += len(d)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def test_an_upstream_dying_mid_upload_fails_only_that_stream(tmp_path: Path) -> None:
    """Over one HTTP/2 connection, as a page holds it: the upload whose server died gets a 502 saying so,
    and the watch beside it streams on to its end."""
    from cdi.apiserver.tls import ensure_serving_cert
    from cdi.console.server import ConsoleServer

    cert = ensure_serving_cert(tmp_path)
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(16)
    threading.Thread(target=_dying_upstream, args=(upstream,), daemon=True).start()
    url = f"http://127.0.0.1:{upstream.getsockname()[1]}"
    console = ConsoleServer(api_url=url, upload_url=url, ca_pem=cert.ca_pem, cert_file=str(cert.cert_file),
                            key_file=str(cert.key_file), admin_token="t").start()
    base = f"https://127.0.0.1:{console.port}"

    async def page() -> tuple[list[str], httpx.Response]:
        context = ssl.create_default_context(cafile=str(cert.ca_file))
        async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as client:
            lines: list[str] = []

            async def watch() -> None:
                async with client.stream("GET", base + "/api/v1/namespaces/a/pods?watch=1") as resp:
                    assert resp.http_version == "HTTP/2"
                    lines.extend([line async for line in resp.aiter_lines() if line])

            async def body() -> AsyncIterator[bytes]:
                for _ in range(64):
                    yield b"x" * 65536
                    await asyncio.sleep(0.002)

            watching = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            upload = await client.post(base + "/v1beta1/upload-form-async", content=body())
            await watching
            return lines, upload

    try:
        lines, upload = asyncio.run(page())
    finally:
        console.stop()
        upstream.close()
    assert upload.status_code == 502
    assert "could not relay /v1beta1/upload-form-async" in upload.json()["message"]
    assert len(lines) == 30, "the watch on the same connection must not be torn down"
