"""The VirtualMachineInstance reconciler: one launcher pod per VMI, and the VMI's phase from it.

Phases as KubeVirt: Pending (no pod yet), Scheduling (pod created, not running), Scheduled (the
launcher runs, the guest is not started yet), Running (the launcher reports qemu running), Succeeded
(the guest powered off) and Failed (qemu failed or the pod vanished). The launcher's progress comes
through the API only: while it starts, its ``{"launcherStatus": ...}`` stdout lines are read with
``pod_log``; its final status is the compute container's termination message. The accelerator it
chose (KVM or TCG, and why) goes to ``status.accelerator`` and an ``Accelerator`` event.

Deletion: a VMI carries a finalizer; on deletion its pod is deleted (the node sends SIGTERM, the
launcher powers the guest down), and the pod's and then the VMI's finalizers are removed once no
container runs, so a deleted VMI means a stopped qemu.
"""

from __future__ import annotations

import copy
import logging

from cdi.controller.launcher_pod import (
    LAUNCHER_FINALIZER,
    claim_of,
    compute_running,
    launcher_pod,
    launcher_status,
    pod_stopped,
    termination_status,
)
from cdi.kube import POD, PVC, ApiError, Client, Kind, NotFound, Obj, now_iso

log = logging.getLogger(__name__)

VM = Kind("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
VMI = Kind("kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances")
VMI_FINALIZER = "kubevirt.io/foregroundDeleteVirtualMachine"
FINAL_PHASES = ("Succeeded", "Failed")
STARTING_POLL = 0.25  # seconds between reads of the launcher's log until the guest runs
COMPONENT = "virtualmachineinstance-controller"


def phase_of(vmi: Obj | None) -> str:
    return str(((vmi or {}).get("status") or {}).get("phase") or "")


def is_final(vmi: Obj | None) -> bool:
    return phase_of(vmi) in FINAL_PHASES


def deleting(obj: Obj | None) -> bool:
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


def _condition(ready: bool, reason: str, message: str, old: Obj) -> Obj:
    status = "True" if ready else "False"
    prev: Obj = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), {})
    since = prev.get("lastTransitionTime") if prev.get("status") == status else now_iso()
    cond: Obj = {"type": "Ready", "status": status, "lastProbeTime": None, "lastTransitionTime": since}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


