"""Pod runner of the local node: runs the containers of pods as local processes, as kubelet would.

A pod whose PersistentVolumeClaims are all Bound (and whose ``spec.nodeName``, if set, names this
node) is scheduled here (condition PodScheduled, hostIP,
podIP 127.0.0.1, startTime) and bound to it (``spec.nodeName``). It is then admitted when a slot is free: at
most ``max_running_pods`` containers run at once, and waiting pods (``ContainerCreating`` with a
message saying the node is at its limit) are admitted in creation order. A pod none of whose
containers could start (a missing Secret: ``CreateContainerConfigError``) gives its slots back until a
retry finds a slot free and starts it. Each container of
``spec.containers`` runs as a process (see ``containers`` and ``podspec``); init containers,
probes, resources and images are ignored. restartPolicy Never, OnFailure and Always apply, with
exponential back-off (``CrashLoopBackOff``) between restarts.

Deletion: the embedded API server deletes a pod without finalizers at once (as ``--grace-period=0``
would), so the node does what a kubelet does with a force-deleted pod: SIGTERM to each process
group, ``terminationGracePeriodSeconds`` (default 30) to exit, then SIGKILL, then the pod's directory
goes. A pod held by someone's finalizer (deletionTimestamp set) is stopped the same way, and its
containers are reported terminated.

After a restart of the node, processes recorded by the earlier run are killed, and a container the
API still shows running is restarted (restartCount + 1; with restartPolicy Never it is reported
terminated with reason ContainerStatusUnknown instead), as kubelet does when containers vanish.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import signal
import threading
import time

from cdi.kube import POD, PVC, ApiError, Client, Informer, Key, NotFound, Obj, WorkQueue, now_iso
from cdi.kube.loop import work
from cdi.kube.storage import ANN_SELECTED_NODE, waits_for_first_consumer
from cdi.node.claims import claim_path
from cdi.node.containers import COMPONENT, Launcher
from cdi.node.podspec import MountError, grace_period, prepare_volumes
from cdi.node.process import Process
from cdi.node.settings import NodeSettings
from cdi.node.status import ContainerRuntime, PodRuntime, pod_status, restore_container

log = logging.getLogger(__name__)

WORKERS = 2
RETRY = 2.0  # seconds before re-checking an unschedulable pod or a failed mount
STOP_GRACE = 5.0  # at most this long for processes to exit on SIGTERM when the node stops


class PodRunner:
    """Watches pods in all namespaces and runs the ones scheduled to this node."""

    def __init__(self, client: Client, settings: NodeSettings) -> None:
        self.client = client
        self.settings = settings
        self.launcher = Launcher(client, settings)
        self.queue = WorkQueue()
        self.informer = Informer(client, POD)
        self.informer.add_handler(lambda _etype, obj: self.queue.add(_key(obj)))
        self._lock = threading.RLock()
        self._pods: dict[Key, PodRuntime] = {}
        self._dying: dict[str, PodRuntime] = {}  # uid -> runtimes being stopped after deletion
        self._seq = itertools.count()
        self._stopping = threading.Event()
        # Workers spawn every process and live as long as the node: PR_SET_PDEATHSIG follows the
        # forking thread, so a process must never be started from a short-lived thread.
        self._workers = [threading.Thread(target=self._work, name=f"node-pods-{i}", daemon=True)
                         for i in range(WORKERS)]

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.settings.pods_dir.mkdir(parents=True, exist_ok=True)
        dirs = self.launcher.kill_leftovers()
        try:
            live = {p["metadata"]["uid"] for p in self.client.list(POD)[0]}
            for uid in set(dirs) - live:
                log.info("removing state of a pod deleted while the node was down uid=%s", uid)
                shutil.rmtree(self.settings.pods_dir / uid, ignore_errors=True)
        except ApiError as e:
            log.warning("cannot list pods at start error=%s: stale pod dirs kept", e)
        for w in self._workers:
            w.start()
        self.informer.start()

    def stop(self) -> None:
        """Stop every container (SIGTERM, then SIGKILL after a short grace) and the workers."""
        self._stopping.set()
        self.informer.stop()
        with self._lock:
            runtimes = list(self._pods.values()) + list(self._dying.values())
        _stop_processes(runtimes, STOP_GRACE)
        self.queue.close()
        for w in self._workers:
            w.join(timeout=5)

    # -- what others ask ----------------------------------------------------------------------------

    def find(self, namespace: str, name: str) -> PodRuntime | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def claim_in_use(self, namespace: str, claim: str) -> bool:
        """A pod on this node runs with the claim, or will (scheduled, not finished, not being deleted)."""
        with self._lock:
            runtimes = list(self._pods.values()) + list(self._dying.values())

        def uses(rt: PodRuntime) -> bool:
            pending = rt.scheduled and not rt.terminating and not all(c.finished for c in rt.containers.values())
            return rt.live or pending

        return any(rt.namespace == namespace and claim in rt.claims and uses(rt) for rt in runtimes)

    def claim_changed(self, namespace: str, claim: str) -> None:
        """A claim got bound: look again at the pods waiting for it."""
        with self._lock:
            keys = [rt.key for rt in self._pods.values()
                    if not rt.scheduled and rt.namespace == namespace and claim in rt.claims]
        for key in keys:
            self.queue.add(key)

    # -- the work loop ------------------------------------------------------------------------------

    def _work(self) -> None:
        work(self.queue, lambda ns, name: self._reconcile((ns, name)), name="pod sync")

    def _reconcile(self, key: Key) -> None:
        try:
            pod: Obj | None = self.client.get(POD, *key)
        except NotFound:
            pod = None
        with self._lock:
            rt = self._pods.get(key)
        if rt is not None and (pod is None or pod["metadata"]["uid"] != rt.uid):
            self._kill(rt, gone=True)
            rt = None
        if pod is None or self._stopping.is_set():
            return
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and node_name != self.settings.node_name:
            return  # bound to another node: not ours to run
        if rt is None:
            rt = self._restore(pod)
            with self._lock:
                self._pods[key] = rt
        rt.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._collect_exits(rt)
            if not rt.terminating:
                self._kill(rt, gone=False)
        else:
            self._sync(rt)
        self._report(rt)

    def _restore(self, pod: Obj) -> PodRuntime:
        """A runtime for a pod first seen by this run of the node, from the status it shows."""
        meta, status = pod["metadata"], pod.get("status") or {}
        rt = PodRuntime(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], pod=pod,
                        dir=self.settings.pods_dir / meta["uid"], seq=next(self._seq))
        reported = {s.get("name"): s for s in status.get("containerStatuses") or []}
        for spec in (pod.get("spec") or {}).get("containers") or []:
            c = rt.containers[spec["name"]] = ContainerRuntime(name=spec["name"], spec=spec)
            if spec["name"] in reported:
                restore_container(c, reported[spec["name"]])
                if "running" in c.state:
                    self._vanished(rt, c)
        scheduled = any(cond.get("type") == "PodScheduled" and cond.get("status") == "True"
                        for cond in status.get("conditions") or [])
        rt.scheduled, rt.start_time = scheduled, status.get("startTime") if scheduled else None
        return rt

    def _vanished(self, rt: PodRuntime, c: ContainerRuntime) -> None:
        term: Obj = {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now_iso(),
                     "startedAt": c.state["running"].get("startedAt"),
                     "message": "The container could not be located when the node restarted. "
                                "The container used to be Running"}
        log.info("[%s/%s] container=%s was running before the node restarted", rt.namespace, rt.name, c.name)
        if rt.restart_policy == "Never":
            c.state = {"terminated": term}
        else:
            c.last_state = {"terminated": term}
            c.state = {"waiting": {"reason": "ContainerCreating"}}

    # -- scheduling, admission, containers ----------------------------------------------------------

    def _sync(self, rt: PodRuntime) -> None:
        if all(c.finished for c in rt.containers.values()):
            return
        if not rt.scheduled:
            rt.unschedulable = self._unbound(rt)
            if rt.unschedulable:
                self.queue.add_after(rt.key, RETRY)
                return
            rt.scheduled, rt.start_time = True, now_iso()
            if not (rt.pod.get("spec") or {}).get("nodeName"):  # bound to this node, as the scheduler does
                rt.pod = self.client.patch(POD, rt.namespace, rt.name, {"spec": {"nodeName": self.settings.node_name}})
            self.client.event(rt.pod, reason="Scheduled", component="default-scheduler",
                              message=f"Successfully assigned {rt.namespace}/{rt.name} to {self.settings.node_name}")
        if not rt.admitted and not self._admit(rt):
            if rt.stalled:  # keep saying why it cannot start; it tries again when a slot is free
                self.queue.add_after(rt.key, RETRY)
                return
            msg = f"node {self.settings.node_name} runs its limit of {self.settings.max_running_pods} containers"
            for c in rt.containers.values():
                if "terminated" not in c.last_state:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": msg}}
            return
        if rt.volumes is None:
            try:
                rt.volumes = prepare_volumes(self.client, rt.pod, rt.dir / "volumes",
                                             claims_root=self.settings.volumes_dir)
            except MountError as e:
                log.info("[%s/%s] mount failed error=%s", rt.namespace, rt.name, e)
                if rt.containers and next(iter(rt.containers.values())).state.get("waiting", {}).get(
                        "message") != str(e):  # one event per distinct failure, not one per retry
                    self.client.event(rt.pod, reason="FailedMount", type="Warning", component=COMPONENT,
                                      message=f"MountVolume.SetUp failed: {e}")
                for c in rt.containers.values():
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                self.queue.add_after(rt.key, RETRY)
                return
        self._collect_exits(rt)
        now = time.monotonic()
        for c in rt.containers.values():
            if c.running or c.finished or self._stopping.is_set():
                continue
            if c.next_start > now:
                self.queue.add_after(rt.key, c.next_start - now)
            elif not self.launcher.start(rt, c):
                self.queue.add_after(rt.key, RETRY)
                if not _serves(rt) and not any(other.running for other in rt.containers.values()):
                    self._stall(rt)
                    return
            elif c.process is not None:
                rt.stalled = False
                threading.Thread(target=self._reap, args=(rt, c.process), name=f"reap-{c.process.pid}",
                                 daemon=True).start()
            else:
                self.queue.add(rt.key)  # the process could not start: its state changed
        if all(c.finished for c in rt.containers.values()):
            self._wake_waiting()

    def _collect_exits(self, rt: PodRuntime) -> None:
        for c in rt.containers.values():
            if c.process is not None and c.process.exited.is_set() and not c.exit_seen:
                self.launcher.exited(rt, c)

    def _reap(self, rt: PodRuntime, process: Process) -> None:
        process.reap()
        self.queue.add(rt.key)

    def _unbound(self, rt: PodRuntime) -> str:
        """Why the pod cannot be scheduled yet ("" when all its claims are bound to local volumes)."""
        for claim in sorted(rt.claims):
            try:
                pvc = self.client.get(PVC, rt.namespace, claim)
            except NotFound:
                return f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.'
            if pvc["metadata"].get("deletionTimestamp"):
                return f'0/1 nodes are available: persistentvolumeclaim "{claim}" is being deleted.'
            if claim_path(self.settings.volumes_dir, pvc) is None:
                if waits_for_first_consumer(self.client, pvc):
                    self._select_node(pvc)
                    return f'persistentvolumeclaim "{claim}" is being provisioned for node {self.settings.node_name}'
                return "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
        return ""

    def _select_node(self, pvc: Obj) -> None:
        """The scheduler's part for a WaitForFirstConsumer claim: this node is where its first pod runs."""
        meta = pvc["metadata"]
        if (meta.get("annotations") or {}).get(ANN_SELECTED_NODE) == self.settings.node_name:
            return
        self.client.patch(PVC, meta["namespace"], meta["name"],
                          {"metadata": {"annotations": {ANN_SELECTED_NODE: self.settings.node_name}}})
        log.info("[%s/%s] selected node %s for the claim's first consumer", meta["namespace"], meta["name"],
                 self.settings.node_name)

    def _stall(self, rt: PodRuntime) -> None:
        """A pod none of whose containers could start (CreateContainerConfigError, ErrImagePull) gives its
        slots back: it runs nothing, and holding them would keep every later import ContainerCreating until
        someone creates the missing Secret. It is admitted again, behind no one, when it retries."""
        with self._lock:
            rt.admitted, rt.stalled = False, True
        log.info("[%s/%s] no container could start: slots released", rt.namespace, rt.name)
        self._wake_waiting()

    def _holds_slots(self, rt: PodRuntime) -> bool:
        if _serves(rt):
            return False
        if rt.terminating:
            return rt.live
        return rt.admitted and (rt.live or not all(c.finished for c in rt.containers.values()))

    def _admit(self, rt: PodRuntime) -> bool:
        """Admit ``rt`` if the slots left after the pods that came earlier allow it.

        The limit is for work that runs by itself (imports, clones, VMs). A pod that serves (declares
        container ports: an upload server waiting for a client) mostly waits, and counting it would let
        a few idle upload DataVolumes stall every import on the node: it is admitted at once."""
        if _serves(rt):
            rt.admitted = True
            return True
        with self._lock:
            everyone = list(self._pods.values()) + list(self._dying.values())
            free = self.settings.max_running_pods - sum(len(r.containers) for r in everyone if self._holds_slots(r))
            if rt.stalled:  # a retry of a pod that could not start takes a slot only if one is free now
                rt.admitted = len(rt.containers) <= free or free == self.settings.max_running_pods
                return rt.admitted
            waiting = sorted((r for r in self._pods.values() if r.scheduled and not r.admitted and not _serves(r)
                              and not r.stalled and not r.terminating
                              and not all(c.finished for c in r.containers.values())),
                             key=PodRuntime.order)
            idle = free == self.settings.max_running_pods
            for r in waiting:
                need = len(r.containers)
                if r is rt:
                    rt.admitted = need <= free or idle  # a pod larger than the limit runs alone
                    return rt.admitted
                if need > free:
                    return False
                free -= need
        return False

    def _wake_waiting(self) -> None:
        with self._lock:
            keys = [r.key for r in self._pods.values() if r.scheduled and not r.admitted and not r.stalled]
        for key in keys:
            self.queue.add(key)

    # -- stopping -----------------------------------------------------------------------------------

    def _kill(self, rt: PodRuntime, *, gone: bool) -> None:
        """Stop the pod's processes in the background; with ``gone``, forget it and remove its files."""
        rt.terminating = True
        with self._lock:
            if gone:
                self._pods.pop(rt.key, None)
                self.launcher.ports.forget(rt.uid)
            self._dying[rt.uid] = rt
        for c in rt.containers.values():
            if c.running:
                self.client.event(rt.pod, reason="Killing", component=COMPONENT,
                                  message=f"Stopping container {c.name}")
        threading.Thread(target=self._terminate, args=(rt, gone), name=f"kill-{rt.name}", daemon=True).start()

    def _terminate(self, rt: PodRuntime, gone: bool) -> None:
        _stop_processes([rt], grace_period(rt.pod))
        log.info("[%s/%s] pod stopped uid=%s", rt.namespace, rt.name, rt.uid)
        if gone:
            shutil.rmtree(rt.dir, ignore_errors=True)
        with self._lock:
            self._dying.pop(rt.uid, None)
        if not gone:
            self.queue.add(rt.key)
        self._wake_waiting()

    # -- status -------------------------------------------------------------------------------------

    def _report(self, rt: PodRuntime) -> None:
        old = rt.pod.get("status") or {}
        new = pod_status(rt, old)
        if any(old.get(k) != v for k, v in new.items()):
            try:
                rt.pod = self.client.patch(POD, rt.namespace, rt.name, {"status": new}, status=True)
            except NotFound:
                return
            log.debug("[%s/%s] status phase=%s", rt.namespace, rt.name, new["phase"])


def _serves(rt: PodRuntime) -> bool:
    """A pod that serves (an upload server, a VM console) does not take a run slot; a port for
    metrics alone (importer, cloner) does not make a worker a server."""
    return any(p.get("name") != "metrics" for c in (rt.pod.get("spec") or {}).get("containers") or []
               for p in c.get("ports") or [])


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _stop_processes(runtimes: list[PodRuntime], grace: float) -> None:
    """SIGTERM every live process, give them ``grace`` seconds together, SIGKILL the rest."""
    procs = [c.process for rt in runtimes for c in rt.containers.values() if c.running and c.process]
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        if not p.exited.wait(max(0.0, deadline - time.monotonic())):
            log.info("grace period over pid=%d: killing", p.pid)
            p.signal(signal.SIGKILL)
    for p in procs:
        p.exited.wait(10)
