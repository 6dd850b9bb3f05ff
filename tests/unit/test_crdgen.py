"""The CRDs in charts/cdi/crds are generated from the kind declarations and valid for a cluster."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cdi.api import crdgen, default_registry
from cdi.api.registry import Column, Registry, ResourceKind

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "cdi" / "crds"


def _load(name: str) -> dict:
    return yaml.safe_load((CRDS / name).read_text())


def test_generated_files_are_current() -> None:
    proc = subprocess.run([sys.executable, "-m", "cdi.api.crdgen", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_check_names_a_stale_a_missing_and_a_leftover_file(tmp_path: Path) -> None:
    files = crdgen.generate(default_registry())
    crdgen.write(tmp_path, files)
    assert crdgen.stale(tmp_path, files) == []
    dv = tmp_path / "cdi.kubevirt.io_datavolumes.yaml"
    dv.write_text(dv.read_text().replace("- dvs\n", ""))
    (tmp_path / "kubevirt.io_virtualmachines.yaml").unlink()
    (tmp_path / "old.io_things.yaml").write_text(crdgen.HEADER + "kind: CustomResourceDefinition\n")
    (tmp_path / "hand-written.yaml").write_text("kind: ConfigMap\n")  # not ours: left alone
    problems = crdgen.stale(tmp_path, files)
    assert problems == [f"{dv}: stale", f"{tmp_path / 'kubevirt.io_virtualmachines.yaml'}: missing",
                        f"{tmp_path / 'old.io_things.yaml'}: no kind declares it any more"]
    crdgen.write(tmp_path, files)
    assert crdgen.stale(tmp_path, files) == []
    assert (tmp_path / "hand-written.yaml").exists() and not (tmp_path / "old.io_things.yaml").exists()


def test_every_custom_kind_but_the_aggregated_upload_api_has_a_crd() -> None:
    names = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert names == ["cdi.kubevirt.io_cdiconfigs.yaml", "cdi.kubevirt.io_dataimportcrons.yaml",
                     "cdi.kubevirt.io_datasources.yaml", "cdi.kubevirt.io_datavolumes.yaml",
                     "kubevirt.io_virtualmachineinstances.yaml", "kubevirt.io_virtualmachines.yaml"]
    custom = {k.kind for k in default_registry() if k.custom}
    assert custom - {k.kind for k in crdgen.crd_kinds(default_registry())} == {"UploadTokenRequest"}


def test_a_newly_registered_kind_gets_its_crd() -> None:
    registry = default_registry()
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}}
    registry.register(ResourceKind(group="cdi.kubevirt.io", version="v1beta1", kind="VolumeImportSource",
                                   plural="volumeimportsources", singular="volumeimportsource",
                                   short_names=("vis",), schema=schema,
                                   columns=(Column("X", "string", ".spec.x"),)))
    files = crdgen.generate(registry)
    crd = yaml.safe_load(files["cdi.kubevirt.io_volumeimportsources.yaml"])
    assert crd["metadata"]["name"] == "volumeimportsources.cdi.kubevirt.io"
    assert crd["spec"]["names"]["shortNames"] == ["vis"]
    assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] == schema
    assert [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]] == ["X", "Age"]


def test_datavolume_crd_has_cdis_names_columns_and_status() -> None:
    crd = _load("cdi.kubevirt.io_datavolumes.yaml")
    spec = crd["spec"]
    assert spec["group"] == "cdi.kubevirt.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "DataVolume", "listKind": "DataVolumeList", "plural": "datavolumes",
                             "singular": "datavolume", "shortNames": ["dv", "dvs"], "categories": ["all"]}
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1beta1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [(c["name"], c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]] == [
        ("Phase", "string", ".status.phase"), ("Progress", "string", ".status.progress"),
        ("Restarts", "integer", ".status.restartCount"), ("Age", "date", ".metadata.creationTimestamp")]
    size = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["storage"]["properties"][
        "resources"]["properties"]["requests"]["additionalProperties"]
    assert size["x-kubernetes-int-or-string"] is True


def test_kubevirt_crds_carry_kubevirts_group_and_condition_columns() -> None:
    vmi = _load("kubevirt.io_virtualmachineinstances.yaml")
    assert vmi["metadata"]["name"] == "virtualmachineinstances.kubevirt.io"
    version = vmi["spec"]["versions"][0]
    assert version["name"] == "v1"
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert cols["Ready"]["jsonPath"] == ".status.conditions[?(@.type=='Ready')].status"
    assert cols["Paused"]["priority"] == 1
    config = _load("cdi.kubevirt.io_cdiconfigs.yaml")
    assert config["spec"]["scope"] == "Cluster"
    status = config["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("name", sorted(p.name for p in CRDS.glob("*.yaml")))
def test_crd_validates_against_kubernetes_1_32_and_is_structural(name: str) -> None:
    crd = _load(name)
    kubernetes_validate.validate(crd, "1.32.0", strict=True)
    assert crdgen.structural_problems(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) == []


def test_non_structural_schemas_are_refused() -> None:
    base = crdgen.schema_of(default_registry().by_kind("cdi.kubevirt.io/v1beta1", "DataVolume"))  # type: ignore[arg-type]
    bad = copy.deepcopy(base)
    bad["properties"]["spec"]["properties"]["source"].pop("type")
    bad["properties"]["spec"]["properties"]["pvc"] = {"$ref": "#/definitions/x", "type": "object"}
    bad["properties"]["metadata"]["properties"] = {"labels": {"type": "object"}}
    bad["properties"]["status"]["additionalProperties"] = {"type": "string"}
    bad["properties"]["spec"]["properties"]["preallocation"] = {"anyOf": [{"type": "boolean"}]}
    assert crdgen.structural_problems(bad) == [
        "metadata: must be exactly type: object at the root, found ['description', 'properties', 'type']",
        "spec.source: type is required",
        "spec.pvc: $ref is not allowed",
        "spec.preallocation: type is required",
        "spec.preallocation.anyOf: type is forbidden inside anyOf",
        "status: properties and additionalProperties are mutually exclusive",
    ]
    registry = Registry([ResourceKind(group="x.example.com", version="v1", kind="Bad", plural="bads",
                                      singular="bad", schema={"properties": {}})])
    with pytest.raises(ValueError, match="Bad: the schema is not structural: <root>: type is required"):
        crdgen.generate(registry)


def test_a_column_without_a_json_path_cannot_become_a_printer_column() -> None:
    kind = ResourceKind(group="x.example.com", version="v1", kind="Odd", plural="odds", singular="odd",
                        columns=(Column("Computed", func=lambda o: 1),))
    with pytest.raises(ValueError, match="Odd column 'Computed' has no json_path"):
        crdgen.crd(kind)
