"""Runs reconcilers: informers feed a work queue, worker threads reconcile one key at a time each.

Different DataVolumes are reconciled in parallel; the same one never twice at once (``WorkQueue``).
Errors requeue the key with exponential back-off; a reconciler's returned delay requeues it after that.
DataSources and DataImportCrons run beside (``golden``), fed by the same DataVolume and PVC informers; a
registry DataVolume whose digest is already in a volume of its namespace is a clone (``imagecache``).
"""

from __future__ import annotations

import logging

from cdi.clonetoken import TokenCheck
from cdi.controller import sourceref
from cdi.controller.clone import CloneReconciler, is_clone_dv
from cdi.controller.dataimportcron import Clock, utcnow
from cdi.controller.datavolume import DataVolumeReconciler
from cdi.controller.golden import GoldenImages
from cdi.controller.imagecache import ImageCache
from cdi.controller.resources import ControllerSettings
from cdi.controller.upload import UploadReconciler, is_upload_dv, is_upload_target
from cdi.kube import DATAVOLUME, POD, PVC, Client, Informer, Obj
from cdi.kube.loop import ReconcileLoop

log = logging.getLogger(__name__)

WORKER_POD_SELECTOR = "cdi.kubevirt.io"  # the label exists (its value names the worker)


class ControllerManager:
    def __init__(self, client: Client, settings: ControllerSettings | None = None, *, workers: int = 4,
                 clone_tokens: TokenCheck | None = None, now: Clock = utcnow) -> None:
        self.client = client
        self.settings = settings or ControllerSettings()
        self.reconciler = DataVolumeReconciler(client, self.settings)
        self.clones = CloneReconciler(client, self.settings, clone_tokens)
        self.uploads = UploadReconciler(client, self.settings)
        self.cache = ImageCache(client, self.settings)
        self.loop = ReconcileLoop("datavolume", self._reconcile_dv, workers)
        self.queue = self.loop.queue
        self.upload_loop = ReconcileLoop("upload", self.uploads.reconcile_pvc, workers)
        # DataSources and DataImportCrons (``now``: the cron schedule's clock).
        self.golden = GoldenImages(client, self.queue, now=now)
        # Only CDI's worker pods (importer, upload server, cloner carry the cdi.kubevirt.io label), not every
        # pod of the cluster.
        self.informers = [Informer(client, DATAVOLUME), Informer(client, PVC),
                          Informer(client, POD, label_selector=WORKER_POD_SELECTOR)]
        self.informers[0].add_handler(self._on_dv)
        self.informers[0].add_handler(self.golden.on_datavolume)
        self.informers[1].add_handler(self._on_owned)
        self.informers[1].add_handler(self.golden.on_pvc)
        self.informers[2].add_handler(self._on_pod)

    def _reconcile_dv(self, namespace: str, name: str) -> float | None:
        dv = self.client.find(DATAVOLUME, namespace, name)
        if dv is not None and is_upload_dv(dv) and not dv["metadata"].get("deletionTimestamp"):
            return self.uploads.reconcile_dv(dv)
        if dv is not None and is_clone_dv(dv) and not dv["metadata"].get("deletionTimestamp"):
            return self.clones.reconcile(dv)
        if dv is not None and not dv["metadata"].get("deletionTimestamp"):
            cached = self.cache.source_for(dv)  # a registry digest imported before: clone that volume
            if cached is not None:
                return self.clones.reconcile(sourceref.with_pvc_source(dv, *cached, via="cache"))
        if dv is None or dv["metadata"].get("deletionTimestamp"):
            self.clones.release(namespace, name)
        return self.reconciler.reconcile(namespace, name)

    def _on_dv(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.queue.add((meta["namespace"], meta["name"]))

    def _on_owned(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if is_upload_target(obj):
            self.upload_loop.queue.add((meta["namespace"], meta["name"]))
        owners = [ref["name"] for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "DataVolume"]
        for owner in owners:
            self.queue.add((meta["namespace"], owner))
        if not owners:
            # a claim of no DataVolume's may stand in the way of the DataVolume of its name (NotOwned):
            # when it changes or goes, that DataVolume is looked at again
            self.queue.add((meta["namespace"], meta["name"]))

    def _on_pod(self, etype: str, obj: Obj) -> None:
        meta = obj["metadata"]
        component = (meta.get("labels") or {}).get("cdi.kubevirt.io")
        if component == "cdi-upload-server":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "PersistentVolumeClaim":
                    self.upload_loop.queue.add((meta["namespace"], ref["name"]))
            return
        if component not in ("importer", "cdi-clone"):
            return
        target = (meta.get("annotations") or {}).get("cdi.kubevirt.io/clone.target")
        if component == "cdi-clone" and target and "/" in target:  # a clone's source pod, in the source namespace
            namespace, name = target.split("/", 1)
            self.queue.add((namespace, name))
            return
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "PersistentVolumeClaim":  # the PVC carries the DataVolume's name
                self.queue.add((meta["namespace"], ref["name"]))

    def start(self) -> ControllerManager:
        for informer in self.informers:
            informer.start()
        self.loop.start()
        self.upload_loop.start()
        self.golden.start()
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.golden.stop()
        self.loop.stop()
        self.upload_loop.stop()
