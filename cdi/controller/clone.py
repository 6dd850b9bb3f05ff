"""The DataVolume reconciler for clones: ``source.pvc``, and ``sourceRef`` (the PVC a DataSource stands for).

``reconcile(dv)`` resolves the source claim, verifies the clone token the admission put on the
DataVolume, waits while the source is still being written (its DataVolume not Succeeded, or a pod
other than a clone still using it: CDI's CloneSourceInUse), checks sizes (a target smaller than the
source fails with CDI's message; no size takes the source's), creates the target claim and then a
clone worker pod that copies on the node (reflink, sparse copy, block). Phases, conditions and events
follow CDI (CloneScheduled, CloneInProgress, Succeeded); the outcome is recorded on the target claim,
so a finished clone never runs again. The method is shown as CDI's ``cdi.kubevirt.io/cloneType: copy``
plus ``cdi.kubevirt.io/storage.clone.method`` (reflink, sparse, block, stream); the volume digest is
recorded on the target (claim and DataVolume) and on the source claim, and must match.
"""

from __future__ import annotations

import copy
import datetime
import logging
from typing import Any

from cdi.clonetoken import ANN_CLONE_TOKEN, TokenCheck
from cdi.controller import conditions as c
from cdi.controller import sourceref
from cdi.controller.clone_pod import build_clone_pod, clone_pod_name
from cdi.controller.clone_source import delete_source_side, release_source_side, source_busy
from cdi.controller.clone_stream import (
    build_source_pod,
    build_source_secret,
    source_pod_name,
    upload_url,
)
from cdi.controller.datasource import Unresolved
from cdi.controller.datavolume import failure_message, latest_progress, termination
from cdi.controller.dvstatus import mark_failed, mark_succeeded, record_on_claim, working_status, write_status
from cdi.controller.resources import (
    ANN_CACHE_STALE,
    ANN_CACHED_FROM,
    ANN_DIGEST,
    ANN_IMPORT_MESSAGE,
    ANN_IMPORT_REASON,
    ANN_POD_PHASE,
    ANN_RETAIN_POD,
    ControllerSettings,
    build_pvc,
    image_size,
    requested_size,
)
from cdi.controller.upload_pod import ANN_CONTENT_TYPE, ANN_POD_READY, ANN_UPLOAD_TARGET, upload_name
from cdi.controller.upload_tls import CLIENT_SIGNER, SERVER_SIGNER, ensure_signers, read_pair
from cdi.kube import (
    DATAVOLUME,
    POD,
    PVC,
    SECRET,
    AlreadyExists,
    ApiError,
    Client,
    NotFound,
    Obj,
    PermanentError,
    TemporaryError,
)
from cdi.kube.storage import waits_for_first_consumer
from cdi.units import format_quantity, parse_size

log = logging.getLogger(__name__)

CLONE_SCHEDULED = "CloneScheduled"
CLONE_IN_PROGRESS = "CloneInProgress"
ANN_CLONE_TYPE = "cdi.kubevirt.io/cloneType"
ANN_CLONE_METHOD = "cdi.kubevirt.io/storage.clone.method"
ANN_CLONE_OF = "cdi.kubevirt.io/storage.clone.source"
ANN_FORCE_STREAM = "cdi.kubevirt.io/storage.clone.hostAssisted"
WAIT = 1.0
WAIT_FOR_DATASOURCE = sourceref.WAIT_FOR_DATASOURCE


def is_clone_dv(dv: Obj) -> bool:
    spec = dv.get("spec") or {}
    return "pvc" in (spec.get("source") or {}) or bool(spec.get("sourceRef"))


def claim_size(pvc: Obj) -> int:
    capacity = ((pvc.get("status") or {}).get("capacity") or {}).get("storage")
    return parse_size(str(capacity or pvc["spec"]["resources"]["requests"]["storage"]))


