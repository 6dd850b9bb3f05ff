"""`cdi.kubevirt.io/v1beta1` DataImportCron: keep a DataSource fed with the newest image of a registry tag.

The schema is CDI's CRD field for field (its `template` is a whole DataVolume); validation follows CDI's
`dataimportcron-validate` webhook in the same order and with its messages, worded as kube words field
errors here because the check runs inside the API server. The schedule is parsed by croniter, with
robfig/cron's standard grammar: five fields or a `@daily`-style descriptor.
"""

from __future__ import annotations

from croniter import croniter

from cdi.api.datavolume import forbidden, invalid, required, validate_datavolume
from cdi.api.dv_schema import Schema, arr, condition_schema, datavolume_schema, i, kind_schema, o, s
from cdi.api.registry import Column, Obj, ResourceKind

GROUP = "cdi.kubevirt.io"
VERSION = "v1beta1"
GARBAGE_COLLECT = ("Outdated", "Never")
RETENTION = ("All", "None")
DNS1035_LABEL_MAX = 63
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def valid_schedule(schedule: str) -> bool:
    """A standard cron line (minute hour day-of-month month day-of-week) or a descriptor."""
    text = schedule.strip()
    if text.startswith("@"):
        return text in DESCRIPTORS
    return len(text.split()) == 5 and bool(croniter.is_valid(text))


def dataimportcron_schema() -> Schema:
    pvc = o("DataVolumeSourcePVC provides the parameters to create a Data Volume from an existing PVC",
            ["name", "namespace"], name=s("The name of the source PVC"), namespace=s("The namespace of the source PVC"))
    spec = o(
        "DataImportCronSpec defines specification for DataImportCron",
        ["managedDataSource", "schedule", "template"],
        template=datavolume_schema(),
        schedule=s("Schedule specifies in cron format when and how often to look for new imports"),
        garbageCollect=s('GarbageCollect specifies whether old PVCs should be cleaned up after a new PVC is '
                         'imported. Options are currently "Outdated" and "Never", defaults to "Outdated".'),
        importsToKeep=i("Number of import PVCs to keep when garbage collecting. Default is 3."),
        managedDataSource=s("ManagedDataSource specifies the name of the corresponding DataSource this cron "
                            "will manage. DataSource has to be in the same namespace."),
        retentionPolicy=s("RetentionPolicy specifies whether the created DataVolumes and DataSources are "
                          "retained when their DataImportCron is deleted. Default is RetainAll."),
        serviceAccountName=s("ServiceAccountName is the name of the ServiceAccount for creating DataVolumes.",
                             minLength=1),
    )
    spec["properties"]["template"]["description"] = "Template specifies template for the DVs to be created"
    status = o(
        "DataImportCronStatus provides the most recently observed status of the DataImportCron",
        currentImports=arr(o("ImportStatus of a currently in progress import", ["DataVolumeName", "Digest"],
                             DataVolumeName=s("DataVolumeName is the currently in progress import DataVolume"),
                             Digest=s("Digest of the currently imported image")),
                           "CurrentImports are the imports in progress. Currently only a single import is "
                           "supported."),
        lastImportedPVC=pvc,
        lastExecutionTimestamp=s("LastExecutionTimestamp is the time of the last polling", format="date-time"),
        lastImportTimestamp=s("LastImportTimestamp is the time of the last import", format="date-time"),
        sourceFormat=s("SourceFormat defines the format of the DataImportCron-created disk image sources"),
        conditions=arr(condition_schema("DataImportCronCondition represents the state of a data import cron "
                                        "condition")),
    )
    return kind_schema(
        "DataImportCron defines a cron job for recurring polling/importing disk images as PVCs into a golden "
        "image namespace",
        spec, status)


def _name_length(name: object, path: str) -> list[str]:
    if isinstance(name, str) and len(name) > DNS1035_LABEL_MAX:
        return [invalid(path, name, f"Name cannot be longer than {DNS1035_LABEL_MAX} characters")]
    return []


def _template_errors(template: object) -> list[str]:
    spec = (template or {}).get("spec") if isinstance(template, dict) else None
    source = (spec or {}).get("source") if isinstance(spec, dict) else None
    if not isinstance(source, dict) or (source.get("registry") is None and source.get("pvc") is None):
        return [invalid("spec.template", "", "Missing source")]
    assert isinstance(spec, dict)
    if spec.get("sourceRef") is not None or spec.get("contentType") or spec.get("checkpoints") \
            or spec.get("finalCheckpoint"):
        return [invalid("spec.template", "", "Unsettable fields: SourceRef, ContentType, Checkpoints, "
                                             "FinalCheckpoint")]
    # The template is a DataVolume spec: the DataVolume's own rules, its field paths under the template.
    errors = validate_datavolume({"spec": spec}, None)
    return [e.replace("spec.", "spec.template.spec.", 1) if e.startswith("spec") else e for e in errors]


def validate_dataimportcron(obj: Obj, old: Obj | None) -> list[str]:
    """CDI's admission rules for a DataImportCron; `old` is the stored object on update."""
    meta = obj.get("metadata") or {}
    errors = _name_length(meta.get("name"), "metadata.name")
    if errors:
        return errors
    spec = obj.get("spec")
    if old is not None:
        if spec != old.get("spec"):
            return [forbidden("spec", "Cannot update DataImportCron Spec")]
        return []
    if not isinstance(spec, dict):
        return [required("spec")]
    errors = _template_errors(spec.get("template"))
    if errors:
        return errors
    schedule = spec.get("schedule")
    if schedule and (not isinstance(schedule, str) or not valid_schedule(schedule)):
        return [invalid("spec.schedule", schedule, "Illegal cron schedule")]
    keep = spec.get("importsToKeep")
    if keep is not None and (not isinstance(keep, int) or keep < 0):
        return [invalid("spec.importsToKeep", keep, "Illegal ImportsToKeep value")]
    gc = spec.get("garbageCollect")
    if gc is not None and gc not in GARBAGE_COLLECT:
        return [invalid("spec.garbageCollect", gc, "Illegal GarbageCollect value")]
    retention = spec.get("retentionPolicy")
    if retention is not None and retention not in RETENTION:
        return [invalid("spec.retentionPolicy", retention, 'Illegal RetentionPolicy value: "All" or "None"')]
    managed = spec.get("managedDataSource")
    if not managed or not isinstance(managed, str):
        return [invalid("spec.managedDataSource", managed or "", "Illegal ManagedDataSource value")]
    return _name_length(managed, "spec.managedDataSource")


DATAIMPORTCRON = ResourceKind(
    group=GROUP,
    version=VERSION,
    kind="DataImportCron",
    plural="dataimportcrons",
    singular="dataimportcron",
    short_names=("dic", "dics"),
    categories=("all",),
    status_subresource=True,
    columns=(Column("Format", "string", ".status.sourceFormat",
                    description="The format in which created sources are saved"),),
    validate=validate_dataimportcron,
    schema=dataimportcron_schema(),
    description="DataImportCron defines a cron job for recurring polling/importing disk images as PVCs into a "
    "golden image namespace",
)
