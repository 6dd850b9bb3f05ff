"""Kinds of the upload API: UploadTokenRequest (``upload.cdi.kubevirt.io``) and CDIConfig.

An UploadTokenRequest is never stored: creating one returns it with ``status.token`` filled in (the
embedded API server serves it from ``cdi.apiserver.upload_tokens``), so its only verb is ``create``.
CDIConfig is CDI's cluster-scoped configuration object; ``config`` carries ``status.uploadProxyURL``,
where ``virtctl image-upload`` and ``cdi image-upload`` find the upload proxy.
"""

from __future__ import annotations

from cdi.api.registry import Column, ResourceKind

UPLOAD_GROUP = "upload.cdi.kubevirt.io"

UPLOADTOKENREQUEST = ResourceKind(
    group=UPLOAD_GROUP,
    version="v1beta1",
    kind="UploadTokenRequest",
    plural="uploadtokenrequests",
    singular="uploadtokenrequest",
    verbs=("create",),
    description="UploadTokenRequest is the CR used to initiate a CDI upload: its status carries a "
    "short-lived token that allows an upload into the PVC named by spec.pvcName",
)

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
    description="CDIConfig provides a user configuration for CDI",
)

UPLOAD_KINDS = (UPLOADTOKENREQUEST, CDICONFIG)
