"""The virt-launcher pod of a VirtualMachineInstance, as the VMI controller creates it.

One pod per VMI, named ``virt-launcher-<vmi>-<5 chars>``, owned by the VMI, with KubeVirt's labels
(``kubevirt.io=virt-launcher``, ``kubevirt.io/created-by=<vmi uid>``, ``vm.kubevirt.io/name``) and
two containers:

``compute``            ``python3 -m vm_runtime.launcher``: the VMI as ``VMI_SPEC``; each
                       dataVolume/persistentVolumeClaim volume mounted at KubeVirt's
                       ``/var/run/kubevirt-private/vmi-disks/<name>`` (a Filesystem claim) or
                       ``/dev/<name>`` (a Block claim) and named by ``CDI_VOLUME_<NAME>``; its work
                       directory, console log and status file on the ``virt-private`` emptyDir.
``guest-console-log``  ``python3 -m vm_runtime.virt_tail``: prints the serial console log, so
                       ``kubectl logs POD -c guest-console-log`` shows the guest's output.

``terminationGracePeriodSeconds`` is the VMI's plus 15 s, so the launcher has the VMI's whole grace
period for an ACPI shutdown before the node kills it. The pod carries a finalizer that the VMI
controller removes once every container has stopped, so a VMI is gone only when its qemu is.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from cdi.kube import Obj

LAUNCHER_FINALIZER = "kubevirt.io/virt-launcher-stopped"
PRIVATE_VOLUME = "virt-private"
PRIVATE_DIR = "/var/run/kubevirt-private"
DISKS_DIR = f"{PRIVATE_DIR}/vmi-disks"
WORK_DIR = f"{PRIVATE_DIR}/launcher"
STATUS_FILE = f"{WORK_DIR}/launcher-status.json"
CONSOLE_LOG = f"{WORK_DIR}/guest-console.log"
COMPUTE = "compute"
CONSOLE_CONTAINER = "guest-console-log"
EXTRA_GRACE = 15
DEFAULT_GRACE = 30
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"


def volume_env_name(name: str) -> str:
    """``CDI_VOLUME_<NAME>`` as the launcher reads it (``vm_runtime.launcher.volume_env_name``)."""
    return "CDI_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def claim_of(volume: Obj) -> str | None:
    """The PVC behind a dataVolume (CDI names the PVC after the DataVolume) or PVC volume."""
    if "dataVolume" in volume:
        return str((volume["dataVolume"] or {}).get("name") or "") or None
    if "persistentVolumeClaim" in volume:
        return str((volume["persistentVolumeClaim"] or {}).get("claimName") or "") or None
    return None


def owner_ref(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion", "kubevirt.io/v1"), "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def grace_period(vmi: Obj) -> int:
    value: Any = (vmi.get("spec") or {}).get("terminationGracePeriodSeconds")
    return int(value) if isinstance(value, int) else DEFAULT_GRACE


def launcher_pod(vmi: Obj, block_claims: set[str]) -> Obj:
    """The launcher pod of ``vmi``; ``block_claims`` are the claims with volumeMode Block."""
    meta = vmi["metadata"]
    name = meta["name"]
    suffix = "".join(random.choices(_SUFFIX, k=5))
    private = {"name": PRIVATE_VOLUME, "mountPath": PRIVATE_DIR}
    volumes: list[Obj] = [{"name": PRIVATE_VOLUME, "emptyDir": {}}]
    mounts: list[Obj] = [private]
    devices: list[Obj] = []
    env: list[Obj] = []
    for vol in (vmi.get("spec") or {}).get("volumes") or []:
        claim = claim_of(vol)
        if claim is None:
            continue
        pod_volume = f"vol-{vol['name']}"
        volumes.append({"name": pod_volume, "persistentVolumeClaim": {"claimName": claim}})
        if claim in block_claims:
            path = f"/dev/{vol['name']}"
            devices.append({"name": pod_volume, "devicePath": path})
        else:
            path = f"{DISKS_DIR}/{vol['name']}"
            mounts.append({"name": pod_volume, "mountPath": path})
        env.append({"name": volume_env_name(vol["name"]), "value": path})
    spec_doc = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": name, "namespace": meta["namespace"], "uid": meta["uid"]},
                "spec": vmi.get("spec") or {}}
    shared_env = [{"name": "LAUNCHER_WORK_DIR", "value": WORK_DIR},
                  {"name": "GUEST_CONSOLE_LOG", "value": CONSOLE_LOG},
                  {"name": "LAUNCHER_STATUS_FILE", "value": STATUS_FILE}]
    compute: Obj = {
        "name": COMPUTE, "image": "cdi-virt-launcher:latest",
        "command": ["python3", "-m", "vm_runtime.launcher"],
        "env": [{"name": "VMI_SPEC", "value": json.dumps(spec_doc, sort_keys=True)}, *shared_env, *env],
        "volumeMounts": mounts,
    }
    if devices:
        compute["volumeDevices"] = devices
    tail: Obj = {
        "name": CONSOLE_CONTAINER, "image": "cdi-virt-launcher:latest",
        "command": ["python3", "-m", "vm_runtime.virt_tail"], "env": shared_env, "volumeMounts": [private],
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"virt-launcher-{name}-{suffix}", "namespace": meta["namespace"],
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": meta["uid"],
                       "vm.kubevirt.io/name": name},
            "annotations": {"kubevirt.io/domain": name},
            "ownerReferences": [owner_ref(vmi)],
            "finalizers": [LAUNCHER_FINALIZER],
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace_period(vmi) + EXTRA_GRACE,
            "volumes": volumes,
            "containers": [compute, tail],
        },
    }


def launcher_status(log_text: str) -> Obj | None:
    """The last ``{"launcherStatus": ...}`` line the launcher printed."""
    for line in reversed(log_text.splitlines()):
        line = line.strip()
        if line.startswith('{"launcherStatus"'):
            try:
                value = json.loads(line)["launcherStatus"]
            except (ValueError, KeyError):
                continue
            if isinstance(value, dict):
                return value
    return None


def termination_status(pod: Obj) -> Obj | None:
    """The compute container's final state: its termination message (the launcher's final status) and
    exit code, or None while it has not terminated."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != COMPUTE:
            continue
        term = (cs.get("state") or {}).get("terminated")
        if not term:
            return None
        result: Obj = {}
        try:
            parsed = json.loads(term.get("message") or "")
            if isinstance(parsed, dict):
                result = parsed
        except ValueError:
            result = {"message": (term.get("message") or "").strip()[-500:]}
        result.setdefault("exitCode", term.get("exitCode"))
        result.setdefault("reason", term.get("reason") or "Error")
        return result
    return None


def compute_running(pod: Obj) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == COMPUTE and "running" in (cs.get("state") or {}):
            return True
    return False


def pod_stopped(pod: Obj) -> bool:
    """No container of the pod runs any more (or none ever started)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return all("running" not in (cs.get("state") or {}) for cs in statuses)
