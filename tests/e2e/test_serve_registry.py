"""End to end: ``cdi serve`` + the real kubectl + a real docker-registry with TLS and basic auth: a
containerDisk imported from the manifests a CDI user writes (Secret, ConfigMap, DataVolume), and a
missing tag failing with its reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import PVC
from tests.support.registry import Registry, container_disk
from tests.support.serve import Serve, serving

pytestmark = pytest.mark.slow

MANIFESTS = """
apiVersion: v1
kind: Secret
metadata:
  name: registry-creds
type: Opaque
stringData:
  accessKeyId: cdi
  secretKey: e2e-pw
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: registry-ca
data:
  ca.crt: |
{ca}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: fedora-from-registry
spec:
  source:
    registry:
      url: "docker://{host}/containerdisks/fedora:40"
      secretRef: registry-creds
      certConfigMap: registry-ca
  storage:
    resources:
      requests:
        storage: 64Mi
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: missing-tag
spec:
  source:
    registry:
      url: "docker://{host}/containerdisks/fedora:41"
      secretRef: registry-creds
      certConfigMap: registry-ca
  storage:
    resources:
      requests:
        storage: 64Mi
"""


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "serve-registry")


def test_registry_import_with_kubectl(serve: Serve, image_factory, tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", tls=True, auth=("cdi", "e2e-pw")) as reg:
        digest = reg.push(container_disk(tmp_path / "layout", image_factory.get("qcow2"), compression="zstd"),
                          "containerdisks/fedora", "40", src_tag="latest")
        ca = "\n".join("    " + line for line in Path(str(reg.ca_file)).read_text().splitlines())
        serve.kubectl("apply", "-f", "-", input=MANIFESTS.format(ca=ca, host=reg.host))
        serve.kubectl("wait", "--for=condition=Ready", "dv/fedora-from-registry", "--timeout=90s")
        dv = serve.wait_phase("missing-tag", "Failed")
    out = serve.kubectl("get", "dv").stdout
    assert any(line.split()[:2] == ["fedora-from-registry", "Succeeded"] for line in out.splitlines()), out
    assert any(line.split()[:2] == ["missing-tag", "Failed"] for line in out.splitlines()), out
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert running["reason"] == "ImageNotFound" and "fedora:41 not found" in running["message"]
    described = serve.kubectl("describe", "dv", "missing-tag").stdout
    assert "ImageNotFound" in described or "not found in the registry" in described
    annotations = json.loads(serve.kubectl("get", "dv", "fedora-from-registry", "-o", "json").stdout)["metadata"][
        "annotations"]
    assert annotations["cdi.kubevirt.io/storage.import.sourceDigest"] == digest
    pvc = serve.client.get(PVC, "default", "fedora-from-registry")
    path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    disk = path / "disk.img" if path.is_dir() else path
    raw = image_factory.raw.read_bytes()
    with open(disk, "rb") as f:
        assert hashlib.sha256(f.read(len(raw))).digest() == hashlib.sha256(raw).digest()
