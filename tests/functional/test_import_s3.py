"""The S3 source against moto's S3 server on 127.0.0.1, with signatures checked: signed reads (ranged
ones included), wrong keys, a missing object, and a connection cut mid-body that resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from importer.errors import SourceError
from importer.http_options import HttpOptions
from importer.pipeline import ImportJob, run_import
from importer.sources.s3 import parse_s3_url
from tests.support import images
from tests.support.s3server import CuttingProxy, S3Server, s3_server_fixture  # noqa: F401


def _job(url: str, out: Path, **http: object) -> ImportJob:
    options = HttpOptions(backoff=0.05, retries=2, s3=True, **http)  # type: ignore[arg-type]
    return ImportJob(source=url, target=str(out), http=options)


def _creds(server: S3Server) -> dict[str, str]:
    return {"user": server.access_key, "password": server.secret_key}


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:9000/disks/images/fedora.qcow2", ("http://127.0.0.1:9000", "disks", "images/fedora.qcow2",
                                                         "us-east-1", False)),
    ("https://minio.example:443/b/k%20x.img", ("https://minio.example:443", "b", "k x.img", "us-east-1", False)),
    ("https://mybucket.s3.eu-west-1.amazonaws.com/os/disk.img", ("https://mybucket.s3.eu-west-1.amazonaws.com",
                                                                 "mybucket", "os/disk.img", "eu-west-1", True)),
    ("https://mybucket.s3.amazonaws.com/disk.img", ("https://mybucket.s3.amazonaws.com", "mybucket", "disk.img",
                                                    "us-east-1", True)),
    ("https://s3.us-west-2.amazonaws.com/mybucket/disk.img", ("https://s3.us-west-2.amazonaws.com", "mybucket",
                                                              "disk.img", "us-west-2", False)),
    ("https://b.s3-ap-south-1.amazonaws.com/d.raw", ("https://b.s3-ap-south-1.amazonaws.com", "b", "d.raw",
                                                     "ap-south-1", True)),
])
def test_url_styles_are_parsed(url: str, expected: tuple[object, ...]) -> None:
    loc = parse_s3_url(url)
    assert (loc.endpoint, loc.bucket, loc.key, loc.region, loc.virtual_host) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/onlybucket", "ftp://h/b/k", "http://127.0.0.1:9000/"])
def test_urls_without_an_object_are_refused(url: str) -> None:
    with pytest.raises(SourceError, match="invalid S3 URL"):
        parse_s3_url(url)


def test_signed_import_path_style(image_factory, s3_server: S3Server, tmp_path) -> None:
    url = s3_server.put("disks", "images/disk.raw.gz", image_factory.get("raw.gz"))
    out = tmp_path / "out.img"
    result = run_import(_job(url, out, **_creds(s3_server)))
    assert images.same_content(out, image_factory.raw)
    assert result.formats == ["gzip", "raw"]


def test_qcow2_converts_through_signed_range_reads(image_factory, s3_server: S3Server, tmp_path) -> None:
    url = s3_server.put("disks", "disk.qcow2", image_factory.get("qcow2"))
    out = tmp_path / "out.img"
    result = run_import(_job(url, out, **_creds(s3_server)))
    assert result.scratch_bytes == 0  # read at random, every range request signed
    assert images.same_content(out, image_factory.raw)


def test_wrong_keys_and_missing_objects_say_why(image_factory, s3_server: S3Server, tmp_path) -> None:
    url = s3_server.put("disks", "disk.raw", image_factory.raw)
    out = tmp_path / "out.img"
    with pytest.raises(SourceError, match=r"S3 refused the credentials \(SignatureDoesNotMatch.*check the secretRef"):
        run_import(_job(url, out, user=s3_server.access_key, password="not-the-secret"))
    with pytest.raises(SourceError, match=r"S3 refused the credentials \(InvalidAccessKeyId"):
        run_import(_job(url, out, user="AKIANOSUCHKEY0000000", password="x"))
    # (an anonymous read is not tried: moto's authorisation fails with HTTP 500 on a request without any
    # Authorization header, where S3 answers 403 AccessDenied)
    with pytest.raises(SourceError, match="not found: S3 says NoSuchKey"):
        run_import(_job(s3_server.url("disks", "nope.raw"), out, **_creds(s3_server)))
    assert not out.exists()


def test_a_cut_connection_resumes_with_a_signed_range(image_factory, s3_server: S3Server, tmp_path) -> None:
    s3_server.put("disks", "cut.raw", image_factory.raw)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with CuttingProxy(port, cut_after=3 << 20) as proxy:
        out = tmp_path / "out.img"
        result = run_import(_job(s3_server.url("disks", "cut.raw", proxy.endpoint), out, **_creds(s3_server)))
        assert proxy.cut == 1
    assert result.resumes == 1 and result.restarts == 0
    assert images.same_content(out, image_factory.raw)
