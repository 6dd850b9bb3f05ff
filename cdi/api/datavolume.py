"""`cdi.kubevirt.io/v1beta1` DataVolume: kind declaration and admission validation.

The rules follow CDI's validating webhook (pkg/apiserver/webhooks/datavolume-validate.go) in the
same order, but errors are worded the way kube-apiserver words field errors
(`spec.source.http.url: Invalid value: "ftp://x": ...`) because here validation runs inside the API
server rather than in a webhook. Differences from CDI, on purpose:

- checks that need other objects (the source PVC or DataSource exists, content types match, clone
  size) belong to the controllers and are not done at admission;
- `spec.source.http.checksum` (as upstream CDI): `<algorithm>:<hex digest>` with md5, sha1, sha256 or
  sha512, checked here at admission rather than when the importer starts.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from cdi.api.core import VOLUME_MODES
from cdi.api.dv_schema import datavolume_schema
from cdi.api.registry import Column, Obj, ResourceKind
from cdi.units import QuantityError, parse_quantity

GROUP = "cdi.kubevirt.io"
VERSION = "v1beta1"

SOURCE_TYPES = ("http", "s3", "gcs", "registry", "pvc", "snapshot", "upload", "blank", "imageio", "vddk")
# Sources whose size the controller can learn from the source, so spec.storage may omit a size.
SIZE_INFERRING_SOURCES = ("pvc", "snapshot")
CONTENT_TYPES = ("kubevirt", "archive")
ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce")
REGISTRY_SCHEMES = ("docker", "oci-archive")
PULL_METHODS = ("", "pod", "node")
# Spec fields a multi-stage (warm) import may change after creation, as CDI allows.
MULTISTAGE_MUTABLE = ("checkpoints", "finalCheckpoint")
CHECKSUM_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


def _q(value: object) -> str:
    """Quote a value the way field errors show it."""
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def invalid(path: str, value: object, detail: str) -> str:
    return f"{path}: Invalid value: {_q(value)}: {detail}"


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def unsupported(path: str, value: object, supported: tuple[str, ...]) -> str:
    values = ", ".join(f'"{s}"' for s in supported)
    return f"{path}: Unsupported value: {_q(value)}: supported values: {values}"


def _validate_size(resources: object, path: str, label: str, *, optional: bool) -> list[str]:
    requests = resources.get("requests") if isinstance(resources, dict) else None
    size = requests.get("storage") if isinstance(requests, dict) else None
    field = f"{path}.resources.requests.storage"
    if size is None:
        if optional:
            return []
        return [required(field, f"{label} size is missing")]
    try:
        if parse_quantity(size) <= 0:
            return [invalid(field, size, f"{label} size can't be equal or less than zero")]
    except QuantityError as e:
        return [invalid(field, size, str(e))]
    return []


def _validate_target(spec: Obj, infers_size: bool) -> list[str]:
    pvc, storage = spec.get("pvc"), spec.get("storage")
    if pvc is None and storage is None:
        return [required("spec.pvc", "Missing Data volume PVC: one of spec.pvc or spec.storage is required")]
    if pvc is not None and storage is not None:
        return [
            forbidden(
                "spec.storage", "Duplicate storage definition, both target storage and target pvc defined"
            )
        ]
    if pvc is not None:
        if not isinstance(pvc, dict):
            return [invalid("spec.pvc", pvc, "must be an object")]
        errs = _validate_size(pvc.get("resources"), "spec.pvc", "PVC", optional=False)
        if errs:
            return errs
        modes = pvc.get("accessModes") or []
        if not modes:
            return [required("spec.pvc.accessModes", "at least 1 access mode is required")]
        if len(modes) > 1:
            return [invalid("spec.pvc.accessModes", ", ".join(map(str, modes)), "PVC multiple accessModes")]
        if modes[0] not in ACCESS_MODES:
            return [unsupported("spec.pvc.accessModes[0]", modes[0], ACCESS_MODES)]
        return _validate_volume_mode(pvc, "spec.pvc")
    if not isinstance(storage, dict):
        return [invalid("spec.storage", storage, "must be an object")]
    errs = _validate_size(storage.get("resources"), "spec.storage", "Storage", optional=infers_size)
    if errs:
        return errs
    for i, mode in enumerate(storage.get("accessModes") or []):
        if mode not in ACCESS_MODES:
            return [unsupported(f"spec.storage.accessModes[{i}]", mode, ACCESS_MODES)]
    return _validate_volume_mode(storage, "spec.storage")


def _validate_volume_mode(spec: Obj, path: str) -> list[str]:
    """kube's words for a volumeMode it does not know (no PVC could ever be made for the DataVolume)."""
    mode = spec.get("volumeMode")
    if mode is None or mode in VOLUME_MODES:
        return []
    return [unsupported(f"{path}.volumeMode", mode, VOLUME_MODES)]


