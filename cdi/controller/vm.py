"""The VirtualMachine reconciler: DataVolumes from templates, the VMI by runStrategy, printableStatus.

From the VM's current state (read fresh), in one pass:

1. every ``dataVolumeTemplates`` entry exists as a DataVolume owned by the VM;
2. ``status.stateChangeRequests`` (written by the start/stop/restart subresources) are served: a
   Stop request deletes the VMI it names and is dropped once that VMI is gone; a Start request lets
   a Manual (or finished RerunOnFailure) VM create its VMI and is dropped once it exists;
3. the runStrategy decides (KubeVirt's semantics; ``running: true|false`` means Always|Halted):
   Always keeps a VMI running and replaces a finished one; RerunOnFailure replaces only a Failed
   one; Once runs one VMI and keeps it once finished; Manual starts only on request; Halted
   deletes the VMI. The VMI is created only when every DataVolume has Succeeded;
4. a VMI that failed before ever running counts as a start failure: the next start waits
   ``start_backoff(n)`` (KubeVirt's schedule: 10 s x n² plus jitter, at most 300 s) and the VM
   shows CrashLoopBackOff meanwhile;
5. ``status``: printableStatus (Stopped, Provisioning, Starting, Running, Stopping, Terminating,
   CrashLoopBackOff, DataVolumeError), created, ready, the Ready condition, runStrategy, startFailure.
"""

from __future__ import annotations

import copy
import logging
import random
from datetime import UTC, datetime, timedelta

from cdi.controller.launcher_pod import owner_ref
from cdi.controller.vmi import VM, VMI, VMI_FINALIZER, deleting, is_final, phase_of
from cdi.kube import DATAVOLUME, AlreadyExists, Client, NotFound, Obj, now_iso

log = logging.getLogger(__name__)

COMPONENT = "virtualmachine-controller"
MAX_START_DELAY = 300


def run_strategy(vm: Obj) -> str:
    spec = vm.get("spec") or {}
    if spec.get("runStrategy"):
        return str(spec["runStrategy"])
    return "Always" if spec.get("running") else "Halted"


