"""The one door to an API server (STYLE.md 1): client, kinds, errors, informers and work queues."""

from cdi.kube.client import Client, Obj, now_iso
from cdi.kube.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    PermanentError,
    TemporaryError,
)
from cdi.kube.informer import Informer, Key, WorkQueue
from cdi.kube.kinds import (
    CONFIGMAP,
    DATAIMPORTCRON,
    DATASOURCE,
    DATAVOLUME,
    EVENT,
    NAMESPACE,
    NODE,
    POD,
    PVC,
    SECRET,
    SERVICE,
    SERVICEACCOUNT,
    Kind,
)

__all__ = [
    "AlreadyExists", "ApiError", "CONFIGMAP", "Client", "Conflict", "DATAIMPORTCRON", "DATASOURCE", "DATAVOLUME",
    "EVENT", "Forbidden", "Gone",
    "Informer", "Invalid", "Key", "Kind", "NAMESPACE", "NODE", "NotFound", "Obj", "POD", "PVC", "PermanentError",
    "SECRET", "SERVICE", "SERVICEACCOUNT", "TemporaryError", "WorkQueue", "now_iso",
]