# What Go's url.Parse refuses anywhere in a URL (CDI validates with it), and the space, which it refuses in
# a host and which no HTTP client sends unescaped: admitted, such a URL would fail every import attempt.
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _url_characters(url: str, path: str) -> list[str]:
    if _URL_CONTROL.search(url):
        return [invalid(path, url, f"Invalid source URL: parse {json.dumps(url)}: "
                                   "net/url: invalid control character in URL")]
    if " " in url:
        return [invalid(path, url, "Invalid source URL: it contains a space; write it as %20")]
    return []


def _validate_url(url: object, path: str) -> list[str]:
    if not url:
        return [required(path, "source URL is empty")]
    if not isinstance(url, str):
        return [invalid(path, url, "Invalid source URL")]
    if errs := _url_characters(url, path):
        return errs
    try:
        parts = urlsplit(url)
    except ValueError:
        return [invalid(path, url, f"Invalid source URL: {url}")]
    if parts.scheme not in ("http", "https"):
        return [invalid(path, url, f"Invalid source URL scheme: {url}")]
    if not parts.netloc:
        return [invalid(path, url, f"Invalid source URL: {url}")]
    return []


def _validate_source_ref(ref: object) -> list[str]:
    if not isinstance(ref, dict):
        return [invalid("spec.sourceRef", ref, "must be an object")]
    kind = ref.get("kind")
    if not kind:
        return [required("spec.sourceRef.kind", "Missing sourceRef kind")]
    if kind != "DataSource":
        return [unsupported("spec.sourceRef.kind", kind, ("DataSource",))]
    if not ref.get("name"):
        return [required("spec.sourceRef.name", "Missing sourceRef name")]
    return []


def _validate_registry(reg: Obj, content_type: str) -> list[str]:
    if content_type and content_type != "kubevirt":
        return [
            invalid("spec.contentType", content_type, "ContentType must be kubevirt when Source is Registry")
        ]
    url, stream = reg.get("url"), reg.get("imageStream")
    if bool(url) == bool(stream):
        return [
            invalid(
                "spec.source.registry",
                "url, imageStream" if url else "",
                "source registry should have either URL or ImageStream",
            )
        ]
    if isinstance(url, str) and (errs := _url_characters(url, "spec.source.registry.url")):
        return errs
    if url:
        scheme = urlsplit(str(url)).scheme if "://" in str(url) else ""
        if scheme not in REGISTRY_SCHEMES:
            return [invalid("spec.source.registry.url", url, f"Illegal registry source URL scheme {url}")]
    method = reg.get("pullMethod") or ""
    if method not in PULL_METHODS:
        return [unsupported("spec.source.registry.pullMethod", method, PULL_METHODS[1:])]
    return []


def _validate_source(source: object, content_type: str) -> list[str]:
    if not isinstance(source, dict):
        return [invalid("spec.source", source, "must be an object")]
    unknown = [k for k in source if k not in SOURCE_TYPES]
    if unknown:
        return [unsupported(f"spec.source.{unknown[0]}", unknown[0], SOURCE_TYPES)]
    present = [k for k in SOURCE_TYPES if source.get(k) is not None]
    if not present:
        return [required("spec.source", "Missing Data volume source")]
    if len(present) > 1:
        return [invalid("spec.source", ", ".join(present), "Multiple Data volume sources")]
    stype = present[0]
    body = source[stype]
    if not isinstance(body, dict):
        return [invalid(f"spec.source.{stype}", body, "must be an object")]
    if stype in ("http", "s3", "imageio", "vddk"):
        errs = _validate_url(body.get("url"), f"spec.source.{stype}.url")
        if errs:
            return errs
    if content_type and content_type not in CONTENT_TYPES:
        return [unsupported("spec.contentType", content_type, CONTENT_TYPES)]
    if stype == "blank" and content_type == "archive":
        return [
            invalid(
                "spec.contentType", content_type, "SourceType cannot be blank and the contentType be archive"
            )
        ]
    if stype == "registry":
        return _validate_registry(body, content_type)
    needs = {
        "imageio": ("secretRef", "certConfigMap", "diskId"),
        "vddk": ("secretRef", "uuid", "backingFile", "thumbprint"),
        "pvc": ("namespace", "name"),
        "snapshot": ("namespace", "name"),
    }.get(stype, ())
    missing = [n for n in needs if not body.get(n)]
    if missing:
        return [required(f"spec.source.{stype}.{missing[0]}", f"source {stype} is not valid")]
    return []


