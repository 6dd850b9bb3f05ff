from __future__ import annotations

import io
import struct
import tarfile

from importer import formats


def test_compression_magic() -> None:
    assert formats.detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert formats.detect_compression(b"\xfd7zXZ\x00\x00") == "xz"
    assert formats.detect_compression(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert formats.detect_compression(b"BZh91AY&SY") == "bzip2"
    assert formats.detect_compression(b"BZh9garbage") is None
    assert formats.detect_compression(b"QFI\xfb") is None


def test_image_magic() -> None:
    assert formats.detect_image(b"QFI\xfb\x00\x00\x00\x03") == "qcow2"
    assert formats.detect_image(b"KDMV") == "vmdk"
    assert formats.detect_image(b"vhdxfile") == "vhdx"
    assert formats.detect_image(b"conectix") == "vpc"
    assert formats.detect_image(bytes(0x40) + b"\x7f\x10\xda\xbe" + bytes(8)) == "vdi"
    assert formats.detect_image(bytes(0x8001) + b"CD001" + bytes(10)) == "iso"
    assert formats.detect_image(b"# Disk DescriptorFile\n") == "vmdk-descriptor"
    assert formats.detect_image(b"LUKS\xba\xbe\x00\x01") == "luks"
    assert formats.detect_image(bytes(4096)) == "raw"


def test_tar_detection_checks_the_header_checksum() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    head = buf.getvalue()
    assert formats.is_tar(head)
    broken = bytearray(head)
    broken[0] ^= 0xFF
    assert not formats.is_tar(bytes(broken))


def test_vhd_fixed_footer() -> None:
    footer = bytearray(512)
    footer[:8] = b"conectix"
    footer[48:56] = struct.pack(">Q", 1 << 20)
    footer[60:64] = struct.pack(">I", 2)
    assert formats.vhd_fixed_footer_size(bytes(footer)) == 1 << 20
    footer[60:64] = struct.pack(">I", 3)  # dynamic: not a fixed footer
    assert formats.vhd_fixed_footer_size(bytes(footer)) is None


def test_html_detection() -> None:
    assert formats.looks_like_html(b"<!DOCTYPE html><html><body>x</body></html>")
    assert formats.looks_like_html(b"anything", "text/html; charset=utf-8")
    assert not formats.looks_like_html(b"QFI\xfb", "application/octet-stream")
    assert not formats.looks_like_html(bytes(1024))
