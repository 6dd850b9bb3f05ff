"""``cdi import`` / ``cdi digest`` as a user runs them, and ``python -m importer`` as a pod runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from importer import checkpoint
from tests.support import images
from tests.support.faultserver import Fault, FaultServer
from tests.support.httpserver import HttpServer, Route

CDI = [sys.executable, "-m", "cdi.cli.main"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CDI, *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_import_prints_result_and_json_progress(image_factory, http_server: HttpServer, tmp_path: Path) -> None:
    http_server.add("/d.raw.xz", Route(path=str(image_factory.get("raw.xz"))))
    out = tmp_path / "out.img"
    proc = run("import", http_server.url("/d.raw.xz"), str(out), "--progress", "json", "--size", "16Mi")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["formats"] == ["xz", "raw"]
    assert result["capacity"] == 16 << 20
    assert result["bytes_transferred"] == image_factory.get("raw.xz").stat().st_size
    assert set(result["phases"]) >= {"probe", "transfer"}  # the digest is taken while writing: no verify pass
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    assert lines[-1]["progress"] == "100.00%"
    assert all(line["progress"].endswith("%") and "rate" in line for line in lines)
    transfer = [line for line in lines if line["phase"] == "transfer"]
    assert transfer[-1]["done"] == transfer[-1]["total"] == result["bytes_transferred"]
    digest = run("digest", str(out))
    assert digest.stdout.strip() == result["digest"]
    assert out.stat().st_size == 16 << 20


def test_cli_auth_options_and_checksum(image_factory, http_server: HttpServer, tmp_path: Path) -> None:
    src = image_factory.get("qcow2")
    http_server.add("/d", Route(path=str(src), user="u", password="p w", require_headers={"X-A": "1"}))
    pw = tmp_path / "pw"
    pw.write_text("p w\n")
    out = tmp_path / "out.img"
    good = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    proc = run("import", http_server.url("/d"), str(out), "--user", "u", "--password-file", str(pw),
               "--header", "X-A: 1", "--checksum", good, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert images.same_content(out, image_factory.raw)
    bad = run("import", http_server.url("/d"), str(tmp_path / "bad.img"), "--user", "u", "--password-file", str(pw),
              "--header", "X-A: 1", "--checksum", "sha256:" + "1" * 64, "--progress", "none")
    assert bad.returncode == 1
    assert "checksum mismatch" in bad.stderr and good in bad.stderr
    assert not (tmp_path / "bad.img").exists()


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    for args, message in [
        (["--size", "ten"], "invalid size 'ten'"),
        (["--checksum", "crc32:abcd"], "invalid checksum"),
        (["--checksum", "sha256:abc"], "expected 64 hex digits"),
        (["--header", "NoColon"], "invalid header"),
    ]:
        proc = run("import", "/nonexistent", str(tmp_path / "o.img"), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr


def test_cli_missing_source_exit_1(tmp_path: Path) -> None:
    proc = run("import", str(tmp_path / "nope.qcow2"), str(tmp_path / "o.img"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr


def test_worker_reads_cdi_env_and_writes_termination_message(image_factory, https_server: HttpServer,
                                                             ca_file: str, tmp_path: Path) -> None:
    https_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2")), user="user", password="pass",
                                       require_headers={"X-Extra": "yes", "X-Secret": "s"}))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_text(Path(ca_file).read_text())
    headers_dir = tmp_path / "extraheaders" / "secret1"
    headers_dir.mkdir(parents=True)
    (headers_dir / "h").write_text("X-Secret: s")
    data = tmp_path / "data"
    data.mkdir()
    term = tmp_path / "termination-log"
    progress_file = tmp_path / "progress.json"
    env = {
        **os.environ,
        "IMPORTER_SOURCE": "http",
        "IMPORTER_ENDPOINT": https_server.url("/d.qcow2"),
        "IMPORTER_CONTENTTYPE": "kubevirt",
        "IMPORTER_IMAGE_SIZE": "64Mi",
        "IMPORTER_ACCESS_KEY_ID": "user",
        "IMPORTER_SECRET_KEY": "pass",
        "IMPORTER_CERT_DIR": str(certs),
        "IMPORTER_EXTRA_HEADER_0": "X-Extra: yes",
        "IMPORTER_EXTRA_HEADERS_DIR": str(tmp_path / "extraheaders"),
        "IMPORTER_TARGET_PATH": str(data / "disk.img"),
        "IMPORTER_PROGRESS_FILE": str(progress_file),
        "TERMINATION_MESSAGE_PATH": str(term),
    }
    proc = subprocess.run([sys.executable, "-m", "importer"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    message = json.loads(term.read_text())
    assert message["ok"] is True
    assert message["result"]["formats"] == ["qcow2"]
    assert (data / "disk.img").stat().st_size == 64 << 20
    assert json.loads(progress_file.read_text())["progress"] == "100.00%"
    with open(data / "disk.img", "rb") as f:
        assert f.read(8 << 20) == image_factory.raw.read_bytes()

    env["IMPORTER_ENDPOINT"] = https_server.url("/missing")
    proc = subprocess.run([sys.executable, "-m", "importer"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    message = json.loads(term.read_text())
    assert message == {"ok": False, "reason": "SourceUnavailable", "permanent": True,
                       "message": f"not found: HTTP 404 at {https_server.url('/missing')}; check the URL"}


def test_killed_import_resumes_where_it_stopped(image_factory, tmp_path: Path) -> None:
    """With the default resume interval (an image smaller than its maximum still gets resume points):
    the second run asks for the rest from the durable point and the server sends no more than that
    plus one interval."""
    import signal
    import time

    size = image_factory.raw.stat().st_size
    env = {k: v for k, v in os.environ.items() if k != "CDI_RESUME_INTERVAL"}
    with FaultServer() as server:
        fault = server.add("/big.raw", Fault(path=str(image_factory.raw), rate=2 << 20))
        out = tmp_path / "out.img"
        point_file = tmp_path / ".out.img.cdi-resume.json"
        args = [*CDI, "import", server.url("/big.raw"), str(out), "--progress", "none", "--checksum",
                "sha256:" + hashlib.sha256(image_factory.raw.read_bytes()).hexdigest()]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        point: dict = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                point = json.loads(point_file.read_text())
                if point["offset"] >= 3 << 20:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        point = json.loads(point_file.read_text())
        assert point["offset"] >= 3 << 20
        fault.rate = None
        first_request, sent_before = len(fault.requests), fault.sent
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        ranges = [r.get("Range") for r in fault.requests[first_request:]]
        # the resume, then the check that the file ends where it said
        assert ranges == [f"bytes={point['offset']}-", f"bytes={size}-"]
        assert fault.sent - sent_before <= size - point["offset"] + checkpoint.interval_for(size)
        assert images.same_content(out, image_factory.raw)
        result = json.loads(second.stdout)
        assert result["resumes"] >= 1
        assert result["source_checksum"].startswith("sha256:")
        assert not point_file.exists()


def test_progress_bar_on_request(image_factory, tmp_path: Path) -> None:
    proc = run("import", str(image_factory.get("raw.zst")), str(tmp_path / "o.img"), "--progress", "bar")
    assert proc.returncode == 0, proc.stderr
    assert "transfer" in proc.stderr and "100%" in proc.stderr  # tqdm's bar, drawn on stderr
    assert json.loads(proc.stdout)["formats"] == ["zstd", "raw"]
