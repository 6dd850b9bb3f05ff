"""Where a VMI's serial console is on this node: the console provider of the embedded API server.

The console subresource (``cdi.apiserver.kubevirt_subresources``) asks the provider for the unix
socket of a VMI's serial console. The local node answers from what it already knows: the VMI's
launcher pod (``kubevirt.io=virt-launcher`` with ``vm.kubevirt.io/name=<vmi>``) that it runs, the
``LAUNCHER_STATUS_FILE`` declared in the pod's ``compute`` container, translated to a host path
through that container's volume mounts exactly as the container itself sees it, and the
``consoleSocket`` the launcher wrote there. Nothing here knows the launcher pod's layout beyond the
environment variable's name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cdi.apiserver.errors import Conflict, NotFound
from cdi.kube import POD, ApiError, Client
from cdi.node.pods import PodRunner
from cdi.node.podspec import ConfigError, volume_contract
from cdi.podenv import PathMap
from vm_runtime.status import read_status

log = logging.getLogger(__name__)


class LauncherConsoles:
    """``(namespace, vmi name) -> console socket path`` for launcher pods this node runs."""

    def __init__(self, client: Client, pods: PodRunner) -> None:
        self.client = client
        self.pods = pods

    def __call__(self, namespace: str, name: str) -> str:
        try:
            pods, _ = self.client.list(POD, namespace,
                                       label_selector=f"kubevirt.io=virt-launcher,vm.kubevirt.io/name={name}")
        except ApiError as e:
            raise NotFound(f"cannot look up the launcher pod of {name}: {e}") from e
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if not live:
            raise NotFound(f'virtualmachineinstance "{name}" has no launcher pod: is the VM running?')
        pod = live[0]
        rt = self.pods.find(namespace, pod["metadata"]["name"])
        if rt is None or rt.volumes is None:
            raise Conflict(f"the launcher pod of {name} is not running on this node yet")
        compute = next((c for c in pod["spec"]["containers"] if c.get("name") == "compute"), None)
        env = {e["name"]: e.get("value", "") for e in (compute or {}).get("env") or []}
        if compute is None or not env.get("LAUNCHER_STATUS_FILE"):
            raise NotFound(f"the launcher pod of {name} declares no LAUNCHER_STATUS_FILE")
        try:
            mounts, _ = volume_contract(compute, rt.volumes)
        except ConfigError as e:
            raise Conflict(f"the launcher pod of {name} has unusable volumes: {e}") from e
        status_file = Path(PathMap({"CDI_VOLUME_MOUNTS": json.dumps(mounts)})(env["LAUNCHER_STATUS_FILE"]))
        status = read_status(status_file) or {}
        socket = status.get("consoleSocket")
        if not socket or status.get("phase") in ("Succeeded", "Failed"):
            raise Conflict(f"the guest of {name} is not running (launcher phase {status.get('phase', 'none')})")
        log.debug("console ns=%s vmi=%s socket=%s", namespace, name, socket)
        return str(socket)

