"""What a container sees: its command, its environment and its volumes, resolved on the host.

A process cannot see mounts, so volumes are directories and files on the host, and the container
learns where they are from its environment (the node's env contract):

``CDI_VOLUME_MOUNTS``   JSON ``{mountPath or devicePath: host path}`` for every ``volumeMounts`` entry
                        (``subPath`` appended) and every ``volumeDevices`` entry (the Block volume's
                        file or device).
``CDI_VOLUME_CAPACITY`` JSON ``{mountPath or devicePath: bytes}`` for PersistentVolumeClaim volumes.
``TERMINATION_MESSAGE_PATH`` host file standing for the container's ``terminationMessagePath``.
``HOME``                the pod's working directory (unless the pod's env sets it).

A pod that names a ``serviceAccountName`` (and does not set ``automountServiceAccountToken: false``)
gets what kubelet projects for it: a directory with ``token`` (a TokenRequest bound to the pod, so
it dies with it), ``ca.crt`` and ``namespace``, mounted at kube's
``/var/run/secrets/kubernetes.io/serviceaccount`` in ``CDI_VOLUME_MOUNTS``, and
``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` naming the API server. The token is not
refreshed: it lasts an hour (kube's 3607 s), longer than the node's worker pods run.

Errors a kubelet reports as ``CreateContainerConfigError`` raise ``ConfigError`` with kubelet's words;
volumes that cannot be set up raise ``MountError`` (the pod stays ``ContainerCreating``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cdi.kube import CONFIGMAP, PVC, SECRET, ApiError, Client, Kind, NotFound, Obj
from cdi.node.claims import claim_path
from cdi.units import QuantityError, quantity_bytes

LOCAL_PATH = "cdi.kubevirt.io/local-path"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_DIR = "kube-api-access"  # under the pod's volumes directory
TOKEN_SECONDS = 3607  # what kube's ServiceAccount admission asks kubelet to request
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(Exception):
    """The container cannot be configured (kubelet's CreateContainerConfigError)."""


class MountError(Exception):
    """A volume cannot be set up (kubelet's FailedMount)."""


@dataclass
class PodVolumes:
    host_paths: dict[str, Path] = field(default_factory=dict)  # volume name -> host path
    capacities: dict[str, int] = field(default_factory=dict)  # PVC volume name -> bytes
    service_account: Path | None = None  # the projected token, ca.crt and namespace, if any
    api_server: str = ""  # the API server's URL, for KUBERNETES_SERVICE_HOST/PORT


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, ``$$`` escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def _read(client: Client, kind: Kind, namespace: str, name: str) -> Obj | None:
    try:
        return client.get(kind, namespace, name)
    except NotFound:
        return None


def _data(obj: Obj, kind: Kind) -> dict[str, bytes]:
    """The decoded key/value pairs of a Secret or ConfigMap."""
    out: dict[str, bytes] = {}
    if kind is SECRET:
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v or "")
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    else:
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v or "")
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
    return out


