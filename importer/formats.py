"""Content detection by magic bytes: compression layers, tar, and disk image formats.

File names and Content-Type headers are never trusted for this. libmagic (python-magic) is used only
to describe unknown content in error messages and to catch web pages: it misnames some disk formats
(an unencrypted qcow2 v3 is "AES-encrypted" in libmagic 5.44), so our own signatures decide.
"""

from __future__ import annotations

import struct
from types import ModuleType

_magic: ModuleType | None
try:
    import magic as _magic
except ImportError:  # pragma: no cover - python-magic is a dependency; libmagic may be missing
    _magic = None

# How much of the stream the detectors want to see (vhdx keeps its header at 64 KiB, iso at 32 KiB).
SNIFF_BYTES = 1 << 20

COMPRESSIONS = ("gzip", "xz", "zstd", "bzip2")
CONVERTIBLE = ("qcow2", "vmdk", "vdi", "vpc", "vhdx")


def detect_compression(head: bytes) -> str | None:
    """Name of the compression whose magic starts ``head``, else None."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"\x31\x41\x59\x26\x53\x59":
        return "bzip2"
    return None


def is_tar(head: bytes) -> bool:
    """A POSIX (ustar) or GNU tar header at the start of ``head``."""
    return len(head) >= 512 and head[257:262] == b"ustar" and _tar_checksum_ok(head[:512])


def _tar_checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"0", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    return stored == computed


def detect_image(head: bytes) -> str:
    """qemu's name for the disk format at the start of ``head``: raw when nothing else matches.

    ``iso`` is reported for ISO 9660 images (imported as raw); ``vmdk-descriptor`` for a bare text
    descriptor (its data lives in other files, which we never open); ``luks`` and ``qed`` and the like
    are named so that the caller can refuse them.
    """
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"COWD"):
        return "vmdk"
    if head[:64].lstrip().startswith(b"# Disk DescriptorFile"):
        return "vmdk-descriptor"
    if len(head) >= 0x48 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if head.startswith(b"conectix"):
        return "vpc"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"LUKS\xba\xbe"):
        return "luks"
    if head.startswith(b"QEMU\x00") or head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"QFI") or head.startswith(b"OOOM"):
        return "qcow"
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return "iso"
    return "raw"


def vhd_fixed_footer_size(footer: bytes) -> int | None:
    """If ``footer`` (the last 512 bytes of a stream) is a fixed-VHD footer, the disk's size.

    A fixed VHD is raw data followed by this footer, so it is imported as raw with the footer cut.
    """
    if len(footer) != 512 or not footer.startswith(b"conectix"):
        return None
    (current_size,) = struct.unpack(">Q", footer[48:56])
    (disk_type,) = struct.unpack(">I", footer[60:64])
    return current_size if disk_type == 2 else None


def describe(head: bytes) -> str:
    """A short human description of unknown content, for error messages."""
    if _magic is not None:
        try:
            return str(_magic.from_buffer(head[:65536]))
        except Exception:  # libmagic can fail on odd input; the description is only a hint
            pass
    return "unrecognised data"


def looks_like_html(head: bytes, content_type: str | None = None) -> bool:
    """True when the body is a web page, not an image: a login page, an error page, a directory index."""
    if content_type and content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head[:1024].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml version")) and b"<html" in head[:4096].lower():
        return True
    return "HTML document" in describe(head) if start.startswith(b"<") else False
