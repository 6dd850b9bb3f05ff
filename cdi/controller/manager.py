"""Runs reconcilers: informers feed a work queue, worker threads reconcile one key at a time each.

Different DataVolumes are reconciled in parallel; the same one never twice at once (``WorkQueue``).
Errors requeue the key with exponential back-off; a reconciler's returned delay requeues it after that.
"""

from __future__ import annotations

import logging
import threading

from cdi.controller.datavolume import DataVolumeReconciler
from cdi.controller.resources import ControllerSettings
from cdi.kube import DATAVOLUME, POD, PVC, ApiError, Client, Conflict, Informer, Key, Obj, WorkQueue

log = logging.getLogger(__name__)


class ControllerManager:
    def __init__(self, client: Client, settings: ControllerSettings | None = None, *, workers: int = 4) -> None:
        self.client = client
        self.settings = settings or ControllerSettings()
        self.reconciler = DataVolumeReconciler(client, self.settings)
        self.queue = WorkQueue()
        self.workers = workers
        self._failures: dict[Key, int] = {}
        self._threads: list[threading.Thread] = []
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
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"dv-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.queue.close()

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                delay = self.reconciler.reconcile(*key)
                self._failures.pop(key, None)
                if delay is not None:
                    self.queue.add_after(key, delay)
            except Conflict:
                self.queue.add_after(key, 0.05)
            except ApiError as e:
                self._retry(key, e)
            except Exception as e:
                log.exception("[%s/%s] reconcile crashed", *key)
                self._retry(key, e)
            finally:
                self.queue.done(key)

    def _retry(self, key: Key, error: Exception) -> None:
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        delay = min(0.2 * 2 ** (n - 1), 60.0)
        log.warning("[%s/%s] reconcile failed attempt=%d retry_in=%.1fs error=%s", *key, n, delay, error)
        self.queue.add_after(key, delay)
