"""A work queue and its worker threads around one reconcile function, shared by the managers.

One key is never reconciled twice at once (``WorkQueue``); errors requeue the key with exponential
back-off, a stale write (409) retries at once, and a returned delay requeues it after that delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cdi.kube import ApiError, Conflict, Key, WorkQueue

log = logging.getLogger(__name__)

Reconcile = Callable[[str, str], float | None]


class ReconcileLoop:
    """One queue and its worker threads around one reconcile function."""

    def __init__(self, name: str, reconcile: Reconcile, workers: int) -> None:
        self.name = name
        self.reconcile = reconcile
        self.queue = WorkQueue()
        self.failures: dict[Key, int] = {}
        self.threads = [threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
                        for i in range(workers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                delay = self.reconcile(*key)
                self.failures.pop(key, None)
                if delay is not None:
                    self.queue.add_after(key, delay)
            except Conflict:
                self.queue.add_after(key, 0.05)
            except ApiError as e:
                self._retry(key, e)
            except Exception as e:
                log.exception("[%s/%s] %s reconcile crashed", key[0], key[1], self.name)
                self._retry(key, e)
            finally:
                self.queue.done(key)

    def _retry(self, key: Key, error: Exception) -> None:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        delay = min(0.2 * 2 ** (n - 1), 60.0)
        log.warning("[%s/%s] %s reconcile failed attempt=%d retry_in=%.1fs error=%s", key[0], key[1], self.name,
                    n, delay, error)
        self.queue.add_after(key, delay)

    def stop(self) -> None:
        self.queue.close()
