"""Read the ``kubevirt.io/v1`` VirtualMachineInstance fields the VM runtime supports.

``parse_vmi`` turns a VMI (a plain dict, as stored by the API server) into small typed objects and
rejects anything it cannot honour with a ``SpecError`` naming the field, e.g.
``spec.domain.devices.disks[1].cdrom.bus: 'virtio' is not allowed for a cdrom``. Defaults follow
KubeVirt: disk bus virtio, cdrom bus sata (read-only), machine q35, BIOS firmware, EFI secure boot on,
a masquerade interface on the pod network when none is declared, a 30 s termination grace period.
Fields outside this subset that only tune a real cluster are ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cdi import units

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_MACHINE_RE = re.compile(r"^(q35|pc|pc-q35-[0-9.]+|pc-i440fx-[0-9.]+)$")

DISK_BUSES = ("virtio", "sata", "scsi")
CDROM_BUSES = ("sata", "scsi")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
CACHE_MODES = ("none", "writethrough", "writeback")
IO_MODES = ("native", "threads", "default")


class SpecError(ValueError):
    """The VMI asks for something invalid or unsupported; ``field`` is its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_quantity(value: Any, path: str) -> int:
    """A Kubernetes resource quantity ("512Mi", "1G", "1e9", 1073741824) in bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(path, f"expected a quantity such as '512Mi', got {value!r}")
    try:
        result = units.parse_quantity(value)
    except units.QuantityError as e:
        raise SpecError(path, f"{value!r} is not a valid quantity (examples: 512Mi, 2Gi, 1G): {e}") from e
    if result != result.to_integral_value():
        raise SpecError(path, f"{value!r} is not a whole number of bytes")
    if result <= 0:
        raise SpecError(path, f"{value!r} must be greater than zero")
    return int(result)


def _get(obj: Any, path: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``obj`` must be a mapping; return its member at the last part of ``path`` checked for type."""
    key = path.rsplit(".", 1)[-1]
    value = obj.get(key, default) if isinstance(obj, Mapping) else default
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        raise SpecError(path, f"expected an integer, got {value!r}")
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SpecError(path, f"expected {names}, got {type(value).__name__} {value!r}")
    return value


def _positive(obj: Any, path: str, default: int) -> int:
    value = _get(obj, path, int, default)
    if value < 1:
        raise SpecError(path, f"must be at least 1, got {value}")
    return int(value)


@dataclass(frozen=True)
class Volume:
    """One ``spec.volumes[]`` entry; ``kind`` is the KubeVirt volume source name."""

    name: str
    kind: str  # dataVolume | persistentVolumeClaim | cloudInitNoCloud | emptyDisk
    claim_name: str = ""
    read_only: bool = False
    capacity: int = 0
    user_data: bytes | None = None
    network_data: bytes | None = None


@dataclass(frozen=True)
class Disk:
    name: str
    device: str  # disk | cdrom
    bus: str
    volume: Volume
    boot_order: int | None = None
    read_only: bool = False
    serial: str | None = None
    cache: str | None = None
    io: str | None = None


@dataclass(frozen=True)
class Interface:
    name: str
    model: str = "virtio"
    mac: str | None = None
    boot_order: int | None = None


@dataclass(frozen=True)
class VmiSpec:
    name: str
    namespace: str
    sockets: int
    cores: int
    threads: int
    memory: int
    machine: str = "q35"
    cpu_model: str | None = None
    firmware: str = "bios"  # bios | efi
    secure_boot: bool = False
    efi_persistent: bool = False
    bios_serial: bool = False
    uuid: str | None = None
    hostname: str | None = None
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    rng: bool = False
    grace_period: int = 30

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


def _check_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > 63:
        raise SpecError(path, f"{value!r} is not a valid name (lowercase letters, digits, '-' and '.')")
    return value


def _parse_volume(raw: Any, path: str) -> Volume:
    if not isinstance(raw, Mapping):
        raise SpecError(path, "expected an object")
    name = _check_name(_get(raw, f"{path}.name", str), f"{path}.name")
    sources = [k for k in raw if k != "name"]
    if len(sources) != 1:
        raise SpecError(path, f"exactly one volume source is required, got {sources or 'none'}")
    kind = sources[0]
    src_path = f"{path}.{kind}"
    src = raw[kind]
    if not isinstance(src, Mapping):
        raise SpecError(src_path, "expected an object")
    if kind == "dataVolume":
        return Volume(name, kind, claim_name=_check_name(src.get("name"), f"{src_path}.name"))
    if kind == "persistentVolumeClaim":
        claim = _check_name(src.get("claimName"), f"{src_path}.claimName")
        return Volume(
            name, kind, claim_name=claim, read_only=bool(_get(src, f"{src_path}.readOnly", bool, False))
        )
    if kind == "emptyDisk":
        if "capacity" not in src:
            raise SpecError(f"{src_path}.capacity", "is required")
        return Volume(name, kind, capacity=parse_quantity(src["capacity"], f"{src_path}.capacity"))
    if kind == "cloudInitNoCloud":
        return Volume(
            name,
            kind,
            user_data=_cloud_init_data(src, src_path, "userData"),
            network_data=_cloud_init_data(src, src_path, "networkData"),
        )
    raise SpecError(
        src_path,
        "unsupported volume source (supported: dataVolume, persistentVolumeClaim, "
        "cloudInitNoCloud, emptyDisk)",
    )


