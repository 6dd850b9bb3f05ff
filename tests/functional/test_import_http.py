"""The http source against real servers on 127.0.0.1: ranges, resume, redirects, auth, TLS, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from importer.errors import ChecksumMismatch, FormatError, SourceError
from importer.http_options import HttpOptions
from importer.pipeline import ImportJob, run_import
from tests.support import images
from tests.support.httpserver import Route


def _job(url: str, out: Path, **http: object) -> ImportJob:
    return ImportJob(source=url, target=str(out), http=HttpOptions(backoff=0.05, **http))  # type: ignore[arg-type]


def test_qcow2_with_ranges_converts_over_the_network_without_scratch(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2"))))
    result = run_import(_job(http_server.url("/d.qcow2"), tmp_path / "out.img"))
    assert result.scratch_bytes == 0
    assert "convert" in result.phases
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_qcow2_without_ranges_converts_as_it_streams_without_scratch(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2")), ranges=False))
    scratch = tmp_path / "scratch"
    job = _job(http_server.url("/d.qcow2"), tmp_path / "out.img")
    job.scratch_dir = str(scratch)
    result = run_import(job)
    assert result.scratch_bytes == 0 and not scratch.exists()
    assert "convert" not in result.phases
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_vmdk_without_ranges_uses_scratch_and_removes_it(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.vmdk", Route(path=str(image_factory.get("vmdk")), ranges=False))
    scratch = tmp_path / "scratch"
    job = _job(http_server.url("/d.vmdk"), tmp_path / "out.img")
    job.scratch_dir = str(scratch)
    result = run_import(job)
    assert result.scratch_bytes > 0
    assert list(scratch.iterdir()) == []
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_dropped_connection_resumes_with_range(image_factory, http_server, tmp_path) -> None:
    route = http_server.add("/d.raw.zst", Route(path=str(image_factory.get("raw.zst")), drop_after=100_000))
    result = run_import(_job(http_server.url("/d.raw.zst"), tmp_path / "out.img"))
    assert result.resumes == 1
    assert result.restarts == 0
    size = image_factory.get("raw.zst").stat().st_size
    # a first range proves that ranges work; the resume and the check of the end are tied to the version
    assert [r.get("Range") for r in route.requests] == ["bytes=0-1048575", "bytes=100000-1048575",
                                                        "bytes=1048576-", f"bytes={size}-"]
    assert all(r.get("If-Range") for r in route.requests[1:])
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_dropped_connection_without_ranges_restarts_from_zero(image_factory, http_server, tmp_path, caplog) -> None:
    http_server.add("/d.raw", Route(path=str(image_factory.raw), ranges=False, drop_after=3 << 20))
    result = run_import(_job(http_server.url("/d.raw"), tmp_path / "out.img"))
    assert result.restarts == 1
    assert "does not support range requests" in caplog.text
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_chunked_body_dropped_midway_resumes(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.raw", Route(path=str(image_factory.raw), chunked=True, drop_after=2 << 20))
    result = run_import(_job(http_server.url("/d.raw"), tmp_path / "out.img"))
    assert result.resumes + result.restarts >= 1
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_redirect_chain_is_followed(image_factory, http_server, tmp_path) -> None:
    http_server.add("/final.qcow2", Route(path=str(image_factory.get("qcow2"))))
    http_server.add("/b", Route(redirect_to="/final.qcow2", redirect_status=307))
    http_server.add("/a", Route(redirect_to=http_server.url("/b"), redirect_status=301))
    result = run_import(_job(http_server.url("/a"), tmp_path / "out.img"))
    assert result.formats == ["qcow2"]
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_basic_auth(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.raw.gz", Route(path=str(image_factory.get("raw.gz")), user="alice", password="s3cret"))
    url = http_server.url("/d.raw.gz")
    with pytest.raises(SourceError, match="access denied: HTTP 401"):
        run_import(_job(url, tmp_path / "bad.img", user="alice", password="wrong"))
    assert not (tmp_path / "bad.img").exists()
    run_import(_job(url, tmp_path / "out.img", user="alice", password="s3cret"))
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_basic_auth_direct_convert_passes_credentials_to_range_reads(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2")), user="bob", password="pw:with:colons"))
    result = run_import(_job(http_server.url("/d.qcow2"), tmp_path / "out.img", user="bob", password="pw:with:colons"))
    assert result.scratch_bytes == 0
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_extra_headers_are_sent(image_factory, http_server, tmp_path) -> None:
    http_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2")), require_headers={"X-Token": "abc"}))
    url = http_server.url("/d.qcow2")
    with pytest.raises(SourceError, match="HTTP 403"):
        run_import(_job(url, tmp_path / "bad.img"))
    run_import(_job(url, tmp_path / "out.img", headers=[("X-Token", "abc")]))
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_tls_with_custom_ca(image_factory, https_server, ca_file, tmp_path) -> None:
    https_server.add("/d.qcow2", Route(path=str(image_factory.get("qcow2"))))
    https_server.add("/d.raw.xz", Route(path=str(image_factory.get("raw.xz"))))
    with pytest.raises(SourceError, match="certificate .* not trusted"):
        run_import(_job(https_server.url("/d.raw.xz"), tmp_path / "bad.img"))
    for name in ("/d.qcow2", "/d.raw.xz"):
        out = tmp_path / f"out{name.replace('/', '_')}"
        run_import(_job(https_server.url(name), out, ca_file=ca_file))
        assert images.same_content(out, image_factory.raw)
    out = tmp_path / "insecure.img"
    run_import(_job(https_server.url("/d.qcow2"), out, insecure=True))
    assert images.same_content(out, image_factory.raw)


def test_html_page_is_not_imported(http_server, tmp_path) -> None:
    http_server.add("/login", Route(html=True))
    with pytest.raises(FormatError, match="web page"):
        run_import(_job(http_server.url("/login"), tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()


def test_not_found_says_so(http_server, tmp_path) -> None:
    with pytest.raises(SourceError, match="not found: HTTP 404"):
        run_import(_job(http_server.url("/missing.img"), tmp_path / "out.img"))


def test_server_error_is_temporary(http_server, tmp_path) -> None:
    http_server.add("/broken", Route(status=503))
    with pytest.raises(Exception) as info:
        run_import(_job(http_server.url("/broken"), tmp_path / "out.img", retries=1))
    assert getattr(info.value, "permanent", True) is False
    assert "HTTP 503" in str(info.value)


def test_checksum_verified_over_downloaded_bytes(image_factory, http_server, tmp_path) -> None:
    src = image_factory.get("qcow2.gz")
    http_server.add("/d", Route(path=str(src)))
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    job = _job(http_server.url("/d"), tmp_path / "out.img")
    job.checksum = f"sha256:{good}"
    result = run_import(job)
    assert result.source_checksum == f"sha256:{good}"
    bad = "0" * 64
    job = _job(http_server.url("/d"), tmp_path / "bad.img")
    job.checksum = f"sha256:{bad}"
    with pytest.raises(ChecksumMismatch) as info:
        run_import(job)
    assert bad in str(info.value) and good in str(info.value)
    assert not (tmp_path / "bad.img").exists()


def test_checksum_of_qcow2_with_ranges_still_verified(image_factory, http_server, tmp_path) -> None:
    src = image_factory.get("qcow2")
    http_server.add("/d", Route(path=str(src)))
    job = _job(http_server.url("/d"), tmp_path / "out.img")
    job.checksum = "md5:" + hashlib.md5(src.read_bytes()).hexdigest()
    result = run_import(job)
    assert result.source_checksum == job.checksum
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_checksum_covers_whole_tar(image_factory, http_server, tmp_path) -> None:
    import tarfile

    tar_path = tmp_path / "disk.tar"
    (tmp_path / "notes").mkdir()
    with tarfile.open(tar_path, "w") as tar:  # the checksum covers what follows the disk too
        tar.add(image_factory.raw, arcname="disk.raw")
        tar.add(tmp_path / "notes", arcname="notes")
    http_server.add("/t", Route(path=str(tar_path)))
    job = _job(http_server.url("/t"), tmp_path / "out.img")
    job.checksum = "sha1:" + hashlib.sha1(tar_path.read_bytes()).hexdigest()
    assert run_import(job).formats == ["tar", "raw"]
