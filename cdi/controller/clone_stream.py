"""The host-assisted clone stream, as CDI runs it: an upload server on the target, a cloner on the source.

The target claim is marked as an upload target, so the upload reconciler gives it its server pod,
Service and TLS Secret. Once that server is ready, a source pod (``cdi-clone-source-<target uid>``,
CDI's ``<uid>-source-pod``) runs in the source's namespace (a pod can use only claims of its own
namespace), mounts the source claim read-only and streams it, zstd-compressed, over mutual TLS: its
client certificate comes from the upload client signer, the server's is trusted through the upload
server signer. That certificate lives in a Secret of the same name beside the pod; both are labelled
with the target's uid and removed when the clone ends (an owner reference cannot cross namespaces).
"""

from __future__ import annotations

import json
from typing import Any

from cdi.controller.clone_pod import LABEL_COMPONENT, SOURCE_DEVICE, SOURCE_DIR, is_block
from cdi.controller.resources import (
    LABEL_APP,
    METRICS_ENV,
    METRICS_PORTS,
    WorkerPodConfig,
    child_name,
    worker_container,
    worker_pod,
)
from cdi.controller.upload_pod import SERVER_PORT
from cdi.controller.upload_tls import CLIENT_NAME, issue, secret_data

Obj = dict[str, Any]

LABEL_TARGET_UID = "cdi.kubevirt.io/clone.targetUID"
ANN_TARGET = "cdi.kubevirt.io/clone.target"  # "<namespace>/<name>" of the target DataVolume
ANN_NODE_PORTS = "cdi.kubevirt.io/local-ports"  # the local node's host ports of a pod's container ports


def source_pod_name(target_uid: str) -> str:
    return child_name("cdi-clone-source-", target_uid, 63)


def upload_url(server_pod: Obj) -> str | None:
    """Where the upload server pod listens: its address and port (the node's host port on the local node)."""
    status = server_pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return None
    port = SERVER_PORT
    ports = (server_pod["metadata"].get("annotations") or {}).get(ANN_NODE_PORTS)
    if ports:
        port = int(json.loads(ports).get(str(SERVER_PORT)) or SERVER_PORT)
    return f"https://{ip}:{port}/v1beta1/upload"


def build_source_secret(target: Obj, source: Obj, client_ca: tuple[bytes, bytes], server_ca_cert: bytes) -> Obj:
    cert, key = issue(*client_ca, CLIENT_NAME, client=True)
    uid = target["metadata"]["uid"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": source_pod_name(uid), "namespace": source["metadata"]["namespace"],
                         "labels": {**LABEL_APP, "cdi.kubevirt.io": LABEL_COMPONENT, LABEL_TARGET_UID: uid}},
            "data": secret_data(tls_crt=cert, tls_key=key, ca_crt=server_ca_cert)}


def build_source_pod(dv: Obj, target: Obj, source: Obj, *, image: str, url: str, target_size: int,
                     placement: WorkerPodConfig | None = None) -> Obj:
    uid = target["metadata"]["uid"]
    name = source_pod_name(uid)

    def from_secret(var: str, key: str) -> Obj:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}

    env: list[Obj] = [
        {"name": "CLONER_SOURCE", "value": SOURCE_DEVICE if is_block(source) else f"{SOURCE_DIR}/disk.img"},
        {"name": "UPLOAD_URL", "value": url},
        from_secret("CLIENT_CERT", "tls.crt"), from_secret("CLIENT_KEY", "tls.key"),
        from_secret("SERVER_CA", "ca.crt"),
        {"name": "CLONER_DIGEST", "value": "true"},
        {"name": "CLONER_DIGEST_SIZE", "value": str(target_size)},
        {"name": "OWNER_UID", "value": uid},
    ]
    if is_block(source):
        container = worker_container("cdi-clone-source", image, ["python3", "-m", "cloner"], [*env, *METRICS_ENV],
                                     devices=[{"name": "cdi-clone-source", "devicePath": SOURCE_DEVICE}],
                                     ports=METRICS_PORTS)
    else:
        container = worker_container("cdi-clone-source", image, ["python3", "-m", "cloner"], [*env, *METRICS_ENV],
                                     mounts=[{"name": "cdi-clone-source", "mountPath": SOURCE_DIR, "readOnly": True}],
                                     ports=METRICS_PORTS)
    meta = dv["metadata"]
    # No owner: the target lives in another namespace, where an owner reference cannot reach.
    return worker_pod(name, source["metadata"]["namespace"], container,
                      [{"name": "cdi-clone-source", "persistentVolumeClaim": {
                          "claimName": source["metadata"]["name"], "readOnly": True}}],
                      labels={"cdi.kubevirt.io": LABEL_COMPONENT, LABEL_TARGET_UID: uid},
                      annotations={ANN_TARGET: f"{meta['namespace']}/{meta['name']}"}, placement=placement)
