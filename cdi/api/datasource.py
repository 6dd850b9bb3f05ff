"""`cdi.kubevirt.io/v1beta1` DataSource: a named, stable handle on a golden image.

A DataSource points at a PVC (`spec.source.pvc`), a VolumeSnapshot (`spec.source.snapshot`) or another
DataSource (`spec.source.dataSource`, one level deep); DataVolumes reach it with `spec.sourceRef`. Its
status mirrors the resolved source and carries the `Ready` condition the DataSource controller keeps.
CDI has no admission webhook for DataSources; the schema (CDI's CRD, field for field) is the check,
plus the one rule its types document: at most one source.
"""

from __future__ import annotations

from cdi.api.dv_schema import Schema, arr, condition_schema, kind_schema, o, s
from cdi.api.registry import Obj, ResourceKind

GROUP = "cdi.kubevirt.io"
VERSION = "v1beta1"
SOURCE_KINDS = ("pvc", "snapshot", "dataSource")


def _named(desc: str, what: str) -> Schema:
    return o(desc, ["name", "namespace"], name=s(f"The name of the source {what}"),
             namespace=s(f"The namespace of the source {what}"))


def source_schema(desc: str) -> Schema:
    return o(
        desc,
        pvc=_named("DataVolumeSourcePVC provides the parameters to create a Data Volume from an existing PVC",
                   "PVC"),
        snapshot=_named("DataVolumeSourceSnapshot provides the parameters to create a Data Volume from an "
                        "existing VolumeSnapshot", "VolumeSnapshot"),
        dataSource=_named("DataSourceRefSourceDataSource serves as a reference to another DataSource. The "
                          "maximum depth of a reference chain may not exceed 1.", "DataSource"),
    )


def datasource_schema() -> Schema:
    spec = o("DataSourceSpec defines specification for DataSource", ["source"],
             source=source_schema("Source is the source of the data referenced by the DataSource"))
    status = o("DataSourceStatus provides the most recently observed status of the DataSource",
               source=source_schema("Source is the current source of the data referenced by the DataSource"),
               conditions=arr(condition_schema("DataSourceCondition represents the state of a data source "
                                               "condition")))
    return kind_schema(
        "DataSource references an import/clone source for a DataVolume",
        spec, status)


def validate_datasource(obj: Obj, old: Obj | None) -> list[str]:
    """At most one source kind: a DataSource naming two would be resolved differently by each reader."""
    source = ((obj.get("spec") or {}).get("source")) or {}
    if not isinstance(source, dict):
        return []
    present = [k for k in SOURCE_KINDS if source.get(k) is not None]
    if len(present) > 1:
        return [f'spec.source: Invalid value: "{", ".join(present)}": a DataSource has at most one source']
    return []


DATASOURCE = ResourceKind(
    group=GROUP,
    version=VERSION,
    kind="DataSource",
    plural="datasources",
    singular="datasource",
    short_names=("das",),
    categories=("all",),
    status_subresource=True,
    validate=validate_datasource,
    schema=datasource_schema(),
    description="DataSource references an import/clone source for a DataVolume",
)