def start_backoff(fail_count: int, max_delay: int = MAX_START_DELAY) -> int:
    """Seconds before the next start after ``fail_count`` consecutive early failures."""
    interval = max(10, max_delay // 30)
    delay = interval * max(fail_count, 1) ** 2
    delay += random.randrange(delay // 2 + 1)
    return min(delay, max_delay)


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def failed_early(vmi: Obj) -> bool:
    """Failed without ever reaching Running (KubeVirt's rule for counting start failures)."""
    stamps = (vmi.get("status") or {}).get("phaseTransitionTimestamps") or []
    return phase_of(vmi) == "Failed" and not any(s.get("phase") == "Running" for s in stamps)


class VmReconciler:
    def __init__(self, client: Client) -> None:
        self.client = client

    def reconcile(self, namespace: str, name: str) -> float | None:
        vm = self.client.find(VM, namespace, name)
        if vm is None or deleting(vm):
            return None  # its VMI and DataVolumes are collected with it: never create one for it now
        status = copy.deepcopy(vm.get("status") or {})
        strategy = run_strategy(vm)
        dv_phases = self._data_volumes(vm)
        dv_failed = [n for n, p in dv_phases.items() if p == "Failed"]
        dvs_ready = all(p == "Succeeded" for p in dv_phases.values())
        vmi = self._get_vmi(namespace, name)
        requests = list(status.get("stateChangeRequests") or [])
        requeue: float | None = None

        if requests and requests[0].get("action") == "Stop":
            uid = requests[0].get("uid")
            if vmi is not None and (not uid or uid == vmi["metadata"]["uid"]):
                self._delete_vmi(vm, vmi, "stop requested")
            else:
                requests.pop(0)
        start_requested = bool(requests) and requests[0].get("action") == "Start"

        if vmi is not None and not deleting(vmi):
            if vmi and phase_of(vmi) == "Running":
                status.pop("startFailure", None)
            if strategy == "Halted":
                self._delete_vmi(vm, vmi, "runStrategy Halted")
            elif is_final(vmi) and (strategy == "Always" or (strategy == "RerunOnFailure"
                                                             and phase_of(vmi) == "Failed")):
                if failed_early(vmi):
                    status["startFailure"] = self._start_failure(status.get("startFailure"), vmi)
                self._delete_vmi(vm, vmi, f"runStrategy {strategy}: restarting a {phase_of(vmi)} VMI")
        wants = strategy in ("Always", "RerunOnFailure", "Once") or (strategy == "Manual" and start_requested)
        waiting = self._backoff_remaining(status)
        if vmi is None and wants and dvs_ready and not dv_failed:
            if waiting > 0:
                requeue = waiting
            else:
                vmi = self._create_vmi(vm)
                if start_requested:
                    requests.pop(0)
        if requests:
            status["stateChangeRequests"] = requests
        else:
            status.pop("stateChangeRequests", None)
        status.update(self._printable(vm, vmi, wants=wants, dv_failed=dv_failed, dvs_ready=dvs_ready,
                                      waiting=waiting, strategy=strategy, old=status))
        if status != (vm.get("status") or {}):
            body = {"apiVersion": VM.api_version, "kind": VM.kind, "metadata": vm["metadata"], "status": status}
            self.client.replace(VM, body, status=True)
        return requeue

    # -- owned objects --------------------------------------------------------------------------------

    def _data_volumes(self, vm: Obj) -> dict[str, str]:
        ns = vm["metadata"]["namespace"]
        phases: dict[str, str] = {}
        for tmpl in (vm.get("spec") or {}).get("dataVolumeTemplates") or []:
            meta = tmpl.get("metadata") or {}
            name = meta["name"]
            try:
                dv = self.client.get(DATAVOLUME, ns, name)
            except NotFound:
                body = {"apiVersion": DATAVOLUME.api_version, "kind": DATAVOLUME.kind,
                        "metadata": {"name": name, "namespace": ns, "labels": meta.get("labels") or {},
                                     "annotations": meta.get("annotations") or {},
                                     "ownerReferences": [owner_ref(vm)]},
                        "spec": copy.deepcopy(tmpl.get("spec") or {})}
                try:
                    dv = self.client.create(DATAVOLUME, body)
                    self.client.event(vm, reason="SuccessfulDataVolumeCreate", component=COMPONENT,
                                      message=f"Created DataVolume {name}")
                except AlreadyExists:
                    dv = self.client.get(DATAVOLUME, ns, name)
            phases[name] = str((dv.get("status") or {}).get("phase") or "Pending")
        return phases

    def _get_vmi(self, namespace: str, name: str) -> Obj | None:
        try:
            vmi = self.client.get(VMI, namespace, name)
        except NotFound:
            return None
        vmi.setdefault("apiVersion", VMI.api_version)
        vmi.setdefault("kind", VMI.kind)
        return vmi

    def _create_vmi(self, vm: Obj) -> Obj:
        meta = vm["metadata"]
        template = (vm.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), "kubevirt.io/vm": meta["name"]}
        body = {"apiVersion": VMI.api_version, "kind": VMI.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
                             "annotations": tmeta.get("annotations") or {},
                             "ownerReferences": [owner_ref(vm)], "finalizers": [VMI_FINALIZER]},
                "spec": copy.deepcopy(template.get("spec") or {})}
        vmi = self.client.create(VMI, body)
        vmi.setdefault("apiVersion", VMI.api_version)
        vmi.setdefault("kind", VMI.kind)
        log.info("[%s/%s] created VMI", meta["namespace"], meta["name"])
        self.client.event(vm, reason="SuccessfulCreate", component=COMPONENT,
                          message=f"Started the virtual machine by creating the new virtual machine instance "
                                  f"{meta['name']}")
        return vmi

    def _delete_vmi(self, vm: Obj, vmi: Obj, why: str) -> None:
        if deleting(vmi):
            return
        meta = vmi["metadata"]
        try:
            self.client.delete(VMI, meta["namespace"], meta["name"])
        except NotFound:
            return
        vmi["metadata"]["deletionTimestamp"] = now_iso()
        log.info("[%s/%s] deleting VMI: %s", meta["namespace"], meta["name"], why)
        self.client.event(vm, reason="SuccessfulDelete", component=COMPONENT,
                          message=f"Stopped the virtual machine by deleting the virtual machine instance "
                                  f"{meta['uid']} ({why})")

    # -- status ---------------------------------------------------------------------------------------

    def _start_failure(self, old: Obj | None, vmi: Obj) -> Obj:
        old = old or {}
        if old.get("lastFailedVMIUID") == vmi["metadata"]["uid"]:
            return old
        count = int(old.get("consecutiveFailCount") or 0) + 1
        retry = datetime.now(UTC) + timedelta(seconds=start_backoff(count))
        return {"retries": int(old.get("retries") or 0) + 1, "consecutiveFailCount": count,
                "lastFailedVMIUID": vmi["metadata"]["uid"],
                "retryAfterTimestamp": retry.strftime("%Y-%m-%dT%H:%M:%SZ")}

    @staticmethod
    def _backoff_remaining(status: Obj) -> float:
        retry = _parse_time((status.get("startFailure") or {}).get("retryAfterTimestamp"))
        return max(0.0, (retry - datetime.now(UTC)).total_seconds()) if retry else 0.0

    def _printable(self, vm: Obj, vmi: Obj | None, *, wants: bool, dv_failed: list[str], dvs_ready: bool,
                   waiting: float, strategy: str, old: Obj) -> Obj:
        ready = vmi is not None and not deleting(vmi) and phase_of(vmi) == "Running" and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (vmi.get("status") or {}).get("conditions") or [])
        if deleting(vm):
            printable = "Terminating"
        elif vmi is not None and deleting(vmi):
            printable = "Stopping"
        elif vmi is not None and phase_of(vmi) == "Running":
            printable = "Running"
        elif vmi is not None and not is_final(vmi):
            printable = "Starting"
        elif dv_failed:
            printable = "DataVolumeError"
        elif wants and waiting > 0:
            printable = "CrashLoopBackOff"
        elif wants and vmi is None and not dvs_ready:
            printable = "Provisioning"
        elif wants and vmi is None:
            printable = "Starting"
        else:
            printable = "Stopped"
        reason = {"DataVolumeError": "DataVolumeError", "CrashLoopBackOff": "CrashLoopBackOff",
                  "Provisioning": "Provisioning"}.get(printable, "" if ready else "VMINotRunning")
        message = f"DataVolume {', '.join(dv_failed)} failed" if dv_failed else ""
        prev: Obj = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {})
        state = "True" if ready else "False"
        cond: Obj = {"type": "Ready", "status": state, "lastProbeTime": None,
                     "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == state
                     else now_iso()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return {"printableStatus": printable, "created": vmi is not None, "ready": ready,
                "runStrategy": strategy, "conditions": [cond]}