class _Sources:
    """Secrets and ConfigMaps of one namespace, each read once per resolution."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def get(self, kind: Kind, name: str) -> dict[str, bytes] | None:
        key = (kind.kind, name)
        if key not in self._cache:
            obj = _read(self.client, kind, self.namespace, name)
            self._cache[key] = _data(obj, kind) if obj is not None else None
        return self._cache[key]

    def key(self, kind: Kind, ref: Obj) -> str | None:
        name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
        data = self.get(kind, name)
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind.kind.lower()} "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind.kind} {self.namespace}/{name}")
        return data[key].decode(errors="replace")


def _field(pod: Obj, path: str, node_name: str) -> str:
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": node_name, "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1", "status.podIPs": "127.0.0.1", "status.hostIPs": "127.0.0.1",
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


# A container's environment reaches a host process here, not a program inside an image: variables that
# make the dynamic loader, the interpreter or a library load code or files of the user's choosing
# (LD_PRELOAD, PYTHONPATH, OPENSSL_CONF, ...) would run the user's code as the node. They are dropped.
_UNSAFE_PREFIXES = ("LD_", "PYTHON", "OPENSSL_", "SSL_", "GCONV", "GLIBC_", "MALLOC_", "DYLD_", "NODE_", "PERL",
                    "RUBY", "QEMU_", "XDG_", "GIO_", "GTK_", "LIBGUESTFS", "NBDKIT_", "BASH_FUNC_")
_UNSAFE_NAMES = {"PATH", "HOME", "BASH_ENV", "ENV", "IFS", "CDPATH", "NLSPATH", "LOCPATH", "HOSTALIASES",
                 "RES_OPTIONS", "LOCALDOMAIN", "TZDIR", "TMPDIR", "SHELLOPTS", "PS4", "CURL_CA_BUNDLE",
                 "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy", "CDI_VOLUME_MOUNTS", "CDI_VOLUME_CAPACITY",
                 "TERMINATION_MESSAGE_PATH"}


def host_safe(name: str) -> bool:
    """Whether a container may set ``name`` in the environment of its host process."""
    if name == "PYTHONUNBUFFERED":
        return True
    return name not in _UNSAFE_NAMES and not name.startswith(_UNSAFE_PREFIXES)


def container_env(client: Client, pod: Obj, container: Obj, *, node_name: str, volumes: PodVolumes,
                  workdir: Path, termination_file: Path, ignored: list[str] | None = None) -> dict[str, str]:
    """The process environment of ``container``: the node's base, envFrom, env, then the env contract.

    Variables a host process must not take from a pod (``host_safe``) are left out and their names
    appended to ``ignored``; only those the pod set (env, envFrom): the node's own base variables are no
    mistake of the pod's and are not reported."""
    ignored = [] if ignored is None else ignored
    meta = pod["metadata"]
    sources = _Sources(client, meta["namespace"])
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                           "HOSTNAME": meta["name"], "PYTHONUNBUFFERED": "1"}
    for name in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    base = dict(env)
    pod_set: set[str] = set()
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, ref in ((SECRET, src.get("secretRef")), (CONFIGMAP, src.get("configMapRef"))):
            if ref is None:
                continue
            data = sources.get(kind, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.kind.lower()} "{ref.get("name", "")}" not found')
            env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
            pod_set.update(prefix + k for k in data)
    for var in container.get("env") or []:
        value: str | None
        if "valueFrom" in var:
            vf = var["valueFrom"] or {}
            if "secretKeyRef" in vf:
                value = sources.key(SECRET, vf["secretKeyRef"])
            elif "configMapKeyRef" in vf:
                value = sources.key(CONFIGMAP, vf["configMapKeyRef"])
            elif "fieldRef" in vf:
                value = _field(pod, vf["fieldRef"].get("fieldPath", ""), node_name)
            else:
                raise ConfigError(f"env {var.get('name')}: unsupported valueFrom {sorted(vf)}")
        else:
            value = expand(str(var.get("value", "")), env)
        if value is not None:
            env[var["name"]] = value
            pod_set.add(var["name"])
    for name in [n for n in env if not host_safe(n)]:
        del env[name]
        if name in pod_set:
            ignored.append(name)
        if name in base:
            env[name] = base[name]  # the node's own value (its TMPDIR) stands, not the pod's
    env["HOME"] = str(workdir)
    env["PATH"] = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if volumes.service_account is not None and volumes.api_server:
        url = urlsplit(volumes.api_server)
        env["KUBERNETES_SERVICE_HOST"] = url.hostname or "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(url.port or 443)
    mounts, capacity = volume_contract(container, volumes)
    env["CDI_VOLUME_MOUNTS"] = json.dumps(mounts, sort_keys=True)
    env["CDI_VOLUME_CAPACITY"] = json.dumps(capacity, sort_keys=True)
    env["TERMINATION_MESSAGE_PATH"] = str(termination_file)
    return env


def volume_contract(container: Obj, volumes: PodVolumes) -> tuple[dict[str, str], dict[str, int]]:
    """CDI_VOLUME_MOUNTS and CDI_VOLUME_CAPACITY of one container."""
    mounts: dict[str, str] = {}
    capacity: dict[str, int] = {}
    entries = [(m, m.get("mountPath", "")) for m in container.get("volumeMounts") or []]
    entries += [(d, d.get("devicePath", "")) for d in container.get("volumeDevices") or []]
    for entry, target in entries:
        name = entry.get("name", "")
        if name not in volumes.host_paths:
            raise ConfigError(f"volume {name!r} of {target} is not a volume of the pod")
        host = volumes.host_paths[name]
        if entry.get("subPath"):
            host = _sub_path(host, str(entry["subPath"]), target)
        mounts[target] = str(host)
        if name in volumes.capacities:
            capacity[target] = volumes.capacities[name]
    if volumes.service_account is not None:
        mounts.setdefault(SERVICE_ACCOUNT_MOUNT, str(volumes.service_account))
    return mounts, capacity


