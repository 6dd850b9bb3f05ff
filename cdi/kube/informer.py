"""List-and-watch loops feeding work queues: the controller-runtime pattern, small.

An ``Informer`` lists a kind, then watches from the list's resourceVersion, relisting on 410 Gone or a
broken watch; every object seen calls the handlers with its (namespace, name). ``WorkQueue`` holds keys
with de-duplication, delayed re-adds (RequeueAfter) and the rule that one key is never processed by
two workers at once.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from cdi.kube.client import Client, Obj
from cdi.kube.errors import ApiError, Gone
from cdi.kube.kinds import Kind

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Handler = Callable[[str, Obj], None]  # (event type, object)


class WorkQueue:
    """Keys to reconcile. ``get`` blocks; ``done`` must follow each ``get``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Key] = []
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()  # added while active: re-queued on done
        self._delayed: list[tuple[float, Key]] = []
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key in self._active:
                self._dirty.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, key))
            self._cond.notify()

    def get(self) -> Key | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, key = heapq.heappop(self._delayed)
                    if key in self._active:
                        self._dirty.add(key)
                    elif key not in self._queued:
                        self._queued.add(key)
                        self._queue.append(key)
                if self._queue:
                    key = self._queue.pop(0)
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(wait)

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._queued.add(key)
                    self._queue.append(key)
                    self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)


class Informer:
    """Watches one kind (optionally one namespace) and calls ``handlers`` for each event."""

    def __init__(self, client: Client, kind: Kind, *, namespace: str | None = None,
                 label_selector: str | None = None) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.handlers: list[Handler] = []
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind.plural}", daemon=True)

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _dispatch(self, etype: str, obj: Obj) -> None:
        for handler in self.handlers:
            try:
                handler(etype, obj)
            except Exception:
                log.exception("informer handler failed kind=%s", self.kind.plural)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                items, rv = self.client.list(self.kind, self.namespace, label_selector=self.label_selector)
                for item in items:
                    self._dispatch("ADDED", item)
                self.synced.set()
                backoff = 0.2
                while not self._stop.is_set():
                    for etype, obj in self.client.watch(self.kind, self.namespace, resource_version=rv,
                                                        timeout_seconds=240, label_selector=self.label_selector):
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if etype != "BOOKMARK":
                            self._dispatch(etype, obj)
                        if self._stop.is_set():
                            return
            except Gone:
                log.info("watch expired kind=%s: relisting", self.kind.plural)
            except Exception as e:  # an API error, or anything else (a garbled event): never end unseen
                if self._stop.is_set():
                    return
                if isinstance(e, ApiError):
                    log.warning("informer error kind=%s error=%s retry_in=%.1fs", self.kind.plural, e, backoff)
                else:
                    log.exception("informer failed kind=%s: relisting in %.1fs", self.kind.plural, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
