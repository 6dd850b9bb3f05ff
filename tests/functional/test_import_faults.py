"""Imports from servers that lie, stall and change (tests/support/faultserver.py): each one ends in the
right volume or in a clear failure that names the server's mistake, never in success with wrong data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.digest import volume_digest
from importer.errors import Error, SourceError
from importer.http_options import HttpOptions
from importer.pipeline import ImportJob, run_import
from tests.support import images
from tests.support.faultserver import Fault, FaultServer

CDI = [sys.executable, "-m", "cdi.cli.main"]
FAST = {"backoff": 0.01}
# stall tests only: a loaded machine may pause a healthy transfer for a second, so others keep the defaults
STALL = {"speed_limit": 16 << 10, "speed_time": 1.0, "max_stalled_retries": 1}


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A second version of the test disk (other data), raw and converted."""
    root = tmp_path_factory.mktemp("other")
    raw = images.make_raw(root / "other.raw", 8 << 20, seed=7)
    out = {"raw": raw}
    for fmt in ("qcow2", "vmdk", "vhdx"):
        out[fmt] = images.convert(raw, fmt, root / f"other.{fmt}")
    return out


def _job(url: str, out: Path, **http: object) -> ImportJob:
    return ImportJob(source=url, target=str(out), http=HttpOptions(**{**FAST, **http}))  # type: ignore[arg-type]


def _same(out: Path, raw: Path) -> bool:
    return images.same_content(out, raw)


# -- a file that changes during the import ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vhdx"])
@pytest.mark.parametrize("server", ["honours-if-match", "ignores-if-match", "last-modified-only", "constant-etag"])
def test_file_swapped_during_remote_convert_gives_one_version(
        image_factory, other, faults, tmp_path, fmt, server) -> None:
    """``constant-etag``: the ETag stays the same across versions; only Last-Modified says the file changed."""
    src = image_factory.get(fmt)
    honours = server != "ignores-if-match"
    fault = faults.add("/d", Fault(path=str(src), swap_to=str(other[fmt]), swap_after=256 << 10,
                                   if_match=honours, if_range=honours, etag=server != "last-modified-only",
                                   constant_etag=server == "constant-etag"))
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/d"), out))
    assert fault.swapped
    assert _same(out, other["raw"]), "the volume must be the new version, whole"
    assert result.restarts == 1
    assert result.digest == volume_digest(str(other["raw"]))


@pytest.mark.parametrize("constant_etag", [False, True])
def test_raw_swapped_between_drops_restarts_on_the_new_version(
        image_factory, other, faults, tmp_path, constant_etag) -> None:
    fault = faults.add("/d", Fault(path=str(image_factory.raw), swap_to=str(other["raw"]), swap_after=2 << 20,
                                   drop_p=1.0, drop_every=3 << 20, if_range=constant_etag,
                                   constant_etag=constant_etag))
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/d"), out))
    assert fault.swapped
    assert _same(out, other["raw"])
    assert result.restarts >= 1


def test_file_replaced_right_after_the_download_is_a_change(image_factory, faults, tmp_path) -> None:
    """The end probe (a range past the last byte) meets a smaller new version: the file changed, it is
    not a short file; the import restarts on the new version."""
    small = images.make_raw(tmp_path / "small.raw", 4 << 20, seed=5)
    raw = image_factory.raw
    fault = faults.add("/d", Fault(path=str(raw), swap_to=str(small), swap_after=raw.stat().st_size,
                                   if_range=False))
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/d"), out))
    assert fault.swapped and 416 in fault.statuses
    assert _same(out, small)
    assert result.restarts == 1


def test_redirect_to_another_file_mid_import_is_a_change(image_factory, other, faults, tmp_path) -> None:
    """Same Last-Modified and size, no ETag: a resume that now lands on another URL is another file."""
    a = faults.add("/a", Fault(path=str(image_factory.raw), etag=False, drop_p=1.0, drop_every=3 << 20))
    b = faults.add("/b", Fault(path=str(other["raw"]), etag=False))
    faults.redirect("/a", "/b", after=1)
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/a"), out))
    assert a.sent and b.sent
    assert _same(out, other["raw"])
    assert result.restarts == 1