class VmiReconciler:
    def __init__(self, client: Client) -> None:
        self.client = client

    def reconcile(self, namespace: str, name: str) -> float | None:
        vmi = self.client.find(VMI, namespace, name)
        if vmi is None:
            return None
        uid = vmi["metadata"]["uid"]
        pods, _ = self.client.list(POD, namespace, label_selector=f"kubevirt.io/created-by={uid}")
        if deleting(vmi):
            return self._finish_deletion(vmi, pods)
        finalizers = vmi["metadata"].get("finalizers") or []
        if VMI_FINALIZER not in finalizers:
            vmi = self.client.patch(VMI, namespace, name, {"metadata": {"finalizers": [*finalizers, VMI_FINALIZER]}})
        if is_final(vmi):
            return None
        pod = next((p for p in pods if not deleting(p)), None)
        if pod is None and pods:
            return self._set(vmi, "Failed", reason="PodTerminating", message="the launcher pod is being deleted")
        if pod is None:
            if phase_of(vmi) not in ("", "Pending"):
                return self._set(vmi, "Failed", reason="PodVanished", message="the launcher pod disappeared")
            return self._create_pod(vmi)
        return self._follow(vmi, pod)

    # -- steps --------------------------------------------------------------------------------------

    def _create_pod(self, vmi: Obj) -> float | None:
        meta = vmi["metadata"]
        block: set[str] = set()
        for vol in (vmi.get("spec") or {}).get("volumes") or []:
            claim = claim_of(vol)
            if claim is None:
                continue
            try:
                pvc = self.client.get(PVC, meta["namespace"], claim)
            except NotFound:
                return self._set(vmi, "Pending", reason="PvcNotFound",
                                 message=f"PersistentVolumeClaim {claim} of volume {vol['name']} does not exist",
                                 requeue=2.0)
            if (pvc.get("spec") or {}).get("volumeMode") == "Block":
                block.add(claim)
        pod = self.client.create(POD, launcher_pod(vmi, block))
        pod_name = pod["metadata"]["name"]
        log.info("[%s/%s] created launcher pod %s", meta["namespace"], meta["name"], pod_name)
        self.client.event(vmi, reason="SuccessfulCreate", message=f"Created virtual machine pod {pod_name}",
                          component=COMPONENT)
        return self._set(vmi, "Scheduling")

    def _follow(self, vmi: Obj, pod: Obj) -> float | None:
        final = termination_status(pod)
        pod_phase = (pod.get("status") or {}).get("phase")
        if final is not None or pod_phase in FINAL_PHASES:
            final = final or {}
            self._note_accel(vmi, final)
            ok = final.get("exitCode") == 0 and final.get("phase", "Succeeded") == "Succeeded"
            phase = "Succeeded" if ok else "Failed"
            reason = str(final.get("reason") or ("GuestShutdown" if ok else "Error"))
            return self._set(vmi, phase, reason=reason, message=str(final.get("message") or ""), pod=pod)
        if not compute_running(pod):
            return self._set(vmi, "Scheduling", pod=pod)
        current = phase_of(vmi)
        if current == "Running":
            return self._set(vmi, "Running", pod=pod)
        try:
            status = launcher_status(self.client.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"],
                                                         container="compute", tail_lines=40))
        except ApiError as e:
            log.debug("cannot read the launcher log error=%s", e)
            status = None
        self._note_accel(vmi, status or {})
        if status and status.get("phase") == "Running":
            return self._set(vmi, "Running", pod=pod)
        self._set(vmi, "Scheduled", pod=pod)
        return STARTING_POLL

    def _finish_deletion(self, vmi: Obj, pods: list[Obj]) -> float | None:
        ns = vmi["metadata"]["namespace"]
        for pod in pods:
            pname = pod["metadata"]["name"]
            if not deleting(pod):
                self.client.delete(POD, ns, pname)
            elif pod_stopped(pod):
                rest = [f for f in pod["metadata"].get("finalizers") or [] if f != LAUNCHER_FINALIZER]
                self.client.patch(POD, ns, pname, {"metadata": {"finalizers": rest or None}})
        if pods:
            return 0.5
        rest = [f for f in vmi["metadata"].get("finalizers") or [] if f != VMI_FINALIZER]
        self.client.patch(VMI, ns, vmi["metadata"]["name"], {"metadata": {"finalizers": rest or None}})
        return None

    # -- status ---------------------------------------------------------------------------------------

    def _note_accel(self, vmi: Obj, status: Obj) -> None:
        accel = status.get("accel")
        if not accel or (vmi.get("status") or {}).get("accelerator", {}).get("name") == str(accel).upper():
            return
        name, reason = str(accel).upper(), str(status.get("accelReason") or "")
        vmi.setdefault("status", {})["accelerator"] = {"name": name, "reason": reason}
        self.client.event(vmi, reason="Accelerator", component=COMPONENT,
                          message=f"Using {name}" + (f": {reason}" if reason else ""))

    def _set(self, vmi: Obj, phase: str, *, reason: str = "", message: str = "", pod: Obj | None = None,
             requeue: float | None = None) -> float | None:
        old = vmi.get("status") or {}
        status = copy.deepcopy(old)
        status["phase"] = phase
        for key, value in (("reason", reason), ("message", message)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        stamps = list(old.get("phaseTransitionTimestamps") or [])
        if not stamps or stamps[-1].get("phase") != phase:
            stamps.append({"phase": phase, "phaseTransitionTimestamp": now_iso()})
        status["phaseTransitionTimestamps"] = stamps
        if pod is not None:
            pstatus = pod.get("status") or {}
            status["nodeName"] = pod.get("spec", {}).get("nodeName") or status.get("nodeName") or "cdi-local"
            status["activePods"] = {pod["metadata"]["uid"]: status["nodeName"]}
            ip = pstatus.get("podIP")
            if phase == "Running" and ip:
                status["interfaces"] = [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}]
        if phase in FINAL_PHASES:
            status.pop("interfaces", None)
        ready = phase == "Running"
        why = "" if ready else ("PodTerminated" if phase in FINAL_PHASES else "GuestNotRunning")
        status["conditions"] = [_condition(ready, why, message if phase == "Failed" else "", old)]
        if status != old:
            meta = vmi["metadata"]
            body = {"apiVersion": VMI.api_version, "kind": VMI.kind, "metadata": meta, "status": status}
            self.client.replace(VMI, body, status=True)
            if phase != old.get("phase"):
                log.info("[%s/%s] phase=%s reason=%s", meta["namespace"], meta["name"], phase, reason)
                self._phase_event(vmi, phase, reason, message)
        return requeue

    def _phase_event(self, vmi: Obj, phase: str, reason: str, message: str) -> None:
        if phase == "Running":
            self.client.event(vmi, reason="Started", message="VirtualMachineInstance started.", component=COMPONENT)
        elif phase == "Succeeded":
            self.client.event(vmi, reason="Stopped", component=COMPONENT,
                              message="The VirtualMachineInstance was shut down.")
        elif phase == "Failed":
            self.client.event(vmi, reason=reason or "Failed", type="Warning", component=COMPONENT,
                              message=message or "The VirtualMachineInstance crashed.")
