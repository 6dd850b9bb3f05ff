"""Kinds of the upload API: UploadTokenRequest (``upload.cdi.kubevirt.io``) and CDIConfig.

An UploadTokenRequest is never stored: creating one returns it with ``status.token`` filled in (the
embedded API server serves it from ``cdi.apiserver.upload_tokens``), so its only verb is ``create``.
CDIConfig is CDI's cluster-scoped configuration object; ``config`` carries ``status.uploadProxyURL``,
where ``virtctl image-upload`` and ``cdi image-upload`` find the upload proxy.
"""

from __future__ import annotations

from cdi.api.dv_schema import Schema, arr, b, i, kind_schema, o, s
from cdi.api.registry import Column, ResourceKind

UPLOAD_GROUP = "upload.cdi.kubevirt.io"

UPLOADTOKENREQUEST = ResourceKind(
    group=UPLOAD_GROUP,
    version="v1beta1",
    kind="UploadTokenRequest",
    plural="uploadtokenrequests",
    singular="uploadtokenrequest",
    verbs=("create",),
    aggregated=True,
    description="UploadTokenRequest is the CR used to initiate a CDI upload: its status carries a "
    "short-lived token that allows an upload into the PVC named by spec.pvcName",
)



def _open(schema: Schema) -> Schema:
    """CDI's configuration grows release by release: fields outside the ones named here are kept."""
    return {**schema, "x-kubernetes-preserve-unknown-fields": True}


def cdiconfig_schema() -> Schema:
    """CDIConfig's schema: the fields of CDI's CDIConfigSpec/Status this project reads or writes."""
    spec = _open(o(
        "CDIConfigSpec defines specification for user configuration.",
        uploadProxyURLOverride=s("Override the URL used when uploading to a DataVolume."),
        scratchSpaceStorageClass=s("Override the storage class used for scratch space."),
        podResourceRequirements=_open(o("ResourceRequirements of the worker pods.")),
        featureGates=arr(s(), "FeatureGates are a list of specific enabled feature gates."),
        preallocation=b("Preallocation controls whether storage for DataVolumes is allocated in advance."),
        insecureRegistries=arr(s(), "Registries the importer may reach without TLS verification."),
        dataVolumeTTLSeconds=i("Seconds after completion before a DataVolume is garbage collected."),
        imagePullSecrets=arr(_open(o("A reference to a pull secret.", name=s("Name of the secret."))),
                             "Pull secrets of the worker pods."),
    ))
    status = _open(o(
        "CDIConfigStatus provides the most recently observed status of the CDI Config resource.",
        uploadProxyURL=s("The calculated upload proxy URL."),
        scratchSpaceStorageClass=s("The calculated storage class used for scratch space."),
        defaultPodResourceRequirements=_open(o("ResourceRequirements of the worker pods.")),
        preallocation=b("Preallocation controls whether storage for DataVolumes is allocated in advance."),
    ))
    return kind_schema(
        "CDIConfig provides a user configuration for CDI.",
        spec, status)


CDICONFIG = ResourceKind(
    group="cdi.kubevirt.io",
    version="v1beta1",
    kind="CDIConfig",
    plural="cdiconfigs",
    singular="cdiconfig",
    namespaced=False,
    status_subresource=True,
    columns=(Column("UploadProxyURL", "string", ".status.uploadProxyURL", priority=1,
                    description="Where clients send uploads"),),
    schema=cdiconfig_schema(),
    description="CDIConfig provides a user configuration for CDI",
)

UPLOAD_KINDS = (UPLOADTOKENREQUEST, CDICONFIG)
