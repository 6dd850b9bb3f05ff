"""Uploads: DataVolumes with ``source.upload`` and PVCs annotated ``cdi.kubevirt.io/storage.upload.target``.

Two reconcilers, as in CDI. ``reconcile_pvc`` works on any PVC marked as an upload target once it is
Bound: it keeps an upload server pod, a Service and the pod's TLS Secret in place, sets
``cdi.kubevirt.io/storage.pod.ready`` while the server accepts data (the proxy waits for it), copies
the server's last failure to the PVC's running-condition annotations, and records the outcome
(``storage.pod.phase`` Succeeded with the volume digest, or Failed) before removing what it created.
``reconcile_dv`` makes the DataVolume's PVC (marked as an upload target) and turns the PVC's
annotations into the DataVolume's phase (Pending, UploadScheduled, UploadReady, Succeeded, Failed),
conditions and events.
"""

from __future__ import annotations

import json
import logging

from cdi.controller import conditions as c
from cdi.controller.datavolume import latest_progress, termination
from cdi.controller.dvstatus import mark_failed, mark_succeeded, record_on_claim, working_status, write_status
from cdi.controller.resources import (
    ANN_DIGEST,
    ANN_IMPORT_MESSAGE,
    ANN_IMPORT_REASON,
    ANN_POD_PHASE,
    ControllerSettings,
    build_pvc,
    image_size,
)
from cdi.controller.upload_pod import (
    ANN_CONTENT_TYPE,
    ANN_POD_READY,
    ANN_UPLOAD_TARGET,
    build_pod,
    build_secret,
    build_service,
    upload_name,
)
from cdi.controller.upload_tls import CLIENT_SIGNER, SERVER_SIGNER, ensure_signers, read_pair
from cdi.kube import (
    DATAVOLUME,
    POD,
    PVC,
    SECRET,
    SERVICE,
    AlreadyExists,
    ApiError,
    Client,
    NotFound,
    Obj,
    PermanentError,
)
from cdi.kube.storage import waits_for_first_consumer
from cdi.units import parse_size

log = logging.getLogger(__name__)

UPLOAD_SCHEDULED = "UploadScheduled"
UPLOAD_READY = "UploadReady"


# A server not ready yet is looked at again after this many seconds even if no pod event comes: the
# PVC's ready annotation (what the proxy and image-upload wait for) never hangs on one lost event.
NOT_READY_RECHECK = 2.0


def idle_interval(settings: ControllerSettings) -> float:
    """How often an upload server that waits for data is looked at: five progress intervals (5 s by
    default), so that many DataVolumes waiting for their uploads cost the control plane little."""
    return settings.progress_interval * 5


def is_upload_dv(dv: Obj) -> bool:
    return "upload" in ((dv.get("spec") or {}).get("source") or {})


def is_upload_target(pvc: Obj) -> bool:
    return ANN_UPLOAD_TARGET in (pvc["metadata"].get("annotations") or {})


def last_failure(log_text: str) -> dict[str, str] | None:
    """The upload server's last refused upload, from its JSON log lines."""
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"uploadFailed"' in line:
            try:
                value = json.loads(line).get("uploadFailed")
            except ValueError:
                continue
            if isinstance(value, dict):
                return {"reason": str(value.get("reason") or "Error"), "message": str(value.get("message") or "")}
    return None


def upload_progress(log_text: str) -> str | None:
    """The running upload's "NN.NN%" from the upload server's JSON log lines; None when no upload runs
    (none started yet, or the last one was refused: its figure no longer means anything)."""
    lines = log_text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line.startswith("{") and '"uploadFailed"' in line:
            return None
        if line.startswith("{") and '"progress"' in line:
            return latest_progress("\n".join(lines[: i + 1]))
    return None


