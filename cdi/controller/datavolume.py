"""The DataVolume reconciler for import sources (http, s3, registry, blank).

``reconcile(namespace, name)`` reads the DataVolume, its PVC and its importer pod fresh, creates what
is missing, and computes phase, conditions, progress and restartCount in one place, writing the status
only when it changed. The outcome of an import is recorded on the PVC (annotations, as CDI does), so a
finished or permanently failed import is never run again, even after a restart of the controller.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cdi.controller import conditions as c
from cdi.controller import scratch
from cdi.controller.dvstatus import mark_failed, mark_succeeded, record_on_claim, working_status, write_status
from cdi.controller.resources import (
    ANN_CREATED_BY,
    ANN_DIGEST,
    ANN_IMPORT_MESSAGE,
    ANN_IMPORT_REASON,
    ANN_POD_PHASE,
    ANN_RETAIN_POD,
    ANN_SOURCE_CHECKSUM,
    ANN_SOURCE_DIGEST,
    ControllerSettings,
    build_importer_pod,
    build_pvc,
    importer_pod_name,
)
from cdi.controller.scratch import ANN_REQUIRES_SCRATCH
from cdi.kube import DATAVOLUME, EVENT, POD, PVC, AlreadyExists, ApiError, Client, NotFound, Obj, PermanentError
from cdi.kube.kinds import CDICONFIG
from cdi.kube.storage import waits_for_first_consumer

log = logging.getLogger(__name__)

SUPPORTED_SOURCES = ("http", "s3", "registry", "blank")
PENDING_RECHECK = 5.0
SCRATCH_RECHECK = 0.5  # a scratch claim's or an old pod's changes do not touch the DataVolume: look again


def termination(cs: Obj) -> dict[str, Any] | None:
    """The importer's JSON termination message, from the current or the previous run."""
    for state in (cs.get("state") or {}, cs.get("lastState") or {}):
        message = (state.get("terminated") or {}).get("message")
        if message:
            try:
                data = json.loads(message)
                if isinstance(data, dict):
                    return data
            except ValueError:
                return {"ok": False, "permanent": False, "reason": "Error", "message": message.strip()[:500]}
    return None


def failure_message(result: dict[str, Any] | None, terminated: Obj) -> str:
    """What went wrong in a failed importer run, in words: its own message, or how it ended."""
    message = str((result or {}).get("message") or "").strip()
    if message:
        return message
    code, reason = terminated.get("exitCode"), terminated.get("reason") or "Error"
    if terminated.get("signal"):
        return f"the importer was killed by signal {terminated['signal']} ({reason})"
    return f"the importer exited with code {code} ({reason}) without a message; see its log"


def latest_progress(log_text: str) -> str | None:
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"progress"' in line:
            try:
                value = json.loads(line).get("progress")
            except ValueError:
                continue
            if isinstance(value, str) and value.endswith("%"):
                return value
    return None


