"""Turn a VirtualMachineInstance into a qemu-system-x86_64 command line.

``build_command`` is a pure function of the VMI, the accelerator, a work dir and a callback that
resolves dataVolume / persistentVolumeClaim volumes to paths (a directory means its ``disk.img``, a
file or block device is used as is). It returns the argv plus the files the command expects to
exist (cloud-init ISO, empty disks, an EFI variable store); ``prepare`` creates them. The only
reads of the host are the injectable ``direct_io`` / ``preallocated`` checks used, as in KubeVirt, to
choose the disk cache (``none`` when O_DIRECT works, else ``writethrough``) and io mode (``native``
with cache ``none`` on a block device or preallocated file, else qemu's default ``threads``).

The guest serial port is a unix socket server (one interactive client at a time) whose output qemu
also appends to the console log file, so the log never depends on a client; QMP is another unix
socket. ``CDI_QEMU_SYSTEM`` overrides the binary and ``CDI_OVMF_DIR`` the firmware directory.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vm_runtime.vmi_spec import Disk, SpecError, VmiSpec, parse_vmi

VolumeResolver = Callable[[str, str, str], "str | Path"]
"""(volume name, source kind "dataVolume"|"persistentVolumeClaim", claim name) -> path."""

NIC_DEVICES = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
_UNIX_PATH_MAX = 107


def qemu_binary() -> str:
    return os.environ.get("CDI_QEMU_SYSTEM") or "qemu-system-x86_64"


def ovmf_dir() -> Path:
    return Path(os.environ.get("CDI_OVMF_DIR") or "/usr/share/OVMF")


class VolumeError(Exception):
    """A volume's backing path is missing or unusable."""


@dataclass(frozen=True)
class CloudInitIso:
    path: Path
    files: dict[str, bytes]


@dataclass(frozen=True)
class EmptyDisk:
    path: Path
    size: int


@dataclass(frozen=True)
class FirmwareVars:
    template: Path
    path: Path
    keep_existing: bool


Artifact = CloudInitIso | EmptyDisk | FirmwareVars


@dataclass
class QemuCommand:
    argv: list[str]
    qmp_socket: Path
    serial_socket: Path
    console_log: Path
    artifacts: list[Artifact] = field(default_factory=list)
    spec: VmiSpec | None = None

    def shell(self) -> str:
        """The command as one line a person can paste into a shell."""
        return shlex.join(self.argv)


def _opt(value: str | Path) -> str:
    """Escape a value for qemu's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def check_direct_io(path: Path) -> bool:
    """True when ``path`` (or, if it does not exist yet, its directory) accepts O_DIRECT."""
    if path.exists():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return False
        os.close(fd)
        return True
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".odirect-")
    except OSError:
        return False
    os.close(fd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECT)
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.unlink(name)


def is_preallocated(path: Path) -> bool:
    """A block device, or a file with every byte allocated."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) or st.st_blocks * 512 >= st.st_size


def socket_dir_for(workdir: Path) -> Path:
    """``workdir`` unless a socket path there would exceed the unix socket limit (108 bytes)."""
    if len(str(workdir / "serial0.sock")) <= _UNIX_PATH_MAX:
        return workdir
    return Path(tempfile.mkdtemp(prefix="cdi-vm-"))


def _disk_path(disk: Disk, workdir: Path, resolve_volume: VolumeResolver) -> Path:
    vol = disk.volume
    if vol.kind == "emptyDisk":
        return workdir / f"emptydisk-{vol.name}.img"
    if vol.kind == "cloudInitNoCloud":
        return workdir / f"cloudinit-{vol.name}.iso"
    path = Path(resolve_volume(vol.name, vol.kind, vol.claim_name))
    if path.is_dir():
        path = path / "disk.img"
    if not path.exists():
        raise VolumeError(f"volume {vol.name!r} ({vol.kind} {vol.claim_name!r}): {path} does not exist")
    if not (path.is_file() or path.is_block_device()):
        raise VolumeError(f"volume {vol.name!r}: {path} is neither a regular file nor a block device")
    return path


