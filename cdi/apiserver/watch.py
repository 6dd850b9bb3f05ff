"""Watch streams: newline-delimited JSON WatchEvents (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).

A watch subscribes to the store's in-process hub before reading anything, then replays either the
current objects (no resourceVersion or "0": synthetic ADDED events) or the recorded history after
the asked resourceVersion, then streams live events; events already replayed are skipped by their
resourceVersion. A resourceVersion older than the kept history ends the stream with an ERROR event
carrying a 410 Expired Status, as kube-apiserver does. Objects are filtered by namespace and
selectors as kube's watch cache does: an object that stops matching is sent as DELETED (its
previous content with the event's resourceVersion), one that starts to match as ADDED.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cdi.api.registry import ResourceKind
from cdi.apiserver.errors import Expired, to_status
from cdi.apiserver.selectors import Matcher
from cdi.apiserver.store import Store, WatchEvent
from cdi.apiserver.tables import table

log = logging.getLogger(__name__)

Obj = dict[str, Any]

POLL_SECONDS = 1.0


@dataclass
class WatchRequest:
    kind: ResourceKind
    namespace: str | None
    matchers: tuple[Matcher, ...]
    resource_version: str | None
    timeout_seconds: float | None
    bookmarks: bool
    as_table: bool
    include_object: str


def _line(event_type: str, obj: Obj) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


async def watch_stream(
    store: Store,
    req: WatchRequest,
    *,
    bookmark_interval: float,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """Yield the encoded events of one watch until timeout, disconnect or server shutdown."""
    kind = req.kind
    sub = store.hub.subscribe(kind.key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.timeout_seconds if req.timeout_seconds else None
    headers_sent = False

    def matches(ev_ns: str, obj: Obj) -> bool:
        if req.namespace and ev_ns != req.namespace:
            return False
        return all(m(obj) for m in req.matchers)

    def seen_as(ev: WatchEvent) -> tuple[str, Obj] | None:
        """The event this watcher gets for `ev` (type and object), or None: kube's cacher rules."""
        now = ev.type != "DELETED" and matches(ev.namespace, ev.obj)
        before_obj = ev.prev if ev.prev is not None else (ev.obj if ev.type == "DELETED" else None)
        before = before_obj is not None and matches(ev.namespace, before_obj)
        if now:
            return ("MODIFIED" if before and ev.type != "ADDED" else "ADDED"), ev.obj
        if not before or before_obj is None:
            return None
        if ev.type == "DELETED":
            return "DELETED", ev.obj
        gone = copy.deepcopy(before_obj)
        gone.setdefault("metadata", {})["resourceVersion"] = str(ev.rv)
        return "DELETED", gone

    def encode(event_type: str, obj: Obj) -> bytes:
        nonlocal headers_sent
        if req.as_table and event_type in ("ADDED", "MODIFIED", "DELETED"):
            obj = table(kind, [obj], include_object=req.include_object, headers=not headers_sent)
            headers_sent = True
        return _line(event_type, obj)

    try:
        backlog: list[WatchEvent]
        if req.resource_version in (None, "", "0"):
            with store.lock:
                last = store.resource_version
                items = store.items(kind.key, req.namespace)
            backlog = [
                WatchEvent(last, kind.key, o["metadata"].get("namespace", ""), "ADDED", o) for o in items
            ]
        else:
            try:
                last = int(req.resource_version)
                backlog = store.events_since(kind.key, last)
            except Expired as e:
                code, status = to_status(e)
                yield _line("ERROR", status)
                return
            except ValueError:
                yield _line(
                    "ERROR", to_status(Expired(f"invalid resource version {req.resource_version!r}"))[1]
                )
                return
        for ev in backlog:
            last = max(last, ev.rv)
            seen = seen_as(ev)
            if seen is not None:
                yield encode(*seen)
        last_bookmark = loop.time()
        while True:
            wait = POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return
            try:
                ev_or_none = await sub.get(wait)
            except TimeoutError:
                if await is_disconnected():
                    return
                if req.bookmarks and loop.time() - last_bookmark >= bookmark_interval:
                    snapshot = store.resource_version
                    await asyncio.sleep(0)
                    if sub.queue.empty():
                        last = max(last, snapshot)
                        last_bookmark = loop.time()
                        yield _line(
                            "BOOKMARK",
                            {
                                "kind": kind.kind,
                                "apiVersion": kind.api_version,
                                "metadata": {"resourceVersion": str(last)},
                            },
                        )
                continue
            if ev_or_none is None:
                return
            if ev_or_none.rv <= last:
                continue
            last = ev_or_none.rv
            seen = seen_as(ev_or_none)
            if seen is not None:
                yield encode(*seen)
    finally:
        store.hub.unsubscribe(sub)
