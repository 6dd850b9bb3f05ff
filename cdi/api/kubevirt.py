"""``kubevirt.io/v1`` VirtualMachine and VirtualMachineInstance: kind declarations and admission.

The rules are those of KubeVirt's validating webhooks (virt-api's vm-admitter and vmi-create-admitter)
for the subset this runtime supports, worded as kube-apiserver words field errors so that a bad
manifest gets a 422 naming the field:

- ``spec.running`` and ``spec.runStrategy`` are mutually exclusive; runStrategy is one of Always,
  Halted, Manual, RerunOnFailure, Once;
- dataVolumeTemplates have unique names, a valid DataVolume spec and are used by a volume;
- memory is given (``domain.memory.guest`` or ``domain.resources.requests.memory``);
- each volume has a unique DNS-label name and exactly one source of dataVolume,
  persistentVolumeClaim, cloudInitNoCloud, emptyDisk; each disk names an existing volume, is one of
  disk/cdrom, uses a known bus; boot orders are unique; only one of bios and efi.

A VMI's spec is immutable after creation, as in KubeVirt.
"""

from __future__ import annotations

import re
from typing import Any

from cdi.api.datavolume import forbidden, invalid, required, unsupported, validate_datavolume
from cdi.api.kubevirt_schema import vm_schema, vmi_schema
from cdi.api.registry import Column, Obj, ResourceKind
from cdi.units import QuantityError, parse_quantity

GROUP = "kubevirt.io"
VERSION = "v1"
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")
VOLUME_SOURCES = ("dataVolume", "persistentVolumeClaim", "cloudInitNoCloud", "emptyDisk")
DISK_TYPES = ("disk", "cdrom")
BUSES = {"disk": ("virtio", "sata", "scsi"), "cdrom": ("sata", "scsi")}
CLOUD_INIT_DATA = ("userData", "userDataBase64", "networkData", "networkDataBase64", "secretRef",
                   "networkDataSecretRef")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MACHINE = re.compile(r"^(q35|pc|pc-q35-[0-9.]+|pc-i440fx-[0-9.]+)$")


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _memory(domain: Obj, path: str) -> list[str]:
    guest = _dict(domain.get("memory")).get("guest")
    request = _dict(_dict(domain.get("resources")).get("requests")).get("memory")
    if guest is None and request is None:
        return [required(f"{path}.domain.resources.requests.memory",
                         f"no memory requested, at least one of '{path}.domain.memory.guest' or "
                         f"'{path}.domain.resources.requests.memory' must be set")]
    errs = []
    for field, value in ((f"{path}.domain.memory.guest", guest),
                         (f"{path}.domain.resources.requests.memory", request)):
        if value is None:
            continue
        try:
            if parse_quantity(value) < 1 << 20:
                errs.append(invalid(field, value, "must be at least 1Mi"))
        except QuantityError as e:
            errs.append(invalid(field, value, str(e)))
    return errs


def _cpu(domain: Obj, path: str) -> list[str]:
    errs = []
    for key in ("cores", "sockets", "threads"):
        value = _dict(domain.get("cpu")).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            errs.append(invalid(f"{path}.domain.cpu.{key}", value, "must be a positive integer"))
    return errs


def _volumes(spec: Obj, path: str) -> tuple[dict[str, Obj], list[str]]:
    volumes: dict[str, Obj] = {}
    errs: list[str] = []
    for n, vol in enumerate(_list(spec.get("volumes"))):
        here = f"{path}.volumes[{n}]"
        vol = _dict(vol)
        name = vol.get("name")
        if not name:
            errs.append(required(f"{here}.name"))
            continue
        if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
            errs.append(invalid(f"{here}.name", name, "must be a DNS label (lower case letters, digits, '-')"))
        if name in volumes:
            errs.append(invalid(f"{here}.name", name, "volume name is used more than once"))
        volumes[name] = vol
        sources = [k for k in vol if k != "name"]
        unknown = [k for k in sources if k not in VOLUME_SOURCES]
        if unknown:
            errs.append(unsupported(f"{here}.{unknown[0]}", unknown[0], VOLUME_SOURCES))
        elif len(sources) != 1:
            errs.append(invalid(here, ", ".join(sources), "should have exactly one volume type of "
                                + ", ".join(VOLUME_SOURCES)))
        elif "dataVolume" in vol and not _dict(vol["dataVolume"]).get("name"):
            errs.append(required(f"{here}.dataVolume.name"))
        elif "persistentVolumeClaim" in vol and not _dict(vol["persistentVolumeClaim"]).get("claimName"):
            errs.append(required(f"{here}.persistentVolumeClaim.claimName"))
        elif "cloudInitNoCloud" in vol and not any(_dict(vol["cloudInitNoCloud"]).get(k) for k in CLOUD_INIT_DATA):
            errs.append(required(f"{here}.cloudInitNoCloud", "userData, userDataBase64, networkData or "
                                 "networkDataBase64 is required"))
        elif "emptyDisk" in vol:
            capacity = _dict(vol["emptyDisk"]).get("capacity")
            if capacity is None:
                errs.append(required(f"{here}.emptyDisk.capacity"))
            else:
                try:
                    parse_quantity(capacity)
                except QuantityError as e:
                    errs.append(invalid(f"{here}.emptyDisk.capacity", capacity, str(e)))
    return volumes, errs