def _cache_and_io(
    disk: Disk,
    path: Path,
    index: int,
    direct_io: Callable[[Path], bool],
    preallocated: Callable[[Path], bool],
) -> tuple[str, str]:
    if disk.volume.kind == "cloudInitNoCloud":
        return "writethrough", "threads"  # a tiny read-only ISO: nothing to gain from O_DIRECT
    cache = disk.cache
    if cache in (None, "none"):
        supported = direct_io(path)
        if cache == "none" and not supported:
            raise SpecError(
                f"spec.domain.devices.disks[{index}].cache",
                f"'none' needs O_DIRECT, which the file system holding {path} does not support",
            )
        cache = "none" if supported else "writethrough"
    io = disk.io
    if io is None:
        io = "native" if cache == "none" and preallocated(path) else "threads"
    if io == "native" and cache != "none":
        raise SpecError(f"spec.domain.devices.disks[{index}].io", "'native' needs cache 'none'")
    return cache, io


def _cloud_init_files(spec: VmiSpec, disk: Disk) -> dict[str, bytes]:
    hostname = spec.hostname or spec.name
    files = {
        "meta-data": f"instance-id: {spec.name}.{spec.namespace}\nlocal-hostname: {hostname}\n".encode(),
        "user-data": disk.volume.user_data or b"",
    }
    if disk.volume.network_data is not None:
        files["network-config"] = disk.volume.network_data
    return files


def build_command(
    vmi: Mapping[str, Any],
    *,
    accel: str,
    workdir: Path,
    resolve_volume: VolumeResolver,
    console_log: Path | None = None,
    socket_dir: Path | None = None,
    direct_io: Callable[[Path], bool] = check_direct_io,
    preallocated: Callable[[Path], bool] = is_preallocated,
) -> QemuCommand:
    """Validate ``vmi`` and return the qemu command that runs it (see the module docstring)."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
    spec = parse_vmi(vmi)
    sockets = socket_dir or workdir
    qmp, serial = sockets / "qmp.sock", sockets / "serial0.sock"
    log_path = console_log or workdir / "guest-console.log"
    machine = (
        spec.machine + (",smm=on" if spec.secure_boot else "") + (",graphics=off" if spec.bios_serial else "")
    )
    cpu = spec.cpu_model if spec.cpu_model not in (None, "host-model", "host-passthrough") else None
    argv = [
        qemu_binary(),
        "-name",
        f"guest={_opt(spec.namespace + '_' + spec.name)},debug-threads=on",
        "-no-user-config",
        "-nodefaults",
        "-display",
        "none",
        "-msg",
        "timestamp=on",
        "-machine",
        machine,
        "-accel",
        accel,
        "-cpu",
        cpu or ("host" if accel == "kvm" else "max"),
        "-smp",
        f"{spec.vcpus},sockets={spec.sockets},cores={spec.cores},threads={spec.threads}",
        "-m",
        f"{-(-spec.memory // 2**20)}M",
        "-rtc",
        "base=utc",
        "-chardev",
        f"socket,id=qmp,path={_opt(qmp)},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        f"socket,id=serial0,path={_opt(serial)},server=on,wait=off,logfile={_opt(log_path)},logappend=on",
        "-device",
        "isa-serial,chardev=serial0",
    ]
    if spec.uuid:
        argv += ["-uuid", spec.uuid]
    artifacts: list[Artifact] = []
    if spec.firmware == "efi":
        # The 4 MiB builds (Debian's default): the 2 MiB OVMF_CODE.secboot.fd of Debian 12 printed
        # nothing within 90 s under TCG in our tests, while OVMF_CODE_4M.secboot.fd boots.
        code, template = (
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
            if spec.secure_boot
            else ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
        )
        vars_path = workdir / "efi-vars.fd"
        artifacts.append(FirmwareVars(ovmf_dir() / template, vars_path, keep_existing=spec.efi_persistent))
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(ovmf_dir() / code)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={_opt(vars_path)}",
        ]
        if spec.secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    argv += _disk_args(spec, workdir, resolve_volume, artifacts, direct_io, preallocated)
    for nic in spec.interfaces:
        net_id = f"net-{nic.name}"
        argv += ["-netdev", f"user,id={net_id},net=10.0.2.0/24,host=10.0.2.1,dhcpstart=10.0.2.2,dns=10.0.2.3"]
        dev = f"{NIC_DEVICES[nic.model]},netdev={net_id},id=nic-{nic.name}"
        if nic.mac:
            dev += f",mac={nic.mac}"
        if nic.boot_order is not None:
            dev += f",bootindex={nic.boot_order}"
        argv += ["-device", dev]
    if spec.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
    return QemuCommand(argv, qmp, serial, log_path, artifacts, spec)


def _disk_args(
    spec: VmiSpec,
    workdir: Path,
    resolve_volume: VolumeResolver,
    artifacts: list[Artifact],
    direct_io: Callable[[Path], bool],
    preallocated: Callable[[Path], bool],
) -> list[str]:
    argv: list[str] = []
    sata_port = scsi_target = 0
    controllers: set[str] = set()
    for index, disk in enumerate(spec.disks):
        path = _disk_path(disk, workdir, resolve_volume)
        if disk.volume.kind == "emptyDisk":
            artifacts.append(EmptyDisk(path, disk.volume.capacity))
        elif disk.volume.kind == "cloudInitNoCloud":
            artifacts.append(CloudInitIso(path, _cloud_init_files(spec, disk)))
        cache, io = _cache_and_io(disk, path, index, direct_io, preallocated)
        drive = f"drv-{disk.name}"
        read_only = disk.read_only or disk.volume.kind == "cloudInitNoCloud"
        argv += [
            "-drive",
            f"if=none,id={drive},file={_opt(path)},format=raw,cache={cache},aio={io}"
            f"{',media=cdrom' if disk.device == 'cdrom' else ''}{',readonly=on' if read_only else ''}",
        ]
        if disk.bus == "virtio":
            dev = f"virtio-blk-pci,drive={drive},id=disk-{disk.name}"
        elif disk.bus == "sata":
            if "sata" not in controllers:
                argv += ["-device", "ich9-ahci,id=sata0"]
                controllers.add("sata")
            if sata_port >= 6:
                raise SpecError(
                    f"spec.domain.devices.disks[{index}].bus", "at most 6 sata disks are supported"
                )
            kind = "ide-cd" if disk.device == "cdrom" else "ide-hd"
            dev = f"{kind},bus=sata0.{sata_port},drive={drive},id=disk-{disk.name}"
            sata_port += 1
        else:
            if "scsi" not in controllers:
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
                controllers.add("scsi")
            kind = "scsi-cd" if disk.device == "cdrom" else "scsi-hd"
            dev = f"{kind},bus=scsi0.0,scsi-id={scsi_target},lun=0,drive={drive},id=disk-{disk.name}"
            scsi_target += 1
        if disk.serial and disk.device == "disk":
            dev += f",serial={_opt(disk.serial)}"
        if disk.boot_order is not None:
            dev += f",bootindex={disk.boot_order}"
        argv += ["-device", dev]
    return argv


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd!r} failed with exit code {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
        )


def make_cidata_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """Write a NoCloud seed ISO (volume label ``cidata``) with genisoimage, or xorriso if absent."""
    tool = shutil.which("genisoimage")
    prefix = [tool] if tool else ["xorriso", "-as", "mkisofs"]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".cidata-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        partial = path.with_name(path.name + ".partial")
        _run([*prefix, "-quiet", "-output", str(partial), "-volid", "cidata", "-joliet", "-rock", tmp])
        os.replace(partial, path)


def prepare(cmd: QemuCommand) -> None:
    """Create the files ``cmd`` refers to: cloud-init ISOs, sparse empty disks, EFI variables."""
    for item in cmd.artifacts:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(item, CloudInitIso):
            make_cidata_iso(item.path, item.files)
        elif isinstance(item, EmptyDisk):
            with item.path.open("wb") as f:  # fresh and sparse at every start, like KubeVirt's
                f.truncate(item.size)
        elif not (item.keep_existing and item.path.exists()):
            shutil.copyfile(item.template, item.path)
    cmd.console_log.parent.mkdir(parents=True, exist_ok=True)
