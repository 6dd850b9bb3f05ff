"""A claim's StorageClass and its binding mode, read the way kube's PV controller reads them.

``storageClassName`` unset means the default class (annotation
``storageclass.kubernetes.io/is-default-class: "true"``), ``""`` means no class. A claim of a
``WaitForFirstConsumer`` class binds only once the scheduler has picked a node for the first pod that
uses it (annotation ``volume.kubernetes.io/selected-node``); the controllers must therefore create
their worker pods before the claim is bound, and the local node plays the scheduler's part.
"""

from __future__ import annotations

from cdi.kube.client import Client, Obj
from cdi.kube.kinds import STORAGECLASS

WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def storage_class(client: Client, pvc: Obj) -> Obj | None:
    """The claim's StorageClass, or None (no class, or one that does not exist)."""
    spec = pvc.get("spec") or {}
    name = spec.get("storageClassName")
    if name == "":
        return None
    if name:
        return client.find(STORAGECLASS, None, str(name))
    classes, _ = client.list(STORAGECLASS)
    defaults = [c for c in classes if (c["metadata"].get("annotations") or {}).get(ANN_DEFAULT_CLASS) == "true"]
    return max(defaults, key=lambda c: str(c["metadata"].get("creationTimestamp") or "")) if defaults else None


def waits_for_first_consumer(client: Client, pvc: Obj) -> bool:
    """Whether the unbound claim waits for a pod to be scheduled (an unreadable class raises ApiError)."""
    sc = storage_class(client, pvc)
    return sc is not None and sc.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER
