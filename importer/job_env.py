"""The import job as the importer pod receives it: environment variables named as in CDI's importer
(IMPORTER_SOURCE http, s3, registry or none, IMPORTER_ENDPOINT, IMPORTER_CONTENTTYPE, IMPORTER_IMAGE_SIZE,
IMPORTER_ACCESS_KEY_ID, IMPORTER_SECRET_KEY, IMPORTER_CERT_DIR, INSECURE_TLS, IMPORTER_EXTRA_HEADER_*,
/extraheaders), plus our own: IMPORTER_CHECKSUM, IMPORTER_TARGET_PATH, IMPORTER_SCRATCH_DIR, IMPORTER_PROGRESS_FILE,
IMPORTER_SCRATCH_BESIDE_TARGET (default "true"; "false": a pod without a scratch mount, which ends
with CDI's "scratch space required" instead of putting scratch in its volume), IMPORTER_DEVICE_ZEROED,
and the network limits IMPORTER_SPEED_LIMIT (bytes/s, a quantity such as 16Ki),
IMPORTER_SPEED_TIME (seconds), IMPORTER_MAX_STALLED_RETRIES and IMPORTER_RETRIES (see ``cdi import
--help``). Paths default to CDI's mount points (/data/disk.img, /dev/cdi-block-volume,
/certs, /extraheaders). On the local node a process cannot see mounts, so the node passes
CDI_VOLUME_MOUNTS, a JSON object {mountPath: hostPath}, and every in-pod path is translated through it.
INSECURE_TLS "true" skips TLS verification (for a registry: also plain http, as CDI's insecureRegistries);
IMPORTER_REGISTRY_IMPORT_METHOD (pod or node) pulls the same way on one machine;
IMPORTER_REGISTRY_IMAGE_ARCHITECTURE picks another platform than this machine's (source.registry.platform).
IMPORTER_SOURCE "none" (CDI's blank image) creates an empty sparse volume. An IMPORTER_IMAGE_SIZE larger than the
volume's capacity (CDI_VOLUME_CAPACITY, {mountPath or devicePath: bytes}) is refused before anything is written.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from cdi.podenv import MountsError, PathMap
from cdi.units import parse_size
from importer.errors import PermanentError
from importer.http_options import HttpOptions, parse_header
from importer.pipeline import ImportJob

DATA_DIR = "/data"
BLOCK_PATH = "/dev/cdi-block-volume"
EXTRA_HEADERS_DIR = "/extraheaders"


def job_from_env(env: Mapping[str, str]) -> ImportJob:
    source = env.get("IMPORTER_SOURCE", "http")
    if source not in ("http", "s3", "registry", "file", "none"):
        raise PermanentError(f"IMPORTER_SOURCE {source!r} is not supported by this importer")
    endpoint = env.get("IMPORTER_ENDPOINT", "")
    if not endpoint and source != "none":
        raise PermanentError("IMPORTER_ENDPOINT is empty: the job has no source URL")
    if source in ("http", "s3") and urlsplit(endpoint).scheme.lower() not in ("http", "https"):
        raise PermanentError(f"IMPORTER_ENDPOINT {endpoint!r} is not an http(s) URL")
    if source == "registry" and not endpoint.startswith("docker://"):
        raise PermanentError(f"IMPORTER_ENDPOINT {endpoint!r} is not a docker:// image reference")
    try:
        paths = PathMap(env)
        if source == "file":
            endpoint = paths(endpoint.removeprefix("file://"))
    except MountsError as e:
        raise PermanentError(str(e)) from e
    content_type = env.get("IMPORTER_CONTENTTYPE", "kubevirt") or "kubevirt"
    pod_target = env.get("IMPORTER_TARGET_PATH")
    if not pod_target:
        if content_type == "archive":
            pod_target = DATA_DIR
        else:
            pod_target = BLOCK_PATH if paths.exists(BLOCK_PATH) else os.path.join(DATA_DIR, "disk.img")
    target = paths(pod_target)
    size_text = env.get("IMPORTER_IMAGE_SIZE", "")
    try:
        size = parse_size(size_text) if size_text else None
    except ValueError as e:
        raise PermanentError(f"invalid IMPORTER_IMAGE_SIZE {size_text!r}: {e}") from e
    if size is not None:
        capacity = volume_capacity(env, pod_target)
        if capacity is not None and size > capacity:
            raise PermanentError(f"image size {size} is larger than the volume's capacity {capacity}")
    headers = [parse_header(v) for k, v in sorted(env.items()) if k.startswith("IMPORTER_EXTRA_HEADER_")]
    seen: set[str] = set()
    for headers_dir in paths.below(env.get("IMPORTER_EXTRA_HEADERS_DIR", EXTRA_HEADERS_DIR)):
        for path in sorted(glob.glob(os.path.join(headers_dir, "*", "*")) + glob.glob(os.path.join(headers_dir, "*"))):
            if os.path.isfile(path) and not os.path.basename(path).startswith(".") and path not in seen:
                seen.add(path)
                with open(path) as f:
                    headers.append(parse_header(f.read().strip()))
    ca_file = None
    cert_dir = env.get("IMPORTER_CERT_DIR")
    if cert_dir:
        cert_dir = paths(cert_dir)
        certs = sorted(p for p in glob.glob(os.path.join(cert_dir, "*")) if os.path.isfile(p))
        if not certs:
            raise PermanentError(f"certConfigMap mounted at {cert_dir} holds no certificate file")
        ca_file = _bundle(certs, os.getcwd())
    http = HttpOptions(
        user=env.get("IMPORTER_ACCESS_KEY_ID") or None,
        password=env.get("IMPORTER_SECRET_KEY") or None,
        ca_file=ca_file,
        insecure=env.get("INSECURE_TLS", "").lower() == "true",
        headers=headers,
        s3=source == "s3",
        architecture=env.get("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE") or None,
    )
    try:
        if env.get("IMPORTER_SPEED_LIMIT"):
            http.speed_limit = parse_size(env["IMPORTER_SPEED_LIMIT"])
        if env.get("IMPORTER_SPEED_TIME"):
            http.speed_time = float(env["IMPORTER_SPEED_TIME"])
        if env.get("IMPORTER_MAX_STALLED_RETRIES"):
            http.max_stalled_retries = int(env["IMPORTER_MAX_STALLED_RETRIES"])
        if env.get("IMPORTER_RETRIES"):
            http.retries = int(env["IMPORTER_RETRIES"])
    except ValueError as e:
        raise PermanentError(f"invalid network limit in the importer environment: {e}") from e
    if http.speed_time <= 0 or http.max_stalled_retries < 0 or http.retries < 0 or http.speed_limit < 0:
        raise PermanentError("IMPORTER_SPEED_TIME must be positive; IMPORTER_SPEED_LIMIT, "
                             "IMPORTER_MAX_STALLED_RETRIES and IMPORTER_RETRIES must not be negative")
    scratch = env.get("IMPORTER_SCRATCH_DIR")
    return ImportJob(
        source=endpoint if source != "none" else "",
        target=target,
        content_type=content_type,
        size=size,
        http=http,
        checksum=env.get("IMPORTER_CHECKSUM") or None,
        scratch_dir=paths(scratch) if scratch else None,
        scratch_beside_target=env.get("IMPORTER_SCRATCH_BESIDE_TARGET", "true").lower() != "false",
        device_zeroed=env.get("IMPORTER_DEVICE_ZEROED", "").lower() == "true",
    )


def volume_capacity(env: Mapping[str, str], pod_path: str) -> int | None:
    """The capacity of the volume holding ``pod_path`` (CDI_VOLUME_CAPACITY, keyed by mountPath or
    devicePath); None when the node gave none."""
    try:
        capacities = json.loads(env.get("CDI_VOLUME_CAPACITY") or "{}")
    except ValueError as e:
        raise PermanentError(f"CDI_VOLUME_CAPACITY is not JSON: {e}") from e
    best: tuple[int, int] | None = None
    for mount, value in capacities.items():
        mount = mount.rstrip("/") or "/"
        inside = pod_path == mount or pod_path.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > best[0]):
            best = (len(mount), int(value))
    return best[1] if best is not None else None


def _bundle(certs: list[str], workdir: str) -> str:
    """One CA file from every certificate in the mounted ConfigMap."""
    if len(certs) == 1:
        return certs[0]
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "ca-bundle.pem")
    with open(path, "w") as out:
        for cert in certs:
            with open(cert) as f:
                out.write(f.read().rstrip() + "\n")
    return path
