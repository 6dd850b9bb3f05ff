"""Build a small bootable raw disk for tests of the VM runtime.

The disk boots under plain BIOS (SeaBIOS): an MBR from syslinux, one FAT partition holding
syslinux, a Debian kernel and a busybox initramfs whose ``/init``

* prints a marker line (``CDI-BOOT-OK`` by default) on the serial console (``console=ttyS0``);
* with the kernel argument ``cdi.poweroff=1`` (``build_boot_disk(..., poweroff=True)``) powers the
  guest off right after the marker, for tests of a guest that stops by itself;
* loads ``evdev`` and ``button`` and, before printing the marker (so the marker means "ready"),
  starts watching the ACPI power button: on a press (QMP ``system_powerdown``) it prints
  ``CDI-POWER-BUTTON`` and powers off;
* prints ``cdi-cidata-begin``, the meta-data and user-data of any virtio disk holding a NoCloud
  ISO, then ``cdi-cidata-end``, to test cloudInitNoCloud volumes end to end;
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
_RECIPE_VERSION = "6"  # bump when the layout or the init script changes
# Kernel modules put in the initramfs, in load order (Debian builds all of these as modules).
MODULES = (
    "drivers/input/evdev.ko",
    "drivers/acpi/button.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/cdrom/cdrom.ko",
    "fs/isofs/isofs.ko",
)
_MARKER_RE = re.compile(r"^[A-Za-z0-9._:=+-]{1,64}$")

_INIT_TEMPLATE = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do insmod "/lib/modules/$m.ko" 2>/dev/null; done
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
for d in /dev/vd?; do
  [ -b "$d" ] && mount -t iso9660 -o ro "$d" /mnt 2>/dev/null || continue
  if [ -f /mnt/user-data ]; then
    echo "cdi-cidata-begin $d"; cat /mnt/meta-data /mnt/user-data; echo "cdi-cidata-end"
  fi
  umount /mnt
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
            f"command {cmd!r} failed with exit code {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
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


def _kernel_files(package: str) -> tuple[Path, list[Path]]:
    """Download ``package`` (never install it) and extract vmlinuz and the ``MODULES``."""
    version = package.removeprefix("linux-image-")
    dest = cache_dir() / "kernel" / version
    vmlinuz = dest / "vmlinuz"
    modules = [dest / Path(m).name for m in MODULES]
    if vmlinuz.exists() and all(m.exists() for m in modules):
        return vmlinuz, modules
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
        dest.mkdir(parents=True, exist_ok=True)
        for rel, target in zip(MODULES, modules, strict=True):
            shutil.copyfile(root / "lib" / "modules" / version / "kernel" / rel, target)
        shutil.copyfile(root / "boot" / f"vmlinuz-{version}", vmlinuz)
    return vmlinuz, modules


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


def build_initramfs(marker: str, modules: list[Path]) -> bytes:
    """A gzip-compressed cpio archive with busybox, the kernel modules and ``/init``."""
    order = " ".join(m.stem for m in modules)
    init = _INIT_TEMPLATE.replace("@MARKER@", marker).replace("@MODULES@", order).encode()
    buf = io.BytesIO()
    ino = iter(range(1, 1000))
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "etc", "tmp", "mnt"):
        _cpio_entry(buf, d, mode=stat.S_IFDIR | 0o755, ino=next(ino))
    _cpio_entry(buf, "dev/console", mode=stat.S_IFCHR | 0o600, ino=next(ino), rdev=(5, 1))
    _cpio_entry(buf, "bin/busybox", mode=stat.S_IFREG | 0o755, data=BUSYBOX.read_bytes(), ino=next(ino))
    for module in modules:
        data = module.read_bytes()
        _cpio_entry(buf, f"lib/modules/{module.name}", mode=stat.S_IFREG | 0o644, data=data, ino=next(ino))
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
        vmlinuz, modules = _kernel_files(package)
        cached.parent.mkdir(parents=True, exist_ok=True)
        _assemble(cached, vmlinuz=vmlinuz, initrd=build_initramfs(marker, modules), extra_cmdline=extra)
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
