"""The real kubectl against the embedded API server: apply, get, describe, edit, patch, wait, delete."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import yaml
from kubernetes import client

from cdi.apiserver.hooks import LogRequest
from tests.functional.apiserver_fixtures import KUBECTL, Cluster, cluster, datavolume

__all__ = ["cluster"]

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"

HTTP_STORAGE = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: import-http-storage
spec:
  source:
    http:
      url: "https://download.cirros-cloud.net/0.6.2/cirros-0.6.2-x86_64-disk.img"
  storage:
    resources:
      requests:
        storage: 500Mi
"""

HTTP_PVC = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: import-http-pvc
spec:
  source:
    http:
      url: "http://mirror.example.org/images/fedora.qcow2.xz"
  pvc:
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: 2Gi
"""

BLANK = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: blank-dv
spec:
  source:
    blank: {}
  storage:
    resources:
      requests:
        storage: 100Mi
"""

SECRET_AND_CERT = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: import-with-auth
spec:
  source:
    http:
      url: "https://private.example.com/disk.img"
      secretRef: endpoint-secret
      certConfigMap: tls-certs
  storage:
    resources:
      requests:
        storage: 1Gi
  contentType: kubevirt
"""


def set_status(c: Cluster, name: str, status: dict, namespace: str = "default") -> None:
    with c.api_client() as api:
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_api_resources_lists_datavolumes_and_core_kinds(cluster: Cluster) -> None:
    out = cluster.kubectl("api-resources").stdout
    assert out.splitlines()[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    by_name = {r[0]: r for r in rows(out)[1:]}
    assert by_name["datavolumes"] == [
        "datavolumes",
        "dv,dvs",
        "cdi.kubevirt.io/v1beta1",
        "true",
        "DataVolume",
    ]
    assert by_name["persistentvolumeclaims"][1:] == ["pvc", "v1", "true", "PersistentVolumeClaim"]
    assert by_name["namespaces"][-2:] == ["false", "Namespace"]


def test_apply_cdi_examples_and_get_shows_cdi_columns(cluster: Cluster) -> None:
    for manifest in (HTTP_STORAGE, HTTP_PVC, BLANK, SECRET_AND_CERT):
        out = cluster.apply(manifest).stdout
        name = yaml.safe_load(manifest)["metadata"]["name"]
        assert out.strip() == f"datavolume.cdi.kubevirt.io/{name} created"
    # Re-applying the same manifest changes nothing.
    assert cluster.apply(HTTP_PVC).stdout.strip() == "datavolume.cdi.kubevirt.io/import-http-pvc unchanged"
    set_status(
        cluster, "import-http-pvc", {"phase": "ImportInProgress", "progress": "45.20%", "restartCount": 1}
    )

    out = cluster.kubectl("get", "dv").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
    row = next(r for r in rows(out) if r[0] == "import-http-pvc")
    assert row[:4] == ["import-http-pvc", "ImportInProgress", "45.20%", "1"]
    assert row[4].endswith("s")
    assert {r[0] for r in rows(out)[1:]} >= {
        "import-http-storage",
        "import-http-pvc",
        "blank-dv",
        "import-with-auth",
    }

    wide = cluster.kubectl("get", "dvs", "import-http-pvc", "-o", "wide").stdout
    assert wide.splitlines()[0].split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]

    got = yaml.safe_load(cluster.kubectl("get", "datavolume", "import-with-auth", "-o", "yaml").stdout)
    assert got["spec"]["source"]["http"] == {
        "url": "https://private.example.com/disk.img",
        "secretRef": "endpoint-secret",
        "certConfigMap": "tls-certs",
    }
    assert got["metadata"]["generation"] == 1 and got["metadata"]["uid"]
    as_json = cluster.kubectl("get", "dv", "blank-dv", "-o", "json").stdout
    assert '"blank": {}' in as_json


def test_describe_shows_spec_status_and_events(cluster: Cluster) -> None:
    cluster.apply(datavolume("described"))
    set_status(cluster, "described", {"phase": "Succeeded", "progress": "100.0%"})
    uid = yaml.safe_load(cluster.kubectl("get", "dv", "described", "-o", "yaml").stdout)["metadata"]["uid"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "described.1"},
            "involvedObject": {
                "kind": "DataVolume",
                "name": "described",
                "namespace": "default",
                "uid": uid,
                "apiVersion": "cdi.kubevirt.io/v1beta1",
            },
            "reason": "ImportSucceeded",
            "message": "Import Successful",
            "type": "Normal",
        }
    )
    out = cluster.kubectl("describe", "dv", "described").stdout
    assert "Name:         described" in out
    assert "Phase:     Succeeded" in out or "Phase:  Succeeded" in out or "Succeeded" in out
    assert "URL:  https://images.example.com/fedora.qcow2" in out
    assert "ImportSucceeded" in out and "Import Successful" in out


def test_label_annotate_and_selectors(cluster: Cluster) -> None:
    cluster.apply(datavolume("labelled"))
    cluster.apply(datavolume("other"))
    assert "labeled" in cluster.kubectl("label", "dv", "labelled", "tier=gold", "env=test").stdout
    assert "annotated" in cluster.kubectl("annotate", "dv", "labelled", "owner=team-a").stdout
    names = cluster.kubectl("get", "dv", "-l", "tier=gold,env in (test,prod)", "-o", "name").stdout.split()
    assert names == ["datavolume.cdi.kubevirt.io/labelled"]
    names = cluster.kubectl("get", "dv", "-l", "!tier", "-o", "name").stdout.split()
    assert "datavolume.cdi.kubevirt.io/other" in names and "datavolume.cdi.kubevirt.io/labelled" not in names
    by_field = cluster.kubectl("get", "dv", "--field-selector", "metadata.name=other", "-o", "name").stdout
    assert by_field.split() == ["datavolume.cdi.kubevirt.io/other"]
    got = yaml.safe_load(cluster.kubectl("get", "dv", "labelled", "-o", "yaml").stdout)
    assert got["metadata"]["labels"] == {"tier": "gold", "env": "test"}
    assert got["metadata"]["annotations"]["owner"] == "team-a"
    assert got["metadata"]["generation"] == 1  # metadata changes do not bump generation
    cluster.kubectl("label", "dv", "labelled", "tier-")
    got = yaml.safe_load(cluster.kubectl("get", "dv", "labelled", "-o", "yaml").stdout)
    assert got["metadata"]["labels"] == {"env": "test"}


def test_edit_with_editor_script(cluster: Cluster, tmp_path) -> None:
    cluster.apply(datavolume("edited"))
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys, yaml\n"
        "path = sys.argv[-1]\n"
        "doc = yaml.safe_load(open(path))\n"
        "doc['metadata'].setdefault('labels', {})['edited'] = 'yes'\n"
        "open(path, 'w').write(yaml.safe_dump(doc))\n"
    )
    out = cluster.kubectl("edit", "dv", "edited", env={"EDITOR": f"{sys.executable} {editor}"}).stdout
    assert "datavolume.cdi.kubevirt.io/edited edited" in out
    got = yaml.safe_load(cluster.kubectl("get", "dv", "edited", "-o", "yaml").stdout)
    assert got["metadata"]["labels"] == {"edited": "yes"}


def test_patch_merge_and_json_and_immutable_spec(cluster: Cluster) -> None:
    cluster.apply(datavolume("patched"))
    cluster.kubectl("patch", "dv", "patched", "--type", "merge", "-p", '{"metadata":{"labels":{"a":"b"}}}')
    cluster.kubectl(
        "patch",
        "dv",
        "patched",
        "--type",
        "json",
        "-p",
        '[{"op":"add","path":"/metadata/annotations","value":{"x":"y"}}]',
    )
    got = yaml.safe_load(cluster.kubectl("get", "dv", "patched", "-o", "yaml").stdout)
    assert got["metadata"]["labels"] == {"a": "b"} and got["metadata"]["annotations"] == {"x": "y"}
    bad = cluster.kubectl(
        "patch",
        "dv",
        "patched",
        "--type",
        "merge",
        "-p",
        '{"spec":{"source":{"http":{"url":"https://elsewhere.example.com/x.img"}}}}',
        check=False,
    )
    assert bad.returncode != 0
    # kubectl rewords 422s from details.causes: 'The <Kind> "<name>" is invalid: <field>: <message>'.
    assert 'The DataVolume "patched" is invalid: spec: Forbidden: Cannot update DataVolume Spec' in bad.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {
                "source": {"http": {"url": "ftp://example.com/x.img"}},
                "storage": {"resources": {"requests": {"storage": "1Gi"}}},
            },
            'spec.source.http.url: Invalid value: "ftp://example.com/x.img": Invalid source URL scheme',
        ),
        (
            {
                "source": {"http": {"url": "https://x/y"}, "blank": {}},
                "storage": {"resources": {"requests": {"storage": "1Gi"}}},
            },
            'spec.source: Invalid value: "http, blank": Multiple Data volume sources',
        ),
        (
            {
                "source": {"registry": {"url": "https://quay.io/x"}},
                "storage": {"resources": {"requests": {"storage": "1Gi"}}},
            },
            "Illegal registry source URL scheme",
        ),
        (
            {
                "source": {"blank": {}},
                "contentType": "archive",
                "storage": {"resources": {"requests": {"storage": "1Gi"}}},
            },
            "SourceType cannot be blank and the contentType be archive",
        ),
        (
            {"source": {"http": {"url": "https://x/y"}}, "pvc": {"accessModes": ["ReadWriteOnce"]}},
            "spec.pvc.resources.requests.storage: Required value: PVC size is missing",
        ),
    ],
)
def test_bad_manifest_is_refused_with_reason(cluster: Cluster, spec: dict, expected: str) -> None:
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(datavolume("bad", **spec)), check=False)
    assert proc.returncode == 1
    assert (
        'The DataVolume "bad" is invalid' in proc.stderr
        or 'DataVolume.cdi.kubevirt.io "bad" is invalid' in proc.stderr
    )
    assert expected in proc.stderr
    assert cluster.kubectl("get", "dv", "bad", check=False).returncode == 1


def test_create_in_missing_namespace_is_not_found(cluster: Cluster) -> None:
    proc = cluster.kubectl(
        "apply", "-n", "nowhere", "-f", "-", input=yaml.safe_dump(datavolume("x")), check=False
    )
    assert proc.returncode == 1
    assert 'namespaces "nowhere" not found' in proc.stderr


def test_wait_for_ready_condition_set_through_status(cluster: Cluster) -> None:
    cluster.apply(datavolume("waited"))

    def make_ready() -> None:
        time.sleep(1.0)
        set_status(
            cluster,
            "waited",
            {
                "phase": "Succeeded",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Completed", "message": ""}],
            },
        )

    t = threading.Thread(target=make_ready)
    t.start()
    started = time.monotonic()
    out = cluster.kubectl("wait", "--for=condition=Ready", "dv/waited", "--timeout=20s").stdout
    t.join()
    assert "datavolume.cdi.kubevirt.io/waited condition met" in out
    assert time.monotonic() - started < 10


def test_get_watch_sees_phase_change(cluster: Cluster) -> None:
    cluster.apply(datavolume("watched"))
    proc = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "get", "dv", "watched", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()
        assert header.split() == ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]
        assert proc.stdout.readline().split()[0] == "watched"
        set_status(cluster, "watched", {"phase": "ImportInProgress", "progress": "12.00%", "restartCount": 0})
        line = proc.stdout.readline().split()
        assert line[:4] == ["watched", "ImportInProgress", "12.00%", "0"]
    finally:
        proc.kill()
        proc.wait()


def test_delete_cascades_to_owned_pvc_and_waits(cluster: Cluster) -> None:
    cluster.apply(datavolume("owner"))
    uid = yaml.safe_load(cluster.kubectl("get", "dv", "owner", "-o", "yaml").stdout)["metadata"]["uid"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "owner",
                "ownerReferences": [
                    {
                        "apiVersion": "cdi.kubevirt.io/v1beta1",
                        "kind": "DataVolume",
                        "name": "owner",
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    pvcs = cluster.kubectl("get", "pvc").stdout
    assert pvcs.splitlines()[0].split()[:3] == ["NAME", "STATUS", "VOLUME"]
    assert (
        cluster.kubectl("delete", "dv", "owner").stdout.strip()
        == 'datavolume.cdi.kubevirt.io "owner" deleted'
    )
    missing = cluster.kubectl("get", "pvc", "owner", check=False)
    assert missing.returncode == 1
    assert 'persistentvolumeclaims "owner" not found' in missing.stderr


def test_finalizer_holds_deletion_until_removed_and_wait_for_delete(cluster: Cluster) -> None:
    dv = datavolume("held")
    dv["metadata"]["finalizers"] = ["cdi.kubevirt.io/test"]
    cluster.apply(dv)
    cluster.kubectl("delete", "dv", "held", "--wait=false")
    got = yaml.safe_load(cluster.kubectl("get", "dv", "held", "-o", "yaml").stdout)
    assert got["metadata"]["deletionTimestamp"] and got["metadata"]["deletionGracePeriodSeconds"] == 0

    def release() -> None:
        time.sleep(1.0)
        patch = '[{"op":"remove","path":"/metadata/finalizers"}]'
        cluster.kubectl("patch", "dv", "held", "--type", "json", "-p", patch)

    t = threading.Thread(target=release)
    t.start()
    started = time.monotonic()
    out = cluster.kubectl("wait", "--for=delete", "dv/held", "--timeout=20s").stdout
    t.join()
    assert out.strip() == "datavolume.cdi.kubevirt.io/held condition met"
    assert time.monotonic() - started >= 0.9  # it really waited for the finalizer to go
    assert cluster.kubectl("get", "dv", "held", check=False).returncode == 1


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "importer-x"},
    "spec": {"containers": [{"name": "importer", "image": "cdi-importer", "command": ["/importer"]}]},
}


def test_get_pods_columns_and_logs_from_provider(cluster: Cluster) -> None:
    cluster.apply(POD)
    out = cluster.kubectl("get", "pods").stdout
    assert out.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows(out)[1][:4] == ["importer-x", "0/1", "Pending", "0"]
    missing = cluster.kubectl("logs", "importer-x", check=False)
    assert missing.returncode == 1 and "no logs" in missing.stderr

    seen: list[LogRequest] = []

    def provider(req: LogRequest) -> str:
        seen.append(req)
        return "Importing https://x/y\nProcessed 50%\n"

    cluster.server.set_log_provider(provider)
    try:
        assert cluster.kubectl("logs", "importer-x").stdout == "Importing https://x/y\nProcessed 50%\n"
    finally:
        cluster.server.set_log_provider(None)
    assert seen[0].pod == "importer-x" and seen[0].container == "importer" and seen[0].namespace == "default"


def test_explain_datavolume(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "dv").stdout
    assert "KIND:       DataVolume" in out and "VERSION:    v1beta1" in out
    out = cluster.kubectl("explain", "dv.spec").stdout
    for fld in ("source", "sourceRef", "pvc", "storage", "contentType", "preallocation"):
        assert f"  {fld}\t<" in out, fld
    out = cluster.kubectl("explain", "datavolume.status").stdout
    for fld in ("phase", "progress", "restartCount", "claimName", "conditions"):
        assert f"  {fld}\t<" in out, fld


def test_imperative_create_of_namespace_secret_and_configmap(cluster: Cluster) -> None:
    # kubectl sends these as protobuf; the server decodes them.
    assert cluster.kubectl("create", "namespace", "vms").stdout.strip() == "namespace/vms created"
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "endpoint-secret",
        "-n",
        "vms",
        "--from-literal=accessKeyId=user",
        "--from-literal=secretKey=pass",
    )
    cluster.kubectl("create", "configmap", "tls-certs", "-n", "vms", "--from-literal=ca.pem=PEM")
    secret = yaml.safe_load(
        cluster.kubectl("get", "secret", "endpoint-secret", "-n", "vms", "-o", "yaml").stdout
    )
    assert secret["data"] == {"accessKeyId": "dXNlcg==", "secretKey": "cGFzcw=="}
    assert secret["type"] == "Opaque" and "generateName" not in secret["metadata"]
    out = cluster.kubectl("get", "cm", "-n", "vms").stdout
    assert rows(out)[1][:2] == ["tls-certs", "1"]
    assert cluster.kubectl("delete", "namespace", "vms").stdout.strip() == 'namespace "vms" deleted'
    assert cluster.kubectl("get", "secret", "-A", "-o", "name").stdout.strip() == ""