def _disks(devices: Obj, volumes: dict[str, Obj], path: str) -> list[str]:
    errs: list[str] = []
    seen: set[str] = set()
    boot_orders: dict[int, str] = {}
    for n, disk in enumerate(_list(devices.get("disks"))):
        here = f"{path}.domain.devices.disks[{n}]"
        disk = _dict(disk)
        name = disk.get("name")
        if not name:
            errs.append(required(f"{here}.name"))
            continue
        if name in seen:
            errs.append(invalid(f"{here}.name", name, "disk name is used more than once"))
        seen.add(name)
        if name not in volumes:
            errs.append(invalid(f"{here}.name", name, f"volume {name} not found: every disk needs a volume of "
                                "the same name"))
        kinds = [k for k in ("disk", "cdrom", "lun") if k in disk]
        if len(kinds) > 1:
            errs.append(invalid(here, ", ".join(kinds), "should have only one of disk, cdrom or lun"))
        kind = kinds[0] if kinds else "disk"
        if kind == "lun":
            errs.append(unsupported(f"{here}.lun", "lun", DISK_TYPES))
            continue
        bus = _dict(disk.get(kind)).get("bus")
        if bus is not None and bus not in BUSES[kind]:
            errs.append(unsupported(f"{here}.{kind}.bus", bus, BUSES[kind]))
        order = disk.get("bootOrder")
        if order is not None:
            if isinstance(order, bool) or not isinstance(order, int) or order < 1:
                errs.append(invalid(f"{here}.bootOrder", order, "must be a positive integer"))
            elif order in boot_orders:
                errs.append(invalid(f"{here}.bootOrder", order, f"boot order is already used by {boot_orders[order]}"))
            else:
                boot_orders[order] = name
    return errs


def validate_vmi_spec(spec: Any, path: str) -> list[str]:
    """KubeVirt's VMI spec rules for the subset, on ``spec`` found at ``path``."""
    if not isinstance(spec, dict):
        return [required(path)]
    domain = spec.get("domain")
    if not isinstance(domain, dict):
        return [required(f"{path}.domain")]
    errs = _memory(domain, path) + _cpu(domain, path)
    machine = _dict(domain.get("machine")).get("type")
    if machine is not None and not (isinstance(machine, str) and _MACHINE.match(machine)):
        errs.append(invalid(f"{path}.domain.machine.type", machine, "not an x86_64 machine type (q35, pc, ...)"))
    loader = _dict(_dict(domain.get("firmware")).get("bootloader"))
    if "bios" in loader and "efi" in loader:
        errs.append(invalid(f"{path}.domain.firmware.bootloader", "bios, efi", "set only one of bios and efi"))
    volumes, verrs = _volumes(spec, path)
    errs += verrs + _disks(_dict(domain.get("devices")), volumes, path)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 0):
        errs.append(invalid(f"{path}.terminationGracePeriodSeconds", grace, "must be a non-negative integer"))
    for n, iface in enumerate(_list(_dict(domain.get("devices")).get("interfaces"))):
        bindings = [k for k in ("masquerade", "bridge", "sriov", "slirp", "passt") if k in _dict(iface)]
        if bindings and bindings != ["masquerade"]:
            errs.append(unsupported(f"{path}.domain.devices.interfaces[{n}].{bindings[0]}", bindings[0],
                                    ("masquerade",)))
    return errs