def _cloud_init_data(src: Mapping[str, Any], path: str, key: str) -> bytes | None:
    for unsupported in (f"{key}SecretRef", "secretRef", "networkDataSecretRef"):
        if unsupported in src:
            raise SpecError(f"{path}.{unsupported}", "secret references are not supported; inline the data")
    plain = _get(src, f"{path}.{key}", str)
    encoded = _get(src, f"{path}.{key}Base64", str)
    if plain is not None and encoded is not None:
        raise SpecError(path, f"set only one of {key} and {key}Base64")
    if encoded is not None:
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SpecError(f"{path}.{key}Base64", f"is not valid base64: {e}") from e
    return plain.encode() if plain is not None else None


def _parse_disk(raw: Any, path: str, volumes: Mapping[str, Volume]) -> Disk:
    if not isinstance(raw, Mapping):
        raise SpecError(path, "expected an object")
    name = _check_name(_get(raw, f"{path}.name", str), f"{path}.name")
    volume_name = _get(raw, f"{path}.volumeName", str) or name  # older VMIs name the volume like the disk
    if volume_name not in volumes:
        raise SpecError(f"{path}.name", f"no volume named {volume_name!r} in spec.volumes")
    for unsupported in ("lun", "floppy"):
        if unsupported in raw:
            raise SpecError(f"{path}.{unsupported}", "is not supported (use disk or cdrom)")
    device = "cdrom" if "cdrom" in raw else "disk"
    target = _get(raw, f"{path}.{device}", Mapping, {})
    bus = _get(target, f"{path}.{device}.bus", str, "sata" if device == "cdrom" else "virtio")
    allowed = CDROM_BUSES if device == "cdrom" else DISK_BUSES
    if bus not in allowed:
        raise SpecError(
            f"{path}.{device}.bus", f"{bus!r} is not allowed for a {device} (use one of {allowed})"
        )
    boot_order = _get(raw, f"{path}.bootOrder", int)
    if boot_order is not None and boot_order < 1:
        raise SpecError(f"{path}.bootOrder", f"must be at least 1, got {boot_order}")
    cache = _get(raw, f"{path}.cache", str)
    if cache is not None and cache not in CACHE_MODES:
        raise SpecError(f"{path}.cache", f"{cache!r} is not one of {CACHE_MODES}")
    io = _get(raw, f"{path}.io", str)
    if io is not None and io not in IO_MODES:
        raise SpecError(f"{path}.io", f"{io!r} is not one of {IO_MODES}")
    volume = volumes[volume_name]
    read_only = bool(_get(target, f"{path}.{device}.readOnly", bool, device == "cdrom")) or volume.read_only
    return Disk(
        name,
        device,
        bus,
        volume,
        boot_order=boot_order,
        read_only=read_only,
        serial=_get(raw, f"{path}.serial", str),
        cache=cache,
        io=None if io == "default" else io,
    )


def _parse_interfaces(spec: Mapping[str, Any], devices: Mapping[str, Any]) -> list[Interface]:
    raw_ifaces = _get(devices, "spec.domain.devices.interfaces", list)
    raw_nets = _get(spec, "spec.networks", list)
    if raw_ifaces is None and raw_nets is None:
        auto = _get(devices, "spec.domain.devices.autoattachPodInterface", bool, True)
        return [Interface("default")] if auto else []
    networks: dict[str, Mapping[str, Any]] = {}
    for i, net in enumerate(raw_nets or []):
        name = _get(net, f"spec.networks[{i}].name", str)
        if "pod" not in net:
            raise SpecError(f"spec.networks[{i}]", "only the pod network is supported")
        networks[str(name)] = net
    result = []
    for i, raw in enumerate(raw_ifaces or []):
        path = f"spec.domain.devices.interfaces[{i}]"
        if not isinstance(raw, Mapping):
            raise SpecError(path, "expected an object")
        name = _check_name(_get(raw, f"{path}.name", str), f"{path}.name")
        if name not in networks:
            raise SpecError(f"{path}.name", f"no network named {name!r} in spec.networks")
        if "masquerade" not in raw:
            binding = [k for k in ("bridge", "sriov", "slirp", "passt") if k in raw]
            raise SpecError(path, f"only masquerade is supported, got {binding or 'no binding'}")
        model = _get(raw, f"{path}.model", str, "virtio")
        if model not in NIC_MODELS:
            raise SpecError(f"{path}.model", f"{model!r} is not one of {NIC_MODELS}")
        mac = _get(raw, f"{path}.macAddress", str)
        if mac is not None and not _MAC_RE.match(mac):
            raise SpecError(f"{path}.macAddress", f"{mac!r} is not a MAC address")
        boot_order = _get(raw, f"{path}.bootOrder", int)
        if boot_order is not None and boot_order < 1:
            raise SpecError(f"{path}.bootOrder", f"must be at least 1, got {boot_order}")
        result.append(Interface(name, model, mac.replace("-", ":") if mac else None, boot_order))
    return result


