"""The objects an upload needs besides its PVC, as pure functions: server pod, Service and TLS Secret.

Shapes follow CDI's upload controller: the pod ``cdi-upload-<pvc>`` (label ``service``, container
``cdi-upload-server`` listening on 8443) and a Service of the same name in front of it (port 443 to
8443), both owned by the PVC; the server's certificate, key and the client CA come from the Secret of
the same name, through CDI's variables TLS_CERT, TLS_KEY and CLIENT_CERT, with CLIENT_NAME the common
name the proxy's certificate must carry. The volume is mounted as for an import.
"""

from __future__ import annotations

from typing import Any

from cdi.controller.resources import (
    LABEL_APP,
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    WorkerPodConfig,
    child_name,
    owner_ref,
    worker_container,
    worker_pod,
)
from cdi.controller.upload_tls import CLIENT_NAME, issue, secret_data

Obj = dict[str, Any]

SERVER_PORT = 8443
SERVICE_PORT = 443
ANN_UPLOAD_TARGET = "cdi.kubevirt.io/storage.upload.target"
ANN_POD_READY = "cdi.kubevirt.io/storage.pod.ready"
ANN_CONTENT_TYPE = "cdi.kubevirt.io/storage.contentType"
LABEL_COMPONENT = "cdi-upload-server"
UPLOAD_PROGRESS_INTERVAL = 1.0


def upload_name(pvc_name: str) -> str:
    return child_name("cdi-upload-", pvc_name, 63)  # a Service name is a DNS label


def service_dns(pvc: Obj) -> tuple[str, ...]:
    name, ns = upload_name(pvc["metadata"]["name"]), pvc["metadata"]["namespace"]
    return name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"


def build_secret(pvc: Obj, server_ca: tuple[bytes, bytes], client_ca_cert: bytes) -> Obj:
    cert, key = issue(*server_ca, upload_name(pvc["metadata"]["name"]), dns=service_dns(pvc), ips=("127.0.0.1",))
    meta = pvc["metadata"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": upload_name(meta["name"]), "namespace": meta["namespace"],
                         "labels": {**LABEL_APP, "cdi.kubevirt.io": LABEL_COMPONENT},
                         "ownerReferences": [owner_ref(pvc)]},
            "data": secret_data(tls_crt=cert, tls_key=key, ca_crt=client_ca_cert)}


def build_service(pvc: Obj) -> Obj:
    meta = pvc["metadata"]
    name = upload_name(meta["name"])
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {**LABEL_APP, "cdi.kubevirt.io": LABEL_COMPONENT},
                         "ownerReferences": [owner_ref(pvc)]},
            "spec": {"selector": {"service": name},
                     "ports": [{"name": "uploadserver", "protocol": "TCP", "port": SERVICE_PORT,
                                "targetPort": SERVER_PORT}]}}




def build_pod(pvc: Obj, *, image: str, image_size: int, filesystem_overhead: float,
              resume_interval: int = 64 << 20, placement: WorkerPodConfig | None = None) -> Obj:
    meta = pvc["metadata"]
    name = upload_name(meta["name"])
    block = pvc["spec"].get("volumeMode") == "Block"
    content_type = (meta.get("annotations") or {}).get(ANN_CONTENT_TYPE) or "kubevirt"
    destination = "/data" if content_type == "archive" else "/dev/cdi-block-volume" if block else "/data/disk.img"

    def from_secret(var: str, key: str) -> Obj:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}

    env: list[Obj] = [
        from_secret("TLS_KEY", "tls.key"), from_secret("TLS_CERT", "tls.crt"), from_secret("CLIENT_CERT", "ca.crt"),
        {"name": "CLIENT_NAME", "value": CLIENT_NAME},
        {"name": "DESTINATION", "value": destination},
        {"name": "UPLOAD_IMAGE_SIZE", "value": str(image_size)},
        {"name": "UPLOAD_CONTENT_TYPE", "value": content_type},
        {"name": "FILESYSTEM_OVERHEAD", "value": str(filesystem_overhead)},
        {"name": "CDI_RESUME_INTERVAL", "value": str(resume_interval)},
        {"name": "UPLOAD_SCRATCH_DIR", "value": SCRATCH_MOUNT},
    ]
    volume = [{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}] if block else \
        [{"name": "cdi-data-vol", "mountPath": "/data"}]
    # The server's own scratch (a Block volume's resume point, the spool of a qcow2 whose tables come
    # late, the bounded file a vmdk/vdi/vhd(x) is converted from), named and mounted as an importer's
    # scratch claim but an emptyDir: it outlives a restart of the server's container (a resume continues)
    # and goes with the pod. An upload cannot stop half-way to be given a claim: its client is sending.
    scratch = [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT}]
    container = worker_container(
        "cdi-upload-server", image, ["python3", "-m", "uploadproxy.server"], env,
        ports=[{"name": "uploadserver", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        devices=volume if block else None, mounts=scratch if block else volume + scratch)
    return worker_pod(name, meta["namespace"], container,
                      [{"name": "cdi-data-vol", "persistentVolumeClaim": {"claimName": meta["name"]}},
                       {"name": SCRATCH_VOLUME, "emptyDir": {}}],
                      labels={"cdi.kubevirt.io": LABEL_COMPONENT, "service": name}, owner=pvc, placement=placement)