class UploadReconciler:
    def __init__(self, client: Client, settings: ControllerSettings) -> None:
        self.client = client
        self.settings = settings
        self._signers_ready = False
        self._tls_made: set[tuple[str, str]] = set()  # upload servers whose certificate Secret this made

    # -- the PVC: upload server, Service, Secret ----------------------------------------------------

    def reconcile_pvc(self, namespace: str, name: str) -> float | None:
        pvc = self.client.find(PVC, namespace, name)
        if pvc is None or not is_upload_target(pvc) or pvc["metadata"].get("deletionTimestamp"):
            self._cleanup(namespace, name)
            return None
        ann = pvc["metadata"].get("annotations") or {}
        if ann.get(ANN_POD_PHASE) in ("Succeeded", "Failed"):
            self._cleanup(namespace, name)
            return None
        if (pvc.get("status") or {}).get("phase") != "Bound" and not waits_for_first_consumer(self.client, pvc):
            return None  # a WaitForFirstConsumer claim binds when the upload server, its first pod, is scheduled
        ctx = f"[{namespace}/{name}]"
        pod_name = upload_name(name)
        self._ensure_tls(pvc)
        if self.client.find(SERVICE, namespace, pod_name) is None:
            self._create(SERVICE, build_service(pvc), ctx)
        pod = self.client.find(POD, namespace, pod_name)
        if pod is None:
            pod = self._create(POD, build_pod(pvc, image=self.settings.uploadserver_image,
                                              placement=self.settings.worker_pod,
                                              image_size=self._image_size(pvc),
                                              filesystem_overhead=self.settings.filesystem_overhead,
                                              resume_interval=self.settings.upload_resume_interval), ctx)
            record_on_claim(self.client, pvc, {ANN_POD_PHASE: "Pending", ANN_POD_READY: "false"})
            return NOT_READY_RECHECK
        return self._from_pod(pvc, pod, ctx)

    def _from_pod(self, pvc: Obj, pod: Obj, ctx: str) -> float | None:
        status = pod.get("status") or {}
        cs = (status.get("containerStatuses") or [{}])[0]
        result = termination(cs)
        phase = status.get("phase", "Pending")
        if phase == "Succeeded" and result and result.get("ok"):
            digest = (result.get("result") or {}).get("digest")
            record_on_claim(self.client, pvc, {ANN_POD_PHASE: "Succeeded", ANN_POD_READY: "false", ANN_DIGEST: digest,
                               ANN_IMPORT_REASON: "Completed", ANN_IMPORT_MESSAGE: ""})
            log.info("%s upload succeeded digest=%s", ctx, digest)
            self._cleanup(pvc["metadata"]["namespace"], pvc["metadata"]["name"])
            return None
        if phase == "Failed" or (result and not result.get("ok") and result.get("permanent")):
            reason = str((result or {}).get("reason") or "Error")
            message = str((result or {}).get("message") or "upload server failed")
            record_on_claim(self.client, pvc, {ANN_POD_PHASE: "Failed", ANN_POD_READY: "false",
                               ANN_IMPORT_REASON: reason, ANN_IMPORT_MESSAGE: message})
            self._cleanup(pvc["metadata"]["namespace"], pvc["metadata"]["name"])
            return None
        ready = phase == "Running" and "running" in (cs.get("state") or {}) and any(
            cond.get("type") == "Ready" and cond.get("status") == "True" for cond in status.get("conditions") or [])
        values = {ANN_POD_PHASE: phase, ANN_POD_READY: str(ready).lower()}
        if ready:
            failure = self._failure(pod)
            if failure:
                values[ANN_IMPORT_REASON], values[ANN_IMPORT_MESSAGE] = failure["reason"], failure["message"]
        record_on_claim(self.client, pvc, values)
        # a refused upload shows in the server's log, not in any event: look again, unhurried (the client
        # that sent it was answered at once; the DataVolume says why within this interval)
        return idle_interval(self.settings) if ready else NOT_READY_RECHECK

    def _failure(self, pod: Obj) -> dict[str, str] | None:
        try:
            text = self.client.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], tail_lines=50)
        except ApiError:
            return None
        return last_failure(text)

    def _upload_progress(self, pvc: Obj) -> str | None:
        meta = pvc["metadata"]
        try:
            text = self.client.pod_log(meta["namespace"], upload_name(meta["name"]), tail_lines=20)
        except ApiError:
            return None
        return upload_progress(text)

    def _image_size(self, pvc: Obj) -> int:
        capacity = parse_size(str(((pvc.get("status") or {}).get("capacity") or {}).get("storage")
                                  or pvc["spec"]["resources"]["requests"]["storage"]))
        owner = next((o for o in pvc["metadata"].get("ownerReferences") or [] if o.get("kind") == "DataVolume"), None)
        if owner is not None:
            dv = self.client.find(DATAVOLUME, pvc["metadata"]["namespace"], owner["name"])
            if dv is not None:
                return image_size(dv, pvc, self.settings)
        if pvc["spec"].get("volumeMode") == "Block":
            return capacity
        return int(capacity * (1 - self.settings.filesystem_overhead)) // 512 * 512

    def _ensure_tls(self, pvc: Obj) -> None:
        meta = pvc["metadata"]
        if (meta["namespace"], meta["name"]) in self._tls_made:
            return
        if not self._signers_ready:
            ensure_signers(self.client)
            self._signers_ready = True
        client_ca, _ = read_pair(self.client, CLIENT_SIGNER)
        try:  # created, never read back: the controller may not read Secrets of the DataVolume's namespace
            self.client.create(SECRET, build_secret(pvc, read_pair(self.client, SERVER_SIGNER), client_ca))
        except AlreadyExists:
            pass
        self._tls_made.add((meta["namespace"], meta["name"]))

    def _create(self, kind: object, obj: Obj, ctx: str) -> Obj:
        meta = obj["metadata"]
        try:
            made = self.client.create(kind, obj)  # type: ignore[arg-type]
            log.info("%s created %s %s", ctx, obj["kind"], meta["name"])
            return made
        except AlreadyExists:
            return self.client.get(kind, meta["namespace"], meta["name"])  # type: ignore[arg-type]

    def _cleanup(self, namespace: str, name: str) -> None:
        self._tls_made.discard((namespace, name))
        for kind in (POD, SERVICE, SECRET):
            try:
                self.client.delete(kind, namespace, upload_name(name))
            except NotFound:
                pass

    def reconcile_dv(self, dv: Obj) -> float | None:
        meta = dv["metadata"]
        ctx = f"[{meta['namespace']}/{meta['name']}]"
        status = working_status(dv)
        try:
            self._dv_status(dv, status, ctx)
        except PermanentError as e:
            mark_failed(status, e.reason, e.message)
        self._write(dv, status)
        # while data flows its progress is read again as an import's is; a server that waits for data
        # is looked at less often (each look reads its log through the API server)
        if status.get("phase") != UPLOAD_READY:
            return None
        flowing = status.get("progress", "N/A") != "N/A"
        return self.settings.progress_interval if flowing else idle_interval(self.settings)

    def _dv_status(self, dv: Obj, status: Obj, ctx: str) -> None:
        conds = status["conditions"]
        meta = dv["metadata"]
        pvc = self.client.find(PVC, meta["namespace"], meta["name"])
        if pvc is None:
            try:
                wanted = build_pvc(dv, self.settings)
            except ValueError as e:
                raise PermanentError("InvalidSpec", str(e)) from e
            wanted["metadata"]["annotations"][ANN_UPLOAD_TARGET] = ""
            wanted["metadata"]["annotations"][ANN_CONTENT_TYPE] = dv["spec"].get("contentType") or "kubevirt"
            pvc = self._create(PVC, wanted, ctx)
            self.client.event(dv, reason="Pending", message=f"PVC {meta['name']} Pending")
        if not any(o.get("uid") == meta["uid"] for o in pvc["metadata"].get("ownerReferences") or []):
            status["phase"] = c.PENDING
            c.set_condition(conds, c.BOUND, "False", "NotOwned",
                            f"PVC {meta['name']} exists and is not owned by this DataVolume")
            return
        if (pvc.get("status") or {}).get("phase") != "Bound":
            wffc = waits_for_first_consumer(self.client, pvc)
            status["phase"] = c.WAIT_FOR_FIRST_CONSUMER if wffc else c.PENDING
            c.set_condition(conds, c.BOUND, "False", "Pending", f"PVC {meta['name']} Pending" + (
                ": waiting for its first consumer (the upload server pod) to be scheduled" if wffc else ""))
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False")
            return
        c.set_condition(conds, c.BOUND, "True", "Bound", f"PVC {meta['name']} Bound")
        ann = pvc["metadata"].get("annotations") or {}
        phase, ready = ann.get(ANN_POD_PHASE), ann.get(ANN_POD_READY) == "true"
        reason, message = ann.get(ANN_IMPORT_REASON, ""), ann.get(ANN_IMPORT_MESSAGE, "")
        if phase == "Succeeded":
            mark_succeeded(status)
            if ann.get(ANN_DIGEST) and (meta.get("annotations") or {}).get(ANN_DIGEST) != ann[ANN_DIGEST]:
                self.client.patch(DATAVOLUME, meta["namespace"], meta["name"],
                                  {"metadata": {"annotations": {ANN_DIGEST: ann[ANN_DIGEST]}}})
        elif phase == "Failed":
            mark_failed(status, reason or "Error", message)
        elif ready:
            status["phase"] = UPLOAD_READY
            c.set_condition(conds, c.READY, "False")
            if reason and message:  # the last upload was refused: say why, and stay ready for another
                c.set_condition(conds, c.RUNNING, "True", reason, message)
            else:
                c.set_condition(conds, c.RUNNING, "True", "Pod is running")
            status["progress"] = self._upload_progress(pvc) or "N/A"
        else:
            status["phase"] = UPLOAD_SCHEDULED
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False", "Pending", "Upload server pod not ready")

    def _write(self, dv: Obj, status: Obj) -> None:
        old = write_status(self.client, dv, status)
        if old is None:
            return
        meta = dv["metadata"]
        new_phase, name = status.get("phase"), meta["name"]
        if new_phase != old.get("phase"):
            event = {UPLOAD_SCHEDULED: ("Normal", UPLOAD_SCHEDULED, f"Upload into {name} scheduled"),
                     UPLOAD_READY: ("Normal", UPLOAD_READY, f"Upload into {name} ready"),
                     c.SUCCEEDED: ("Normal", "UploadSucceeded", f"Successfully uploaded into {name}"),
                     c.FAILED: ("Warning", "UploadFailed", str((c.find(status["conditions"], c.RUNNING) or {})
                                                             .get("message") or f"Upload into {name} failed"))}
            if new_phase in event:
                etype, reason, message = event[new_phase]
                self.client.event(dv, reason=reason, message=message, type=etype)
        running = c.find(status["conditions"], c.RUNNING) or {}
        old_running = c.find(old.get("conditions") or [], c.RUNNING) or {}
        if new_phase == UPLOAD_READY and running.get("message") != old_running.get("message") \
                and running.get("reason") not in ("", "Pod is running"):
            self.client.event(dv, reason="UploadFailed", type="Warning", message=str(running.get("message")))