def _memory(domain: Mapping[str, Any]) -> int:
    guest = _get(_get(domain, "spec.domain.memory", Mapping, {}), "spec.domain.memory.guest", (str, int))
    if guest is not None:
        return parse_quantity(guest, "spec.domain.memory.guest")
    resources = _get(domain, "spec.domain.resources", Mapping, {})
    for section in ("requests", "limits"):
        part = _get(resources, f"spec.domain.resources.{section}", Mapping, {})
        if part.get("memory") is not None:
            return parse_quantity(part["memory"], f"spec.domain.resources.{section}.memory")
    raise SpecError("spec.domain.memory.guest", "is required (or spec.domain.resources.requests.memory)")


def _check_boot_orders(disks: list[Disk], interfaces: list[Interface]) -> None:
    seen: dict[int, str] = {}
    orders = [(f"spec.domain.devices.disks[{i}].bootOrder", d.boot_order) for i, d in enumerate(disks)]
    orders += [
        (f"spec.domain.devices.interfaces[{i}].bootOrder", n.boot_order) for i, n in enumerate(interfaces)
    ]
    for here, order in orders:
        if order is None:
            continue
        if order in seen:
            raise SpecError(here, f"{order} is already used by {seen[order]}")
        seen[order] = here


def parse_vmi(vmi: Mapping[str, Any]) -> VmiSpec:
    """Validate a VirtualMachineInstance dict and return the parts the launcher uses."""
    if not isinstance(vmi, Mapping):
        raise SpecError("(root)", "a VirtualMachineInstance must be a JSON object")
    meta = _get(vmi, "metadata", Mapping, {})
    name = _check_name(meta.get("name", "vmi"), "metadata.name")
    spec = _get(vmi, "spec", Mapping)
    if spec is None:
        raise SpecError("spec", "is required")
    domain = _get(spec, "spec.domain", Mapping)
    if domain is None:
        raise SpecError("spec.domain", "is required")
    cpu = _get(domain, "spec.domain.cpu", Mapping, {})
    machine = _get(_get(domain, "spec.domain.machine", Mapping, {}), "spec.domain.machine.type", str, "q35")
    if not _MACHINE_RE.match(machine):
        raise SpecError(
            "spec.domain.machine.type", f"{machine!r} is not an x86_64 machine type (q35, pc, pc-q35-X.Y)"
        )
    firmware = _get(domain, "spec.domain.firmware", Mapping, {})
    loader = _get(firmware, "spec.domain.firmware.bootloader", Mapping, {})
    efi = _get(loader, "spec.domain.firmware.bootloader.efi", Mapping)
    bios = _get(loader, "spec.domain.firmware.bootloader.bios", Mapping, {})
    if efi is not None and loader.get("bios") is not None:
        raise SpecError("spec.domain.firmware.bootloader", "set only one of bios and efi")
    secure = efi is not None and bool(_get(efi, "spec.domain.firmware.bootloader.efi.secureBoot", bool, True))
    if secure and machine.startswith("pc") and "q35" not in machine:
        raise SpecError("spec.domain.firmware.bootloader.efi.secureBoot", "needs a q35 machine type")
    volumes: dict[str, Volume] = {}
    for i, raw in enumerate(_get(spec, "spec.volumes", list, [])):
        vol = _parse_volume(raw, f"spec.volumes[{i}]")
        if vol.name in volumes:
            raise SpecError(f"spec.volumes[{i}].name", f"{vol.name!r} is used twice")
        volumes[vol.name] = vol
    devices = _get(domain, "spec.domain.devices", Mapping, {})
    disks = [
        _parse_disk(raw, f"spec.domain.devices.disks[{i}]", volumes)
        for i, raw in enumerate(_get(devices, "spec.domain.devices.disks", list, []))
    ]
    interfaces = _parse_interfaces(spec, devices)
    _check_boot_orders(disks, interfaces)
    grace = _get(spec, "spec.terminationGracePeriodSeconds", int, 30)
    if grace < 0:
        raise SpecError("spec.terminationGracePeriodSeconds", f"must not be negative, got {grace}")
    return VmiSpec(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        sockets=_positive(cpu, "spec.domain.cpu.sockets", 1),
        cores=_positive(cpu, "spec.domain.cpu.cores", 1),
        threads=_positive(cpu, "spec.domain.cpu.threads", 1),
        memory=_memory(domain),
        machine=machine,
        cpu_model=_get(cpu, "spec.domain.cpu.model", str),
        firmware="efi" if efi is not None else "bios",
        secure_boot=secure,
        efi_persistent=bool(efi and efi.get("persistent")),
        bios_serial=bool(_get(bios, "spec.domain.firmware.bootloader.bios.useSerial", bool, False)),
        uuid=_get(firmware, "spec.domain.firmware.uuid", str),
        hostname=_get(spec, "spec.hostname", str),
        disks=disks,
        interfaces=interfaces,
        rng="rng" in devices,
        grace_period=grace,
    )