# -- no Content-Length ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raw", "qcow2", "raw.gz"])
def test_close_delimited_body_dropped_is_resumed(image_factory, faults, tmp_path, name) -> None:
    src = image_factory.get(name)
    faults.add("/d", Fault(path=str(src), length="none", drop_p=1.0, drop_every=1 << 20))
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/d"), out))
    assert _same(out, image_factory.raw)
    assert result.digest == volume_digest(str(image_factory.raw))


def test_close_delimited_body_without_ranges_is_refused(image_factory, faults, tmp_path) -> None:
    faults.add("/d", Fault(path=str(image_factory.raw), length="none", ranges=False, advertise_ranges=False,
                           drop_p=1.0, drop_every=3 << 20))
    out = tmp_path / "out.img"
    with pytest.raises(Error, match="no Content-Length") as info:
        run_import(_job(faults.url("/d"), out))
    assert "end of the image cannot be verified" in str(info.value)
    assert not out.exists()


def test_close_delimited_archive_without_ranges_is_refused(image_factory, faults, tmp_path) -> None:
    import tarfile

    tar_path = tmp_path / "site.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(image_factory.raw, arcname="a.raw")
    faults.add("/d", Fault(path=str(tar_path), length="none", ranges=False, advertise_ranges=False))
    job = _job(faults.url("/d"), tmp_path / "site")
    job.content_type = "archive"
    with pytest.raises(Error, match="no Content-Length"):
        run_import(job)


def test_close_delimited_compressed_body_is_checked_by_its_own_end(image_factory, faults, tmp_path) -> None:
    faults.add("/d", Fault(path=str(image_factory.get("raw.zst")), length="none", ranges=False,
                           advertise_ranges=False))
    out = tmp_path / "out.img"
    run_import(_job(faults.url("/d"), out))
    assert _same(out, image_factory.raw)


def test_chunked_body_without_terminator_and_no_ranges_is_fetched_at_most_twice(
        image_factory, faults, tmp_path) -> None:
    """The same cut at the same byte twice cannot change on a third try: fail then, saying so."""
    raw = image_factory.raw
    fault = faults.add("/d", Fault(path=str(raw), length="chunked", chunked_end=False, ranges=False,
                                   advertise_ranges=False))
    out = tmp_path / "out.img"
    with pytest.raises(Error, match="every time"):
        run_import(_job(faults.url("/d"), out))
    assert fault.sent <= 2 * raw.stat().st_size
    assert not out.exists()