class CloneReconciler:
    def __init__(self, client: Client, settings: ControllerSettings, tokens: TokenCheck | None) -> None:
        self.client = client
        self.settings = settings
        self.tokens = tokens

    def reconcile(self, dv: Obj) -> float | None:
        meta = dv["metadata"]
        ctx = f"[{meta['namespace']}/{meta['name']}]"
        status = working_status(dv)
        try:
            if dv["spec"].get("sourceRef"):
                dv = self._resolve_ref(dv)
            requeue = self._reconcile(dv, status, ctx)
        except Unresolved as e:
            requeue = max(self._wait(dv, status, e.reason, e.message), WAIT_FOR_DATASOURCE)
        except PermanentError as e:
            mark_failed(status, e.reason, e.message)
            log.warning("%s clone failed reason=%s message=%s", ctx, e.reason, e.message)
            requeue = None
        self._write(dv, status)
        return requeue

    def _wait(self, dv: Obj, status: Obj, reason: str, message: str, *, event: bool = True) -> float:
        conds = status["conditions"]
        status["phase"] = status.get("phase") if status.get("phase") == CLONE_SCHEDULED else c.PENDING
        if event and (c.find(conds, c.RUNNING) or {}).get("message") != message:
            self.client.event(dv, reason=reason, message=message, type="Warning" if reason != "Pending" else "Normal")
        c.set_condition(conds, c.READY, "False")
        c.set_condition(conds, c.RUNNING, "False", reason, message)
        return WAIT

    def _resolve_ref(self, dv: Obj) -> Obj:
        """The DataVolume as a ``source.pvc`` clone of what its sourceRef stands for: the source the
        target claim was made from once it exists (a DataSource moving on never changes a clone half
        way), else the DataSource's PVC now; ``Unresolved`` while there is nothing to clone."""
        meta = dv["metadata"]
        target = self.client.find(PVC, meta["namespace"], meta["name"])
        made_from = ((target or {}).get("metadata", {}).get("annotations") or {}).get(ANN_CLONE_OF, "")
        owned = target is not None and any(o.get("uid") == meta["uid"]
                                           for o in target["metadata"].get("ownerReferences") or [])
        if owned and "/" in made_from:
            namespace, name = made_from.split("/", 1)
        else:
            namespace, name = sourceref.resolve(self.client, dv)
        return sourceref.with_pvc_source(dv, namespace, name, via="sourceRef")

    def _needs_token(self, dv: Obj, source_ns: str) -> bool:
        """Whether the clone needs the admission's token. As CDI (ValidateCloneTokenDV), a DataSource's PVC
        in the DataVolume's own namespace needs none: anyone who may create the DataVolume may clone it.
        The same holds for a clone the image cache chose (always within the namespace)."""
        if self.tokens is None:
            return False
        return not (sourceref.resolved_via(dv) and source_ns == dv["metadata"]["namespace"])

    def _token_problem(self, dv: Obj, why: str) -> PermanentError:
        message = f"The clone doesn't meet the validation requirements: {why}"
        if dv["spec"].get("sourceRef"):
            src = dv["spec"]["source"]["pvc"]
            message += (f" (the DataSource now stands for PVC {src['namespace']}/{src['name']}, which the "
                        "DataVolume's creator was not authorized for when it was created; create the "
                        "DataVolume again to have it authorized)")
        return PermanentError("CloneValidationFailed", message)

    def _reconcile(self, dv: Obj, status: Obj, ctx: str) -> float | None:
        meta, spec = dv["metadata"], dv["spec"]
        conds = status["conditions"]
        src = spec["source"]["pvc"]
        source_ns, source_name = str(src.get("namespace") or meta["namespace"]), str(src.get("name") or "")
        target = self.client.find(PVC, meta["namespace"], meta["name"])
        if target is None:
            source = self.client.find(PVC, source_ns, source_name)
            if source is None:
                return self._wait(dv, status, "CloneWithoutSource",
                                  f"The source pvc {source_ns}/{source_name} doesn't exist")
            if self.tokens is not None and self._needs_token(dv, source_ns):
                why = self.tokens.check((meta.get("annotations") or {}).get(ANN_CLONE_TOKEN), source_ns,
                                        source_name, meta["namespace"], meta["name"])
                if why:
                    raise self._token_problem(dv, why)
            target = self._create_target(dv, source, ctx)
        owners = target["metadata"].get("ownerReferences") or []
        if not any(o.get("uid") == meta["uid"] for o in owners):
            status["phase"] = c.PENDING
            c.set_condition(conds, c.BOUND, "False", "NotOwned", f"PVC {meta['name']} exists and is not owned "
                                                                  "by this DataVolume")
            return None
        unbound = (target.get("status") or {}).get("phase") != "Bound"
        if unbound and not waits_for_first_consumer(self.client, target):
            status["phase"] = c.PENDING
            c.set_condition(conds, c.BOUND, "False", "Pending", f"PVC {meta['name']} Pending")
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False")
            return WAIT
        if unbound:
            # WaitForFirstConsumer: the clone pod (or the upload server of a stream) is the first consumer.
            requeue = self._clone_bound(dv, target, status, source_ns, source_name, ctx)
            if status["phase"] in (c.PENDING, CLONE_SCHEDULED):
                status["phase"] = c.WAIT_FOR_FIRST_CONSUMER
                c.set_condition(conds, c.BOUND, "False", "Pending",
                                f"PVC {meta['name']} Pending: waiting for its first consumer to be scheduled")
            return requeue if requeue is not None else WAIT
        c.set_condition(conds, c.BOUND, "True", "Bound", f"PVC {meta['name']} Bound")
        return self._clone_bound(dv, target, status, source_ns, source_name, ctx)

    def _clone_bound(self, dv: Obj, target: Obj, status: Obj, source_ns: str, source_name: str,
                     ctx: str) -> float | None:
        """From the target claim's outcome or the clone's pods (creating them when missing)."""
        conds = status["conditions"]
        meta = dv["metadata"]
        ann = target["metadata"].get("annotations") or {}
        stream = ANN_UPLOAD_TARGET in ann
        if ann.get(ANN_POD_PHASE) == "Succeeded":
            if stream and not ann.get(ANN_CLONE_METHOD):
                self._finish_stream(dv, target, source_ns, ctx)
            self._succeeded(dv, target, status)
            return None
        if ann.get(ANN_POD_PHASE) == "Failed":
            raise PermanentError(ann.get(ANN_IMPORT_REASON, "CloneFailed"), ann.get(ANN_IMPORT_MESSAGE, ""))
        if stream:
            return self._stream(dv, target, source_ns, source_name, status, ctx)
        pod = self.client.find(POD, meta["namespace"], clone_pod_name(meta["name"]))
        if pod is None:
            source = self._readable_source(dv, target, source_ns, source_name, status)
            if isinstance(source, float):
                return source
            wanted = build_clone_pod(dv, source, target, image=self.settings.cloner_image,
                                     placement=self.settings.worker_pod)
            try:
                self.client.create(POD, wanted)
                log.info("%s created clone pod %s", ctx, wanted["metadata"]["name"])
            except AlreadyExists:
                pass
            status["phase"] = CLONE_SCHEDULED
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False", "Pending", "Clone pod created")
            return None
        return self._from_pod(dv, target, pod, status, ctx)

    def _readable_source(self, dv: Obj, target: Obj, source_ns: str, source_name: str, status: Obj) -> Obj | float:
        """The source claim once it exists, fits the target and no pod writes it; else the delay to wait."""
        source = self.client.find(PVC, source_ns, source_name)
        if source is None:
            return self._wait(dv, status, "CloneWithoutSource",
                              f"The source pvc {source_ns}/{source_name} doesn't exist")
        self._verify(dv, target, source_ns, source_name)
        busy = source_busy(self.client, source)
        if busy is not None:
            return self._wait(dv, status, *busy)
        return source

    def _wants_stream(self, dv: Obj, source_ns: str) -> bool:
        """The host-assisted stream: across namespaces (a pod cannot use the source claim there), when
        the DataVolume asks for it, or when the controller is set to use it always."""
        asked = (dv["metadata"].get("annotations") or {}).get(ANN_FORCE_STREAM, "").lower() == "true"
        return asked or self.settings.clone_host_assisted or source_ns != dv["metadata"]["namespace"]

    def _stream(self, dv: Obj, target: Obj, source_ns: str, source_name: str, status: Obj, ctx: str) -> float | None:
        conds = status["conditions"]
        ann = target["metadata"].get("annotations") or {}
        uid = target["metadata"]["uid"]
        server = self.client.find(POD, target["metadata"]["namespace"], upload_name(target["metadata"]["name"]))
        url = upload_url(server) if server is not None and ann.get(ANN_POD_READY) == "true" else None
        pod = self.client.find(POD, source_ns, source_pod_name(uid))
        if pod is None:
            if url is None:
                status["phase"] = CLONE_SCHEDULED
                c.set_condition(conds, c.READY, "False")
                c.set_condition(conds, c.RUNNING, "False", "Pending", "Upload server pod not ready")
                return WAIT
            source = self._readable_source(dv, target, source_ns, source_name, status)
            if isinstance(source, float):
                return source
            ensure_signers(self.client)
            secret = build_source_secret(target, source, read_pair(self.client, CLIENT_SIGNER),
                                         read_pair(self.client, SERVER_SIGNER)[0])
            pod = build_source_pod(dv, target, source, image=self.settings.cloner_image, url=url,
                                   placement=self.settings.worker_pod,
                                   target_size=image_size(dv, target, self.settings))
            for kind, obj in ((SECRET, secret), (POD, pod)):
                try:
                    self.client.create(kind, obj)
                except AlreadyExists:
                    pass
            log.info("%s created clone source pod %s/%s url=%s", ctx, source_ns, source_pod_name(uid), url)
            status["phase"] = CLONE_SCHEDULED
            c.set_condition(conds, c.READY, "False")
            c.set_condition(conds, c.RUNNING, "False", "Pending", "Clone source pod created")
            return None
        requeue = self._from_pod(dv, target, pod, status, ctx, stream=True)
        return requeue if requeue is not None else WAIT

    def _finish_stream(self, dv: Obj, target: Obj, source_ns: str, ctx: str) -> None:
        """The upload server wrote and verified the target: compare digests, record, remove the source pod."""
        pod = self.client.find(POD, source_ns, source_pod_name(target["metadata"]["uid"]))
        cs = (((pod or {}).get("status") or {}).get("containerStatuses") or [{}])[0]
        result = dict((termination(cs) or {}).get("result") or {})
        result["digest"] = (target["metadata"].get("annotations") or {}).get(ANN_DIGEST)
        result["method"] = "stream"
        try:
            self._finish(dv, target, result, ctx)
        finally:
            delete_source_side(self.client, source_ns, target["metadata"]["uid"])

    def release(self, namespace: str, name: str) -> None:
        """The DataVolume is gone or going: stop its stream's source side, and its clone worker pod when
        the claim that owns the pod is going too (the claim's deletion waits for every pod using it, so a
        worker left restarting would hold it, and its source, Terminating for ever)."""
        release_source_side(self.client, namespace, name)
        pod = self.client.find(POD, namespace, clone_pod_name(name))
        if pod is None:
            return
        owners = {o.get("uid") for o in pod["metadata"].get("ownerReferences") or []}
        claim = self.client.find(PVC, namespace, name)
        if claim is None or claim["metadata"]["uid"] not in owners or claim["metadata"].get("deletionTimestamp"):
            try:
                self.client.delete(POD, namespace, clone_pod_name(name))
            except NotFound:
                pass

    def _verify(self, dv: Obj, target: Obj, source_ns: str, source_name: str) -> None:
        """Check the clone token the target claim carries, as of the claim's creation (set by the server)."""
        if self.tokens is None or not self._needs_token(dv, source_ns):
            if source_ns != dv["metadata"]["namespace"]:
                raise PermanentError("CloneValidationFailed", "The clone doesn't meet the validation "
                                     "requirements: no clone token key is configured for clones across namespaces")
            return
        meta = target["metadata"]
        created = meta.get("creationTimestamp")
        at = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00")) if created else None
        why = self.tokens.check((meta.get("annotations") or {}).get(ANN_CLONE_TOKEN), source_ns, source_name,
                                meta["namespace"], meta["name"], at=at)
        if why:
            raise self._token_problem(dv, why)

    def _create_target(self, dv: Obj, source: Obj, ctx: str) -> Obj:
        """The target claim; an empty size takes the source's, a smaller one fails as CDI fails it."""
        meta = dv["metadata"]
        source_size = claim_size(source)
        wanted_dv = copy.deepcopy(dv)
        asked = requested_size(dv)
        if asked is None:
            claim = wanted_dv["spec"].setdefault("pvc" if "pvc" in dv["spec"] else "storage", {})
            claim.setdefault("resources", {}).setdefault("requests", {})["storage"] = format_quantity(source_size)
        try:
            wanted = build_pvc(wanted_dv, self.settings)
        except ValueError as e:
            raise PermanentError("InvalidSpec", str(e)) from e
        if asked is None:  # the source's size exactly, without the filesystem overhead added again
            wanted["spec"]["resources"]["requests"]["storage"] = format_quantity(source_size)
        target_size = parse_size(wanted["spec"]["resources"]["requests"]["storage"])
        if target_size < source_size:
            message = (f"target resources requests storage size is smaller than the source "
                       f"{target_size} < {source_size}")
            self.client.event(dv, reason="CloneValidationFailed", type="Warning",
                              message=f"The clone doesn't meet the validation requirements: {message}")
            raise PermanentError("CloneValidationFailed", message)
        smeta = source["metadata"]
        wanted["metadata"]["annotations"][ANN_CLONE_OF] = f"{smeta['namespace']}/{smeta['name']}"
        wanted["metadata"]["annotations"][ANN_CLONE_TYPE] = "copy"
        if self._wants_stream(dv, smeta["namespace"]):
            wanted["metadata"]["annotations"][ANN_UPLOAD_TARGET] = ""
            wanted["metadata"]["annotations"][ANN_CONTENT_TYPE] = "kubevirt"
        token = (meta.get("annotations") or {}).get(ANN_CLONE_TOKEN)
        if token:
            wanted["metadata"]["annotations"][ANN_CLONE_TOKEN] = token
        try:
            made = self.client.create(PVC, wanted)
            log.info("%s created target pvc size=%s", ctx, target_size)
            self.client.event(dv, reason="Pending", message=f"PVC {meta['name']} Pending")
            return made
        except AlreadyExists:
            return self.client.get(PVC, meta["namespace"], meta["name"])

    def _from_pod(self, dv: Obj, target: Obj, pod: Obj, status: Obj, ctx: str, *,
                  stream: bool = False) -> float | None:
        conds = status["conditions"]
        pstatus = pod.get("status") or {}
        cs = (pstatus.get("containerStatuses") or [{}])[0]
        result = termination(cs)
        phase = pstatus.get("phase", "Pending")
        if phase == "Succeeded" and result and result.get("ok"):
            if stream:  # the upload server finishes the target and records its digest on the claim
                status["phase"] = CLONE_IN_PROGRESS
                return WAIT
            self._finish(dv, target, result.get("result") or {}, ctx)
            self._succeeded(dv, target, status)
            return None
        if phase == "Failed" or (result and not result.get("ok") and result.get("permanent")):
            last = (cs.get("state") or {}).get("terminated") or {}
            message = failure_message(result, last)
            record_on_claim(self.client, target, {ANN_POD_PHASE: "Failed", ANN_IMPORT_REASON: "CloneFailed",
                                  ANN_IMPORT_MESSAGE: message})
            self._delete_pod(dv)
            if stream:
                delete_source_side(self.client, pod["metadata"]["namespace"], target["metadata"]["uid"])
            raise PermanentError("CloneFailed", message)
        if phase == "Running" and "running" in (cs.get("state") or {}):
            status["phase"] = CLONE_IN_PROGRESS
            c.set_condition(conds, c.READY, "False", "TransferRunning")
            c.set_condition(conds, c.RUNNING, "True", "Pod is running")
            try:
                progress = latest_progress(self.client.pod_log(pod["metadata"]["namespace"],
                                                               pod["metadata"]["name"], tail_lines=20))
            except ApiError:
                progress = None
            if progress:
                status["progress"] = progress
            return self.settings.progress_interval
        status["phase"] = CLONE_SCHEDULED
        c.set_condition(conds, c.READY, "False")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        c.set_condition(conds, c.RUNNING, "False", str(waiting.get("reason") or "Pending"),
                        str(waiting.get("message") or ""))
        return None

    def _finish(self, dv: Obj, target: Obj, result: dict[str, Any], ctx: str) -> None:
        """Record the outcome: method and digest on the target claim and DataVolume, digest on the source."""
        method, digest = str(result.get("method") or "copy"), result.get("digest")
        source_digest = result.get("sourceDigest")
        padded = result.get("sourceDigestSize", result.get("size")) != result.get("size")
        src = dv["spec"]["source"]["pvc"]
        source_ns = str(src.get("namespace") or dv["metadata"]["namespace"])
        source = self.client.find(PVC, source_ns, str(src.get("name")))
        known = ((source or {}).get("metadata", {}).get("annotations") or {}).get(ANN_DIGEST)
        if source is not None and source_digest and not known and not padded:
            record_on_claim(self.client, source, {ANN_DIGEST: source_digest})
        # The source read as the target holds it (zeros past its end when the target is larger).
        expected = source_digest or known
        if sourceref.resolved_via(dv) == "cache" and known and not padded:
            expected = known  # a cache clone must hold what was imported, not what the volume holds now
        if digest and expected and digest != expected:
            message = f"the clone's volume digest {digest} differs from the source's {expected}"
            if sourceref.resolved_via(dv) == "cache":
                self._skip_stale_cache(dv, target, source, f"{source_ns}/{src.get('name')}", message)
                raise TemporaryError("the cache volume changed since its import: importing instead", delay=0.2)
            record_on_claim(self.client, target, {ANN_POD_PHASE: "Failed", ANN_IMPORT_REASON: "CloneVerifyFailed",
                                  ANN_IMPORT_MESSAGE: message})
            raise PermanentError("CloneVerifyFailed", message)
        record_on_claim(self.client, target, {ANN_POD_PHASE: "Succeeded", ANN_DIGEST: digest, ANN_CLONE_METHOD: method,
                              ANN_CLONE_TYPE: "copy"})
        meta = dv["metadata"]
        self.client.patch(DATAVOLUME, meta["namespace"], meta["name"], {"metadata": {"annotations": {
            k: v for k, v in {ANN_DIGEST: digest, ANN_CLONE_TYPE: "copy", ANN_CLONE_METHOD: method}.items() if v}}})
        self.client.event(dv, reason="CloneMethod", message=f"Cloned with {method} copy "
                                                           f"in {result.get('seconds', '?')} s")
        log.info("%s clone succeeded method=%s digest=%s", ctx, method, digest)

    def _skip_stale_cache(self, dv: Obj, target: Obj, source: Obj | None, name: str, why: str) -> None:
        """A cache volume written since its import (a VM booted from it): never offer it again, drop
        the clone's claim, and let the DataVolume import from the registry instead."""
        if source is not None:
            record_on_claim(self.client, source, {ANN_CACHE_STALE: why})
        meta = dv["metadata"]
        message = (f"the cache volume {name} changed since it was imported and was skipped ({why}); "
                   "importing again (from the registry, or from another, unchanged cache volume)")
        log.warning("[%s/%s] %s", meta["namespace"], meta["name"], message)
        self.client.event(dv, reason="ImportFromCacheSkipped", message=message, type="Warning")
        self.client.patch(DATAVOLUME, meta["namespace"], meta["name"],
                          {"metadata": {"annotations": {ANN_CACHED_FROM: None}}})
        try:
            self.client.delete(PVC, meta["namespace"], target["metadata"]["name"])
        except NotFound:
            pass

    def _succeeded(self, dv: Obj, target: Obj, status: Obj) -> None:
        mark_succeeded(status)
        if (dv["metadata"].get("annotations") or {}).get(ANN_RETAIN_POD, "").lower() != "true":
            self._delete_pod(dv)

    def _delete_pod(self, dv: Obj) -> None:
        try:
            self.client.delete(POD, dv["metadata"]["namespace"], clone_pod_name(dv["metadata"]["name"]))
        except NotFound:
            pass


    def _write(self, dv: Obj, status: Obj) -> None:
        old = write_status(self.client, dv, status)
        if old is None:
            return
        meta = dv["metadata"]
        new = status.get("phase")
        if new == old.get("phase"):
            return
        src = ((dv["spec"].get("source") or {}).get("pvc")) or {}
        where = (f"{src.get('namespace') or meta['namespace']}/{src.get('name', '')} into "
                 f"{meta['namespace']}/{meta['name']}")
        events = {CLONE_SCHEDULED: ("Normal", CLONE_SCHEDULED, f"Cloning from {where} scheduled"),
                  CLONE_IN_PROGRESS: ("Normal", CLONE_IN_PROGRESS, f"Cloning from {where} in progress"),
                  c.SUCCEEDED: ("Normal", "CloneSucceeded", f"Successfully cloned from {where}"),
                  c.FAILED: ("Warning", "CloneFailed", f"Cloning from {where} failed: "
                             f"{(c.find(status['conditions'], c.RUNNING) or {}).get('message', '')}")}
        if new in events:
            etype, reason, message = events[new]
            self.client.event(dv, reason=reason, message=message, type=etype)
