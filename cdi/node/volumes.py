"""Volume provisioner of the local node: fulfils PersistentVolumeClaims with host directories and files.

Each unbound claim gets a volume under ``data_dir/volumes/<namespace>/<name>-<uid8>/``: the directory
itself for ``volumeMode: Filesystem`` (the importer writes ``disk.img`` in it), a sparse ``block.img``
of exactly the requested size for ``volumeMode: Block`` (or the smallest free device of
``block_pool`` large enough, recorded in a ``device`` file beside). Binding then sets, as a CSI
provisioner and the PV controller would together: the finalizer ``cdi.kubevirt.io/local-volume``,
``spec.volumeName: pvc-<uid>``, the annotation ``cdi.kubevirt.io/local-path`` (the host path) and
status ``Bound`` with ``capacity.storage`` and ``accessModes``.

A claim of a ``WaitForFirstConsumer`` StorageClass waits (event ``WaitForFirstConsumer``) until the pod
runner has scheduled a pod that uses it here (annotation ``volume.kubernetes.io/selected-node``).
A claim larger than the free space of the data directory's filesystem stays Pending with a
``ProvisioningFailed`` event and is retried with back-off. A deleted claim keeps its data while a pod
on this node runs with it or is scheduled to (kube's pvc-protection); then the data goes and the
finalizer is removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from cdi.kube import PVC, Client, Informer, Key, NotFound, Obj, WorkQueue
from cdi.kube.loop import work
from cdi.kube.storage import ANN_SELECTED_NODE, waits_for_first_consumer
from cdi.node.claims import FINALIZER, volume_dir_name
from cdi.node.podspec import LOCAL_PATH
from cdi.node.settings import NodeSettings
from cdi.units import QuantityError, quantity_bytes

log = logging.getLogger(__name__)

COMPONENT = "cdi-local-provisioner"
IN_USE_RECHECK = 0.5


class ProvisioningError(Exception):
    """The claim cannot be provisioned now; the message says why (shown in an event)."""


def device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class VolumeProvisioner:
    """Watches PVCs in all namespaces, provisions, binds and reclaims local volumes."""

    def __init__(self, client: Client, settings: NodeSettings, *, in_use: Callable[[str, str], bool],
                 on_change: Callable[[str, str], None]) -> None:
        """``in_use(ns, claim)``: a live pod process uses the claim; ``on_change(ns, claim)``: it was bound."""
        self.client = client
        self.settings = settings
        self.in_use = in_use
        self.on_change = on_change
        self.queue = WorkQueue()
        self.informer = Informer(client, PVC)
        self.informer.add_handler(self._handle)
        self._failures: dict[str, int] = {}  # uid -> attempts, for the retry back-off
        self._waiting: set[str] = set()  # uids of claims announced as waiting for their first consumer
        self._thread = threading.Thread(target=self._work, name="node-volumes", daemon=True)

    def start(self) -> None:
        self.settings.volumes_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self.informer.start()

    def stop(self) -> None:
        self.informer.stop()
        self.queue.close()

    # -- events and the work loop ----------------------------------------------------------------

    def _handle(self, etype: str, obj: Obj) -> None:
        meta = obj.get("metadata", {})
        if etype == "DELETED":
            # Only claims deleted before they were bound (no finalizer) can leave a volume behind.
            for path in self._volume_dirs(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")):
                shutil.rmtree(path, ignore_errors=True)
        self.queue.add((meta.get("namespace", ""), meta.get("name", "")))

    def _work(self) -> None:
        work(self.queue, lambda ns, name: self._reconcile((ns, name)), name="provisioning")

    def _reconcile(self, key: Key) -> None:
        ns, name = key
        try:
            pvc = self.client.get(PVC, ns, name)
        except NotFound:
            return
        meta = pvc["metadata"]
        if meta.get("deletionTimestamp"):
            self._reclaim(pvc)
        elif (pvc.get("status") or {}).get("phase") != "Bound" or FINALIZER not in (meta.get("finalizers") or []):
            if (pvc.get("spec") or {}).get("volumeName") and FINALIZER not in (meta.get("finalizers") or []):
                return  # bound to a volume someone else provides
            if ANN_SELECTED_NODE not in (meta.get("annotations") or {}) and waits_for_first_consumer(self.client, pvc):
                self._wait_for_consumer(pvc)
                return
            self._provision(pvc)

    # -- provisioning -------------------------------------------------------------------------------

    def _wait_for_consumer(self, pvc: Obj) -> None:
        """A WaitForFirstConsumer claim without a selected node: say so once, as kube's PV controller does."""
        uid = pvc["metadata"]["uid"]
        if uid in self._waiting:
            return
        self._waiting.add(uid)
        log.info("[%s/%s] waits for its first consumer", pvc["metadata"]["namespace"], pvc["metadata"]["name"])
        self.client.event(pvc, reason="WaitForFirstConsumer", component="persistentvolume-controller",
                          message="waiting for first consumer to be created before binding")

    def _volume_dirs(self, ns: str, name: str, uid: str) -> list[Path]:
        path = self.settings.volumes_dir / ns / volume_dir_name(name, uid)
        return [path] if uid and path.exists() else []

    def _provision(self, pvc: Obj) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        request = str(((spec.get("resources") or {}).get("requests") or {}).get("storage", ""))
        try:
            size = quantity_bytes(request)
            if size <= 0:
                raise ProvisioningError(f"requested storage {request!r} must be positive")
            path, capacity = self._make_volume(ns, name, uid, spec.get("volumeMode") or "Filesystem", size, request)
        except (ProvisioningError, QuantityError, OSError) as e:
            attempts = self._failures.get(uid, 0) + 1
            self._failures[uid] = attempts
            delay = min(2.0 * 2 ** (attempts - 1), 60.0)
            log.warning("[%s/%s] provisioning failed error=%s retry_in=%.0fs", ns, name, e, delay)
            self.client.event(pvc, reason="ProvisioningFailed", type="Warning", component=COMPONENT,
                              message=f"failed to provision volume with StorageClass "
                                      f"\"{spec.get('storageClassName') or ''}\": {e}")
            self.queue.add_after((ns, name), delay)
            return
        self._failures.pop(uid, None)
        volume = f"pvc-{uid}"
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)
        self.client.patch(PVC, ns, name, {
            "metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": finalizers,
                         "annotations": {LOCAL_PATH: str(path), "pv.kubernetes.io/bind-completed": "yes",
                                         "pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"volumeName": volume},
        })
        self.client.patch(PVC, ns, name, {"status": {
            "phase": "Bound", "capacity": {"storage": capacity},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
        }}, status=True)
        log.info("[%s/%s] bound volume=%s path=%s capacity=%s", ns, name, volume, path, capacity)
        self.client.event(pvc, reason="ProvisioningSucceeded", component=COMPONENT,
                          message=f"Successfully provisioned volume {volume} at {path}")
        self.on_change(ns, name)

    def _make_volume(self, ns: str, name: str, uid: str, mode: str, size: int, request: str) -> tuple[Path, str]:
        """Create (or find, after a crash) the volume; return its host path and capacity quantity."""
        vdir = self.settings.volumes_dir / ns / volume_dir_name(name, uid)
        if mode not in ("Filesystem", "Block"):
            raise ProvisioningError(f"unsupported volumeMode {mode!r}")
        if mode == "Block":
            device_file = vdir / "device"
            if device_file.exists():
                device = Path(device_file.read_text().strip())
                return device, str(device_size(device))
            picked = self._pick_device(size)
            if picked is not None:
                vdir.mkdir(parents=True, exist_ok=True)
                device_file.write_text(f"{picked}\n")
                return picked, str(device_size(picked))
        image = vdir / "block.img"
        if not vdir.exists() or (mode == "Block" and not image.exists()):
            self._check_space(size)
            vdir.mkdir(parents=True, exist_ok=True)
        if mode == "Block" and not image.exists():
            tmp = vdir / "block.img.part"
            with open(tmp, "wb") as f:
                f.truncate(size)  # sparse: no blocks allocated
            os.replace(tmp, image)
        return (image if mode == "Block" else vdir), request

    def _check_space(self, size: int) -> None:
        free = shutil.disk_usage(self.settings.volumes_dir).free
        if size > free:
            raise ProvisioningError(f"requested {size} bytes but only {free} bytes are free in "
                                    f"{self.settings.volumes_dir}")

    def _pick_device(self, size: int) -> Path | None:
        if not self.settings.block_pool:
            return None
        used = {Path(p.read_text().strip()) for p in self.settings.volumes_dir.glob("*/*/device")}
        fitting = []
        for device in self.settings.block_pool:
            if device in used:
                continue
            try:
                dev_size = device_size(device)
            except OSError as e:
                log.warning("block pool device unusable device=%s error=%s", device, e)
                continue
            if dev_size >= size:
                fitting.append((dev_size, str(device), device))
        return min(fitting)[2] if fitting else None

    # -- reclaiming ---------------------------------------------------------------------------------

    def _reclaim(self, pvc: Obj) -> None:
        meta = pvc["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        if self.in_use(ns, name):
            log.debug("[%s/%s] deleting claim still in use by a pod", ns, name)
            self.queue.add_after((ns, name), IN_USE_RECHECK)
            return
        for path in self._volume_dirs(ns, name, uid):
            shutil.rmtree(path)
            log.info("[%s/%s] volume data removed path=%s", ns, name, path)
        finalizers.remove(FINALIZER)
        self.client.patch(PVC, ns, name, {"metadata": {"resourceVersion": meta["resourceVersion"],
                                                       "finalizers": finalizers}})
        self.on_change(ns, name)
