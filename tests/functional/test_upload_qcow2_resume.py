"""A qcow2 uploaded whole (converted as it streams) continues after a dropped connection or a killed
upload server at the byte of the qcow2 file where the last durable checkpoint was, over real mutual
TLS, with images made by the real qemu-img and qemu-io. Every finished volume is compared byte for byte
with ``qemu-img convert -O raw`` and its digest with that of an uninterrupted upload; a resume with
another file of the same size is refused and the client sends that file whole instead."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cdi.cli.imageupload import Uploader
from cdi.controller.upload_tls import CLIENT_NAME, issue
from importer.digest import volume_digest
from tests.functional.test_upload_server import Pki, start
from tests.support import images

MiB = 1 << 20
VOLUME = 24 * MiB


@contextmanager
def _serving(pki: Pki, target: Path) -> Iterator[tuple[Any, int, ssl.SSLContext]]:
    """A real upload server for ``target``: (server, its port, a client context the proxy would use)."""
    server = start(pki, target, VOLUME)
    try:
        yield server, server.server_address[1], pki.client_context()
    finally:
        server.shutdown()


def qemu(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """qcow2 images with 4 KiB clusters (an L2 table maps 2 MiB: a dozen tables between the data) and
    compressed clusters; one whose L1 table comes last (its data waits in the spool); and another file
    of the same size, header and tables as the first with other data."""
    tmp = tmp_path_factory.mktemp("qcow2-resume")
    raw = images.make_raw(tmp / "disk.raw", 20 * MiB, seed=11, chunk=64 << 10, data_ratio=0.6)
    os.truncate(raw, VOLUME)  # the last 4 MiB unallocated: written below, compressed and plain
    out: dict[str, Path] = {}
    for name, source in (("mixed", raw), ("other", _changed(raw, tmp / "other.raw"))):
        image = images.convert(source, "qcow2", tmp / f"{name}.qcow2", "cluster_size=4096")
        qemu("qemu-io", "-f", "qcow2", "-c", "write -c -P 3 20M 1M", "-c", "write -P 4 20800k 64k", str(image))
        out[name] = image
    resized = tmp / "resized.qcow2"
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(resized))
    qemu("qemu-img", "resize", str(resized), f"{2 * VOLUME}")  # the L1 table moves behind the data
    qemu("qemu-img", "resize", "--shrink", str(resized), f"{VOLUME}")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 7 23M 100k", "-c", "write -c -P 8 21M 64k", str(resized))
    out["resized"] = resized
    assert out["mixed"].stat().st_size == out["other"].stat().st_size
    return out


def _changed(raw: Path, dst: Path) -> Path:
    data = bytearray(raw.read_bytes())
    first = next(i for i in range(0, len(data), 4096) if any(data[i:i + 4096]))
    data[first + 100] ^= 0xFF  # one byte of data: the same clusters allocated, so the same tables
    dst.write_bytes(data)
    return dst


def _reference(image: Path) -> Path:
    ref = image.with_suffix(".ref")
    if not ref.exists():
        qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(ref))
        os.truncate(ref, VOLUME)
    return ref


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pki]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDI_RESUME_INTERVAL", raising=False)
    yield Pki(tmp_path)


def _point(target: Path) -> dict[str, object]:
    try:
        return dict(json.loads(target.with_name(f".{target.name}.cdi-resume.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _send_until_point(ctx: ssl.SSLContext, port: int, target: Path, data: bytes, start: int, cut: int,
                      headers: dict[str, str], fmt: str = "qcow2") -> ssl.SSLSocket:
    """Send the image from ``start`` (a POST from 0, a ranged PUT after), stop at ``cut`` (a whole MiB:
    a chunk's end) and wait until the server's durable point is there. The connection is returned open."""
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
    lines = [f"{'PUT' if start else 'POST'} /v1beta1/upload HTTP/1.1", "Host: x",
             f"Content-Length: {len(data) - start}", "Content-Type: application/octet-stream",
             *(f"{k}: {v}" for k, v in headers.items())]
    if start:
        lines.append(f"Content-Range: bytes {start}-{len(data) - 1}/{len(data)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data[start:cut])
    deadline = time.monotonic() + 20
    while _point(target).get("offset") != cut and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _point(target).get("offset") == cut, _point(target)
    assert _point(target).get("format") == fmt
    return sock


def _head(ctx: ssl.SSLContext, port: int) -> tuple[int, str | None]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("HEAD", "/v1beta1/upload")
        resp = conn.getresponse()
        resp.read()
        return int(resp.getheader("Upload-Offset") or 0), resp.getheader("Upload-Format")
    finally:
        conn.close()


def _put(ctx: ssl.SSLContext, port: int, data: bytes, start: int, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    try:
        conn.request("PUT", "/v1beta1/upload", body=data[start:], headers={
            "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
            "Content-Type": "application/octet-stream", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _wait_idle(server: object) -> None:
    deadline = time.monotonic() + 20
    while server.state.busy and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)


def test_a_qcow2_cut_again_and_again_continues_each_time_and_is_exact(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    image = made["mixed"]
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        # cut inside the header's first chunk: nothing is durable yet, the upload starts from byte 0
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        sock.sendall(f"POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data[:100 << 10])
        sock.close()
        _wait_idle(server)
        assert _head(ctx, port) == (0, None)
        # then cut at 4 MiB, in a PUT from there at 9 MiB, and finish from 9 MiB
        _send_until_point(ctx, port, target, data, 0, 4 * MiB, {}).close()
        _wait_idle(server)
        assert _head(ctx, port) == (4 * MiB, "qcow2")
        prefix = volume_digest(str(image), 4 * MiB)
        _send_until_point(ctx, port, target, data, 4 * MiB, 9 * MiB, {"Upload-Prefix-Digest": prefix}).close()
        _wait_idle(server)
        assert _head(ctx, port) == (9 * MiB, "qcow2")
        # chunks end on whole MiB: the state is the window and a table's keys, about 1.1 MiB
        states = list(target.parent.glob(".disk.img.cdi-resume.json.qcow2-state.*"))
        assert len(states) == 1 and states[0].stat().st_size < 1200 << 10  # one state: the older ones pruned
        # a resume that does not prove it sends the same file is refused, saying what to send
        code, text = _put(ctx, port, data, 9 * MiB, {})
        assert code == 416 and "must send Upload-Prefix-Digest, the volume digest of the file's first" in text, text
        code, text = _put(ctx, port, data, 9 * MiB, {"Upload-Prefix-Digest": prefix})
        assert code == 416 and "the file sent is not the one whose upload was interrupted" in text, text
        code, text = _put(ctx, port, data, 9 * MiB, {"Upload-Prefix-Digest": volume_digest(str(image), 9 * MiB)})
        assert (code, text) == (200, "")
        assert server.state.result is not None
        assert server.state.result.resumes == 1  # this run continued the one before
        ref = _reference(image)
        assert images.same_content(target, ref)
        assert server.state.result.digest == volume_digest(str(ref))  # as an uninterrupted upload's
        assert not list(tmp_path.glob(".disk.img.cdi-resume*"))  # the point, state and spool are gone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(pki: Pki, target: Path, port: int, work: Path) -> dict[str, str]:
    """The environment of an upload server process, as its pod would have it."""
    cert, key = issue(*pki.server_ca, "cdi-upload-x", ips=("127.0.0.1",))
    return {**os.environ, "DESTINATION": str(target), "UPLOAD_IMAGE_SIZE": str(VOLUME), "CLIENT_NAME": CLIENT_NAME,
            "CDI_PORT_8443": str(port), "TLS_CERT": cert.decode(), "TLS_KEY": key.decode(),
            "CLIENT_CERT": pki.client_ca[0].decode(), "TERMINATION_MESSAGE_PATH": str(work / "termination")}


def _server_process(pki: Pki, target: Path, port: int, work: Path) -> subprocess.Popen[str]:
    env = _server_env(pki, target, port, work)
    proc = subprocess.Popen([sys.executable, "-I", "-m", "uploadproxy.server"], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    return proc


@pytest.mark.parametrize("name", ["mixed", "resized"])
def test_a_killed_upload_server_is_continued_by_image_upload_at_its_last_point(
        pki: Pki, tmp_path: Path, made: dict[str, Path], name: str) -> None:
    image = made[name]
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    port = _free_port()
    first = _server_process(pki, target, port, tmp_path)
    try:
        sock = _send_until_point(pki.client_context(), port, target, data, 0, 6 * MiB, {})
        os.kill(first.pid, signal.SIGKILL)  # mid-upload, the connection still open
        first.wait(10)
        sock.close()
        if name == "resized":  # its data came before its L1 table: it waits in the spool beside the point
            assert target.with_name(".disk.img.cdi-resume.json.spool").stat().st_blocks > 0
        second = _server_process(pki, target, port, tmp_path)
        try:
            uploader = Uploader(f"https://127.0.0.1:{port}", pki.client_context(), lambda: "unused", image,
                                archive=False)
            uploader.upload()  # a new invocation: it asks what is held and sends the rest
            assert (uploader.resumes, uploader.sent) == (1, len(data) - 6 * MiB)
            assert second.wait(30) == 0
        finally:
            second.kill()
            second.wait()
    finally:
        first.kill()
        first.wait()
    result = json.loads((tmp_path / "termination").read_text())["result"]
    assert result["resumes"] == 1 and result["bytes_transferred"] == len(data)
    ref = _reference(image)
    assert images.same_content(target, ref)
    assert result["digest"] == volume_digest(str(ref))


def test_a_resume_with_another_file_of_the_same_size_is_refused_and_the_client_sends_it_whole(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    image, other = made["mixed"], made["other"]
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        _send_until_point(ctx, port, target, data, 0, 5 * MiB, {}).close()
        _wait_idle(server)
        assert _head(ctx, port) == (5 * MiB, "qcow2")
        # same size, same header and tables, one byte of data differs before the point
        code, text = _put(ctx, port, other.read_bytes(), 5 * MiB,
                          {"Upload-Prefix-Digest": volume_digest(str(other), 5 * MiB)})
        assert code == 416 and "the file sent is not the one whose upload was interrupted" in text, text
        uploader = Uploader(f"https://127.0.0.1:{port}", ctx, lambda: "unused", other, archive=False)
        uploader.upload()  # refused at 5 MiB, then sent whole
        assert uploader.sent == 2 * len(data) - 5 * MiB
        assert server.state.finished.wait(30) and server.state.result is not None
        assert server.state.result.resumes == 0
        ref = _reference(other)
        assert images.same_content(target, ref)
        assert not images.same_content(target, _reference(image))


@pytest.mark.slow  # a cluster of its own (API server, node, controllers, proxy): about 10 s
def test_image_upload_continues_a_cut_qcow2_through_the_proxy_and_the_upload_pod(
        tmp_path: Path, made: dict[str, Path]) -> None:
    """The whole path: a DataVolume, its upload pod on the local node, the upload proxy relaying HEAD's
    Upload-Format and the PUT's Upload-Prefix-Digest; the volume's recorded digest is the image's."""
    from cdi.controller.manager import ControllerManager
    from cdi.controller.resources import ControllerSettings
    from cdi.upload_runtime import start_upload_proxy
    from tests.functional.test_node_fixtures import make_env
    from tests.functional.test_upload import Env

    node = make_env(tmp_path, max_running_pods=4)
    settings = ControllerSettings(progress_interval=0.2, upload_resume_interval=1 << 20)
    manager = ControllerManager(node.client, settings, workers=2).start()
    proxy = start_upload_proxy(node.cluster.server, node.client, tmp_path, "127.0.0.1", 0)
    from kubernetes import config as k8s_config

    env = Env(node, proxy, tmp_path, k8s_config.new_client_from_config(str(node.cluster.kubeconfig)), tmp_path)
    try:
        image = made["mixed"]
        data = image.read_bytes()
        env.create_dv("q-resume", size="24Mi")
        env.phase("q-resume", "UploadReady")
        ctx = ssl.create_default_context(cafile=str(node.cluster.server.tls.ca_file))
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", proxy.port)), server_hostname="127.0.0.1")
        sock.sendall(f"POST /v1beta1/upload-async HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{env.token('q-resume')}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data[: 6 * MiB])
        disk = env.volume("q-resume")
        deadline = time.monotonic() + 30
        while _point(disk).get("offset") != 6 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _point(disk).get("offset") == 6 * MiB, _point(disk)
        sock.close()
        env.running_message("q-resume", "the upload ended at byte")  # the cut upload failed; the part stays
        uploader = Uploader(proxy.url, ctx, lambda: env.token("q-resume"), image, archive=False)
        uploader.upload()
        assert (uploader.resumes, uploader.sent) == (1, len(data) - 6 * MiB)  # only the rest crossed the wire
        env.phase("q-resume", "Succeeded")
        env.check_volume("q-resume", _reference(image))
    finally:
        proxy.stop()
        manager.stop()
        node.node.stop()
        node.cluster.server.stop()


def test_a_compressed_qcow2_starts_again_from_byte_0_and_the_client_says_why(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    packed = images.compress(made["mixed"], "gzip")
    data = packed.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        sock.sendall(f"POST /v1beta1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data[: len(data) // 2])
        deadline = time.monotonic() + 20
        while not (target.exists() and target.stat().st_blocks) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the server converted part of it: it keeps no point for a compressed stream
        assert target.stat().st_blocks
        sock.close()
        _wait_idle(server)
        assert _head(ctx, port) == (0, None)
        assert not _point(target)
        uploader = Uploader(f"https://127.0.0.1:{port}", ctx, lambda: "unused", packed, archive=False)
        assert uploader.restart_reason() is not None
        assert uploader._continuing(0) == (
            "starting again from byte 0: the image is gzip-compressed: the server decompresses it as it arrives "
            "and cannot continue a compressed stream, so it is sent again from byte 0 (upload it uncompressed, "
            "raw or qcow2, for uploads that resume)")
        uploader.upload()
        assert uploader.sent == len(data)
        assert server.state.finished.wait(30)
        assert images.same_content(target, _reference(made["mixed"]))


def test_a_damaged_saved_state_is_refused_and_the_upload_starts_from_byte_0(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    image = made["mixed"]
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        _send_until_point(ctx, port, target, data, 0, 4 * MiB, {}).close()
        _wait_idle(server)
        (state,) = target.parent.glob(".disk.img.cdi-resume.json.qcow2-state.*")
        raw = bytearray(state.read_bytes())
        raw[-1] ^= 1
        state.write_bytes(raw)
        code, text = _put(ctx, port, data, 4 * MiB, {"Upload-Prefix-Digest": volume_digest(str(image), 4 * MiB)})
        assert code == 500 and "does not match its resume point (torn or altered)" in text, text
        assert _head(ctx, port) == (0, None)  # nothing held any more: the next try sends the whole image
        uploader = Uploader(f"https://127.0.0.1:{port}", ctx, lambda: "unused", image, archive=False)
        uploader.upload()
        assert uploader.sent == len(data) and server.state.finished.wait(30)
        assert images.same_content(target, _reference(image))


def test_a_cut_qcow2_form_upload_with_its_size_declared_continues_with_a_ranged_put(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    from tests.functional.test_upload_server import _form

    image = made["resized"]
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        body, headers = _form(data)
        head = body[: body.index(data)]
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        sock.sendall((f"POST /v1beta1/upload-form HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                      f"Content-Length: {len(body)}\r\nUpload-Length: {len(data)}\r\n\r\n").encode()
                     + head + data[: 6 * MiB])  # the form reader takes whole MiB of the body: one more
        deadline = time.monotonic() + 20
        while _point(target).get("offset") != 5 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _point(target).get("offset") == 5 * MiB, _point(target)
        sock.close()
        _wait_idle(server)
        assert _head(ctx, port) == (5 * MiB, "qcow2")
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
        conn.request("PUT", "/v1beta1/upload-form", body=data[5 * MiB:], headers={
            "Content-Range": f"bytes {5 * MiB}-{len(data) - 1}/{len(data)}", "Content-Type": "application/octet-stream",
            "Upload-Prefix-Digest": volume_digest(str(image), 5 * MiB)})
        assert conn.getresponse().status == 200
        conn.close()
        assert server.state.result is not None and server.state.result.resumes == 1
        assert images.same_content(target, _reference(image))


def test_a_ranged_body_that_stops_before_the_end_of_the_image_is_refused_and_what_is_held_stays(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    """A PUT of a part in the middle (its range ending before the image's last byte) would have ended
    the upload with the rest missing and the volume marked complete: it is refused before anything."""
    for image in (_reference(made["mixed"]), made["mixed"]):  # raw, then qcow2
        data = image.read_bytes()
        target = tmp_path / f"short-{image.suffix[1:]}.img"
        with _serving(pki, target) as (server, port, ctx):
            headers = {"Upload-Prefix-Digest": volume_digest(str(image), 4 * MiB)} if image.suffix == ".qcow2" else {}
            _send_until_point(ctx, port, target, data, 0, 4 * MiB, {}, image.suffix[1:].replace("ref", "raw")).close()
            _wait_idle(server)
            held = _head(ctx, port)[0]
            assert held == 4 * MiB
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
            conn.request("PUT", "/v1beta1/upload", body=data[held:held + MiB], headers={
                "Content-Range": f"bytes {held}-{held + MiB - 1}/{len(data)}",
                "Content-Type": "application/octet-stream", **headers})
            resp = conn.getresponse()
            text = resp.read().decode()
            conn.close()
            assert resp.status == 400 and "stops before the end of the image" in text, text
            assert _head(ctx, port)[0] == held  # nothing lost
            assert not server.state.done
            code, text = _put(ctx, port, data, held, headers)
            assert code == 200, text
            assert server.state.finished.wait(30)
            assert images.same_content(target, _reference(made["mixed"]))


def test_a_server_killed_after_answering_200_ends_with_that_upload_when_started_again(
        pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    """The 200 of a sync upload is final: the outcome is kept before the answer, so a server killed in
    the moment between its answer and its exit does not take another upload over the acknowledged one."""
    image = made["mixed"]
    target = tmp_path / "disk.img"
    port = _free_port()
    first = _server_process(pki, target, port, tmp_path)
    try:
        uploader = Uploader(f"https://127.0.0.1:{port}", pki.client_context(), lambda: "unused", image, archive=False)
        uploader.upload()  # answered 200
        kept = json.loads((tmp_path / ".cdi-upload-done.json").read_text())
        os.kill(first.pid, signal.SIGKILL)  # whether or not it had ended its pod yet
        first.wait(10)
    finally:
        first.kill()
        first.wait()
    (tmp_path / "termination").unlink(missing_ok=True)
    again = subprocess.run([sys.executable, "-I", "-m", "uploadproxy.server"], cwd=tmp_path, timeout=30,
                           env=_server_env(pki, target, port, tmp_path), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "termination").read_text()) == {"ok": True, "result": kept}
    assert kept["digest"] == volume_digest(str(_reference(image)))
    assert images.same_content(target, _reference(image))


def test_a_raw_resume_that_declares_its_prefix_is_held_to_it(pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    image = _reference(made["mixed"])  # raw
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        _send_until_point(ctx, port, target, data, 0, 4 * MiB, {}, "raw").close()
        _wait_idle(server)
        code, text = _put(ctx, port, data, 4 * MiB, {"Upload-Prefix-Digest": "sha256-1m:" + "0" * 64})
        assert code == 416 and "is not the one whose upload was interrupted" in text, text
        assert _head(ctx, port)[0] == 4 * MiB
        code, text = _put(ctx, port, data, 4 * MiB, {"Upload-Prefix-Digest": volume_digest(str(image), 4 * MiB)})
        assert code == 200, text
        assert server.state.finished.wait(30)
        assert images.same_content(target, image)


def _chunked(ctx: ssl.SSLContext, port: int, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    try:
        parts = (body[i:i + MiB] for i in range(0, len(body), MiB))
        conn.request(method, "/v1beta1/upload", body=parts, encode_chunked=True,
                     headers={"Content-Type": "application/octet-stream", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_a_declared_size_holds_a_chunked_body_to_it(pki: Pki, tmp_path: Path, made: dict[str, Path]) -> None:
    """A raw body whose Upload-Length says how big the image is, and a chunked resume, whose range says
    how long it is: a body that ends early is refused, never a complete image; one that is whole works."""
    image = _reference(made["mixed"])  # raw
    data = image.read_bytes()
    target = tmp_path / "disk.img"
    with _serving(pki, target) as (server, port, ctx):
        code, text = _chunked(ctx, port, "POST", data[: 5 * MiB], {"Upload-Length": str(len(data))})
        # found while saving: CDI's 500 "Saving stream failed", as for any body that breaks off
        assert code == 500 and f"the body holds {5 * MiB} bytes, not the {len(data)}" in text, text
        assert not server.state.done
        _send_until_point(ctx, port, target, data, 0, 4 * MiB, {}, "raw").close()
        _wait_idle(server)
        code, text = _chunked(ctx, port, "PUT", data[4 * MiB: 9 * MiB],
                              {"Content-Range": f"bytes {4 * MiB}-{len(data) - 1}/{len(data)}"})
        assert code == 500 and "the ranged body holds" in text, text
        held = _head(ctx, port)[0]  # what arrived stays held, as for a cut connection
        assert 4 * MiB <= held <= 9 * MiB and not server.state.done, held
        code, text = _chunked(ctx, port, "PUT", data[held:],
                              {"Content-Range": f"bytes {held}-{len(data) - 1}/{len(data)}"})
        assert code == 200, text
        assert server.state.finished.wait(30)
        assert images.same_content(target, image)
