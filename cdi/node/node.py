"""The local node: what kubelet and a CSI provisioner do in a cluster, done on one machine.

``LocalNode(client, settings)`` joins the volume provisioner (``volumes``) and the pod runner
(``pods``) and registers its Node object (``registration``), all talking to the API server only through
``cdi.kube``; ``log_provider`` serves ``kubectl logs`` for the pods it runs (hand it to
``ApiServer.set_log_provider``).
"""

from __future__ import annotations

import logging

from cdi.kube import Client
from cdi.node.logs import PodLogs
from cdi.node.pods import PodRunner
from cdi.node.registration import NodeRegistration
from cdi.node.settings import NodeSettings
from cdi.node.volumes import VolumeProvisioner

log = logging.getLogger(__name__)


class LocalNode:
    """Provisions local volumes for PVCs and runs pods as local processes."""

    def __init__(self, client: Client, settings: NodeSettings) -> None:
        settings.validate()
        self.client = client
        self.settings = settings
        self.pods = PodRunner(client, settings)
        self.volumes = VolumeProvisioner(client, settings, in_use=self.pods.claim_in_use,
                                         on_change=self.pods.claim_changed)
        self.log_provider = PodLogs(self.pods)
        self.registration = NodeRegistration(client, settings)

    def start(self) -> LocalNode:
        """Kill processes left by an earlier run, then watch PVCs and pods. Returns at once."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.registration.start()
        self.pods.start()
        self.volumes.start()
        log.info("local node started name=%s data_dir=%s max_running=%d", self.settings.node_name,
                 self.settings.data_dir, self.settings.max_running_pods)
        return self

    def stop(self) -> None:
        """Stop watching and stop every running container (SIGTERM, then SIGKILL)."""
        self.volumes.stop()
        self.pods.stop()
        self.registration.stop()
        log.info("local node stopped name=%s", self.settings.node_name)

    def __enter__(self) -> LocalNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
