"""What every DataVolume reconciler (import, upload, clone) writes the same way: its status, written only
when it changed, and the outcome recorded on the claim's annotations (as CDI does, so that a finished
or failed run is never started again, even after a restart of the controller)."""

from __future__ import annotations

import copy
from typing import Any

from cdi.controller import conditions as c
from cdi.kube import DATAVOLUME, PVC, Client, Obj


def write_status(client: Client, dv: Obj, status: Obj) -> Obj | None:
    """Patch the DataVolume's status if it changed; return the status it had then (None: unchanged)."""
    status["conditions"] = c.ordered(status["conditions"])
    old: Obj = dv.get("status") or {}
    if old == status:
        return None
    meta = dv["metadata"]
    client.patch(DATAVOLUME, meta["namespace"], meta["name"], {"status": status}, status=True)
    return old


def record_on_claim(client: Client, pvc: Obj, annotations: dict[str, Any]) -> None:
    """Set annotations (None values left out) on the claim, and in ``pvc`` itself; no write when all hold."""
    values = {k: str(v) for k, v in annotations.items() if v is not None}
    meta = pvc["metadata"]
    current = meta.get("annotations") or {}
    if all(current.get(k) == v for k, v in values.items()):
        return
    client.patch(PVC, meta["namespace"], meta["name"], {"metadata": {"annotations": values}})
    meta.setdefault("annotations", {}).update(values)


def mark_succeeded(status: Obj) -> None:
    status["phase"] = c.SUCCEEDED
    status["progress"] = "100.0%"
    c.set_condition(status["conditions"], c.READY, "True")
    c.set_condition(status["conditions"], c.RUNNING, "False", "Completed")


def mark_failed(status: Obj, reason: str, message: str) -> None:
    """Failed: the volume holds nothing usable, whatever share of the bytes the last attempt had read."""
    status["phase"] = c.FAILED
    status["progress"] = "N/A"
    c.set_condition(status["conditions"], c.READY, "False")
    c.set_condition(status["conditions"], c.RUNNING, "False", reason, message)


def working_status(dv: Obj) -> Obj:
    """A copy of the DataVolume's status to compute the new one in, with CDI's defaults filled in."""
    status: Obj = copy.deepcopy(dv.get("status") or {})
    status.setdefault("conditions", [])
    status.setdefault("progress", "N/A")
    status["claimName"] = dv["metadata"]["name"]
    return status
