"""The controllers as one unit: what ``cdi serve`` runs in-process and ``cdi controller`` runs alone.

DataVolume (import, blank), upload and clone always; the VM runtime when asked. The DataVolume
informer also feeds CDI's metrics (``cdi.metrics``). Start and stop together, so a controller that
loses its leader Lease stops every reconciler at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cdi.clonetoken import TokenCheck
from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ControllerSettings
from cdi.controller.vm_manager import VmControllerManager
from cdi.kube import Client
from cdi.metrics import DataVolumeMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    # Reconciler threads per controller.
    workers: int = 4
    # Also run the VM runtime (VirtualMachine/VirtualMachineInstance); off where KubeVirt is installed.
    vm: bool = True


class Controllers:
    def __init__(self, client: Client, settings: ControllerSettings, options: RunOptions, *,
                 clone_tokens: TokenCheck | None = None, metrics: DataVolumeMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics or DataVolumeMetrics()
        self.manager = ControllerManager(client, settings, workers=options.workers, clone_tokens=clone_tokens)
        self.manager.informers[0].add_handler(self.metrics.on_event)  # the DataVolume informer
        self.vm_manager = VmControllerManager(client) if options.vm else None

    def start(self) -> Controllers:
        self.manager.start()
        if self.vm_manager is not None:
            self.vm_manager.start()
        self.metrics.ready = True
        log.info("controllers started vm=%s", self.vm_manager is not None)
        return self

    def stop(self) -> None:
        self.metrics.ready = False
        if self.vm_manager is not None:
            self.vm_manager.stop()
        self.manager.stop()
