"""Build a small bootable raw disk for tests of the VM runtime.

The disk boots under plain BIOS (SeaBIOS): an MBR from syslinux, one FAT partition holding
syslinux, a Debian kernel and a busybox initramfs whose ``/init``

* prints a marker line (``CDI-BOOT-OK`` by default) on the serial console (``console=ttyS0``);
* with the kernel argument ``cdi.poweroff=1`` (``build_boot_disk(..., poweroff=True)``) powers the
  guest off right after the marker, for tests of a guest that stops by itself;
* loads ``evdev`` and ``button`` and, before printing the marker (so the marker means "ready"),
  starts watching the ACPI power button: on a press (QMP ``system_powerdown``) it prints
  ``CDI-POWER-BUTTON`` and powers off;
* echoes each line typed on the console as ``cdi-echo: <line>`` and powers off on the line
  ``poweroff``, so a console client can be tested end to end.

No loop devices and no root-only tools are needed: the partition is made in a plain file with
``mkfs.fat``, filled with ``mcopy``, made bootable with ``syslinux --install`` (the mtools variant)
and copied into the disk behind a hand-written MBR.

Required Debian packages: syslinux, syslinux-common (mbr.bin, ldlinux.c32), mtools, dosfstools,
busybox-static, and apt access to download (not install) the running release's ``linux-image-*-amd64``
package. Results are cached under ``$CDI_TEST_CACHE`` (default ``~/.cache/cdi-tests``), keyed by
every input, so only the first build takes time (about 70 MB of download).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

DISK_MIB = 32
PART_START_SECTOR = 2048
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
BUSYBOX = Path("/bin/busybox")
_RECIPE_VERSION = "5"  # bump when the layout or the init script changes
_MARKER_RE = re.compile(r"^[A-Za-z0-9._:=+-]{1,64}$")

_INIT_TEMPLATE = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/modules/evdev.ko 2>/dev/null
insmod /lib/modules/button.ko 2>/dev/null
for ev in /sys/class/input/event*; do
  if [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ]; then
    dev="/dev/${ev##*/}"
    [ -c "$dev" ] || mknod "$dev" c $(sed 's/:/ /' "$ev/dev")
    (dd if="$dev" of=/dev/null bs=24 count=1 2>/dev/null && { echo "CDI-POWER-BUTTON"; poweroff -f; }) &
    i=0  # wait until dd holds the device open, so that a press after the marker is never missed
    while [ $i -lt 50 ] && ! ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -q " $dev\$"; do
      sleep 0.1; i=$((i+1))
    done
  fi
done
echo "@MARKER@"
case " $(cat /proc/cmdline) " in
  *" cdi.poweroff=1 "*) echo "CDI-POWEROFF"; poweroff -f ;;
esac
while read -r line; do
  case "$line" in
    poweroff) echo "CDI-POWEROFF"; poweroff -f ;;
    *) echo "cdi-echo: $line" ;;
  esac
done
while true; do sleep 3600; done
"""

_SYSLINUX_CFG = """SERIAL 0 115200
DEFAULT cdi
PROMPT 0
TIMEOUT 0
LABEL cdi
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 loglevel=4 @EXTRA@
"""


class BootDiskError(Exception):
    """A step of building the test disk failed; the message carries the command and its stderr."""


def _run(cmd: list[str], *, cwd: Path | None = None) -> bytes:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise BootDiskError(
            f"command {cmd!r} failed with exit code {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout


def cache_dir() -> Path:
    """The directory holding the downloaded kernel package and the built disks."""
    base = os.environ.get("CDI_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cdi-tests"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_package() -> str:
    """Name of the release's current kernel package, e.g. ``linux-image-6.1.0-56-amd64``.

    ``$CDI_TEST_KERNEL_PACKAGE`` overrides the lookup through ``linux-image-amd64``'s dependency.
    """
    override = os.environ.get("CDI_TEST_KERNEL_PACKAGE")
    if override:
        return override
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).decode()
    match = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if not match:
        raise BootDiskError(f"cannot find the kernel package in `apt-cache depends linux-image-amd64`: {out}")
    return match.group(1)


def _kernel_files(package: str) -> tuple[Path, Path, Path]:
    """Download ``package`` (never install it) and extract vmlinuz, evdev.ko and button.ko."""
    version = package.removeprefix("linux-image-")
    dest = cache_dir() / "kernel" / version
    vmlinuz, evdev, button = dest / "vmlinuz", dest / "evdev.ko", dest / "button.ko"
    if vmlinuz.exists() and evdev.exists() and button.exists():
        return vmlinuz, evdev, button
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise BootDiskError(f"apt-get download {package} left no .deb in {debs}")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run(["dpkg-deb", "-x", str(found[-1]), tmp])
        root = Path(tmp)
        mods = root / "lib" / "modules" / version / "kernel"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mods / "drivers" / "input" / "evdev.ko", evdev)
        shutil.copyfile(mods / "drivers" / "acpi" / "button.ko", button)
        shutil.copyfile(root / "boot" / f"vmlinuz-{version}", vmlinuz)
    return vmlinuz, evdev, button


def _cpio_entry(
    out: io.BytesIO, name: str, *, mode: int, data: bytes = b"", ino: int, rdev: tuple[int, int] = (0, 0)
) -> None:
    """Append one member in the "newc" format the kernel unpacks."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
    out.write(encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def build_initramfs(marker: str, evdev: Path, button: Path) -> bytes:
    """A gzip-compressed cpio archive with busybox, the two modules and ``/init``."""
    init = _INIT_TEMPLATE.replace("@MARKER@", marker).encode()
    buf = io.BytesIO()
    ino = iter(range(1, 1000))
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "etc", "tmp"):
        _cpio_entry(buf, d, mode=stat.S_IFDIR | 0o755, ino=next(ino))
    _cpio_entry(buf, "dev/console", mode=stat.S_IFCHR | 0o600, ino=next(ino), rdev=(5, 1))
    _cpio_entry(buf, "bin/busybox", mode=stat.S_IFREG | 0o755, data=BUSYBOX.read_bytes(), ino=next(ino))
    _cpio_entry(
        buf, "lib/modules/evdev.ko", mode=stat.S_IFREG | 0o644, data=evdev.read_bytes(), ino=next(ino)
    )
    _cpio_entry(
        buf, "lib/modules/button.ko", mode=stat.S_IFREG | 0o644, data=button.read_bytes(), ino=next(ino)
    )
    _cpio_entry(buf, "init", mode=stat.S_IFREG | 0o755, data=init, ino=next(ino))
    _cpio_entry(buf, "TRAILER!!!", mode=0, ino=0)
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def _mbr(total_sectors: int) -> bytes:
    """Syslinux's MBR boot code plus one active FAT16 (LBA) partition from 1 MiB to the end."""
    code = SYSLINUX_MBR.read_bytes()[:440]
    code += b"\0" * (440 - len(code))
    count = total_sectors - PART_START_SECTOR
    # CHS fields are ignored by the LBA-aware MBR code; 0xFEFFFF is the customary "use LBA" value.
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff", PART_START_SECTOR, count)
    return code + b"\0" * 6 + entry + b"\0" * 48 + b"\x55\xaa"


def _assemble(dest: Path, *, vmlinuz: Path, initrd: bytes, extra_cmdline: str) -> None:
    total = DISK_MIB * 1024 * 1024 // 512
    part_kib = (total - PART_START_SECTOR) // 2
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        work = Path(tmp)
        part = work / "part.img"
        _run(
            [
                "mkfs.fat",
                "-C",
                "-F",
                "16",
                "-h",
                str(PART_START_SECTOR),
                "-n",
                "CDIBOOT",
                "--invariant",
                str(part),
                str(part_kib),
            ]
        )
        _run(["syslinux", "--install", str(part)])
        (work / "initrd.gz").write_bytes(initrd)
        (work / "syslinux.cfg").write_text(_SYSLINUX_CFG.replace("@EXTRA@", extra_cmdline))
        for src, name in (
            (vmlinuz, "vmlinuz"),
            (work / "initrd.gz", "initrd.gz"),
            (work / "syslinux.cfg", "syslinux.cfg"),
            (SYSLINUX_LDLINUX_C32, "ldlinux.c32"),
        ):
            _run(["mcopy", "-o", "-i", str(part), str(src), f"::{name}"])
        tmp_disk = work / "disk.img"
        with tmp_disk.open("wb") as out, part.open("rb") as src_part:
            out.write(_mbr(total))
            out.seek(PART_START_SECTOR * 512)
            shutil.copyfileobj(src_part, out, 1024 * 1024)
            out.truncate(total * 512)
        os.replace(tmp_disk, dest)


def build_boot_disk(dest_dir: Path | str, marker: str = "CDI-BOOT-OK", *, poweroff: bool = False) -> Path:
    """Return ``dest_dir/disk.img``, a raw bootable disk printing ``marker`` on ttyS0.

    With ``poweroff=True`` the guest powers itself off right after the marker. The built image is
    cached; each call copies it, so callers may write to their copy.
    """
    if not _MARKER_RE.match(marker):
        raise ValueError(f"marker {marker!r} must match {_MARKER_RE.pattern}")
    package = kernel_package()
    extra = "cdi.poweroff=1" if poweroff else ""
    key_src = "\n".join(
        [
            _RECIPE_VERSION,
            package,
            marker,
            extra,
            str(DISK_MIB),
            hashlib.sha256(BUSYBOX.read_bytes()).hexdigest(),
            hashlib.sha256(SYSLINUX_MBR.read_bytes()).hexdigest(),
        ]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cached = cache_dir() / "disks" / f"boot-{key}.img"
    if not cached.exists():
        vmlinuz, evdev, button = _kernel_files(package)
        cached.parent.mkdir(parents=True, exist_ok=True)
        _assemble(cached, vmlinuz=vmlinuz, initrd=build_initramfs(marker, evdev, button), extra_cmdline=extra)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "disk.img"
    _run(["cp", "--sparse=always", str(cached), str(target)])
    return target


if __name__ == "__main__":
    import sys

    print(
        build_boot_disk(
            sys.argv[1] if len(sys.argv) > 1 else ".",
            *(sys.argv[2:3] or []),
            poweroff="--poweroff" in sys.argv,
        )
    )
