"""The resource kinds the controllers use, as REST coordinates (group, version, plural)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


NAMESPACE = Kind("", "v1", "Namespace", "namespaces", namespaced=False)
POD = Kind("", "v1", "Pod", "pods")
PVC = Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
SECRET = Kind("", "v1", "Secret", "secrets")
CONFIGMAP = Kind("", "v1", "ConfigMap", "configmaps")
EVENT = Kind("", "v1", "Event", "events")
SERVICE = Kind("", "v1", "Service", "services")
SERVICEACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
NODE = Kind("", "v1", "Node", "nodes", namespaced=False)
DATAVOLUME = Kind("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
DATASOURCE = Kind("cdi.kubevirt.io", "v1beta1", "DataSource", "datasources")
DATAIMPORTCRON = Kind("cdi.kubevirt.io", "v1beta1", "DataImportCron", "dataimportcrons")
CDICONFIG = Kind("cdi.kubevirt.io", "v1beta1", "CDIConfig", "cdiconfigs", namespaced=False)
UPLOADTOKENREQUEST = Kind("upload.cdi.kubevirt.io", "v1beta1", "UploadTokenRequest", "uploadtokenrequests")
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
STORAGECLASS = Kind("storage.k8s.io", "v1", "StorageClass", "storageclasses", namespaced=False)
