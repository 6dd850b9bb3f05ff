"""Resource kinds served by the embedded API server: declarations, defaults, validation, schemas.

`default_registry()` returns a fresh `Registry` with the core kinds and the CDI kinds; callers that
serve more kinds (VirtualMachine, DataSource, ...) register their `ResourceKind` on it.
"""

from __future__ import annotations

from cdi.api.coordination import COORDINATION_KINDS
from cdi.api.core import core_kinds
from cdi.api.dataimportcron import DATAIMPORTCRON
from cdi.api.datasource import DATASOURCE
from cdi.api.datavolume import DATAVOLUME
from cdi.api.kubevirt import KUBEVIRT_KINDS
from cdi.api.rbac import RBAC_KINDS
from cdi.api.registry import Column, Registry, ResourceKind, get_path
from cdi.api.storage import STORAGE_KINDS
from cdi.api.upload import UPLOAD_KINDS


def default_registry() -> Registry:
    """A new registry: core kinds, RBAC and review kinds, the DataVolume, DataSource, DataImportCron, upload
    kinds, KubeVirt's VM kinds, Lease and StorageClass."""
    return Registry([*core_kinds(), DATAVOLUME, DATASOURCE, DATAIMPORTCRON, *KUBEVIRT_KINDS, *RBAC_KINDS,
                     *UPLOAD_KINDS, *COORDINATION_KINDS, *STORAGE_KINDS])


__all__ = ["Column", "DATAVOLUME", "Registry", "ResourceKind", "default_registry", "get_path"]
