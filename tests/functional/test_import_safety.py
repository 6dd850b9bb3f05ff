"""Hostile and oversized input: refused with a message saying what was found, nothing left behind."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from importer import qemu_img
from importer.errors import CapacityExceeded, Error, FormatError, UnsafeImage
from importer.pipeline import ImportJob, run_import
from tests.support import images
from tests.support.httpserver import HttpServer, Route


def _import(src: Path | str, out: Path, **kw: object) -> object:
    return run_import(ImportJob(source=str(src), target=str(out), **kw))  # type: ignore[arg-type]


def test_backing_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(evil), "1M")
    with pytest.raises(UnsafeImage, match="backing file.*/etc/hostname"):
        _import(evil, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


def test_backing_file_is_refused_over_http(tmp_path: Path, http_server: HttpServer) -> None:
    evil = tmp_path / "evil.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(evil), "1M")
    http_server.add("/evil", Route(path=str(evil)))
    with pytest.raises(UnsafeImage, match="backing file"):
        _import(http_server.url("/evil"), tmp_path / "out.img")


def test_external_data_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(evil), "1M")
    with pytest.raises(UnsafeImage, match="external data file"):
        _import(evil, tmp_path / "out.img")


def test_vmdk_descriptor_with_outside_extent_is_refused(tmp_path: Path) -> None:
    desc = tmp_path / "evil.vmdk"
    desc.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
        'RW 2048 FLAT "/etc/hostname" 0\nddb.adapterType = "ide"\n'
    )
    with pytest.raises(UnsafeImage, match="vmdk descriptor"):
        _import(desc, tmp_path / "out.img")
    # and the second line of defence, the check on qemu-img's own reading of the extents
    data = qemu_img.info(str(desc), fmt="vmdk")
    with pytest.raises(UnsafeImage, match="extent points outside the image file.*/etc/hostname"):
        qemu_img.check_safe(data, expected_format="vmdk", image_name=str(desc))


def test_truncated_qcow2_fails_clearly(image_factory, tmp_path: Path) -> None:
    data = image_factory.get("qcow2").read_bytes()
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Error, match="qemu-img"):
        _import(cut, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


@pytest.mark.parametrize("name", ["vdi", "qcow2", "vmdk", "vpc", "vhdx"])
@pytest.mark.parametrize("over", ["file", "http"])
def test_truncated_image_is_refused(image_factory, tmp_path: Path, http_server: HttpServer, name: str,
                                    over: str) -> None:
    """qemu-img check finds nothing wrong in a truncated vdi: its missing blocks would read as zeros.
    Data extents past the end of the file (or of what the server sends) are refused for every format."""
    data = image_factory.get(name).read_bytes()
    cut = tmp_path / f"cut.{name}"
    cut.write_bytes(data[: len(data) // 2])
    src: str = str(cut)
    if over == "http":
        http_server.add("/cut", Route(path=str(cut)))
        src = http_server.url("/cut")
    out = tmp_path / "out.img"
    with pytest.raises(Error, match="truncated|corrupt|qemu-img"):
        _import(src, out)
    assert not out.exists()


def test_garbage_behind_qcow2_magic_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + os.urandom(70000))
    with pytest.raises(FormatError, match="qemu-img cannot parse the image"):
        _import(bad, tmp_path / "out.img")


def test_encrypted_luks_is_refused(tmp_path: Path) -> None:
    luks = tmp_path / "x.luks"
    images.qemu_img("create", "-f", "luks", "--object", "secret,id=s0,data=pw", "-o", "key-secret=s0,iter-time=200",
                    str(luks), "1M")
    with pytest.raises(UnsafeImage, match="LUKS"):
        _import(luks, tmp_path / "out.img")


def test_virtual_size_over_capacity_fails_before_writing(image_factory, tmp_path: Path) -> None:
    message = r"image virtual size 8388608 is larger than the volume capacity 4194304"
    with pytest.raises(CapacityExceeded, match=message):
        _import(image_factory.get("qcow2"), tmp_path / "out.img", size=4 << 20)
    assert not (tmp_path / "out.img").exists()


def test_raw_over_capacity_over_http(image_factory, http_server: HttpServer, tmp_path: Path) -> None:
    http_server.add("/d.raw", Route(path=str(image_factory.raw)))
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity 4194304"):
        _import(http_server.url("/d.raw"), tmp_path / "out.img", size=4 << 20)
    assert not (tmp_path / "out.img").exists()


def test_decompression_bomb_stops_at_capacity(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.raw"
    with open(zeros, "wb") as f:
        f.truncate(256 << 20)
    bomb = images.compress(zeros, "zstd")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity 8388608"):
        _import(bomb, tmp_path / "out.img", size=8 << 20)
    assert not (tmp_path / "out.img").exists()


def test_qcow2_bomb_in_xz_is_limited_in_scratch(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    bomb = images.compress(big, "xz")  # raw zeros: decompresses far beyond the 1 MiB capacity
    with pytest.raises(CapacityExceeded):
        _import(bomb, tmp_path / "out.img", size=1 << 20)


def test_capacity_larger_than_image_grows_file_sparsely(image_factory, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    result = _import(image_factory.get("qcow2"), out, size=1 << 30)
    assert out.stat().st_size == 1 << 30
    assert images.allocated(out) < 8 << 20
    with open(out, "rb") as f:
        assert f.read(8 << 20) == image_factory.raw.read_bytes()
    assert result.capacity == 1 << 30  # type: ignore[attr-defined]


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    "member, match",
    [
        (tarfile.TarInfo("../escape.txt"), r"contains '\.\.'"),
        (tarfile.TarInfo("/etc/cron.d/evil"), "absolute path"),
        ("symlink", "links to '/etc/passwd', outside the volume"),
        ("relsymlink", "links to '../../etc/passwd', outside"),
        ("chardev", "device file"),
    ],
)
def test_hostile_tar_is_refused_in_archive_mode(tmp_path: Path, member: object, match: str) -> None:
    if member == "symlink":
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif member == "relsymlink":
        info = tarfile.TarInfo("sub/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    elif member == "chardev":
        info = tarfile.TarInfo("null")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    else:
        assert isinstance(member, tarfile.TarInfo)
        info = member
        info.size = 4
    data = b"evil" if info.isfile() else b""
    tar = _tar_with(tmp_path, info, data)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeImage, match=match):
        _import(tar, dest, content_type="archive")
    assert not (tmp_path / "escape.txt").exists()


def test_archive_extracts_into_directory(tmp_path: Path, http_server: HttpServer) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("a.txt", src / "link")
    tgz = tmp_path / "data.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name in ("a.txt", "sub", "link"):
            tar.add(src / name, arcname=name)
    http_server.add("/data.tgz", Route(path=str(tgz)))
    dest = tmp_path / "dest"
    result = _import(http_server.url("/data.tgz"), dest, content_type="archive")
    assert subprocess.run(["diff", "-r", "--no-dereference", str(src), str(dest)]).returncode == 0
    assert result.files == 2  # type: ignore[attr-defined]
    assert result.formats == ["gzip", "tar", "archive"]  # type: ignore[attr-defined]


def test_archive_needs_a_tar(image_factory, tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="contentType archive needs a tar archive"):
        _import(image_factory.get("qcow2"), tmp_path / "dest", content_type="archive")


def test_archive_over_capacity(tmp_path: Path) -> None:
    tar_path = tmp_path / "big.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(bytes(1 << 20)))
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity"):
        _import(tar_path, tmp_path / "dest", content_type="archive", size=2 << 20)
