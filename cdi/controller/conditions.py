"""DataVolume phases and conditions as CDI reports them (pkg/controller/datavolume/conditions.go).

``set_condition`` keeps lastTransitionTime when the status does not change and bumps
lastHeartbeatTime when only the reason or message do, like CDI's updateCondition.
"""

from __future__ import annotations

from typing import Any

from cdi.kube import now_iso

# phases
PENDING = "Pending"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"  # the claim binds once its first pod is scheduled
IMPORT_SCHEDULED = "ImportScheduled"
IMPORT_IN_PROGRESS = "ImportInProgress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"

# condition types
BOUND = "Bound"
READY = "Ready"
RUNNING = "Running"

Condition = dict[str, Any]


def find(conditions: list[Condition], ctype: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == ctype), None)


def set_condition(conditions: list[Condition], ctype: str, status: str, reason: str = "", message: str = "") -> None:
    current = find(conditions, ctype)
    stamp = now_iso()
    if current is None:
        conditions.append({"type": ctype, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": stamp, "lastHeartbeatTime": stamp})
        return
    if current.get("status") != status:
        current.update(status=status, reason=reason, message=message, lastTransitionTime=stamp, lastHeartbeatTime=stamp)
    elif current.get("reason") != reason or current.get("message") != message:
        current.update(reason=reason, message=message, lastHeartbeatTime=stamp)


def ordered(conditions: list[Condition]) -> list[Condition]:
    """Bound, Ready, Running first, as CDI lists them."""
    rank = {BOUND: 0, READY: 1, RUNNING: 2}
    return sorted(conditions, key=lambda c: rank.get(str(c.get("type")), 9))
