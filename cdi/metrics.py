"""Prometheus metrics with CDI's names (doc/metrics.md of KubeVirt CDI), through prometheus-client.

``DataVolumeMetrics`` is fed by the controllers' DataVolume informer and answers at scrape time from
what it saw, so the numbers are the DataVolumes' own status (the progress the controllers wrote from
the workers' progress reports):

- ``kubevirt_cdi_import_progress_total``, ``kubevirt_cdi_clone_progress_total`` and
  ``kubevirt_cdi_upload_progress_total``: the progress in percent, labelled ``ownerUID`` (the
  DataVolume's uid, the OWNER_UID of its worker pod) as CDI labels them; gone when the DataVolume is.
- ``kubevirt_cdi_datavolume_pending``: DataVolumes in phase Pending (their claim is not bound yet).
- ``kubevirt_cdi_datavolume_phase``: DataVolumes per phase (a gauge for dashboards).
- ``kubevirt_cdi_cr_ready``: 1 while these controllers run (and, with leader election, lead).

One ``CollectorRegistry`` per process serves ``/metrics`` of the embedded API server and of
``cdi controller --metrics-port``. Worker pods serve their own progress as CDI's do
(``serve_worker_progress``): the importer ``kubevirt_cdi_import_progress_total`` and the cloner
``kubevirt_cdi_clone_progress_total`` for their OWNER_UID, on the container port named ``metrics``
(8443, plain HTTP) that the controller declares and passes as METRICS_PORT.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

Obj = dict[str, Any]

IMPORT_PROGRESS = "kubevirt_cdi_import_progress_total"
CLONE_PROGRESS = "kubevirt_cdi_clone_progress_total"
UPLOAD_PROGRESS = "kubevirt_cdi_upload_progress_total"
DATAVOLUME_PENDING = "kubevirt_cdi_datavolume_pending"
DATAVOLUME_PHASE = "kubevirt_cdi_datavolume_phase"
CR_READY = "kubevirt_cdi_cr_ready"
CONTENT_TYPE = CONTENT_TYPE_LATEST
WORKER_METRICS_PORT = 8443  # CDI's worker pods serve /metrics on 8443, port name "metrics"

_PROGRESS = {"import": (IMPORT_PROGRESS, "The import progress in percentage"),
             "clone": (CLONE_PROGRESS, "The clone progress in percentage"),
             "upload": (UPLOAD_PROGRESS, "The upload progress in percentage")}


def operation(dv: Obj) -> str:
    """import, clone or upload: what the DataVolume's source makes of it."""
    source = (dv.get("spec") or {}).get("source") or {}
    if "upload" in source:
        return "upload"
    if "pvc" in source or "snapshot" in source or "sourceRef" in (dv.get("spec") or {}):
        return "clone"
    return "import"


def percent(text: object) -> float | None:
    """``"45.20%"`` as 45.2; None for N/A or nothing."""
    if not isinstance(text, str) or not text.endswith("%"):
        return None
    try:
        return float(text[:-1])
    except ValueError:
        return None


class DataVolumeMetrics(Collector):
    """CDI's DataVolume metrics from the objects an informer hands to ``on_event``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dvs: dict[str, tuple[str, str, float | None]] = {}  # uid -> (operation, phase, progress)
        self.ready = False

    def on_event(self, etype: str, dv: Obj) -> None:
        uid = str((dv.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        with self._lock:
            if etype == "DELETED":
                self._dvs.pop(uid, None)
                return
            status = dv.get("status") or {}
            self._dvs[uid] = (operation(dv), str(status.get("phase") or "Pending"), percent(status.get("progress")))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        with self._lock:
            dvs = dict(self._dvs)
        families = {op: CounterMetricFamily(name, help_text, labels=["ownerUID"])
                    for op, (name, help_text) in _PROGRESS.items()}
        for uid, (op, _, progress) in sorted(dvs.items()):
            if progress is not None:
                families[op].add_metric([uid], progress)
        yield from families.values()
        phases = Counter(phase for _, phase, _ in dvs.values())
        yield GaugeMetricFamily(DATAVOLUME_PENDING, "Number of DataVolumes pending (their claim is not bound yet)",
                                value=phases.get("Pending", 0))
        by_phase = GaugeMetricFamily(DATAVOLUME_PHASE, "Number of DataVolumes in each phase", labels=["phase"])
        for phase, count in sorted(phases.items()):
            by_phase.add_metric([phase], count)
        yield by_phase
        yield GaugeMetricFamily(CR_READY, "CDI install ready", value=1 if self.ready else 0)


class WorkerProgress(Collector):
    """One worker's progress in percent, read from the worker at scrape time."""

    def __init__(self, name: str, owner_uid: str, percent: Callable[[], float]) -> None:
        self.name, self.owner_uid, self.percent = name, owner_uid, percent

    def collect(self) -> Iterator[CounterMetricFamily]:
        help_text = next((h for n, h in _PROGRESS.values() if n == self.name), "Progress in percentage")
        family = CounterMetricFamily(self.name, help_text, labels=["ownerUID"])
        family.add_metric([self.owner_uid], self.percent())
        yield family


def serve_worker_progress(name: str, percent: Callable[[], float], environ: Mapping[str, str]) -> int | None:
    """In a worker pod: serve ``name{ownerUID=$OWNER_UID}`` on $METRICS_PORT (the local node's host port
    for it, ``CDI_PORT_<port>``, on one machine). Returns the port, or None when the pod asks for none."""
    declared = environ.get("METRICS_PORT")
    if not declared:
        return None
    local = environ.get(f"CDI_PORT_{declared}")  # the local node: every pod is 127.0.0.1 with its own port
    port = int(local or declared)
    serve(new_registry(WorkerProgress(name, environ.get("OWNER_UID", ""), percent)), port,
          "127.0.0.1" if local else "0.0.0.0")  # noqa: S104 (a pod's port)
    return port


def new_registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(registry)


def serve(registry: CollectorRegistry, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 (a pod's port)
    """``/metrics`` on its own port (``cdi controller --metrics-port``), in a daemon thread."""
    start_http_server(port, addr=address, registry=registry)
