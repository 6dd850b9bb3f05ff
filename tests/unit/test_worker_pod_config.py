"""Worker pod placement and resources from CDIConfig-like settings, on every worker pod the controllers make."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdi.controller.clone_pod import build_clone_pod
from cdi.controller.clone_stream import build_source_pod
from cdi.controller.resources import DEFAULT_RESOURCES, ControllerSettings, WorkerPodConfig, build_importer_pod
from cdi.controller.upload_pod import build_pod

DV = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
      "metadata": {"name": "d", "namespace": "ns", "uid": "dv-uid"},
      "spec": {"source": {"http": {"url": "http://x/y.img"}},
               "storage": {"resources": {"requests": {"storage": "1Gi"}}}}}
PVC = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d", "namespace": "ns", "uid": "p"},
       "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}}
CONFIG = {
    "podResourceRequirements": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "2Gi"}},
    "imagePullSecrets": [{"name": "registry-cred"}, "other-cred"],
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}},
}


def worker_pods(placement: WorkerPodConfig) -> list[dict]:
    settings = ControllerSettings(worker_pod=placement)
    return [
        build_importer_pod(DV, PVC, settings),
        build_pod(PVC, image="u", image_size=1 << 20, filesystem_overhead=0.06, placement=placement),
        build_clone_pod(DV, PVC, PVC, image="c", placement=placement),
        build_source_pod(DV, PVC, PVC, image="c", url="https://x", target_size=1 << 20, placement=placement),
    ]


def test_every_worker_pod_gets_the_configured_resources_placement_and_pull_secrets() -> None:
    placement = WorkerPodConfig.from_dict(CONFIG)
    for pod in worker_pods(placement):
        spec = pod["spec"]
        assert spec["containers"][0]["resources"] == CONFIG["podResourceRequirements"], pod["metadata"]["name"]
        assert spec["imagePullSecrets"] == [{"name": "registry-cred"}, {"name": "other-cred"}]
        assert spec["nodeSelector"] == CONFIG["nodeSelector"]
        assert spec["tolerations"] == CONFIG["tolerations"]
        assert spec["affinity"] == CONFIG["affinity"]


def test_without_configuration_worker_pods_keep_cdis_defaults() -> None:
    for pod in worker_pods(WorkerPodConfig()):
        spec = pod["spec"]
        assert spec["containers"][0]["resources"] == DEFAULT_RESOURCES
        assert not {"imagePullSecrets", "nodeSelector", "tolerations", "affinity"} & set(spec)


@pytest.mark.parametrize(("data", "said"), [
    ({"nodeSelecter": {}}, "unknown key 'nodeSelecter'"),
    ({"tolerations": {"key": "x"}}, "tolerations must be a list"),
    ({"imagePullSecrets": [{"nme": "x"}]}, "imagePullSecrets must be names"),
    ({"imagePullSecrets": [""]}, "imagePullSecrets must be names"),
])
def test_a_wrong_setting_is_refused_naming_it(data: dict, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        WorkerPodConfig.from_dict(data)


def test_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "workers.yaml"
    path.write_text("nodeSelector:\n  disk: ssd\nimagePullSecrets: [cred]\n")
    placement = WorkerPodConfig.from_file(str(path))
    assert placement.node_selector == {"disk": "ssd"} and placement.image_pull_secrets == ["cred"]
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        WorkerPodConfig.from_file(str(path))