def _validate_checksum(spec: Obj) -> list[str]:
    value = ((spec.get("source") or {}).get("http") or {}).get("checksum")
    if value is None:
        return []
    algo, _, digest = str(value).partition(":")
    if not isinstance(value, str) or algo not in CHECKSUM_LENGTHS:
        return [
            invalid(
                "spec.source.http.checksum",
                value,
                "must be <algorithm>:<hex digest> with algorithm one of " + ", ".join(CHECKSUM_LENGTHS),
            )
        ]
    if len(digest) != CHECKSUM_LENGTHS[algo] or not _HEX.match(digest):
        return [
            invalid(
                "spec.source.http.checksum",
                value,
                f"{algo} digest must be {CHECKSUM_LENGTHS[algo]} lowercase hex digits",
            )
        ]
    return []


def _spec_for_compare(spec: Obj) -> Obj:
    source = spec.get("source") or {}
    multistage = bool(spec.get("checkpoints")) and ("vddk" in source or "imageio" in source)
    if not multistage:
        return spec
    return {k: v for k, v in spec.items() if k not in MULTISTAGE_MUTABLE}


def validate_datavolume(obj: Obj, old: Obj | None) -> list[str]:
    """CDI's admission rules for a DataVolume; `old` is the stored object on update."""
    spec = obj.get("spec")
    if old is not None:
        if _spec_for_compare(spec or {}) != _spec_for_compare(old.get("spec") or {}):
            return [
                forbidden(
                    "spec",
                    "Cannot update DataVolume Spec: spec is immutable after creation "
                    "(only checkpoints of a multi-stage import may change)",
                )
            ]
        return []
    if not isinstance(spec, dict):
        return [required("spec")]
    source, ref = spec.get("source"), spec.get("sourceRef")
    if (source is None) == (ref is None):
        return [
            invalid(
                "spec.source",
                "source, sourceRef" if source is not None else "",
                "Data volume should have either Source or SourceRef",
            )
        ]
    infers_size = ref is not None or any(
        isinstance(source, dict) and source.get(s) is not None for s in SIZE_INFERRING_SOURCES
    )
    errs = _validate_target(spec, infers_size)
    if errs:
        return errs
    content_type = spec.get("contentType") or ""
    errs = _validate_source_ref(ref) if ref is not None else _validate_source(source, str(content_type))
    if errs:
        return errs
    if "preallocation" in spec and not isinstance(spec["preallocation"], bool):
        return [invalid("spec.preallocation", spec["preallocation"], "must be a boolean")]
    return _validate_checksum(spec)


DATAVOLUME = ResourceKind(
    group=GROUP,
    version=VERSION,
    kind="DataVolume",
    plural="datavolumes",
    singular="datavolume",
    short_names=("dv", "dvs"),
    categories=("all",),
    status_subresource=True,
    columns=(
        Column("Phase", "string", ".status.phase", description="The phase the data volume is in"),
        Column(
            "Progress",
            "string",
            ".status.progress",
            description="Transfer progress in percentage if known, N/A otherwise",
        ),
        Column(
            "Restarts",
            "integer",
            ".status.restartCount",
            description="The number of times the transfer has been restarted.",
        ),
    ),
    validate=validate_datavolume,
    schema=datavolume_schema(),
    description="DataVolume is an abstraction on top of PersistentVolumeClaims to allow easy population of "
    "those "
    "PersistentVolumeClaims with relation to VirtualMachines",
)
