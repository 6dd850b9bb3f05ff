"""The embedded API server validates and publishes exactly the schemas of the chart's CRDs."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import yaml

from cdi.api import crdgen, default_registry
from cdi.api.registry import Registry, ResourceKind
from cdi.apiserver import Settings, fieldvalidation
from cdi.apiserver.app import create_app
from cdi.apiserver.crds import CRD_KIND
from cdi.apiserver.openapi import schema_name
from tests.functional.apiserver_fixtures import Cluster, cluster, datavolume  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "charts" / "cdi" / "crds").glob("*.yaml"))


def _crd(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _get(cluster: Cluster, path: str) -> dict:  # noqa: F811
    server = cluster.server
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(server.tls.ca_file)),
                      headers={"Authorization": f"Bearer {server.settings.token}"}) as http:
        resp = http.get(path)
        resp.raise_for_status()
        return resp.json()


@pytest.mark.parametrize("path", CRDS, ids=[p.stem for p in CRDS])
def test_published_and_validating_schema_is_the_crds(cluster: Cluster, path: Path) -> None:  # noqa: F811
    crd = _crd(path)
    spec = crd["spec"]
    (version,) = spec["versions"]
    kind = default_registry().by_kind(f"{spec['group']}/{version['name']}", spec["names"]["kind"])
    assert kind is not None
    expected = version["schema"]["openAPIV3Schema"]
    assert fieldvalidation.schema_of(kind) == expected
    doc = _get(cluster, f"/openapi/v3/apis/{spec['group']}/{version['name']}")
    published = dict(doc["components"]["schemas"][schema_name(kind)])
    assert published.pop("x-kubernetes-group-version-kind") == [
        {"group": spec["group"], "version": version["name"], "kind": spec["names"]["kind"]}]
    assert published == expected
    discovery = _get(cluster, f"/apis/{spec['group']}/{version['name']}")
    (resource,) = [r for r in discovery["resources"] if r["name"] == spec["names"]["plural"]]
    assert resource["kind"] == spec["names"]["kind"]
    assert resource["namespaced"] == (spec["scope"] == "Namespaced")
    assert resource.get("shortNames", []) == spec["names"].get("shortNames", [])
    assert resource.get("categories", []) == spec["names"].get("categories", [])
    assert (f"{spec['names']['plural']}/status" in {r["name"] for r in discovery["resources"]}) == (
        "subresources" in version)


def test_a_field_the_crd_does_not_declare_is_refused_by_the_embedded_server(cluster: Cluster) -> None:  # noqa: F811
    dv = datavolume("strict")
    dv["spec"]["sourcee"] = {}
    proc = cluster.kubectl("create", "--validate=strict", "-f", "-", input=yaml.safe_dump(dv), check=False)
    assert proc.returncode != 0
    assert 'unknown field "spec.sourcee"' in proc.stderr
    crd = _crd(ROOT / "charts/cdi/crds/cdi.kubevirt.io_datavolumes.yaml")
    assert "sourcee" not in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_server_table_columns_match_the_crd_printer_columns(cluster: Cluster) -> None:  # noqa: F811
    cluster.apply(datavolume("columns"))
    out = cluster.kubectl("get", "dv", "columns").stdout.split("\n")[0].split()
    crd = _crd(ROOT / "charts/cdi/crds/cdi.kubevirt.io_datavolumes.yaml")
    columns = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
               if not c.get("priority")]
    assert out == ["NAME", *columns]
    assert crdgen.crd_kinds(default_registry())  # the generator sees the same registry the server serves


def test_kubectl_get_crd_shows_the_charts_crds_read_only(cluster: Cluster) -> None:  # noqa: F811
    names = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    expected = sorted(f"customresourcedefinition.apiextensions.k8s.io/{_crd(p)['metadata']['name']}" for p in CRDS)
    assert sorted(names) == expected
    served = yaml.safe_load(cluster.kubectl("get", "crd", "datavolumes.cdi.kubevirt.io", "-o", "yaml").stdout)
    assert served["spec"] == _crd(ROOT / "charts/cdi/crds/cdi.kubevirt.io_datavolumes.yaml")["spec"]
    header = cluster.kubectl("get", "crds").stdout.split("\n")[0].split()
    assert header == ["NAME", "CREATED", "AT"]
    refused = cluster.kubectl("delete", "crd", "datavolumes.cdi.kubevirt.io", check=False)
    assert refused.returncode != 0 and "does not allow this method" in refused.stderr
    edit = cluster.kubectl("label", "crd", "datavolumes.cdi.kubevirt.io", "x=y", check=False)
    assert edit.returncode != 0 and "does not allow this method" in edit.stderr
    assert cluster.kubectl("get", "crd", "datavolumes.cdi.kubevirt.io").returncode == 0


def test_crds_follow_the_served_kinds_across_restarts(tmp_path: Path) -> None:
    extra = ResourceKind(group="cdi.kubevirt.io", version="v1beta1", kind="VolumeImportSource",
                         plural="volumeimportsources", singular="volumeimportsource")

    def crd_names(registry: Registry) -> list[str]:
        app = create_app(Settings(token="t", db_path=str(tmp_path / "objects.db")), registry=registry)
        store = app.state.store
        try:
            return sorted(o["metadata"]["name"] for o in store.items(CRD_KIND.key))
        finally:
            store.close()

    base = sorted(k.group_resource for k in crdgen.crd_kinds(default_registry()))
    with_extra = default_registry()
    with_extra.register(extra)
    assert crd_names(with_extra) == sorted([*base, "volumeimportsources.cdi.kubevirt.io"])
    assert crd_names(default_registry()) == base
