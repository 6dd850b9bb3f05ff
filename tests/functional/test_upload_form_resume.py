"""A form upload that declares its file's size (``Upload-Length``, as the web console sends it) resumes
like a raw one after a drop; a file part of another size is refused. In-process upload server, real TLS."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.digest import volume_digest
from tests.functional.test_upload_server import Pki, _form, post, start
from tests.support import images


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pki]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDI_RESUME_INTERVAL", raising=False)
    yield Pki(tmp_path)


def test_a_form_part_of_another_size_than_declared_is_refused(pki: Pki, tmp_path: Path) -> None:
    server = start(pki, tmp_path / "disk.img", 8 << 20)
    try:
        body, headers = _form(b"x" * 4096)
        code, text = post(server, pki.client_context(), body, "/v1beta1/upload-form",
                          {**headers, "Upload-Length": "5000"})
        # found while streaming: a stream failure, answered as CDI answers those (500, with the reason)
        assert code == 500, text
        assert "holds 4096 bytes, not the 5000 its Upload-Length declares" in text
        code, text = post(server, pki.client_context(), body, "/v1beta1/upload-form",
                          {**headers, "Upload-Length": "4000"})
        assert code == 500 and "holds more than the 4000 bytes its Upload-Length declares" in text, text
        code, text = post(server, pki.client_context(), body, "/v1beta1/upload-form", {**headers, "Upload-Length": "x"})
        assert code == 400 and "Upload-Length 'x' is not a byte count" in text, text
    finally:
        server.shutdown()


def test_a_form_upload_with_its_size_declared_continues_after_a_drop(pki: Pki, tmp_path: Path) -> None:
    image = images.make_raw(tmp_path / "src.raw", 8 << 20, seed=3, data_ratio=0.9)
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    server = start(pki, target, 8 << 20)
    port = server.server_address[1]
    ctx = pki.client_context()
    try:
        body, headers = _form(data)
        head = body[: body.index(data)]
        # send the form's headers and 5 MiB of the file, then drop the connection
        raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        request = (f"POST /v1beta1/upload-form-async HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                   f"Content-Length: {len(body)}\r\nUpload-Length: {len(data)}\r\n\r\n").encode()
        raw.sendall(request + head + data[: 5 << 20])
        point = target.with_name(f".{target.name}.cdi-resume.json")
        deadline = time.monotonic() + 20
        while not point.exists() and time.monotonic() < deadline:  # a durable resume point, then the cut
            time.sleep(0.02)
        raw.close()
        deadline = time.monotonic() + 20
        while server.state.busy and time.monotonic() < deadline:  # until the cut upload has failed
            time.sleep(0.05)
        assert not server.state.busy
        offset = 0
        while time.monotonic() < deadline:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            conn.request("HEAD", "/v1beta1/upload-async")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            offset = int(resp.getheader("Upload-Offset") or 0)
            if offset and resp.getheader("Upload-Length") == str(len(data)):
                break
            time.sleep(0.1)
        assert 0 < offset <= 5 << 20, offset
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        conn.request("PUT", "/v1beta1/upload-async", body=data[offset:],
                     headers={"Content-Range": f"bytes {offset}-{len(data) - 1}/{len(data)}",
                              "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        conn.close()
        assert server.state.finished.wait(30)
        reference = images.padded(data, target.stat().st_size, tmp_path / "ref.raw")
        assert volume_digest(str(target)) == volume_digest(str(reference))
    finally:
        server.shutdown()