class DataVolumeReconciler:
    def __init__(self, client: Client, settings: ControllerSettings) -> None:
        self.client = client
        self.settings = settings

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one DataVolume closer to done; returns seconds until it wants another look."""
        dv = self.client.find(DATAVOLUME, namespace, name)
        if dv is None or dv["metadata"].get("deletionTimestamp"):
            self._release_deleted_claim(namespace, name)
            return None
        ctx = f"[{namespace}/{name}]"
        status = working_status(dv)
        try:
            requeue = self._reconcile(dv, status, ctx)
        except PermanentError as e:
            mark_failed(status, e.reason, e.message)
            if (c.find((dv.get("status") or {}).get("conditions") or [], c.RUNNING) or {}).get("message") != e.message:
                self.client.event(dv, reason=e.reason, message=e.message, type="Warning")
            log.warning("%s failed for good reason=%s message=%s", ctx, e.reason, e.message)
            requeue = None
        self._write(dv, status)
        return requeue

    def _reconcile(self, dv: Obj, status: Obj, ctx: str) -> float | None:
        conds = status["conditions"]
        name = dv["metadata"]["name"]
        source = dv.get("spec", {}).get("source") or {}
        kind = next(iter(source), "sourceRef" if dv["spec"].get("sourceRef") else "none")
        if kind not in SUPPORTED_SOURCES:
            status["phase"] = c.PENDING
            message = f"source {kind} is not supported yet by this controller"
            if (c.find(conds, c.RUNNING) or {}).get("reason") != "UnsupportedSource":
                self.client.event(dv, reason="UnsupportedSource", type="Warning", message=message)
            c.set_condition(conds, c.RUNNING, "False", "UnsupportedSource", message)
            return None
        pvc = self._ensure_pvc(dv, ctx)
        if pvc is None:
            status["phase"] = c.PENDING
            old = self.client.find(PVC, dv["metadata"]["namespace"], name)
            if old is not None and old["metadata"].get("deletionTimestamp"):
                # A claim of an earlier DataVolume of this name is still going: stop what holds it (its
                # importer), and take the name once it is gone (its deletion wakes this DataVolume).
                self._delete_pod(dv["metadata"]["namespace"], name, owner_uid=old["metadata"]["uid"])
                c.set_condition(conds, c.BOUND, "False", "ClaimPending",
                                f"PVC {name} of an earlier DataVolume is being deleted; waiting to create it again")
                return None
            message = f"PVC {name} exists and is not owned by this DataVolume"
            if (c.find(conds, c.BOUND) or {}).get("reason") != "NotOwned":
                self.client.event(dv, reason="ErrClaimNotOwned", type="Warning", message=message)
            c.set_condition(conds, c.BOUND, "False", "NotOwned", message)
            return None
        if pvc["metadata"].get("deletionTimestamp"):
            # Someone deleted the claim: let its deletion finish (no pod may hold it), then start over.
            self._delete_pod(dv["metadata"]["namespace"], name)
            status["phase"] = c.PENDING
            c.set_condition(conds, c.BOUND, "False", "ClaimLost", f"PVC {name} is being deleted")
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False")
            return None
        return self._compute(dv, pvc, status, ctx)

    def _release_deleted_claim(self, namespace: str, name: str) -> None:
        """The DataVolume is gone or going: stop its importer so that the claim's deletion can finish.

        The importer pod is owned by the PVC, and the PVC's deletion waits for every pod using it (as
        kube's pvc-protection does), so without this a deleted DataVolume whose import keeps failing
        would hold its PVC Terminating for ever.
        """
        pvc = self.client.find(PVC, namespace, name)
        if pvc is None:
            self._delete_pod(namespace, name)
            return
        if pvc["metadata"].get("deletionTimestamp") and ANN_CREATED_BY in (pvc["metadata"].get("annotations") or {}):
            self._delete_pod(namespace, name)
        scratch.delete_claim(self.client, namespace, name, importer_pod_name(name))

    def _ensure_pvc(self, dv: Obj, ctx: str) -> Obj | None:
        meta = dv["metadata"]
        pvc = self.client.find(PVC, meta["namespace"], meta["name"])
        if pvc is None:
            try:
                wanted = build_pvc(dv, self.settings)
            except ValueError as e:
                raise PermanentError("InvalidSpec", str(e)) from e
            try:
                pvc = self.client.create(PVC, wanted)
                log.info("%s created pvc", ctx)
                self.client.event(dv, reason="Pending", message=f"PVC {meta['name']} Pending")
            except AlreadyExists:
                pvc = self.client.get(PVC, meta["namespace"], meta["name"])
        owners = pvc["metadata"].get("ownerReferences") or []
        return pvc if any(o.get("uid") == meta["uid"] for o in owners) else None

    def _compute(self, dv: Obj, pvc: Obj, status: Obj, ctx: str) -> float | None:
        conds = status["conditions"]
        name = pvc["metadata"]["name"]
        unbound = (pvc.get("status") or {}).get("phase") != "Bound"
        if unbound and not waits_for_first_consumer(self.client, pvc):
            status["phase"] = c.PENDING
            c.set_condition(conds, c.BOUND, "False", "Pending", f"PVC {name} Pending{self._claim_trouble(pvc)}")
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False")
            return PENDING_RECHECK  # a provisioner's events do not touch the claim: look again
        if unbound:
            # A WaitForFirstConsumer class binds when a pod using the claim is scheduled: the importer
            # pod is that first consumer, so it is created now (CDI's immediate binding).
            requeue = self._compute_bound(dv, pvc, status, ctx)
            if status["phase"] in (c.PENDING, c.IMPORT_SCHEDULED):
                status["phase"] = c.WAIT_FOR_FIRST_CONSUMER
                c.set_condition(conds, c.BOUND, "False", "Pending",
                                f"PVC {name} Pending: waiting for its first consumer (the importer pod) to be "
                                f"scheduled{self._claim_trouble(pvc)}")
            return requeue if requeue is not None else PENDING_RECHECK
        c.set_condition(conds, c.BOUND, "True", "Bound", f"PVC {name} Bound")
        return self._compute_bound(dv, pvc, status, ctx)

    def _compute_bound(self, dv: Obj, pvc: Obj, status: Obj, ctx: str) -> float | None:
        """From the claim's outcome or the importer pod (creating it when missing)."""
        conds = status["conditions"]
        ann = pvc["metadata"].get("annotations") or {}
        outcome = ann.get(ANN_POD_PHASE)
        if outcome in ("Succeeded", "Failed"):
            if outcome == "Succeeded":
                mark_succeeded(status)
                self._cleanup_pod(dv)
            else:
                mark_failed(status, ann.get(ANN_IMPORT_REASON, "Error"), ann.get(ANN_IMPORT_MESSAGE, ""))
            if ANN_REQUIRES_SCRATCH in ann:
                self._end_scratch(pvc)
            return None
        namespace = dv["metadata"]["namespace"]
        pod_name = importer_pod_name(dv["metadata"]["name"])
        pod = self.client.find(POD, namespace, pod_name)
        if pod is None:
            self._check_registry_source(dv)
            needs_scratch = ann.get(ANN_REQUIRES_SCRATCH) == "true"
            scratch_claim = scratch.claim_name(pvc["metadata"]["name"]) if needs_scratch else None
            wait = self._scratch_name_taken(dv, pvc, pod_name, status) if scratch_claim else None
            if wait is not None:
                return wait
            try:
                wanted = build_importer_pod(dv, pvc, self.settings, insecure_registries=self._insecure_registries(dv),
                                            scratch_claim=scratch_claim)
            except ValueError as e:
                raise PermanentError("InvalidSpec", str(e)) from e
            try:
                pod = self.client.create(POD, wanted)
                log.info("%s created importer pod %s%s", ctx, pod_name, " with scratch space" if scratch_claim else "")
            except AlreadyExists:
                pod = self.client.get(POD, namespace, pod_name)
            _scheduled(status, again_with_scratch=scratch_claim is not None)
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False", "Pending", "Import pod created")
            if scratch_claim:
                return self._scratch_for(dv, pvc, pod, conds)
            return None
        requeue = self._from_pod(dv, pvc, pod, status, ctx)
        if scratch.pod_claim(pod) and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
            wait = self._scratch_for(dv, pvc, pod, conds)
            waits = [r for r in (requeue, wait) if r is not None]
            requeue = min(waits) if waits else None
        return requeue

    def _scratch_name_taken(self, dv: Obj, pvc: Obj, pod_name: str, status: Obj) -> float | None:
        """None when the scratch claim's name is free for the next importer pod, else when to look again.
        A claim left by an earlier pod is deleted first (a new pod could not use it while it goes: CDI's
        deadlock); a claim of that name that is no scratch claim is the user's to delete or rename."""
        conds = status["conditions"]
        namespace, name = pvc["metadata"]["namespace"], scratch.claim_name(pvc["metadata"]["name"])
        old = self.client.find(PVC, namespace, name)
        if old is None:
            return None
        if not scratch.is_scratch_of(old, pod_name):
            message = (f"the import needs scratch space, but PVC {name} exists and is not its scratch claim: "
                       f"delete or rename that PVC")
            status["phase"] = c.IMPORT_IN_PROGRESS
            if (c.find(conds, c.RUNNING) or {}).get("message") != message:
                self.client.event(dv, reason="ScratchClaimConflict", type="Warning", message=message)
            c.set_condition(conds, c.RUNNING, "False", "ScratchClaimConflict", message)
            return PENDING_RECHECK
        if not old["metadata"].get("deletionTimestamp"):
            self.client.delete(PVC, namespace, name)
        c.set_condition(conds, c.BOUND, "False", scratch.REASON_CREATING,
                        f"{scratch.MESSAGE_CREATING}: waiting for the scratch claim of an earlier run to go")
        return SCRATCH_RECHECK

    def _scratch_for(self, dv: Obj, pvc: Obj, pod: Obj, conds: list[Obj]) -> float | None:
        """Give the pending importer pod its scratch claim; Bound says so until that claim is bound."""
        claim, created = scratch.ensure_claim(self.client, pvc, pod, self.settings)
        if created:
            log.info("[%s/%s] created scratch claim %s class=%s", pvc["metadata"]["namespace"], pvc["metadata"]["name"],
                     claim["metadata"]["name"], claim["spec"].get("storageClassName") or "(default)")
            self.client.event(dv, reason=scratch.REASON_CREATING, message=scratch.MESSAGE_CREATING)
        if not scratch.owned_by(claim, pod):
            # the claim of an earlier pod, still going: this pod waits for a claim that is being deleted
            if not claim["metadata"].get("deletionTimestamp"):
                self.client.delete(PVC, claim["metadata"]["namespace"], claim["metadata"]["name"])
            c.set_condition(conds, c.BOUND, "False", scratch.REASON_CREATING,
                            f"{scratch.MESSAGE_CREATING}: waiting for the scratch claim of an earlier run to go")
            return SCRATCH_RECHECK
        if (claim.get("status") or {}).get("phase") != "Bound":
            # CDI's words, and why the claim is not bound yet when its provisioner said so
            c.set_condition(conds, c.BOUND, "False", scratch.REASON_CREATING,
                            scratch.MESSAGE_CREATING + ("" if created else self._claim_trouble(claim)))
            return SCRATCH_RECHECK
        return None

    def _end_scratch(self, pvc: Obj) -> None:
        """The import ended: its scratch claim goes (with a retained pod it would stay otherwise)."""
        meta = pvc["metadata"]
        scratch.delete_claim(self.client, meta["namespace"], meta["name"], importer_pod_name(meta["name"]))

    def _claim_trouble(self, pvc: Obj) -> str:
        """": <why>" from the newest warning about an unbound claim (a provisioner's failure), or ""."""
        meta = pvc["metadata"]
        try:
            events, _ = self.client.list(EVENT, meta["namespace"], field_selector=f"involvedObject.uid={meta['uid']}")
        except ApiError:
            return ""
        warnings = [e for e in events if e.get("type") == "Warning"]
        if not warnings:
            return ""
        newest = max(warnings, key=lambda e: str(e.get("lastTimestamp") or ""))
        return f": {newest.get('reason')}: {newest.get('message')}"

    def _from_pod(self, dv: Obj, pvc: Obj, pod: Obj, status: Obj, ctx: str) -> float | None:
        conds = status["conditions"]
        pstatus = pod.get("status") or {}
        cs = (pstatus.get("containerStatuses") or [{}])[0]
        status["restartCount"] = int(cs.get("restartCount") or 0)
        result = termination(cs)
        if status["restartCount"] > int((dv.get("status") or {}).get("restartCount") or 0):
            # Why the run before this one failed: its termination message, or how it ended.
            last = (cs.get("lastState") or {}).get("terminated") or {}
            why = failure_message(termination({"lastState": cs.get("lastState") or {}}), last)
            self.client.event(dv, reason="ImportRetry", type="Warning",
                              message=f"Import restarted ({status['restartCount']}): {why}")
        phase = pstatus.get("phase", "Pending")
        if result and result.get("scratchSpaceRequired") and not scratch.pod_claim(pod):
            return self._needs_scratch(dv, pvc, pod, status, ctx)
        if phase == "Succeeded" and result and result.get("ok"):
            outcome = result.get("result") or {}
            record_on_claim(self.client, pvc, {ANN_POD_PHASE: "Succeeded",
                               ANN_DIGEST: outcome.get("digest"),
                               ANN_SOURCE_CHECKSUM: outcome.get("source_checksum"),
                               ANN_SOURCE_DIGEST: outcome.get("source_digest")})
            digest = outcome.get("digest")
            marks = {k: v for k, v in ((ANN_DIGEST, digest), (ANN_SOURCE_DIGEST, outcome.get("source_digest"))) if v}
            if marks:
                self._annotate_dv(dv, marks)
            mark_succeeded(status)
            self.client.event(dv, reason=c.SUCCEEDED,
                              message=f"Successfully imported into PVC {pvc['metadata']['name']}")
            self._cleanup_pod(dv)
            self._end_scratch(pvc)
            log.info("%s import succeeded digest=%s", ctx, digest)
            return None
        if result and result.get("scratchSpaceRequired"):  # with a scratch claim mounted: it would never end
            claim = scratch.pod_claim(pod)
            result = {**result, "permanent": True,
                      "message": f"{result.get('message')}, though the pod mounts scratch claim {claim} at "
                                 f"{scratch.MOUNT_PATH}: the node did not give the importer that volume"}
        if (result and not result.get("ok") and result.get("permanent")) or phase == "Failed":
            reason = str((result or {}).get("reason") or "Error")
            message = str((result or {}).get("message") or "importer pod failed")
            record_on_claim(self.client, pvc, {ANN_POD_PHASE: "Failed", ANN_IMPORT_REASON: reason,
                                               ANN_IMPORT_MESSAGE: message})
            mark_failed(status, reason, message)
            self.client.event(dv, reason="ImportFailed", message=message, type="Warning")
            self._delete_pod(dv["metadata"]["namespace"], dv["metadata"]["name"])
            self._end_scratch(pvc)
            log.warning("%s import failed reason=%s message=%s", ctx, reason, message)
            return None
        running = "running" in (cs.get("state") or {})
        if phase == "Running" and running:
            status["phase"] = c.IMPORT_IN_PROGRESS
            c.set_condition(conds, c.READY, "False", "TransferRunning")
            c.set_condition(conds, c.RUNNING, "True", "Pod is running")
            progress = self._progress(pod)
            if progress:
                status["progress"] = progress
            return self.settings.progress_interval
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if (result and not result.get("ok")) or last:  # a transient failure: the pod restarts, the phase stays
            status["phase"] = c.IMPORT_IN_PROGRESS
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False", str(waiting.get("reason") or (result or {}).get("reason")
                                                             or last.get("reason") or "Error"),
                            failure_message(result, last))
            return self.settings.progress_interval * 2
        _scheduled(status, again_with_scratch=scratch.pod_claim(pod) is not None)
        c.set_condition(conds, c.READY, "False")
        c.set_condition(conds, c.RUNNING, "False", str(waiting.get("reason") or "Pending"),
                        str(waiting.get("message") or ""))
        return None

    def _needs_scratch(self, dv: Obj, pvc: Obj, pod: Obj, status: Obj, ctx: str) -> float:
        """The importer ended asking for scratch space: mark the claim (as CDI, so that every later pod
        gets scratch, even after a restart of the controller) and replace the pod with one that has it.
        No warning event: CDI deals with it by itself."""
        if not pod["metadata"].get("deletionTimestamp"):
            record_on_claim(self.client, pvc, {ANN_REQUIRES_SCRATCH: "true"})
            self._delete_pod(dv["metadata"]["namespace"], dv["metadata"]["name"])
            log.info("%s importer needs scratch space: starting it again with a scratch claim", ctx)
        if status.get("phase") not in (c.IMPORT_SCHEDULED, c.IMPORT_IN_PROGRESS):  # as CDI: the phase stays
            status["phase"] = c.IMPORT_SCHEDULED
        c.set_condition(status["conditions"], c.READY, "False")
        c.set_condition(status["conditions"], c.RUNNING, "False", scratch.REASON_REQUIRED, scratch.MESSAGE_REQUIRED)
        return SCRATCH_RECHECK

    def _check_registry_source(self, dv: Obj) -> None:
        """What of CDI's registry source this importer cannot do, refused before a pod is made."""
        reg = (dv["spec"].get("source") or {}).get("registry")
        if reg is None:
            return
        if reg.get("imageStream"):
            raise PermanentError("UnsupportedSource", "source registry imageStream needs OpenShift's image streams, "
                                 "which this CDI does not have: give the image as url: docker://host/repo:tag")
        if str(reg.get("url") or "").startswith("oci-archive://"):
            raise PermanentError("UnsupportedSource", "oci-archive:// registry sources are not supported: push the "
                                 "image to a registry and give its docker:// URL")

    def _insecure_registries(self, dv: Obj) -> list[str]:
        """CDIConfig ``config``'s ``spec.insecureRegistries`` (read only for a registry source)."""
        if "registry" not in (dv["spec"].get("source") or {}):
            return []
        config = self.client.find(CDICONFIG, None, "config") or {}
        return [str(r) for r in (config.get("spec") or {}).get("insecureRegistries") or []]

    def _progress(self, pod: Obj) -> str | None:
        try:
            text = self.client.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], tail_lines=20)
        except ApiError:
            return None
        return latest_progress(text)

    def _annotate_dv(self, dv: Obj, annotations: dict[str, str]) -> None:
        meta = dv["metadata"]
        updated = self.client.patch(DATAVOLUME, meta["namespace"], meta["name"],
                                    {"metadata": {"annotations": annotations}})
        meta["resourceVersion"] = updated["metadata"]["resourceVersion"]

    def _cleanup_pod(self, dv: Obj) -> None:
        retain = (dv["metadata"].get("annotations") or {}).get(ANN_RETAIN_POD, "").lower() == "true"
        if not retain:
            self._delete_pod(dv["metadata"]["namespace"], dv["metadata"]["name"])

    def _delete_pod(self, namespace: str, dv_name: str, *, owner_uid: str | None = None) -> None:
        """Delete the DataVolume's importer pod (with ``owner_uid``: only if that claim owns it)."""
        name = importer_pod_name(dv_name)
        if owner_uid is not None:
            pod = self.client.find(POD, namespace, name)
            owners = {o.get("uid") for o in ((pod or {}).get("metadata") or {}).get("ownerReferences") or []}
            if pod is None or owner_uid not in owners:
                return
        try:
            self.client.delete(POD, namespace, name)
        except NotFound:
            pass

    def _write(self, dv: Obj, status: Obj) -> None:
        old = write_status(self.client, dv, status)
        if old is None:
            return
        meta = dv["metadata"]
        old_phase, new_phase = old.get("phase"), status.get("phase")
        if new_phase != old_phase and new_phase in (c.IMPORT_SCHEDULED, c.IMPORT_IN_PROGRESS):
            message = {c.IMPORT_SCHEDULED: f"Import into {meta['name']} scheduled",
                       c.IMPORT_IN_PROGRESS: f"Import into {meta['name']} in progress"}[new_phase]
            self.client.event(dv, reason=new_phase, message=message)


def _scheduled(status: Obj, *, again_with_scratch: bool) -> None:
    """ImportScheduled for a new importer pod; but one started again with scratch space continues an
    import already in progress, whose phase stays (as CDI: the phase never goes back)."""
    if not (again_with_scratch and status.get("phase") == c.IMPORT_IN_PROGRESS):
        status["phase"] = c.IMPORT_SCHEDULED
