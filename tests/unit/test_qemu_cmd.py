"""The VMI -> qemu command builder: topology, memory, disks, buses, boot order, cloud-init, errors."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vm_runtime.qemu_cmd import VolumeError, build_command, prepare
from vm_runtime.vmi_spec import SpecError, parse_quantity

BASE: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "vm1", "namespace": "ns1"},
    "spec": {
        "domain": {
            "resources": {"requests": {"memory": "128Mi"}},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
        },
        "volumes": [{"name": "root", "dataVolume": {"name": "root-dv"}}],
    },
}


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A Filesystem-mode volume: a directory holding disk.img."""
    d = tmp_path / "pvc"
    d.mkdir()
    with (d / "disk.img").open("wb") as f:
        f.truncate(1 << 20)
    return d


def vmi(**spec_changes: Any) -> dict[str, Any]:
    v = copy.deepcopy(BASE)
    v["spec"].update(spec_changes)
    return v


def build(
    v: dict[str, Any], disk_dir: Path, tmp_path: Path, *, direct: bool = True, accel: str = "tcg"
) -> Any:
    return build_command(
        v,
        accel=accel,
        workdir=tmp_path / "work",
        resolve_volume=lambda name, kind, claim: disk_dir,
        direct_io=lambda p: direct,
        preallocated=lambda p: False,
    )


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_defaults(disk_dir: Path, tmp_path: Path) -> None:
    cmd = build(vmi(), disk_dir, tmp_path)
    argv = cmd.argv
    assert opt(argv, "-machine") == ["q35"]
    assert opt(argv, "-accel") == ["tcg"]
    assert opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-smp") == ["1,sockets=1,cores=1,threads=1"]
    assert opt(argv, "-m") == ["128M"]
    assert "-nodefaults" in argv and "-no-user-config" in argv and opt(argv, "-display") == ["none"]
    drive = opt(argv, "-drive")[0]
    assert f"file={disk_dir / 'disk.img'}" in drive and "format=raw" in drive
    assert "cache=none" in drive and "aio=threads" in drive
    assert any(d.startswith("virtio-blk-pci,drive=drv-root") for d in opt(argv, "-device"))
    # default pod network with masquerade -> user networking with KubeVirt's addresses
    assert opt(argv, "-netdev")[0].startswith("user,id=net-default,net=10.0.2.0/24,host=10.0.2.1")
    serial = [c for c in opt(argv, "-chardev") if c.startswith("socket,id=serial0")][0]
    assert f"path={cmd.serial_socket}" in serial and "server=on,wait=off" in serial
    assert f"logfile={tmp_path / 'work' / 'guest-console.log'}" in serial
    assert opt(argv, "-mon") == ["chardev=qmp,mode=control"]
    assert cmd.spec.grace_period == 30


def test_kvm_uses_host_cpu(disk_dir: Path, tmp_path: Path) -> None:
    assert opt(build(vmi(), disk_dir, tmp_path, accel="kvm").argv, "-cpu") == ["host"]


def test_cpu_topology_and_guest_memory(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi()
    v["spec"]["domain"]["cpu"] = {"sockets": 2, "cores": 3, "threads": 2}
    v["spec"]["domain"]["memory"] = {"guest": "1Gi"}  # wins over resources.requests.memory
    argv = build(v, disk_dir, tmp_path).argv
    assert opt(argv, "-smp") == ["12,sockets=2,cores=3,threads=2"]
    assert opt(argv, "-m") == ["1024M"]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("64M", 64_000_000),
        ("512Mi", 512 << 20),
        ("2Gi", 2 << 30),
        ("1G", 10**9),
        (1048576, 1 << 20),
        ("1e9", 10**9),
    ],
)
def test_quantities(quantity: Any, expected: int) -> None:
    assert parse_quantity(quantity, "f") == expected


