"""The objects the DataVolume controller creates: its PVC and the importer pod, as pure functions.

Shapes follow CDI: the PVC takes the DataVolume's name and is owned by it; the importer pod
``importer-<name>`` is owned by the PVC, runs the importer with CDI's environment variables, mounts the
volume at /data (Filesystem) or /dev/cdi-block-volume (Block), restarts OnFailure.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdi.units import format_quantity, parse_size

Obj = dict[str, Any]

ANN_PREFIX = "cdi.kubevirt.io/"
ANN_POD_PHASE = "cdi.kubevirt.io/storage.pod.phase"
ANN_POD_RESTARTS = "cdi.kubevirt.io/storage.pod.restarts"
ANN_DIGEST = "cdi.kubevirt.io/storage.import.volumeDigest"
ANN_SOURCE_CHECKSUM = "cdi.kubevirt.io/storage.import.sourceChecksum"
# the manifest digest of the registry image imported (an index's own digest for a multi-arch image)
ANN_SOURCE_DIGEST = "cdi.kubevirt.io/storage.import.sourceDigest"
ANN_CACHED_FROM = "cdi.kubevirt.io/storage.import.cachedFrom"  # on a DataVolume served by the image cache
ANN_CACHE_STALE = "cdi.kubevirt.io/storage.import.cacheStale"  # written since import: not a cache entry
ANN_IMPORT_MESSAGE = "cdi.kubevirt.io/storage.condition.running.message"
ANN_IMPORT_REASON = "cdi.kubevirt.io/storage.condition.running.reason"
ANN_RETAIN_POD = "cdi.kubevirt.io/storage.pod.retainAfterCompletion"
ANN_CREATED_BY = "cdi.kubevirt.io/createdForDataVolume"
LABEL_APP = {"app": "containerized-data-importer", "app.kubernetes.io/component": "storage",
             "app.kubernetes.io/managed-by": "cdi-controller"}
ALIGN = 1 << 20
SCRATCH_VOLUME = "cdi-scratch-vol"  # CDI's ScratchVolName and ScratchDataDir
SCRATCH_MOUNT = "/scratch"
# Worker pods serve their progress to Prometheus on CDI's port (cdi.metrics.serve_worker_progress).
METRICS_PORTS: list[Obj] = [{"name": "metrics", "containerPort": 8443, "protocol": "TCP"}]
METRICS_ENV: list[Obj] = [{"name": "METRICS_PORT", "value": "8443"}]


DEFAULT_RESOURCES: Obj = {"requests": {"cpu": "100m", "memory": "60Mi"}, "limits": {"cpu": "2", "memory": "600Mi"}}


@dataclass(frozen=True)
class WorkerPodConfig:
    """Where and with what worker pods run, as CDI takes it from CDIConfig (spec.podResourceRequirements,
    spec.imagePullSecrets) and from the CDI resource's spec.workload (nodeSelector, tolerations, affinity)."""

    resources: Obj = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Obj] = field(default_factory=list)
    affinity: Obj = field(default_factory=dict)
    image_pull_secrets: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Obj, *, source: str = "worker pod config") -> WorkerPodConfig:
        """From CDIConfig-like keys: podResourceRequirements, imagePullSecrets (names or {name: ...}),
        nodeSelector, tolerations, affinity. Unknown keys and wrong types are refused, naming the key."""
        known = {"podResourceRequirements": dict, "imagePullSecrets": list, "nodeSelector": dict,
                 "tolerations": list, "affinity": dict}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"{source}: unknown key {key!r}; known: {', '.join(known)}")
            if not isinstance(value, known[key]):
                raise ValueError(f"{source}: {key} must be a {'mapping' if known[key] is dict else 'list'}")
        entries = [s.get("name") if isinstance(s, dict) else s for s in data.get("imagePullSecrets") or []]
        secrets = [s for s in entries if isinstance(s, str) and s]
        if len(secrets) != len(entries):
            raise ValueError(f"{source}: imagePullSecrets must be names (or {{name: ...}} entries)")
        return cls(resources=data.get("podResourceRequirements") or copy.deepcopy(DEFAULT_RESOURCES),
                   node_selector={str(k): str(v) for k, v in (data.get("nodeSelector") or {}).items()},
                   tolerations=list(data.get("tolerations") or []), affinity=dict(data.get("affinity") or {}),
                   image_pull_secrets=secrets)

    @classmethod
    def from_file(cls, path: str) -> WorkerPodConfig:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must be a mapping of CDIConfig-like keys")
        return cls.from_dict(data, source=path)

    def apply(self, pod: Obj) -> Obj:
        """Set resources on every container and the placement and pull secrets on the pod spec."""
        spec = pod["spec"]
        for container in spec.get("containers") or []:
            container["resources"] = copy.deepcopy(self.resources)
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = copy.deepcopy(self.tolerations)
        if self.affinity:
            spec["affinity"] = copy.deepcopy(self.affinity)
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        return pod


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller shapes what it creates."""

    # Container image of the importer (what kubelet runs in a cluster; ignored by the local node).
    importer_image: str = "cdi-importer:latest"
    # Container image of the upload server (what kubelet runs in a cluster; ignored by the local node).
    uploadserver_image: str = "cdi-uploadserver:latest"
    # Container image of the clone worker (what kubelet runs in a cluster; ignored by the local node).
    cloner_image: str = "cdi-cloner:latest"
    # Clone every PVC with the host-assisted stream (cloner pod to upload server), even on one node.
    clone_host_assisted: bool = False
    # Bytes between durable resume points of a raw upload (an interrupted upload continues from the last).
    upload_resume_interval: int = 64 << 20
    # Fraction of a Filesystem volume kept for the filesystem itself (CDI's default is 0.06).
    filesystem_overhead: float = 0.06
    # Seconds between progress reads of a running import.
    progress_interval: float = 1.0
    # Default storage class when a DataVolume names none (None: the cluster's default).
    storage_class: str | None = None
    # Importers give up on a source slower than this many bytes/s for `importer_speed_time` seconds
    # (curl's --speed-limit/--speed-time), after `importer_max_stalled_retries` reconnects that made no
    # progress; the pod then fails transiently and is restarted with back-off.
    importer_speed_limit: int = 16 << 10
    importer_speed_time: float = 60.0
    importer_max_stalled_retries: int = 3
    # Resources, node placement and image pull secrets of every worker pod (importer, upload server, cloner).
    worker_pod: WorkerPodConfig = field(default_factory=WorkerPodConfig)


def importer_pod_name(dv_name: str) -> str:
    return child_name("importer-", dv_name)


def child_name(prefix: str, name: str, limit: int = 253) -> str:
    """``prefix + name``, or, when that is longer than ``limit``, a cut of it with a hash of the whole
    name, so that two long names with the same beginning still get different children (CDI's
    naming.GetResourceName does the same)."""
    full = prefix + name
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{full[:limit - 9].rstrip('-.')}-{digest}"


def owner_ref(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""), "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def requested_size(dv: Obj) -> int | None:
    spec = dv.get("spec", {})
    claim = spec.get("pvc") or spec.get("storage") or {}
    text = ((claim.get("resources") or {}).get("requests") or {}).get("storage")
    return parse_size(str(text)) if text else None


def volume_mode(dv: Obj) -> str:
    spec = dv.get("spec", {})
    claim = spec.get("pvc") or spec.get("storage") or {}
    return str(claim.get("volumeMode") or "Filesystem")


def build_pvc(dv: Obj, settings: ControllerSettings) -> Obj:
    """The DataVolume's PVC. With ``storage`` on a Filesystem volume the request grows by the
    filesystem overhead (as CDI does), so that the image itself gets the size the user asked for."""
    spec = dv["spec"]
    use_storage = "storage" in spec
    claim: Obj = copy.deepcopy(spec.get("pvc") or spec.get("storage") or {})
    claim.setdefault("accessModes", ["ReadWriteOnce"])
    mode = claim.setdefault("volumeMode", "Filesystem")
    size = requested_size(dv)
    if size is None:
        raise ValueError("the DataVolume requests no storage size")
    if use_storage and mode == "Filesystem" and settings.filesystem_overhead > 0:
        size = math.ceil(size / (1 - settings.filesystem_overhead) / ALIGN) * ALIGN
    claim.setdefault("resources", {}).setdefault("requests", {})["storage"] = format_quantity(size)
    if settings.storage_class and not claim.get("storageClassName"):
        claim["storageClassName"] = settings.storage_class
    meta = dv["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {**LABEL_APP, **(meta.get("labels") or {})},
            "annotations": {ANN_CREATED_BY: meta["uid"]},
            "ownerReferences": [owner_ref(dv)],
        },
        "spec": claim,
    }


def image_size(dv: Obj, pvc: Obj, settings: ControllerSettings) -> int:
    """Bytes the image may occupy: the request (storage API) or the PVC less the overhead (pvc API)."""
    capacity = parse_size(str(((pvc.get("status") or {}).get("capacity") or {}).get("storage")
                              or pvc["spec"]["resources"]["requests"]["storage"]))
    if volume_mode(dv) == "Block":
        return capacity
    asked = requested_size(dv) or capacity
    if "storage" in dv["spec"]:
        return min(asked, capacity)
    usable = int(capacity * (1 - settings.filesystem_overhead))
    return usable // 512 * 512


def insecure_registry(url: str, insecure_registries: Sequence[str]) -> bool:
    """Whether a ``docker://`` URL's host is one of CDIConfig's ``spec.insecureRegistries`` (CDI compares
    the URL's host, port included, with each entry)."""
    if not url.startswith("docker://"):
        return False
    host = url[len("docker://"):].split("/", 1)[0]
    return host in insecure_registries


