"""Golden images: the DataSource and DataImportCron reconcilers and what wakes them, beside the
DataVolume manager (which owns the DataVolume and PVC informers and passes their events on here).

Small in-memory indexes stand in for controller-runtime's field indexers: which DataSources name a
PVC (or another DataSource), which DataVolumes refer to a DataSource, and which cron made an object
(its ``cdi.kubevirt.io/dataImportCron`` label). So a DataSource is reconciled when its PVC or that
PVC's DataVolume changes, a DataVolume waiting on a DataSource is woken when the DataSource changes,
and a cron when one of its imports or its DataSource does. ``tick()`` wakes every cron (a test clock
moved, or a scheduler that wants a poll now).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from cdi.controller.dataimportcron import LABEL_CRON, Clock, DataImportCronReconciler, utcnow
from cdi.controller.datasource import DataSourceReconciler
from cdi.controller.sourceref import ref_key
from cdi.kube import DATAIMPORTCRON, DATASOURCE, Client, Informer, Key, Obj, WorkQueue
from cdi.kube.loop import ReconcileLoop

log = logging.getLogger(__name__)


def _key(obj: Obj) -> Key:
    return str(obj["metadata"].get("namespace") or ""), str(obj["metadata"]["name"])


class _Index:
    """A many-to-many map from a watched key to the keys that care about it, updated per object."""

    def __init__(self) -> None:
        self._by_target: dict[Key, set[Key]] = defaultdict(set)
        self._of: dict[Key, Key] = {}

    def assign(self, who: Key, target: Key | None) -> None:
        old = self._of.pop(who, None)
        if old is not None:
            self._by_target[old].discard(who)
        if target is not None:
            self._of[who] = target
            self._by_target[target].add(who)

    def watchers(self, target: Key) -> set[Key]:
        return set(self._by_target.get(target, ()))


class GoldenImages:
    def __init__(self, client: Client, dv_queue: WorkQueue, *, workers: int = 2, now: Clock = utcnow) -> None:
        self.client = client
        self.dv_queue = dv_queue
        self.datasources = ReconcileLoop("datasource", DataSourceReconciler(client).reconcile, workers)
        self.crons = ReconcileLoop("dataimportcron", DataImportCronReconciler(client, now=now).reconcile, workers)
        self.informers = [Informer(client, DATASOURCE), Informer(client, DATAIMPORTCRON)]
        self.informers[0].add_handler(self.on_datasource)
        self.informers[1].add_handler(self.on_cron)
        self._lock = threading.Lock()
        self._pvc_of_ds = _Index()  # DataSource -> the PVC (and DataVolume) it names
        self._ds_of_ds = _Index()  # DataSource -> the DataSource it references
        self._ds_of_dv = _Index()  # DataVolume -> the DataSource of its sourceRef
        self._known_crons: set[Key] = set()

    # -- events ------------------------------------------------------------------------------------

    def on_datasource(self, etype: str, ds: Obj) -> None:
        key = _key(ds)
        source = ((ds.get("spec") or {}).get("source")) or {}
        pvc, ref = source.get("pvc"), source.get("dataSource")
        deleted = etype == "DELETED"
        with self._lock:
            self._pvc_of_ds.assign(key, None if deleted or not isinstance(pvc, dict) else
                                (str(pvc.get("namespace") or key[0]), str(pvc.get("name") or "")))
            self._ds_of_ds.assign(key, None if deleted or not isinstance(ref, dict) else
                               (str(ref.get("namespace") or key[0]), str(ref.get("name") or "")))
            referrers = self._ds_of_ds.watchers(key)
            waiting = self._ds_of_dv.watchers(key)
        self.datasources.queue.add(key)
        for other in referrers:
            self.datasources.queue.add(other)
        for dv in waiting:
            self.dv_queue.add(dv)
        self._wake_cron(ds)

    def on_cron(self, etype: str, cron: Obj) -> None:
        key = _key(cron)
        with self._lock:
            if etype == "DELETED":
                self._known_crons.discard(key)
            else:
                self._known_crons.add(key)
        self.crons.queue.add(key)

    def on_datavolume(self, etype: str, dv: Obj) -> None:
        key = _key(dv)
        with self._lock:
            self._ds_of_dv.assign(key, None if etype == "DELETED" else ref_key(dv))
            watchers = self._pvc_of_ds.watchers(key)
        for ds in watchers:
            self.datasources.queue.add(ds)
        self._wake_cron(dv)

    def on_pvc(self, etype: str, pvc: Obj) -> None:
        with self._lock:
            watchers = self._pvc_of_ds.watchers(_key(pvc))
        for ds in watchers:
            self.datasources.queue.add(ds)
        if etype == "DELETED":
            self._wake_cron(pvc)

    def _wake_cron(self, obj: Obj) -> None:
        name = (obj["metadata"].get("labels") or {}).get(LABEL_CRON)
        if name:
            self.crons.queue.add((str(obj["metadata"]["namespace"]), name))

    def tick(self) -> None:
        """Reconcile every DataImportCron now (each polls only if its schedule says it is due)."""
        with self._lock:
            crons = list(self._known_crons)
        for key in crons:
            self.crons.queue.add(key)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> GoldenImages:
        for informer in self.informers:
            informer.start()
        self.datasources.start()
        self.crons.start()
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.datasources.stop()
        self.crons.stop()
