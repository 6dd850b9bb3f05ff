"""The PVC and importer pod the DataVolume controller creates, as pure functions."""

from __future__ import annotations

import json

import pytest

from cdi.controller.datavolume import latest_progress, termination
from cdi.controller.resources import ControllerSettings, build_importer_pod, build_pvc, image_size
from cdi.units import parse_size

SETTINGS = ControllerSettings()


def dv(spec: dict) -> dict:
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u-1"}, "spec": spec}


def bound(pvc: dict) -> dict:
    pvc["metadata"]["uid"] = "p-1"
    pvc["status"] = {"phase": "Bound", "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]}}
    return pvc


def test_storage_api_adds_filesystem_overhead_and_keeps_image_size() -> None:
    d = dv({"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}})
    pvc = build_pvc(d, SETTINGS)
    size = parse_size(pvc["spec"]["resources"]["requests"]["storage"])
    assert size >= (1 << 30) / 0.94 and size % (1 << 20) == 0
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["ownerReferences"][0] == {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                                     "name": "d", "uid": "u-1", "controller": True,
                                                     "blockOwnerDeletion": True}
    assert image_size(d, bound(pvc), SETTINGS) == 1 << 30


def test_pvc_api_keeps_size_and_image_gets_usable_space() -> None:
    d = dv({"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteMany"],
                                              "resources": {"requests": {"storage": "1Gi"}}}})
    pvc = build_pvc(d, SETTINGS)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert image_size(d, bound(pvc), SETTINGS) == int((1 << 30) * 0.94) // 512 * 512


def test_block_volume_has_no_overhead_and_a_device() -> None:
    d = dv({"source": {"http": {"url": "http://h/x"}},
            "storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "2Gi"}}}})
    pvc = bound(build_pvc(d, SETTINGS))
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = build_importer_pod(d, pvc, SETTINGS)
    container = pod["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}]
    assert "volumeMounts" not in container


def test_importer_pod_carries_cdi_environment() -> None:
    source = {"http": {"url": "https://h/x.qcow2", "secretRef": "creds", "certConfigMap": "ca",
                       "extraHeaders": ["A: 1"], "secretExtraHeaders": ["hs"], "checksum": "md5:" + "0" * 32}}
    d = dv({"source": source, "storage": {"resources": {"requests": {"storage": "1Gi"}}}})
    pod = build_importer_pod(d, bound(build_pvc(d, SETTINGS)), SETTINGS)
    assert pod["metadata"]["name"] == "importer-d"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "PersistentVolumeClaim"
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["IMPORTER_ENDPOINT"]["value"] == "https://h/x.qcow2"
    assert env["IMPORTER_SOURCE"]["value"] == "http"
    assert env["IMPORTER_CHECKSUM"]["value"] == "md5:" + "0" * 32
    assert env["IMPORTER_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "accessKeyId"}}
    assert env["IMPORTER_SECRET_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "secretKey"}}
    assert env["IMPORTER_CERT_DIR"]["value"] == "/certs"
    assert env["IMPORTER_EXTRA_HEADER_0"]["value"] == "A: 1"
    assert env["IMPORTER_IMAGE_SIZE"]["value"] == str(1 << 30)
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts == {"/data", "/certs", "/extraheaders/secret0"}


def test_unsupported_source_is_refused() -> None:
    d = dv({"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}})
    with pytest.raises(ValueError, match="not imported by the import controller"):
        build_importer_pod(d, bound(build_pvc(d, SETTINGS)), SETTINGS)


def test_termination_and_progress_parsing() -> None:
    ok = {"ok": True, "result": {"digest": "sha256-1m:x"}}
    assert termination({"state": {"terminated": {"message": json.dumps(ok)}}}) == ok
    assert termination({"state": {"waiting": {}}, "lastState": {"terminated": {"message": "boom"}}}) == {
        "ok": False, "permanent": False, "reason": "Error", "message": "boom"}
    assert termination({"state": {"running": {}}}) is None
    text = 'INFO x\n{"progress": "12.50%", "phase": "transfer"}\nnoise\n{"progress": "40.00%"}\n'
    assert latest_progress(text) == "40.00%"
    assert latest_progress("no progress here") is None