def _sub_path(root: Path, sub: str, target: str) -> Path:
    """``root/sub`` for a volumeMount's subPath, which must stay inside the volume (as kubelet checks)."""
    rel = Path(sub)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"subPath {sub!r} of {target} must be a relative path without '..'")
    host = root / rel
    if root.is_dir():
        host.mkdir(parents=True, exist_ok=True)
    real_root, real = os.path.realpath(root), os.path.realpath(host)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise ConfigError(f"subPath {sub!r} of {target} leads outside its volume")
    return host


def _write_items(target: Path, data: dict[str, bytes], spec: Obj, default_mode: int, what: str) -> None:
    items = spec.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    mode = int(spec.get("defaultMode", default_mode))
    target.mkdir(parents=True, exist_ok=True)
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if spec.get("optional"):
                continue
            raise MountError(f"configmap references non-existent config key: {key}" if what == "configmap"
                             else f"references non-existent secret key: {key}")
        rel = Path(item.get("path") or key)
        if rel.is_absolute() or ".." in rel.parts:
            raise MountError(f"{what} item path {rel} must be relative and may not contain '..'")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data[key])
        os.chmod(path, int(item.get("mode", mode)))


def prepare_volumes(client: Client, pod: Obj, volumes_dir: Path, *, claims_root: Path) -> PodVolumes:
    """Resolve every volume of the pod to a host path, writing Secret/ConfigMap files and emptyDirs.

    ``volumes_dir`` is the pod's own directory for them; ``claims_root`` the node's volumes directory."""
    namespace = pod["metadata"]["namespace"]
    sources = _Sources(client, namespace)
    out = PodVolumes()
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol.get("name", "")
        target = volumes_dir / name
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"].get("claimName", "")
            pvc = _read(client, PVC, namespace, claim)
            path = claim_path(claims_root, pvc) if pvc is not None else None
            if pvc is None or path is None:
                raise MountError(f'persistentvolumeclaim "{claim}" is not bound to a local volume')
            out.host_paths[name] = path
            size = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
            try:
                out.capacities[name] = quantity_bytes(size) if size is not None else 0
            except QuantityError as e:
                raise MountError(f"persistentvolumeclaim {claim}: bad capacity {size!r}") from e
        elif "secret" in vol or "configMap" in vol:
            kind, spec = (SECRET, vol["secret"]) if "secret" in vol else (CONFIGMAP, vol["configMap"])
            ref = spec.get("secretName") if kind is SECRET else spec.get("name")
            data = sources.get(kind, ref or "")
            if data is None and not spec.get("optional"):
                raise MountError(f'{kind.kind.lower()} "{ref}" not found')
            if target.exists():
                shutil.rmtree(target)
            _write_items(target, data or {}, spec, 0o600 if kind is SECRET else 0o644, kind.kind.lower())
            out.host_paths[name] = target
        elif "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            out.host_paths[name] = target
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise MountError(f"volume {name}: unsupported volume type {kinds} on the local node")
    out.service_account = _project_service_account(client, pod, volumes_dir / SERVICE_ACCOUNT_DIR)
    out.api_server = client.server
    return out


def _project_service_account(client: Client, pod: Obj, target: Path) -> Path | None:
    """Write the pod's ServiceAccount token, the API's CA and the namespace, as kubelet projects them."""
    spec = pod.get("spec") or {}
    account = spec.get("serviceAccountName")
    if not account or spec.get("automountServiceAccountToken") is False:
        return None
    namespace = pod["metadata"]["namespace"]
    try:
        answer = client.request_token(namespace, account, seconds=TOKEN_SECONDS, pod=pod)
    except ApiError as e:
        raise MountError(f'failed to fetch token for serviceaccount "{account}": {e}') from e
    files = {"token": str((answer.get("status") or {}).get("token") or "").encode(), "namespace": namespace.encode(),
             "ca.crt": client.server_ca() or b""}
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = target / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return target


def grace_period(pod: Obj | None) -> float:
    value: Any = ((pod or {}).get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(value) if value is not None else 30.0
