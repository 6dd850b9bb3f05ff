"""The scratch claim and the importer pod's scratch mount, as pure functions (CDI's name, size and shape)."""

from __future__ import annotations

from cdi.controller.resources import ControllerSettings, build_importer_pod
from cdi.controller.scratch import build_claim, claim_name, is_scratch_of, pod_claim, scratch_size
from cdi.units import parse_size

SETTINGS = ControllerSettings()
MI = 1 << 20


def claim(size: str, mode: str = "Filesystem", **annotations: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "disk", "namespace": "ns", "uid": "p-1", "annotations": annotations},
            "spec": {"volumeMode": mode, "resources": {"requests": {"storage": size}}}}


def test_the_name_is_the_targets_with_a_suffix_and_stays_unique_when_cut() -> None:
    assert claim_name("disk") == "disk-scratch"
    a, b = claim_name("x" * 250 + "a"), claim_name("x" * 250 + "b")
    assert len(a) <= 253 and len(b) <= 253 and a != b and a.endswith("-scratch")


def test_cdis_size_rule() -> None:
    # usable space of the target (its request less 6 %, down to 1 MiB), plus 6 %, up to 1 MiB
    assert scratch_size(claim("1Gi"), 0.06) == 1024 * MI
    assert scratch_size(claim("9Mi"), 0.06) == 9 * MI
    # a Block target has no overhead of its own: all of it is usable, the scratch volume adds its overhead
    assert scratch_size(claim("16Mi", "Block"), 0.06) == 17 * MI
    assert scratch_size(claim("1000000000"), 0.0) == 953 * MI  # no overhead: the usable space, MiB-aligned down
    for size in ("1Mi", "17Mi", "3Gi", "123456789"):  # never smaller than what the target can hold
        target = claim(size)
        usable = int(parse_size(size) / 1.06) // MI * MI
        assert scratch_size(target, 0.06) >= usable


def test_the_claim_is_owned_by_the_pod_and_copies_no_cdi_annotation() -> None:
    target = claim("2Gi", **{"cdi.kubevirt.io/storage.import.endpoint": "http://h/x",
                             "kubevirt.io/provisionOnNode": "n1", "other/x": "y"})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "importer-disk", "uid": "pod-1"}}
    made = build_claim(target, pod, storage_class_name="fast", settings=SETTINGS)
    assert made["metadata"]["name"] == "disk-scratch" and made["metadata"]["namespace"] == "ns"
    assert made["metadata"]["annotations"] == {"kubevirt.io/provisionOnNode": "n1"}
    assert made["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "importer-disk",
                                                    "uid": "pod-1", "controller": True, "blockOwnerDeletion": True}]
    assert made["metadata"]["labels"]["velero.io/exclude-from-backup"] == "true"
    assert made["spec"] == {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "storageClassName": "fast",
                            "resources": {"requests": {"storage": "2Gi"}}}
    assert is_scratch_of(made, "importer-disk") and not is_scratch_of(made, "importer-other")
    assert "storageClassName" not in build_claim(target, pod, storage_class_name=None, settings=SETTINGS)["spec"]
    # the claim of a DataVolume that happens to be called disk-scratch is no scratch claim
    assert not is_scratch_of({"metadata": {"ownerReferences": [{"kind": "DataVolume", "name": "importer-disk"}]}},
                             "importer-disk")


def test_the_importer_pod_mounts_scratch_only_when_given_a_claim() -> None:
    dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
          "metadata": {"name": "disk", "namespace": "ns", "uid": "u-1"},
          "spec": {"source": {"http": {"url": "http://h/x.vmdk"}},
                   "pvc": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}}}}
    target = claim("1Gi", "Block")
    bare = build_importer_pod(dv, target, SETTINGS)
    container = bare["spec"]["containers"][0]
    assert {"name": "IMPORTER_SCRATCH_BESIDE_TARGET", "value": "false"} in container["env"]
    assert not any(e["name"] == "IMPORTER_SCRATCH_DIR" for e in container["env"])
    assert pod_claim(bare) is None and "volumeMounts" not in container
    pod = build_importer_pod(dv, target, SETTINGS, scratch_claim="disk-scratch")
    container = pod["spec"]["containers"][0]
    assert {"name": "IMPORTER_SCRATCH_DIR", "value": "/scratch"} in container["env"]
    assert not any(e["name"] == "IMPORTER_SCRATCH_BESIDE_TARGET" for e in container["env"])
    assert container["volumeMounts"] == [{"name": "cdi-scratch-vol", "mountPath": "/scratch"}]
    assert {"name": "cdi-scratch-vol", "persistentVolumeClaim": {"claimName": "disk-scratch"}} in pod["spec"]["volumes"]
    assert pod_claim(pod) == "disk-scratch"


class _Cluster:
    """The StorageClasses and the CDIConfig the scratch class is chosen from (our client is the seam)."""

    def __init__(self, classes: dict[str, bool], spec: str = "", status: str = "") -> None:
        self.classes = [{"metadata": {"name": n, "creationTimestamp": "2026-01-01T00:00:00Z",
                                      "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}
                                      if default else {}}} for n, default in classes.items()]
        self.config = {"spec": {"scratchSpaceStorageClass": spec}, "status": {"scratchSpaceStorageClass": status}}

    def find(self, kind: object, namespace: object, name: str) -> dict | None:
        if getattr(kind, "kind", "") == "CDIConfig":
            return self.config
        return next((c for c in self.classes if c["metadata"]["name"] == name), None)

    def list(self, kind: object, *args: object, **kwargs: object) -> tuple[list[dict], str]:
        return self.classes, "1"


def test_the_scratch_class_follows_cdiconfig_then_the_default_class_then_the_target() -> None:
    from cdi.controller.scratch import storage_class

    target = claim("1Gi")
    target["spec"]["storageClassName"] = "fast"
    cluster = _Cluster({"fast": False, "cheap": True, "wffc": False}, spec="wffc")
    assert storage_class(cluster, target) == "wffc"  # type: ignore[arg-type]
    cluster.config["spec"]["scratchSpaceStorageClass"] = "gone"  # named but missing
    assert storage_class(cluster, target) == "cheap"  # type: ignore[arg-type]  # the default, as CDI's status
    cluster.config["status"]["scratchSpaceStorageClass"] = "wffc"
    assert storage_class(cluster, target) == "wffc"  # type: ignore[arg-type]
    assert storage_class(_Cluster({"fast": False}), target) == "fast"  # type: ignore[arg-type]  # no default