def _data_volume_templates(spec: Obj, volumes: list[Any]) -> list[str]:
    errs: list[str] = []
    names: set[str] = set()
    used = {_dict(v.get("dataVolume")).get("name") for v in volumes if isinstance(v, dict)}
    for n, tmpl in enumerate(_list(spec.get("dataVolumeTemplates"))):
        here = f"spec.dataVolumeTemplates[{n}]"
        tmpl = _dict(tmpl)
        name = _dict(tmpl.get("metadata")).get("name")
        if not name:
            errs.append(required(f"{here}.metadata.name"))
            continue
        if name in names:
            errs.append(invalid(f"{here}.metadata.name", name, "dataVolumeTemplate names must be unique"))
        names.add(name)
        if name not in used:
            errs.append(invalid(f"{here}.metadata.name", name, f"dataVolumeTemplate {name} must be referenced in "
                                "the VMI template's 'volumes' list"))
        errs += [f"{here}.{e}" for e in validate_datavolume({"spec": tmpl.get("spec")}, None)]
    return errs


def validate_vm(obj: Obj, old: Obj | None) -> list[str]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    errs: list[str] = []
    strategy = spec.get("runStrategy")
    if strategy is not None and spec.get("running") is not None:
        errs.append(invalid("spec.running", spec["running"], "running and runStrategy are mutually exclusive"))
    if strategy is not None and strategy not in RUN_STRATEGIES:
        errs.append(unsupported("spec.runStrategy", strategy, RUN_STRATEGIES))
    if spec.get("running") is not None and not isinstance(spec["running"], bool):
        errs.append(invalid("spec.running", spec["running"], "must be a boolean"))
    template = spec.get("template")
    if not isinstance(template, dict):
        return errs + [required("spec.template")]
    tspec = template.get("spec")
    errs += validate_vmi_spec(tspec, "spec.template.spec")
    errs += _data_volume_templates(spec, _list(_dict(tspec).get("volumes")))
    return errs


def validate_vmi(obj: Obj, old: Obj | None) -> list[str]:
    if old is not None:
        if obj.get("spec") != old.get("spec"):
            return [forbidden("spec", "VirtualMachineInstance spec is immutable after creation")]
        return []
    return validate_vmi_spec(obj.get("spec"), "spec")


def _ready(obj: Obj) -> str | None:
    for cond in _list(_dict(obj.get("status")).get("conditions")):
        if _dict(cond).get("type") == "Ready":
            return str(cond.get("status"))
    return None


def _condition_path(kind: str) -> str:
    """The printer-column JSONPath of a condition's status, as KubeVirt's CRDs declare it."""
    return f".status.conditions[?(@.type=='{kind}')].status"


_READY_PATH = _condition_path("Ready")
_AGE = Column("Age", "date", ".metadata.creationTimestamp", description="CreationTimestamp of the object.")

VIRTUALMACHINE = ResourceKind(
    group=GROUP, version=VERSION, kind="VirtualMachine", plural="virtualmachines", singular="virtualmachine",
    short_names=("vm", "vms"), categories=("all",), status_subresource=True,
    columns=(
        _AGE,
        Column("Status", "string", ".status.printableStatus", description="Human readable status"),
        Column("Ready", "string", _READY_PATH, func=_ready, description="Ready condition of the VM"),
    ),
    age_column=False, validate=validate_vm, schema=vm_schema(),
    description="VirtualMachine handles the VirtualMachineInstance that is supposed to be running.",
)

VIRTUALMACHINEINSTANCE = ResourceKind(
    group=GROUP, version=VERSION, kind="VirtualMachineInstance", plural="virtualmachineinstances",
    singular="virtualmachineinstance", short_names=("vmi", "vmis"), categories=("all",), status_subresource=True,
    columns=(
        _AGE,
        Column("Phase", "string", ".status.phase"),
        Column("IP", "string", ".status.interfaces[0].ipAddress"),
        Column("NodeName", "string", ".status.nodeName"),
        Column("Ready", "string", _READY_PATH, func=_ready),
        Column("Live-Migratable", "string", _condition_path("LiveMigratable"), func=lambda _obj: "False", priority=1),
        Column("Paused", "string", _condition_path("Paused"), func=lambda _obj: None, priority=1),
    ),
    age_column=False, validate=validate_vmi, schema=vmi_schema(),
    description="VirtualMachineInstance is *the* VirtualMachineInstance Definition.",
)

KUBEVIRT_KINDS = (VIRTUALMACHINE, VIRTUALMACHINEINSTANCE)
