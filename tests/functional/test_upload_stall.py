"""A client that stops sending without closing (a half-open connection) does not hold the volume: the
upload server cuts it after its idle timeout, a second upload meanwhile gets a 503 that says why and
when to retry, and a resume then continues from the durable bytes. In-process upload server, real TLS."""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.cli.imageupload import Uploader
from importer.digest import volume_digest
from tests.functional.test_upload_server import Pki, _form, start
from tests.support import images


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pki]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDI_RESUME_INTERVAL", raising=False)
    yield Pki(tmp_path)


def _request(port: int, ctx: object, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)  # type: ignore[arg-type]
    conn.request(method, path, body=body if method != "HEAD" else None, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def test_a_stalled_upload_is_cut_after_its_idle_timeout_and_a_resume_continues(
        pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = images.make_raw(tmp_path / "src.raw", 8 << 20, seed=5, data_ratio=0.9)
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    server = start(pki, target, 8 << 20)
    server.settings.idle_timeout = 2.0
    port = server.server_address[1]
    ctx = pki.client_context()
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
    try:
        # headers and 5 MiB of the body, then silence on an open connection
        raw.sendall((f"POST /v1beta1/upload-async HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode() + data[: 5 << 20])
        point = target.with_name(f".{target.name}.cdi-resume.json")
        deadline = time.monotonic() + 20
        while not point.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert point.exists()
        stalled_at = time.monotonic()
        busy = _request(port, ctx, "POST", "/v1beta1/upload", b"x" * 10)
        assert busy.status == 503
        text = busy.body.decode()  # type: ignore[attr-defined]
        assert "another upload to this volume is in progress since " in text
        assert "it is cancelled after 2 s without data" in text, text
        assert busy.getheader("Retry-After") == "2"
        # cdi image-upload's uploader, started while the volume is held: it waits as Retry-After says,
        # then continues from the durable bytes
        uploader = Uploader(f"https://127.0.0.1:{port}", ctx, lambda: "token", image, archive=False)
        uploader.upload()
        assert time.monotonic() - stalled_at < 15  # freed within the bound, not after minutes
        said = capsys.readouterr().err
        assert "upload interrupted (503: another upload to this volume is in progress since" in said
        assert "trying again in 2 s" in said
        resumed_at = [int(n) for n in re.findall(r"continuing at byte (\d+)", said)]
        assert resumed_at and 0 < resumed_at[-1] <= 5 << 20, said  # the durable bytes were not sent again
        assert server.state.finished.wait(30)
        reference = images.padded(data, target.stat().st_size, tmp_path / "ref.raw")
        assert volume_digest(str(target)) == volume_digest(str(reference))
    finally:
        raw.close()
        server.shutdown()


def _cut_upload(pki: Pki, port: int, target: Path, data: bytes, path: str = "/v1beta1/upload-async",
                head: bytes = b"", headers: str = "Content-Type: application/octet-stream\r\n") -> None:
    """Send the headers and 5 MiB of the image, wait for a durable resume point, drop the connection."""
    raw = pki.client_context().wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
    raw.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(head) + len(data)}\r\n"
                 f"{headers}\r\n").encode() + head + data[: 5 << 20])
    point = target.with_name(f".{target.name}.cdi-resume.json")
    deadline = time.monotonic() + 20
    while not point.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    raw.close()


def test_a_ranged_put_that_does_not_continue_the_upload_is_refused_saying_what_is_held(
        pki: Pki, tmp_path: Path) -> None:
    data = images.make_raw(tmp_path / "src.raw", 8 << 20, seed=7, data_ratio=0.9).read_bytes()
    target = tmp_path / "disk.img"
    server = start(pki, target, 8 << 20)
    port, ctx = server.server_address[1], pki.client_context()
    try:
        fresh = _request(port, ctx, "PUT", "/v1beta1/upload", data[100:],
                         {"Content-Range": f"bytes 100-{len(data) - 1}/{len(data)}"})
        assert fresh.status == 416 and fresh.getheader("Upload-Offset") == "0"
        assert "holds no interrupted upload to continue: send the whole image from byte 0" in fresh.body.decode()  # type: ignore[attr-defined]
        _cut_upload(pki, port, target, data)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (server.state.busy or not _request(
                port, ctx, "HEAD", "/v1beta1/upload").getheader("Upload-Length")):
            time.sleep(0.05)
        held = int(_request(port, ctx, "HEAD", "/v1beta1/upload").getheader("Upload-Offset") or 0)
        assert held > 0
        total = len(data)
        past = _request(port, ctx, "PUT", "/v1beta1/upload", data[held + 4096:],
                        {"Content-Range": f"bytes {held + 4096}-{total - 1}/{total}"})
        assert past.status == 416 and past.getheader("Upload-Offset") == str(held)
        assert (f"this volume holds bytes 0-{held - 1} of {total}, the range starts at {held + 4096}: "
                f"send Content-Range: bytes {held}-{total - 1}/{total}") in past.body.decode()  # type: ignore[attr-defined]
        other = _request(port, ctx, "PUT", "/v1beta1/upload", data[held:total - 512],
                         {"Content-Range": f"bytes {held}-{total - 513}/{total - 512}"})
        assert other.status == 416 and other.getheader("Upload-Offset") == str(held)
        assert (f"the interrupted upload here is {total} bytes long, not {total - 512}: continue it with "
                f"Content-Range: bytes {held}-{total - 1}/{total}") in other.body.decode()  # type: ignore[attr-defined]
    finally:
        server.shutdown()


@pytest.mark.parametrize("path", ["/v1beta1/upload-form", "/v1beta1/upload-form-async"])
def test_a_cut_form_upload_resumes_with_a_raw_ranged_put_on_the_form_path(pki: Pki, tmp_path: Path, path: str) -> None:
    data = images.make_raw(tmp_path / "src.raw", 8 << 20, seed=9, data_ratio=0.9).read_bytes()
    target = tmp_path / "disk.img"
    server = start(pki, target, 8 << 20)
    port, ctx = server.server_address[1], pki.client_context()
    try:
        body, headers = _form(data)
        head = body[: body.index(data)]
        raw = pki.client_context().wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                               server_hostname="127.0.0.1")
        raw.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                     f"Content-Length: {len(body)}\r\nUpload-Length: {len(data)}\r\n\r\n").encode()
                    + head + data[: 5 << 20])
        point = target.with_name(f".{target.name}.cdi-resume.json")
        deadline = time.monotonic() + 20
        while not point.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raw.close()
        held = 0
        while time.monotonic() < deadline and not held:
            reply = _request(port, ctx, "HEAD", path)
            held = int(reply.getheader("Upload-Offset") or 0) if not server.state.busy else 0
            time.sleep(0.05)
        assert held > 0
        ranged = {"Content-Range": f"bytes {held}-{len(data) - 1}/{len(data)}"}
        form = _request(port, ctx, "PUT", path, data[held:], {**ranged, "Content-Type": headers["Content-Type"]})
        assert form.status == 400
        assert "sends the rest of the file as a raw body" in form.body.decode()  # type: ignore[attr-defined]
        resp = _request(port, ctx, "PUT", path, data[held:], {**ranged, "Content-Type": "application/octet-stream"})
        assert resp.status == 200, resp.body  # type: ignore[attr-defined]
        assert server.state.finished.wait(30)
        reference = images.padded(data, target.stat().st_size, tmp_path / "ref.raw")
        assert volume_digest(str(target)) == volume_digest(str(reference))
    finally:
        server.shutdown()


def test_image_upload_sparse_refuses_a_compressed_image_before_creating_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cdi.cli import imageupload
    from cdi.cli.main import build_parser

    text = tmp_path / "text.raw"
    text.write_bytes(b"compressible " * (1 << 16))
    packed = tmp_path / "text.qcow2"
    images.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(text), str(packed))
    reached: list[str] = []

    def no_cluster(*_: object) -> None:
        reached.append("kubeconfig")
        raise AssertionError("the cluster was reached before the image was checked")

    monkeypatch.setattr(imageupload, "kubeconfig_path", no_cluster)
    args = build_parser().parse_args(["image-upload", "dv", "d", "--size", "16Mi", "--image-path", str(packed),
                                      "--sparse"])
    assert imageupload.run(args) == 1
    assert "compressed or encrypted clusters: upload without --sparse" in capsys.readouterr().err
    assert reached == []
