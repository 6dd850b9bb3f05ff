"""The upload server on its own, in-process, over real mutual TLS: who may upload, one at a time, what is refused."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.controller.upload_tls import CLIENT_NAME, issue, new_ca
from importer.progress import Progress
from tests.support import images
from uploadproxy.body import BodyError, MultipartFile
from uploadproxy.server import Settings, UploadHTTPServer, tls_context


class Pki:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.server_ca = new_ca("server-signer")
        self.client_ca = new_ca("client-signer")

    def client_context(self, cn: str = CLIENT_NAME, ca: tuple[bytes, bytes] | None = None) -> ssl.SSLContext:
        cert, key = issue(*(ca or self.client_ca), cn, client=True)
        (self.work / f"{cn}.crt").write_bytes(cert)
        (self.work / f"{cn}.key").write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.server_ca[0].decode())
        ctx.load_cert_chain(str(self.work / f"{cn}.crt"), str(self.work / f"{cn}.key"))
        return ctx


def start(pki: Pki, target: Path, size: int) -> UploadHTTPServer:
    cert, key = issue(*pki.server_ca, "cdi-upload-x", ips=("127.0.0.1",))
    settings = Settings({"DESTINATION": str(target), "UPLOAD_IMAGE_SIZE": str(size), "CLIENT_NAME": CLIENT_NAME,
                         "CDI_PORT_8443": "0", "TLS_CERT": cert.decode(), "TLS_KEY": key.decode(),
                         "CLIENT_CERT": pki.client_ca[0].decode()})
    server = UploadHTTPServer(settings, tls_context(settings), Progress())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def post(server: UploadHTTPServer, ctx: ssl.SSLContext, body: bytes, path: str = "/v1beta1/upload",
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=ctx, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pki]:
    monkeypatch.chdir(tmp_path)  # the server writes its certificate and key where it runs
    yield Pki(tmp_path)


def test_only_the_proxy_certificate_may_upload_and_only_once(pki: Pki, tmp_path: Path) -> None:
    raw = images.make_raw(tmp_path / "disk.raw", 2 << 20)
    server = start(pki, tmp_path / "disk.img", 4 << 20)
    try:
        assert post(server, pki.client_context(cn="someone-else"), raw.read_bytes())[0] == 401
        with pytest.raises((ssl.SSLError, OSError)):  # a certificate of another signer: no handshake
            post(server, pki.client_context(ca=new_ca("other")), raw.read_bytes())
        assert post(server, pki.client_context(), raw.read_bytes()) == (200, "")
        assert server.state.done and server.state.result is not None
        assert post(server, pki.client_context(), raw.read_bytes())[0] == 409
        assert images.same_content(tmp_path / "disk.img", _padded(raw, tmp_path / "ref", 4 << 20))
    finally:
        server.shutdown()


def test_hostile_qcow2_with_a_backing_file_is_refused(pki: Pki, tmp_path: Path) -> None:
    base = images.make_raw(tmp_path / "base.raw", 1 << 20)
    evil = tmp_path / "evil.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(evil))
    server = start(pki, tmp_path / "disk.img", 4 << 20)
    try:
        code, body = post(server, pki.client_context(), evil.read_bytes())
        assert code == 500 and body.startswith("Saving stream failed: ") and "backing" in body
        assert not server.state.done and not server.state.busy
        assert not (tmp_path / "disk.img").exists()  # nothing that looks like a volume is left
    finally:
        server.shutdown()


def test_tar_member_escaping_the_volume_is_refused_for_archives(pki: Pki, tmp_path: Path) -> None:
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "vol").mkdir()
    server = start(pki, tmp_path / "vol", 4 << 20)
    try:
        code, _ = post(server, pki.client_context(), data.getvalue(), path="/v1beta1/upload-archive")
        assert code == 500
        assert not (tmp_path / "escape.txt").exists()
    finally:
        server.shutdown()


class _Chunks:
    """A body delivered in reads of ``step`` bytes, so boundaries fall across reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    @property
    def complete(self) -> bool:
        return self.pos == len(self.data)

    def readinto(self, buf: Any) -> int:
        n = min(self.step, len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
def test_multipart_file_part_streams_across_any_read_size(step: int) -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--notquite" + b"\r\n-" * 30
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nvalue\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.img\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n--XyZ--\r\n")
    reader = MultipartFile(_Chunks(form, step), b"XyZ", chunk=max(step, 16))
    out = bytearray()
    buf = bytearray(100)
    while n := reader.readinto(buf):
        out += buf[:n]
    assert bytes(out) == payload and reader.complete
    cut = MultipartFile(_Chunks(form[: len(form) // 2], step), b"XyZ", chunk=max(step, 16))
    while cut.readinto(buf):
        pass
    assert not cut.complete


def _form(data: bytes, name: str = "file") -> tuple[bytes, dict[str, str]]:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\"; filename=\"d.img\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=XyZ"}


@pytest.mark.parametrize("path", ["/v1beta1/upload-async", "/v1beta1/upload-form-async"])
def test_async_upload_answers_only_once_the_image_is_validated(pki: Pki, tmp_path: Path, path: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from importer import qemu_img

    real_info = qemu_img.info

    def slow_info(*args: Any, **kwargs: Any) -> Any:  # the bytes are in well before the image is checked
        time.sleep(0.5)
        return real_info(*args, **kwargs)

    monkeypatch.setattr(qemu_img, "info", slow_info)
    big = tmp_path / "big.qcow2"
    images.qemu_img("create", "-f", "qcow2", str(big), str(8 << 20))  # 8 MiB virtual, a few KiB of file
    base = images.make_raw(tmp_path / "base.raw", 1 << 20)
    evil = tmp_path / "evil.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(evil))
    server = start(pki, tmp_path / "disk.img", 4 << 20)

    def send(image: Path) -> tuple[int, str]:
        body, headers = _form(image.read_bytes()) if "form" in path else (image.read_bytes(), {})
        return post(server, pki.client_context(), body, path=path, headers=headers)

    try:
        code, text = send(big)
        assert code == 400, text
        assert text.startswith("Saving stream failed: effective image size is larger than the reported "
                               "available storage: image virtual size 8388608")
        code, text = send(evil)
        assert code == 500 and "backing" in text
        assert not server.state.done and not server.state.busy and server.state.failure is None
    finally:
        server.shutdown()


def test_a_failure_after_the_async_answer_ends_the_server_with_cdis_message(pki: Pki, tmp_path: Path) -> None:
    from importer.errors import CapacityExceeded

    server = start(pki, tmp_path / "disk.img", 4 << 20)
    try:
        server.finish({"error": CapacityExceeded("image virtual size 9 is larger than the volume capacity 4")})
        assert server.state.finished.is_set() and not server.state.done
        assert server.state.failure == (
            CapacityExceeded("x").reason,
            "effective image size is larger than the reported available storage: "
            "image virtual size 9 is larger than the volume capacity 4")
    finally:
        server.shutdown()


@pytest.mark.parametrize("part", [b'name="File"', b'name="FILE"', b'name="other"; filename="file"', None])
def test_a_form_without_a_part_named_exactly_file_is_refused_as_cdi(part: bytes | None) -> None:
    form = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
    if part is not None:
        form += b"--XyZ\r\nContent-Disposition: form-data; " + part + b"\r\n\r\ndisk bytes\r\n"
    form += b"--XyZ--\r\n"
    with pytest.raises(BodyError, match=r"^the form has no part named file \(http: no such file\)$"):
        MultipartFile(_Chunks(form, 5), b"XyZ", chunk=16)


def test_the_form_upload_path_answers_400_for_a_capitalised_file_part(pki: Pki, tmp_path: Path) -> None:
    server = start(pki, tmp_path / "disk.img", 4 << 20)
    try:
        body, headers = _form(b"\0" * 4096, name="File")
        code, text = post(server, pki.client_context(), body, path="/v1beta1/upload-form", headers=headers)
        assert (code, text) == (400, "Saving stream failed: the form has no part named file (http: no such file)")
        assert not (tmp_path / "disk.img").exists()
    finally:
        server.shutdown()


def test_a_conversion_failure_after_the_async_answer_fails_the_upload_server(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from importer import qemu_img
    from importer.errors import Error
    from uploadproxy import server as upload_server

    def failing_convert(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.3)  # the client has had its answer by now
        raise Error("qemu-img convert failed: No space left on device")

    started: list[UploadHTTPServer] = []

    class Recorded(UploadHTTPServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            started.append(self)

    cert, key = issue(*pki.server_ca, "cdi-upload-x", ips=("127.0.0.1",))
    for k, v in {"DESTINATION": str(tmp_path / "disk.img"), "UPLOAD_IMAGE_SIZE": str(4 << 20),
                 "CLIENT_NAME": CLIENT_NAME, "CDI_PORT_8443": "0", "TLS_CERT": cert.decode(),
                 "TLS_KEY": key.decode(), "CLIENT_CERT": pki.client_ca[0].decode(),
                 "TERMINATION_MESSAGE_PATH": str(tmp_path / "termination")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(qemu_img, "convert", failing_convert)
    monkeypatch.setattr(upload_server, "UploadHTTPServer", Recorded)
    # vmdk is converted after the bytes are in (qcow2 is converted while it streams)
    image = images.convert(images.make_raw(tmp_path / "d.raw", 2 << 20), "vmdk", tmp_path / "d.vmdk")
    rc: list[int] = []
    runner = threading.Thread(target=lambda: rc.append(upload_server.main()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 10
    while not started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert post(started[0], pki.client_context(), image.read_bytes(), path="/v1beta1/upload-async") == (200, "")
    runner.join(15)
    assert rc == [1]
    message = json.loads((tmp_path / "termination").read_text())
    assert message["ok"] is False and message["permanent"] is True
    assert "No space left on device" in message["message"]
    assert not (tmp_path / "disk.img").exists()


@pytest.mark.parametrize("path", ["/v1beta1/upload", "/v1beta1/upload-async"])
def test_a_qcow2_larger_than_the_volume_is_refused_from_its_header(pki: Pki, tmp_path: Path, path: str) -> None:
    big = images.convert(images.make_raw(tmp_path / "big.raw", 8 << 20, data_ratio=0.6), "qcow2",
                         tmp_path / "big.qcow2")
    head = big.read_bytes()[: 2 << 20]  # the server looks at the first MiB
    server = start(pki, tmp_path / "disk.img", 4 << 20)
    conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=pki.client_context(),
                                       timeout=5)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(64 << 20))  # the rest is never sent: the header says enough
        conn.endheaders()
        conn.send(head)
        resp = conn.getresponse()
        assert resp.status == 400
        assert resp.read().decode() == ("Saving stream failed: effective image size is larger than the reported "
                                        "available storage: image virtual size 8388608 is larger than the "
                                        "volume capacity 4194304")
    finally:
        conn.close()
        server.shutdown()


def _padded(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes())
    with open(dst, "r+b") as f:
        f.truncate(size)
    return dst


def _reference(image: Path, size: int) -> Path:
    """What qemu-img makes of ``image``, as a volume of ``size`` bytes."""
    ref = image.with_suffix(".ref")
    images.qemu_img("convert", "-f", "qcow2", "-O", "raw", str(image), str(ref))
    with open(ref, "r+b") as f:
        f.truncate(size)
    return ref


def _count_scratch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from importer import scratch

    made: list[str] = []
    real = scratch.Scratch.__enter__

    def counted(self: scratch.Scratch) -> str:
        made.append(self.parent)
        return real(self)

    monkeypatch.setattr(scratch.Scratch, "__enter__", counted)
    return made


@pytest.mark.parametrize("path", ["/v1beta1/upload", "/v1beta1/upload-async"])
def test_qcow2_uploaded_whole_is_converted_as_it_streams_without_scratch(
        pki: Pki, tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from importer.digest import volume_digest

    made = _count_scratch(monkeypatch)
    image = images.convert(images.make_raw(tmp_path / "d.raw", 6 << 20), "qcow2", tmp_path / "d.qcow2")
    reference = _reference(image, 8 << 20)
    server = start(pki, tmp_path / "disk.img", 8 << 20)
    try:
        assert post(server, pki.client_context(), image.read_bytes(), path=path) == (200, "")
        assert server.state.finished.wait(10)
        result = server.state.result
        assert result is not None and result.formats == ["qcow2"]
        assert result.scratch_bytes == 0 and made == []  # no scratch space was even created
        assert "convert" not in result.phases  # converted while the body streamed in
        assert result.digest == volume_digest(str(reference))
        assert images.same_content(tmp_path / "disk.img", reference)
    finally:
        server.shutdown()


def test_qcow2_whose_tables_come_last_uses_bounded_scratch_and_is_exact(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importer.digest import volume_digest

    made = _count_scratch(monkeypatch)
    # more than the first 2 MiB the converter reads at once, so the tables really come after their data
    image = images.convert(images.make_raw(tmp_path / "d.raw", 12 << 20), "qcow2", tmp_path / "d.qcow2")
    images.qemu_img("resize", str(image), "1G")  # qemu moves the L1 table behind the data
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 5 1000M 64k", str(image)], check=True,
                   capture_output=True)
    reference = _reference(image, 1 << 30)
    server = start(pki, tmp_path / "disk.img", 1 << 30)
    try:
        assert post(server, pki.client_context(), image.read_bytes()) == (200, "")
        result = server.state.result
        # an upload of known size keeps resume points: its spool is a file beside the point, not scratch
        assert result is not None and 0 < result.scratch_bytes <= image.stat().st_size and made == []
        assert result.digest == volume_digest(str(reference))
        assert not list(tmp_path.glob(".cdi-scratch-*")) and not list(tmp_path.glob(".disk.img.cdi-resume*"))
    finally:
        server.shutdown()
