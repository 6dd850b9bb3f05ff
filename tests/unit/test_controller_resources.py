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


def test_registry_and_s3_pods_carry_cdi_environment() -> None:
    storage = {"resources": {"requests": {"storage": "1Gi"}}}
    reg = dv({"source": {"registry": {"url": "docker://reg.local:5000/disks/f:40", "secretRef": "rc",
                                      "certConfigMap": "ca", "pullMethod": "node"}}, "storage": storage})
    pod = build_importer_pod(reg, bound(build_pvc(reg, SETTINGS)), SETTINGS, insecure_registries=["reg.local:5000"])
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["IMPORTER_SOURCE"]["value"] == "registry"
    assert env["IMPORTER_ENDPOINT"]["value"] == "docker://reg.local:5000/disks/f:40"
    assert env["INSECURE_TLS"]["value"] == "true"
    assert env["IMPORTER_REGISTRY_IMPORT_METHOD"]["value"] == "node"
    assert env["IMPORTER_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "rc", "key": "accessKeyId"}}
    assert env["IMPORTER_CERT_DIR"]["value"] == "/certs"
    # another host (or the same host without its port) is not insecure
    for listed in (["reg.local"], ["other:5000"], []):
        pod = build_importer_pod(reg, bound(build_pvc(reg, SETTINGS)), SETTINGS, insecure_registries=listed)
        assert "INSECURE_TLS" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    s3 = dv({"source": {"s3": {"url": "https://b.s3.eu-west-1.amazonaws.com/k.qcow2", "secretRef": "sc"}},
             "storage": storage})
    env = {e["name"]: e for e in build_importer_pod(s3, bound(build_pvc(s3, SETTINGS)), SETTINGS)["spec"][
        "containers"][0]["env"]}
    assert env["IMPORTER_SOURCE"]["value"] == "s3"
    assert env["IMPORTER_SECRET_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "sc", "key": "secretKey"}}
    assert "INSECURE_TLS" not in env


def test_importer_job_for_registry_and_s3() -> None:
    from importer.errors import PermanentError
    from importer.job_env import job_from_env

    base = {"IMPORTER_IMAGE_SIZE": "1Mi", "IMPORTER_TARGET_PATH": "/tmp/x.img"}
    job = job_from_env({**base, "IMPORTER_SOURCE": "registry", "IMPORTER_ENDPOINT": "docker://h:1/r:t",
                        "INSECURE_TLS": "true", "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE": "arm64"})
    assert job.source == "docker://h:1/r:t" and job.http.insecure and job.http.architecture == "arm64"
    job = job_from_env({**base, "IMPORTER_SOURCE": "s3", "IMPORTER_ENDPOINT": "http://h:1/b/k",
                        "IMPORTER_ACCESS_KEY_ID": "AK", "IMPORTER_SECRET_KEY": "SK"})
    assert job.http.s3 and (job.http.user, job.http.password) == ("AK", "SK")
    with pytest.raises(PermanentError, match="not a docker:// image reference"):
        job_from_env({**base, "IMPORTER_SOURCE": "registry", "IMPORTER_ENDPOINT": "https://h/r"})
