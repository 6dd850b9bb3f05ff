"""Core (`v1`) kinds: namespaces, PVCs, pods, secrets, configmaps, events, services and nodes.

Columns follow what kube-apiserver's built-in table printers show, so `kubectl get pods` prints
NAME READY STATUS RESTARTS AGE as it does against a real cluster. Validation is deliberately
light: the few required fields controllers and kubectl rely on.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from cdi.api import podprinter
from cdi.api.registry import Column, Obj, ResourceKind, get_path
from cdi.units import QuantityError, parse_quantity

VOLUME_MODES = ("Block", "Filesystem")  # the PersistentVolumeMode values kube knows


_ACCESS_MODE_SHORT = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _none_dash(path: str) -> Any:
    def cell(obj: Obj) -> Any:
        v = get_path(obj, path)
        return "<none>" if v in (None, "") else v

    return cell


def _pvc_access_modes(obj: Obj) -> str:
    modes = get_path(obj, ".status.accessModes") or []
    return ",".join(_ACCESS_MODE_SHORT.get(m, m) for m in modes)


def _pvc_capacity(obj: Obj) -> str:
    return str(get_path(obj, ".status.capacity.storage") or "")


def _count(path: str) -> Any:
    def cell(obj: Obj) -> int:
        return len(get_path(obj, path) or {}) + len(get_path(obj, path.replace(".data", ".binaryData")) or {})

    return cell


def _event_object(obj: Obj) -> str:
    kind = str(get_path(obj, ".involvedObject.kind") or "").lower()
    name = get_path(obj, ".involvedObject.name")
    return f"{kind}/{name}" if name else kind


def _event_first_seen(obj: Obj) -> Any:
    return get_path(obj, ".firstTimestamp") or get_path(obj, ".eventTime")


def _event_last_seen(obj: Obj) -> Any:
    """kube's printEvent: the series' last observation, else lastTimestamp, else the first one."""
    return (
        get_path(obj, ".series.lastObservedTime")
        or get_path(obj, ".lastTimestamp")
        or _event_first_seen(obj)
    )


def _event_count(obj: Obj) -> int:
    series = get_path(obj, ".series.count")
    return int(series if series is not None else (get_path(obj, ".count") or 1))


def _event_source(obj: Obj) -> str:
    component = get_path(obj, ".source.component") or get_path(obj, ".reportingComponent") or ""
    host = get_path(obj, ".source.host") or get_path(obj, ".reportingInstance") or ""
    return f"{component}, {host}" if host else str(component)


def _service_ports(obj: Obj) -> str:
    ports = get_path(obj, ".spec.ports") or []
    parts = [f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports]
    return ",".join(parts) or "<none>"


def _required(obj: Obj, path: str, label: str) -> list[str]:
    return [] if get_path(obj, path) else [f"{label}: Required value"]


def _validate_pod(obj: Obj, old: Obj | None) -> list[str]:
    containers = get_path(obj, ".spec.containers")
    if not containers:
        return ["spec.containers: Required value"]
    errs: list[str] = []
    for group in ("initContainers", "containers"):
        for i, c in enumerate(get_path(obj, f".spec.{group}") or []):
            if not isinstance(c, dict) or not c.get("name"):
                errs.append(f"spec.{group}[{i}].name: Required value")
                continue
            for j, mount in enumerate(c.get("volumeMounts") or []):
                sub = mount.get("subPath") if isinstance(mount, dict) else None
                field = f"spec.{group}[{i}].volumeMounts[{j}].subPath"
                if isinstance(sub, str) and sub.startswith("/"):
                    errs.append(f'{field}: Invalid value: "{sub}": must be a relative path')
                elif isinstance(sub, str) and ".." in sub.split("/"):
                    errs.append(f"{field}: Invalid value: \"{sub}\": must not contain '..'")
    if old is not None and _pod_spec_changes(obj.get("spec") or {}, old.get("spec") or {}):
        errs.append(_POD_UPDATE_FORBIDDEN)
    return errs


_POD_UPDATE_FORBIDDEN = (
    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
    "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")


def _pod_spec_changes(new: Obj, old: Obj) -> bool:
    """Whether an update changes a pod's spec beyond what kube lets an update change.

    Binding to a node (``nodeName`` set where it was empty) is allowed too: the local node binds the
    pods it runs that way, where a cluster's scheduler posts a Binding."""

    def masked(spec: Obj, other: Obj) -> Obj:
        out = dict(spec)
        for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
            out.pop(key, None)
        if not other.get("nodeName"):
            out.pop("nodeName", None)
        for group in ("containers", "initContainers"):
            if isinstance(out.get(group), list):
                out[group] = [{k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                              for c in out[group]]
        return out

    return masked(new, old) != masked(old, old)


def _default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    obj.setdefault("status", {}).setdefault("phase", "Pending")


def _validate_pvc(obj: Obj, old: Obj | None) -> list[str]:
    errs = _required(obj, ".spec.accessModes", "spec.accessModes")
    errs += _required(obj, ".spec.resources.requests.storage", "spec.resources[storage]")
    mode = get_path(obj, ".spec.volumeMode")
    if mode is not None and mode not in VOLUME_MODES:
        errs.append(f'spec.volumeMode: Unsupported value: "{mode}": supported values: '
                    + ", ".join(f'"{m}"' for m in VOLUME_MODES))
    for part in ("requests", "limits"):
        for name, value in (get_path(obj, f".spec.resources.{part}") or {}).items():
            field = f"spec.resources.{part}[{name}]"
            try:
                quantity = parse_quantity(value)
            except QuantityError as e:
                errs.append(f'{field}: Invalid value: "{value}": {e}')
                continue
            if quantity < 0:
                errs.append(f'{field}: Invalid value: "{value}": must be greater than or equal to 0')
            elif name == "storage" and part == "requests" and quantity == 0:
                errs.append(f'{field}: Invalid value: "{value}": must be greater than zero')
    return errs


def _default_pvc(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    for key in ("requests", "limits"):
        part = (spec.get("resources") or {}).get(key)
        if not isinstance(part, dict):
            continue
        for name, value in part.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                part[name] = str(value)  # a quantity is a string on the wire, as kube writes it back
    obj.setdefault("status", {}).setdefault("phase", "Pending")


_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _validate_config_data(obj: Obj, old: Obj | None) -> list[str]:
    """Keys of a ConfigMap or Secret as kube's IsConfigMapKey, and the immutable rule."""
    errs = _validate_immutable_data(obj, old)
    seen: set[str] = set()
    for section in ("data", "binaryData", "stringData"):
        for key in obj.get(section) or {}:
            field = f"{section}[{key}]"
            if len(key) > 253:
                errs.append(f'{field}: Invalid value: "{key}": must be no more than 253 characters')
            if not _CONFIG_KEY.match(key):
                errs.append(f'{field}: Invalid value: "{key}": a valid config key must consist of alphanumeric '
                            "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', "
                            "regex used for validation is '[-._a-zA-Z0-9]+')")
            elif key in (".", ".."):
                errs.append(f'{field}: Invalid value: "{key}": must not be \'{key}\'')
            elif key.startswith(".."):
                errs.append(f'{field}: Invalid value: "{key}": must not start with \'..\'')
            if key in seen and section != "stringData":
                errs.append(f'{field}: Invalid value: "{key}": duplicate of key present in data')
            seen.add(key)
    return errs


def _validate_immutable_data(obj: Obj, old: Obj | None) -> list[str]:
    """A ConfigMap or Secret marked `immutable: true` keeps its data and the mark, as kube enforces."""
    if old is None or not old.get("immutable"):
        return []
    errs = []
    if not obj.get("immutable"):
        errs.append("immutable: Forbidden: field is immutable when `immutable` is set")
    for key in ("data", "binaryData"):
        if (obj.get(key) or {}) != (old.get(key) or {}):
            errs.append(f"{key}: Forbidden: field is immutable when `immutable` is set")
    return errs


def _default_namespace(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _default_secret(obj: Obj) -> None:
    """Type Opaque by default; `stringData` merged into `data` (base64) and never stored, as kube does."""
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = obj.get("data")
        data = dict(data) if isinstance(data, dict) else {}
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def _node_status(obj: Obj) -> str:
    """kubectl's node STATUS: Ready, NotReady or Unknown, then SchedulingDisabled when cordoned."""
    ready = next((c for c in get_path(obj, ".status.conditions") or [] if c.get("type") == "Ready"), None)
    status = "Unknown" if ready is None or ready.get("status") == "Unknown" else (
        "Ready" if ready.get("status") == "True" else "NotReady")
    return f"{status},SchedulingDisabled" if get_path(obj, ".spec.unschedulable") else status


def _node_roles(obj: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in (get_path(obj, ".metadata.labels") or {}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _node_address(kind: str) -> Any:
    def cell(obj: Obj) -> str:
        found = [a.get("address") for a in get_path(obj, ".status.addresses") or [] if a.get("type") == kind]
        return ",".join(str(a) for a in found) or "<none>"

    return cell


def _validate_event(obj: Obj, old: Obj | None) -> list[str]:
    return _required(obj, ".involvedObject", "involvedObject")


def core_kinds() -> list[ResourceKind]:
    """Declarations of the core kinds, in discovery order."""
    return [
        ResourceKind(
            group="",
            version="v1",
            kind="Namespace",
            plural="namespaces",
            singular="namespace",
            namespaced=False,
            short_names=("ns",),
            status_subresource=True,
            columns=(Column("Status", json_path=".status.phase"),),
            default=_default_namespace,
            selectable_fields=("status.phase",),
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="PersistentVolumeClaim",
            plural="persistentvolumeclaims",
            singular="persistentvolumeclaim",
            short_names=("pvc",),
            status_subresource=True,
            columns=(
                Column("Status", json_path=".status.phase"),
                Column("Volume", json_path=".spec.volumeName"),
                Column("Capacity", func=_pvc_capacity),
                Column("Access Modes", func=_pvc_access_modes),
                Column("StorageClass", func=_none_dash(".spec.storageClassName")),
                Column("VolumeAttributesClass", func=_none_dash(".spec.volumeAttributesClassName")),
                Column("VolumeMode", json_path=".spec.volumeMode", priority=1),
            ),
            validate=_validate_pvc,
            default=_default_pvc,
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="Pod",
            plural="pods",
            singular="pod",
            short_names=("po",),
            categories=("all",),
            status_subresource=True,
            extra_subresources=("log",),
            columns=(
                Column("Ready", func=podprinter.ready_cell),
                Column("Status", func=podprinter.status_cell),
                Column("Restarts", "string", func=podprinter.restarts_cell),
                Column("IP", func=_none_dash(".status.podIP"), priority=1),
                Column("Node", func=_none_dash(".spec.nodeName"), priority=1),
                Column("Nominated Node", func=_none_dash(".status.nominatedNodeName"), priority=1),
                Column("Readiness Gates", func=lambda o: "<none>", priority=1),
            ),
            validate=_validate_pod,
            default=_default_pod,
            selectable_fields=(
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ),
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="Secret",
            plural="secrets",
            singular="secret",
            columns=(Column("Type", json_path=".type"), Column("Data", "integer", func=_count(".data"))),
            default=_default_secret,
            validate=_validate_config_data,
            selectable_fields=("type",),
            non_spec_fields=(),
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="ConfigMap",
            plural="configmaps",
            singular="configmap",
            short_names=("cm",),
            columns=(Column("Data", "integer", func=_count(".data")),),
            validate=_validate_config_data,
            non_spec_fields=(),
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="Event",
            plural="events",
            singular="event",
            short_names=("ev",),
            name_column=False,
            age_column=False,
            # kube's event printer: the same columns in the same order, the wide ones at priority 1.
            columns=(
                Column("Last Seen", "date", func=_event_last_seen),
                Column("Type", json_path=".type"),
                Column("Reason", json_path=".reason"),
                Column("Object", func=_event_object),
                Column("Subobject", func=lambda o: get_path(o, ".involvedObject.fieldPath") or "", priority=1),
                Column("Source", func=_event_source, priority=1),
                Column("Message", func=lambda o: str(get_path(o, ".message") or "").strip()),
                Column("First Seen", "date", func=_event_first_seen, priority=1),
                Column("Count", "integer", func=_event_count, priority=1),
                Column("Name", json_path=".metadata.name", priority=1, format="name"),
            ),
            validate=_validate_event,
            non_spec_fields=(),
            selectable_fields=(
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ),
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="Service",
            plural="services",
            singular="service",
            short_names=("svc",),
            categories=("all",),
            status_subresource=True,
            columns=(
                Column("Type", json_path=".spec.type"),
                Column("Cluster-IP", func=_none_dash(".spec.clusterIP")),
                Column("External-IP", func=lambda o: "<none>"),
                Column("Port(s)", func=_service_ports),
                Column(
                    "Selector",
                    func=lambda o: (
                        ",".join(f"{k}={v}" for k, v in (get_path(o, ".spec.selector") or {}).items())
                        or "<none>"
                    ),
                    priority=1,
                ),
            ),
            default=_default_service,
        ),
        ResourceKind(
            group="",
            version="v1",
            kind="Node",
            plural="nodes",
            singular="node",
            namespaced=False,
            short_names=("no",),
            status_subresource=True,
            columns=(
                Column("Status", func=_node_status),
                Column("Roles", func=_node_roles),
                Column("Age", "date", ".metadata.creationTimestamp", description="CreationTimestamp of the object."),
                Column("Version", json_path=".status.nodeInfo.kubeletVersion"),
                Column("Internal-IP", func=_node_address("InternalIP"), priority=1),
                Column("External-IP", func=_node_address("ExternalIP"), priority=1),
                Column("OS-Image", json_path=".status.nodeInfo.osImage", priority=1),
                Column("Kernel-Version", json_path=".status.nodeInfo.kernelVersion", priority=1),
                Column("Container-Runtime", json_path=".status.nodeInfo.containerRuntimeVersion", priority=1),
            ),
            age_column=False,  # kube prints AGE before VERSION for nodes
            selectable_fields=("spec.unschedulable",),
        ),
    ]
