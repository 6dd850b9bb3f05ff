"""Runs the VirtualMachine and VirtualMachineInstance reconcilers, beside the DataVolume manager.

Informers on VirtualMachines, VMIs, DataVolumes and Pods feed two work queues: a VM is reconciled
when it, its VMI or one of its DataVolumes changes; a VMI when it or its launcher pod changes (pods
labelled ``kubevirt.io=virt-launcher``, found by ``vm.kubevirt.io/name``). As in the DataVolume
manager, one key is never reconciled twice at once, errors requeue with exponential back-off, a
stale write (409) retries at once, and a returned delay requeues after it.
"""

from __future__ import annotations

import logging

from cdi.controller.vm import VmReconciler
from cdi.controller.vmi import VM, VMI, VmiReconciler
from cdi.kube import DATAVOLUME, POD, Client, Informer, Key, Obj
from cdi.kube.loop import ReconcileLoop

log = logging.getLogger(__name__)

def _owners(obj: Obj, kind: str) -> list[Key]:
    meta = obj["metadata"]
    return [(meta["namespace"], ref["name"]) for ref in meta.get("ownerReferences") or [] if ref.get("kind") == kind]


class VmControllerManager:
    def __init__(self, client: Client, *, workers: int = 2) -> None:
        self.client = client
        self.vms = ReconcileLoop("vm", VmReconciler(client).reconcile, workers)
        self.vmis = ReconcileLoop("vmi", VmiReconciler(client).reconcile, workers)
        self.informers = [Informer(client, VM), Informer(client, VMI), Informer(client, DATAVOLUME),
                          Informer(client, POD, label_selector="kubevirt.io=virt-launcher")]
        self.informers[0].add_handler(self._on_vm)
        self.informers[1].add_handler(self._on_vmi)
        self.informers[2].add_handler(self._on_dv)
        self.informers[3].add_handler(self._on_pod)

    def _on_vm(self, etype: str, obj: Obj) -> None:
        self.vms.queue.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def _on_vmi(self, etype: str, obj: Obj) -> None:
        self.vmis.queue.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        for key in _owners(obj, "VirtualMachine"):
            self.vms.queue.add(key)

    def _on_dv(self, etype: str, obj: Obj) -> None:
        for key in _owners(obj, "VirtualMachine"):
            self.vms.queue.add(key)

    def _on_pod(self, etype: str, obj: Obj) -> None:
        name = (obj["metadata"].get("labels") or {}).get("vm.kubevirt.io/name")
        if name:
            self.vmis.queue.add((obj["metadata"]["namespace"], name))

    def start(self) -> VmControllerManager:
        for informer in self.informers:
            informer.start()
        self.vms.start()
        self.vmis.start()
        return self

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.vms.queue.close()
        self.vmis.queue.close()
