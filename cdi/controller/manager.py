"""Runs reconcilers: informers feed a work queue, worker threads reconcile one key at a time each.

Different DataVolumes are reconciled in parallel; the same one never twice at once (``WorkQueue``).
Errors requeue the key with exponential back-off; a reconciler's returned delay requeues it after that.
"""

from __future__ import annotations

import logging

from cdi.controller.datavolume import DataVolumeReconciler
from cdi.controller.resources import ControllerSettings
from cdi.kube import DATAVOLUME, POD, PVC, Client, Informer, Obj
from cdi.kube.loop import ReconcileLoop

log = logging.getLogger(__name__)


class ControllerManager:
    def __init__(self, client: Client, settings: ControllerSettings | None = None, *, workers: int = 4) -> None:
        self.client = client
        self.settings = settings or ControllerSettings()
        self.reconciler = DataVolumeReconciler(client, self.settings)
        self.loop = ReconcileLoop("datavolume", self.reconciler.reconcile, workers)
        self.queue = self.loop.queue
        self.informers = [Informer(client, DATAVOLUME), Informer(client, PVC), Informer(client, POD)]
        self.informers[0].add_handler(self._on_dv)
        self.informers[1].add_handler(self._on_owned)
        self.informers[2].add_handler(self._on_pod)

    def _on_dv(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.queue.add((meta["namespace"], meta["name"]))

    def _on_owned(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "DataVolume":
                self.queue.add((meta["namespace"], ref["name"]))

    def _on_pod(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if (meta.get("labels") or {}).get("cdi.kubevirt.io") != "importer":
            return
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "PersistentVolumeClaim":  # the PVC carries the DataVolume's name
                self.queue.add((meta["namespace"], ref["name"]))

    def start(self) -> ControllerManager:
        for informer in self.informers:
            informer.start()
        self.loop.start()
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.loop.stop()