def test_memory_rounds_up_to_mib(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi()
    v["spec"]["domain"]["resources"]["requests"]["memory"] = "100M"  # 95.37 MiB
    assert opt(build(v, disk_dir, tmp_path).argv, "-m") == ["96M"]


def test_buses_boot_order_and_cdrom(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi(
        volumes=[
            {"name": "root", "persistentVolumeClaim": {"claimName": "root-pvc"}},
            {"name": "data", "dataVolume": {"name": "data-dv"}},
            {"name": "iso", "dataVolume": {"name": "iso-dv"}},
            {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
        ]
    )
    v["spec"]["domain"]["devices"]["disks"] = [
        {"name": "root", "disk": {"bus": "sata"}, "bootOrder": 2, "serial": "ROOT1"},
        {"name": "data", "disk": {"bus": "scsi"}},
        {"name": "iso", "cdrom": {}, "bootOrder": 1},
        {"name": "scratch", "disk": {}},
    ]
    cmd = build(v, disk_dir, tmp_path)
    devices = opt(cmd.argv, "-device")
    assert "ich9-ahci,id=sata0" in devices and "virtio-scsi-pci,id=scsi0" in devices
    assert "ide-hd,bus=sata0.0,drive=drv-root,id=disk-root,serial=ROOT1,bootindex=2" in devices
    assert "scsi-hd,bus=scsi0.0,scsi-id=0,lun=0,drive=drv-data,id=disk-data" in devices
    assert "ide-cd,bus=sata0.1,drive=drv-iso,id=disk-iso,bootindex=1" in devices  # cdrom: sata by default
    assert "virtio-blk-pci,drive=drv-scratch,id=disk-scratch" in devices
    drives = {d.split(",")[1]: d for d in opt(cmd.argv, "-drive")}
    assert "media=cdrom" in drives["id=drv-iso"] and "readonly=on" in drives["id=drv-iso"]
    assert "readonly=on" not in drives["id=drv-root"]
    empty = tmp_path / "work" / "emptydisk-scratch.img"
    assert f"file={empty}" in drives["id=drv-scratch"]
    prepare(cmd)
    assert empty.stat().st_size == 2 << 30 and empty.stat().st_blocks == 0  # sparse


def test_cache_follows_direct_io_support(disk_dir: Path, tmp_path: Path) -> None:
    drive = opt(build(vmi(), disk_dir, tmp_path, direct=False).argv, "-drive")[0]
    assert "cache=writethrough" in drive and "aio=threads" in drive
    v = vmi()
    v["spec"]["domain"]["devices"]["disks"][0]["cache"] = "none"
    with pytest.raises(SpecError, match=r"disks\[0\]\.cache.*O_DIRECT"):
        build(v, disk_dir, tmp_path, direct=False)


def test_io_native_for_preallocated_with_cache_none(disk_dir: Path, tmp_path: Path) -> None:
    cmd = build_command(
        vmi(),
        accel="tcg",
        workdir=tmp_path,
        resolve_volume=lambda *a: disk_dir,
        direct_io=lambda p: True,
        preallocated=lambda p: True,
    )
    assert "cache=none,aio=native" in opt(cmd.argv, "-drive")[0]


def test_cloud_init_iso(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi(
        volumes=[
            {"name": "root", "dataVolume": {"name": "root-dv"}},
            {
                "name": "cloudinit",
                "cloudInitNoCloud": {"userDataBase64": "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogeAo="},
            },
        ]
    )
    v["spec"]["domain"]["devices"]["disks"].append({"name": "cloudinit", "disk": {"bus": "virtio"}})
    cmd = build(v, disk_dir, tmp_path)
    iso = tmp_path / "work" / "cloudinit-cloudinit.iso"
    assert any(f"file={iso}" in d and "readonly=on" in d for d in opt(cmd.argv, "-drive"))
    prepare(cmd)
    listing = subprocess.run(
        ["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True
    ).stdout
    assert "Volume id: cidata" in listing
    files = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True).stdout
    assert "/user-data" in files and "/meta-data" in files
    data = subprocess.run(
        ["isoinfo", "-R", "-x", "/user-data", "-i", str(iso)], capture_output=True, check=True
    ).stdout
    assert data == b"#cloud-config\npassword: x\n"


def test_efi_firmware(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi()
    v["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": False}}}
    cmd = build(v, disk_dir, tmp_path)
    pflash = [d for d in opt(cmd.argv, "-drive") if d.startswith("if=pflash")]
    assert "readonly=on" in pflash[0] and pflash[0].endswith("OVMF_CODE_4M.fd")
    vars_path = tmp_path / "work" / "efi-vars.fd"
    assert pflash[1].endswith(f"file={vars_path}")
    v["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {}}}  # KubeVirt: secure boot on by default
    secure = build(v, disk_dir, tmp_path).argv
    assert (
        opt(secure, "-machine") == ["q35,smm=on"] and "driver=cfi.pflash01,property=secure,value=on" in secure
    )


def test_paths_with_commas_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    odd.mkdir()
    (odd / "disk.img").write_bytes(b"\0" * 512)
    drive = opt(build(vmi(), odd, tmp_path).argv, "-drive")[0]
    assert f"file={tmp_path}/a,,b/disk.img" in drive


def test_missing_volume_path(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="root.*does not exist"):
        build(vmi(), tmp_path / "nope", tmp_path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["domain"].update(cpu={"cores": 0}), "spec.domain.cpu.cores"),
        (lambda s: s["domain"].update(cpu={"sockets": "two"}), "spec.domain.cpu.sockets"),
        (lambda s: s["domain"].update(resources={}), "spec.domain.memory.guest"),
        (lambda s: s["domain"].update(memory={"guest": "lots"}), "spec.domain.memory.guest"),
        (lambda s: s["domain"].update(machine={"type": "virt"}), "spec.domain.machine.type"),
        (lambda s: s["domain"]["devices"]["disks"][0].update(disk={"bus": "ide"}), "disks[0].disk.bus"),
        (lambda s: s["domain"]["devices"]["disks"][0].update(cdrom={"bus": "virtio"}), "disks[0].cdrom.bus"),
        (lambda s: s["domain"]["devices"]["disks"][0].update(bootOrder=0), "disks[0].bootOrder"),
        (lambda s: s["domain"]["devices"]["disks"][0].update(name="other"), "disks[0].name"),
        (lambda s: s["domain"]["devices"]["disks"][0].update(lun={}), "disks[0].lun"),
        (
            lambda s: s.update(volumes=[{"name": "root", "containerDisk": {"image": "x"}}]),
            "volumes[0].containerDisk",
        ),
        (lambda s: s.update(volumes=[{"name": "root", "emptyDisk": {}}]), "volumes[0].emptyDisk.capacity"),
        (
            lambda s: s.update(volumes=[{"name": "root", "cloudInitNoCloud": {"userDataBase64": "!!"}}]),
            "cloudInitNoCloud.userDataBase64",
        ),
        (lambda s: s.update(terminationGracePeriodSeconds=-1), "spec.terminationGracePeriodSeconds"),
        (
            lambda s: (
                s["domain"]["devices"].update(interfaces=[{"name": "default", "bridge": {}}]),
                s.update(networks=[{"name": "default", "pod": {}}]),
            ),
            "interfaces[0]",
        ),
        (
            lambda s: s["domain"]["devices"].update(interfaces=[{"name": "default", "masquerade": {}}]),
            "interfaces[0].name",
        ),
    ],
)
def test_bad_fields_name_the_field(change: Any, field: str, disk_dir: Path, tmp_path: Path) -> None:
    v = vmi()
    change(v["spec"])
    with pytest.raises(SpecError) as err:
        build(v, disk_dir, tmp_path)
    assert field in str(err.value)


def test_duplicate_boot_order(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi(
        volumes=[{"name": "root", "dataVolume": {"name": "a"}}, {"name": "two", "dataVolume": {"name": "b"}}]
    )
    v["spec"]["domain"]["devices"]["disks"] = [
        {"name": "root", "bootOrder": 1, "disk": {}},
        {"name": "two", "bootOrder": 1, "disk": {}},
    ]
    with pytest.raises(SpecError, match=r"disks\[1\]\.bootOrder: 1 is already used by .*disks\[0\]"):
        build(v, disk_dir, tmp_path)


def test_interface_model_mac_and_boot(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi(networks=[{"name": "default", "pod": {}}])
    v["spec"]["domain"]["devices"]["interfaces"] = [
        {
            "name": "default",
            "masquerade": {},
            "model": "e1000e",
            "macAddress": "02-00-00-00-00-01",
            "bootOrder": 3,
        }
    ]
    devices = opt(build(v, disk_dir, tmp_path).argv, "-device")
    assert "e1000e,netdev=net-default,id=nic-default,mac=02:00:00:00:00:01,bootindex=3" in devices


def test_no_network_when_autoattach_disabled(disk_dir: Path, tmp_path: Path) -> None:
    v = vmi()
    v["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    assert opt(build(v, disk_dir, tmp_path).argv, "-netdev") == []


def test_sockets_move_out_of_a_too_long_work_dir(tmp_path: Path) -> None:
    from vm_runtime.qemu_cmd import socket_dir_for

    assert socket_dir_for(tmp_path) == tmp_path
    deep = tmp_path / ("d" * 100)
    short = socket_dir_for(deep)
    try:
        assert short != deep and len(str(short / "serial0.sock")) < 108 and short.is_dir()
    finally:
        short.rmdir()