# -- truncated compressed files ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raw.gz", "raw.xz", "raw.zst", "raw.bz2"])
def test_truncated_compressed_file_fails(image_factory, faults, tmp_path, name) -> None:
    data = image_factory.get(name).read_bytes()
    cut = tmp_path / ("cut." + name)
    cut.write_bytes(data[: len(data) * 2 // 3])
    faults.add("/d", Fault(path=str(cut)))
    out = tmp_path / "out.img"
    with pytest.raises(Error, match="stream ends early") as info:
        run_import(_job(faults.url("/d"), out))
    assert info.value.permanent
    assert not out.exists()


# -- stalls and slow servers ------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["slow", "stalled-after-headers", "stalled-mid-body", "one-byte-per-answer"])
@pytest.mark.parametrize("name", ["raw", "qcow2"])
@pytest.mark.timeout(60)
def test_stalled_server_fails_saying_so(image_factory, faults, tmp_path, case, name) -> None:
    """``one-byte-per-answer``: every answer is too short for a speed check of its own and every
    reconnect made progress; the speed is measured across reconnects (after 20,000 answers the
    server gives up with 500s, which would end in another message)."""
    kw: dict[str, object] = {"slow": {"rate": 1024}, "stalled-after-headers": {"stall_after": 0},
                             "stalled-mid-body": {"stall_after": 300 << 10},
                             "one-byte-per-answer": {"answer_bytes": 1, "give_up_after": 20000}}[case]
    faults.add("/d", Fault(path=str(image_factory.get(name)), **kw))  # type: ignore[arg-type]
    out = tmp_path / "out.img"
    with pytest.raises(Error, match="stalled") as info:
        run_import(_job(faults.url("/d"), out, **STALL))
    assert not info.value.permanent, "a network error is transient"
    assert "InvalidImage" not in info.value.reason


@pytest.mark.timeout(60)
def test_cli_speed_flags(image_factory, faults, tmp_path) -> None:
    faults.add("/d", Fault(path=str(image_factory.raw), stall_after=1 << 20))
    out = tmp_path / "out.img"
    proc = subprocess.run([*CDI, "import", faults.url("/d"), str(out), "--progress", "none", "--speed-limit", "8Ki",
                           "--speed-time", "0.5", "--max-stalled-retries", "2"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "stalled" in proc.stderr and "3 times" in proc.stderr


# -- ranges that are advertised but not honoured ----------------------------------------------------

@pytest.mark.parametrize("name", ["qcow2", "raw"])
def test_range_answered_with_200_is_not_relied_on(image_factory, faults, tmp_path, name) -> None:
    src = image_factory.get(name)
    fault = faults.add("/d", Fault(path=str(src), ranges=False, advertise_ranges=True))
    out = tmp_path / "out.img"
    run_import(_job(faults.url("/d"), out))
    assert _same(out, image_factory.raw)
    assert fault.sent <= 2.2 * src.stat().st_size, f"{fault.sent} bytes sent for a {src.stat().st_size} file"


# -- a Content-Length that lies ---------------------------------------------------------------------

@pytest.mark.parametrize("length", ["large", "small"])
@pytest.mark.parametrize("name", ["raw", "qcow2"])
def test_wrong_content_length_fails_naming_it(image_factory, faults, tmp_path, length, name) -> None:
    fault = faults.add("/d", Fault(path=str(image_factory.get(name)), length=length, length_error=8192))
    out = tmp_path / "out.img"
    with pytest.raises(SourceError, match="Content-Length") as info:
        run_import(_job(faults.url("/d"), out))
    assert "larger" in str(info.value) if length == "large" else "smaller" in str(info.value)
    assert len(fault.requests) <= 4
    assert not out.exists()
    assert not list(tmp_path.glob(".out.img.*"))


# -- drops ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raw", "raw.zst", "qcow2", "vmdk"])
def test_drops_cost_few_extra_bytes(image_factory, faults, tmp_path, name) -> None:
    src = image_factory.get(name)
    clean = faults.add("/clean", Fault(path=str(src)))
    run_import(_job(faults.url("/clean"), tmp_path / "clean.img"))
    fault = faults.add("/d", Fault(path=str(src), drop_p=0.3, drop_every=100_000, seed=3))
    out = tmp_path / "out.img"
    result = run_import(_job(faults.url("/d"), out))
    assert _same(out, image_factory.raw)
    assert result.digest == volume_digest(str(image_factory.raw))
    assert fault.drops > 0
    assert result.resumes >= fault.drops
    assert result.restarts == 0
    # what the drops cost: at most 10% more than the same import on a good network
    assert fault.sent <= 1.1 * clean.sent, (fault.sent, clean.sent, src.stat().st_size)


# -- local paths and leftovers ----------------------------------------------------------------------

def test_relative_path_to_vmdk(image_factory, tmp_path, monkeypatch) -> None:
    (tmp_path / "d.vmdk").write_bytes(image_factory.get("vmdk").read_bytes())
    monkeypatch.chdir(tmp_path)
    run_import(ImportJob(source="d.vmdk", target="out.img"))
    assert _same(tmp_path / "out.img", image_factory.raw)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("ranges", "name"), [(True, "qcow2"), (False, "vmdk")], ids=["remote-convert", "scratch"])
def test_kill_9_leaves_no_temporary_files(image_factory, faults, tmp_path, ranges, name) -> None:
    fault = faults.add("/d", Fault(path=str(image_factory.get(name)), rate=512 << 10, ranges=ranges))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = tmp_path / "out.img"
    proc = subprocess.Popen([*CDI, "import", faults.url("/d"), str(out), "--progress", "none"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fault.sent < 3 << 19 and time.monotonic() < deadline:  # past format detection: converting or spooling
        time.sleep(0.02)
    assert fault.sent >= 3 << 19
    if not ranges:
        assert list(tmp_path.glob(".cdi-scratch-*")), "the killed import was spooling to scratch"
    proc.kill()
    proc.wait()
    fault.rate = None
    done = subprocess.run([*CDI, "import", faults.url("/d"), str(out), "--progress", "none"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == volume_digest(str(image_factory.raw))
    assert list(tmp.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.timeout(60)
def test_qemu_img_timeout_during_a_stall_reports_the_stall(image_factory, faults, tmp_path, monkeypatch) -> None:
    from importer import qemu_img

    monkeypatch.setattr(qemu_img, "INFO_TIMEOUT", 1.0)
    faults.add("/d", Fault(path=str(image_factory.get("qcow2")), stall_after=1 << 20))  # the probe, then nothing
    with pytest.raises(Error, match="stalled") as info:
        run_import(_job(faults.url("/d"), tmp_path / "out.img", **{**STALL, "max_stalled_retries": 2}))
    assert not info.value.permanent
    assert not (tmp_path / "out.img").exists()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("constant_etag", [False, True])
def test_resume_after_kill_of_a_file_that_changed_meanwhile(
        image_factory, other, faults, tmp_path, constant_etag) -> None:
    """A server that ignores If-Range (or whose ETag stays the same) answers the resume with a 206 of
    the new version: its ETag or Last-Modified gives it away, and the import starts over instead of
    joining two versions."""
    fault = faults.add("/d", Fault(path=str(image_factory.raw), swap_to=str(other["raw"]), swap_after=1 << 40,
                                   rate=2 << 20, if_range=constant_etag, constant_etag=constant_etag))
    out = tmp_path / "out.img"
    point_file = tmp_path / ".out.img.cdi-resume.json"
    env = {**os.environ, "CDI_RESUME_INTERVAL": str(1 << 20)}
    args = [*CDI, "import", faults.url("/d"), str(out), "--progress", "none"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    offset = 0
    while offset < 2 << 20 and time.monotonic() < deadline:  # a durable resume point past 2 MiB
        try:
            offset = json.loads(point_file.read_text())["offset"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    assert offset >= 2 << 20
    proc.kill()
    proc.wait()
    fault.swapped, fault.rate = True, None
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _same(out, other["raw"])
    assert json.loads(done.stdout)["digest"] == volume_digest(str(other["raw"]))


def test_importer_environment_carries_the_network_limits(tmp_path) -> None:
    from importer.errors import PermanentError
    from importer.job_env import job_from_env

    env = {"IMPORTER_ENDPOINT": "http://127.0.0.1:1/d", "IMPORTER_TARGET_PATH": str(tmp_path / "disk.img"),
           "IMPORTER_SPEED_LIMIT": "64Ki", "IMPORTER_SPEED_TIME": "7.5", "IMPORTER_MAX_STALLED_RETRIES": "2",
           "IMPORTER_RETRIES": "9"}
    http = job_from_env(env).http
    assert (http.speed_limit, http.speed_time, http.max_stalled_retries, http.retries) == (64 << 10, 7.5, 2, 9)
    with pytest.raises(PermanentError, match="IMPORTER_SPEED_TIME"):
        job_from_env({**env, "IMPORTER_SPEED_TIME": "0"})
    with pytest.raises(PermanentError, match="network limit"):
        job_from_env({**env, "IMPORTER_MAX_STALLED_RETRIES": "many"})