def build_importer_pod(dv: Obj, pvc: Obj, settings: ControllerSettings, *,
                       insecure_registries: Sequence[str] = (), scratch_claim: str | None = None) -> Obj:
    """The importer pod for an http, s3, registry or blank DataVolume, in the shape CDI gives it
    (``insecure_registries``: CDIConfig's ``spec.insecureRegistries``). ``scratch_claim``: mounted at
    /scratch as CDI's ``cdi-scratch-vol``; without one the importer is told it has no scratch space (it
    must never put scratch in the volume it fills) and ends with "scratch space required" if it needs some."""
    source = dv["spec"].get("source") or {}
    meta = dv["metadata"]
    env: list[Obj] = [
        {"name": "IMPORTER_CONTENTTYPE", "value": dv["spec"].get("contentType") or "kubevirt"},
        {"name": "IMPORTER_IMAGE_SIZE", "value": str(image_size(dv, pvc, settings))},
        {"name": "OWNER_UID", "value": meta["uid"]},
        {"name": "FILESYSTEM_OVERHEAD", "value": str(settings.filesystem_overhead)},
        {"name": "IMPORTER_PROGRESS", "value": "json"},
        {"name": "IMPORTER_SPEED_LIMIT", "value": str(settings.importer_speed_limit)},
        {"name": "IMPORTER_SPEED_TIME", "value": f"{settings.importer_speed_time:g}"},
        {"name": "IMPORTER_MAX_STALLED_RETRIES", "value": str(settings.importer_max_stalled_retries)},
    ]
    volumes: list[Obj] = [{"name": "cdi-data-vol", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}]
    mounts: list[Obj] = []
    devices: list[Obj] = []
    if volume_mode(dv) == "Block":
        devices.append({"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"})
    else:
        mounts.append({"name": "cdi-data-vol", "mountPath": "/data"})
    if scratch_claim:
        volumes.append({"name": SCRATCH_VOLUME, "persistentVolumeClaim": {"claimName": scratch_claim}})
        mounts.append({"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT})
        env.append({"name": "IMPORTER_SCRATCH_DIR", "value": SCRATCH_MOUNT})
    else:
        env.append({"name": "IMPORTER_SCRATCH_BESIDE_TARGET", "value": "false"})
    kind = next((k for k in ("http", "s3", "registry") if k in source), None)
    if kind is not None:
        body = source[kind]
        url = body.get("url") or ""
        env += [{"name": "IMPORTER_SOURCE", "value": kind}, {"name": "IMPORTER_ENDPOINT", "value": url}]
        if kind == "http" and body.get("checksum"):
            env.append({"name": "IMPORTER_CHECKSUM", "value": body["checksum"]})
        if kind == "registry" and insecure_registry(url, insecure_registries):
            env.append({"name": "INSECURE_TLS", "value": "true"})  # CDIConfig spec.insecureRegistries, as CDI
        if kind == "registry":
            env.append({"name": "IMPORTER_REGISTRY_IMPORT_METHOD", "value": body.get("pullMethod") or "pod"})
            arch = (body.get("platform") or {}).get("architecture")
            if arch:
                env.append({"name": "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "value": arch})
        if body.get("secretRef"):
            ref = body["secretRef"]
            env += [
                {"name": "IMPORTER_ACCESS_KEY_ID",
                 "valueFrom": {"secretKeyRef": {"name": ref, "key": "accessKeyId"}}},
                {"name": "IMPORTER_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": ref, "key": "secretKey"}}},
            ]
        if body.get("certConfigMap"):
            volumes.append({"name": "cdi-cert-vol", "configMap": {"name": body["certConfigMap"]}})
            mounts.append({"name": "cdi-cert-vol", "mountPath": "/certs"})
            env.append({"name": "IMPORTER_CERT_DIR", "value": "/certs"})
        for i, header in enumerate(body.get("extraHeaders") or [] if kind == "http" else []):
            env.append({"name": f"IMPORTER_EXTRA_HEADER_{i}", "value": header})
        for i, secret in enumerate(body.get("secretExtraHeaders") or [] if kind == "http" else []):
            volumes.append({"name": f"cdi-extra-headers-vol-{i}", "secret": {"secretName": secret}})
            mounts.append({"name": f"cdi-extra-headers-vol-{i}", "mountPath": f"/extraheaders/secret{i}"})
    elif "blank" in source:
        env.append({"name": "IMPORTER_SOURCE", "value": "none"})
    else:
        raise ValueError(f"source {sorted(source)} is not imported by the import controller")
    container = worker_container("importer", settings.importer_image, ["python3", "-m", "importer"],
                                 [*env, *METRICS_ENV], mounts=mounts, devices=devices, ports=METRICS_PORTS)
    return worker_pod(importer_pod_name(meta["name"]), meta["namespace"], container, volumes,
                      labels={"cdi.kubevirt.io": "importer", "prometheus.cdi.kubevirt.io": "true"},
                      annotations={ANN_CREATED_BY: meta["uid"]}, owner=pvc, placement=settings.worker_pod)


def worker_container(name: str, image: str, command: list[str], env: list[Obj], *, mounts: list[Obj] | None = None,
                     devices: list[Obj] | None = None, ports: list[Obj] | None = None) -> Obj:
    """A worker's container (importer, upload server, cloner) in the shape CDI gives its worker pods."""
    container: Obj = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "resources": copy.deepcopy(DEFAULT_RESOURCES),
    }
    if ports:
        container["ports"] = ports
    if mounts:
        container["volumeMounts"] = mounts
    if devices:
        container["volumeDevices"] = devices
    return container


def worker_pod(name: str, namespace: str, container: Obj, volumes: list[Obj], *, labels: dict[str, str],
               annotations: dict[str, str] | None = None, owner: Obj | None = None,
               placement: WorkerPodConfig | None = None) -> Obj:
    """A worker pod: one container, restarted OnFailure, ``LABEL_APP`` plus ``labels``, owned by ``owner``."""
    meta: Obj = {"name": name, "namespace": namespace, "labels": {**LABEL_APP, **labels}}
    if annotations:
        meta["annotations"] = annotations
    if owner is not None:
        meta["ownerReferences"] = [owner_ref(owner)]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": volumes,
            "securityContext": {"fsGroup": 107},
        },
    }
    return (placement or WorkerPodConfig()).apply(pod)
