"""``cdi import`` / ``cdi digest`` as a user runs them, and ``python -m importer`` as a pod runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from importer import checkpoint
from importer import digest as vdigest
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


def test_progress_through_scratch_never_goes_back(image_factory, http_server: HttpServer, tmp_path: Path) -> None:
    """A compressed vmdk goes through scratch, then qemu-img: the figure spreads over both phases from the
    moment scratch is taken, so it never falls when the conversion starts."""
    image = image_factory.get("vmdk.zst")
    http_server.add("/d.vmdk.zst", Route(path=str(image), rate=max(1, image.stat().st_size // 2)))
    proc = run("import", http_server.url("/d.vmdk.zst"), str(tmp_path / "out.img"), "--progress", "json",
               "--size", "16Mi")
    assert proc.returncode == 0, proc.stderr
    figures = [float(json.loads(line)["progress"][:-1]) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert len(figures) >= 3 and figures[-1] == 100.0, figures
    assert figures == sorted(figures), figures


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


# -- capacities larger than the target can hold -----------------------------------------------------

def _fs_refuses(directory: Path, size: int) -> bool:
    with open(directory / ".probe", "wb") as f:
        try:
            os.ftruncate(f.fileno(), size)
            return False
        except OSError:
            return True
        finally:
            os.unlink(directory / ".probe")


@pytest.mark.parametrize("size", ["12345678901234567890123456789", "1e18"])
def test_size_larger_than_a_file_can_be_is_refused_before_the_target_is_touched(
        image_factory, tmp_path: Path, size: str) -> None:
    if size == "1e18" and not _fs_refuses(tmp_path, 10**18):
        pytest.skip("this file system takes a 1e18-byte file")
    out = tmp_path / "keep.img"
    out.write_bytes(b"the user's disk")
    proc = subprocess.run([*CDI, "import", str(image_factory.raw), str(out), "--size", size, "--progress", "none"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "is larger than" in proc.stderr and "can be" in proc.stderr, proc.stderr
    assert out.read_bytes() == b"the user's disk"


def test_pod_size_larger_than_the_volume_is_refused(tmp_path: Path) -> None:
    from importer.errors import PermanentError
    from importer.job_env import job_from_env

    data = tmp_path / "data"
    data.mkdir()
    (data / "disk.img").write_bytes(b"the user's disk")
    env = {"IMPORTER_ENDPOINT": "http://127.0.0.1:1/d.raw", "IMPORTER_IMAGE_SIZE": "1e18",
           "CDI_VOLUME_MOUNTS": json.dumps({"/data": str(data)}),
           "CDI_VOLUME_CAPACITY": json.dumps({"/data": 11 << 20})}
    with pytest.raises(PermanentError, match=f"image size {10**18} is larger than the volume's capacity {11 << 20}"):
        job_from_env(env)
    assert job_from_env({**env, "IMPORTER_IMAGE_SIZE": "11Mi"}).size == 11 << 20
    assert (data / "disk.img").read_bytes() == b"the user's disk"


def test_16_tib_sparse_capacity_costs_what_the_data_costs(image_factory, tmp_path: Path) -> None:
    """Import and digest of a 16 TiB volume holding 8 MiB: the bookkeeping of the zeros after the data
    costs no memory per block (the bound is on resident memory, not on time)."""
    size = (16 << 40) - (1 << 20)  # ext4's largest file is just under 16 TiB
    if _fs_refuses(tmp_path, size):
        pytest.skip("this file system cannot hold a 16 TiB sparse file")
    out = tmp_path / "big.img"
    measure = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.stdout)")
    runs = []
    for args in (["import", str(image_factory.raw), str(out), "--size", str(size), "--progress", "none"],
                 ["digest", str(out)]):
        proc = subprocess.run([sys.executable, "-c", measure, *CDI, *args], capture_output=True, text=True,
                              timeout=300)
        head, _, rest = proc.stdout.partition("\n")
        rc, rss_kib = (int(x) for x in head.split())
        assert rc == 0, proc.stdout + proc.stderr
        assert rss_kib < 300 << 10, f"cdi {args[0]} used {rss_kib} KiB"
        runs.append(rest.strip())
    result = json.loads(runs[0])
    assert os.path.getsize(out) == size
    assert result["digest"] == runs[1]
    data = image_factory.raw.read_bytes()
    with open(out, "rb") as f:
        assert f.read(len(data)) == data
    # by the definition: the hashes of the image's blocks, then zero blocks up to the capacity
    leaves = [vdigest.leaf(data[i:i + vdigest.BLOCK]) for i in range(0, len(data), vdigest.BLOCK)]
    zero_leaf = vdigest.zero_leaf(vdigest.BLOCK)
    root = hashlib.sha256(size.to_bytes(8, "big") + b"".join(leaves))
    for _ in range((size - len(data)) // vdigest.BLOCK // 32768):
        root.update(zero_leaf * 32768)
    root.update(zero_leaf * ((size - len(data)) // vdigest.BLOCK % 32768))
    assert result["digest"] == f"{vdigest.PREFIX}:{root.hexdigest()}"
