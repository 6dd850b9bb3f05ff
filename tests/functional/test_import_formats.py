"""Every supported format and layer, imported from a local file and from http, compared byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from importer.errors import FormatError
from importer.pipeline import ImportJob, run_import
from tests.support import images
from tests.support.httpserver import HttpServer, Route

FORMATS = ["raw", "qcow2", "qcow2c", "vmdk", "vmdkstream", "vdi", "vpc", "vpcfixed", "vhdx"]
LAYERS = ["raw.gz", "raw.xz", "raw.zst", "raw.bz2", "qcow2.xz", "qcow2.gz", "vmdk.zst", "vhdx.xz"]


def _expected_format(name: str) -> str:
    base = name.split(".")[0]
    return {"qcow2c": "qcow2", "vmdkstream": "vmdk", "vpcfixed": "vpc"}.get(base, base)


@pytest.mark.parametrize("name", FORMATS + LAYERS)
def test_local_file_import_matches_source(image_factory, tmp_path: Path, name: str) -> None:
    src = image_factory.get(name)
    out = tmp_path / "disk.img"
    result = run_import(ImportJob(source=str(src), target=str(out)))
    assert images.same_content(out, image_factory.raw)
    assert result.formats[-1] == _expected_format(name)
    assert result.virtual_size == 8 << 20
    assert result.digest is not None
    assert not list(tmp_path.glob(".cdi-scratch-*")), "scratch space left behind"


@pytest.mark.parametrize("name", ["qcow2", "vmdk", "vhdx", "raw.xz", "qcow2.zst", "vpcfixed"])
def test_http_import_matches_source(image_factory, http_server: HttpServer, tmp_path: Path, name: str) -> None:
    http_server.add("/img", Route(path=str(image_factory.get(name))))
    out = tmp_path / "disk.img"
    result = run_import(ImportJob(source=http_server.url("/img"), target=str(out)))
    assert images.same_content(out, image_factory.raw)
    assert result.formats[-1] == _expected_format(name)


def test_nested_layers_raw_in_tar_gz(image_factory, tmp_path: Path) -> None:
    tgz = tmp_path / "disk.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(image_factory.raw, arcname="images/disk.raw")
    result = run_import(ImportJob(source=str(tgz), target=str(tmp_path / "out.img")))
    assert result.formats == ["gzip", "tar", "raw"]
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


@pytest.mark.parametrize("second", ["raw", "qcow2"])
def test_tar_with_two_disks_is_refused(image_factory, tmp_path: Path, second: str) -> None:
    """CDI expects one disk image in a tar: importing the first of two would be a silent guess."""
    tar_path = tmp_path / "disks.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(image_factory.raw, arcname="a.raw")
        tar.add(image_factory.get(second), arcname=f"b.{second}")
    out = tmp_path / "out.img"
    with pytest.raises(FormatError, match=f"the archive holds more than one disk image: a.raw, b.{second}"):
        run_import(ImportJob(source=str(tar_path), target=str(out)))
    assert not out.exists()


def test_qcow2_inside_tar_xz(image_factory, tmp_path: Path) -> None:
    tar_path = tmp_path / "disk.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(image_factory.get("qcow2"), arcname="disk.qcow2")
    xz = images.compress(tar_path, "xz")
    result = run_import(ImportJob(source=str(xz), target=str(tmp_path / "out.img")))
    assert result.formats == ["xz", "tar", "qcow2"]
    assert result.scratch_bytes == 0  # converted as it streams out of the archive
    assert images.same_content(tmp_path / "out.img", image_factory.raw)


def test_iso_is_imported_as_raw(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello from the iso\n")
    iso = tmp_path / "cd.iso"
    tool = "genisoimage" if shutil.which("genisoimage") else "xorrisofs"
    subprocess.run([tool, "-quiet", "-o", str(iso), "-V", "CDITEST", str(content)], check=True)
    result = run_import(ImportJob(source=str(iso), target=str(tmp_path / "out.img")))
    assert result.formats == ["iso"]
    assert images.same_content(tmp_path / "out.img", iso)


def test_same_disk_same_digest_across_formats(image_factory, tmp_path: Path) -> None:
    digests = set()
    for name in ["raw", "qcow2", "raw.xz", "vhdx", "vmdk.zst"]:
        out = tmp_path / f"{name}.img"
        digests.add(run_import(ImportJob(source=str(image_factory.get(name)), target=str(out))).digest)
    dense = tmp_path / "dense.img"
    subprocess.run(["cp", "--sparse=never", str(image_factory.raw), str(dense)], check=True)
    cli = subprocess.run([sys.executable, "-m", "cdi.cli.main", "digest", str(dense)], capture_output=True, text=True,
                         check=True)
    digests.add(cli.stdout.strip())
    assert len(digests) == 1, digests
