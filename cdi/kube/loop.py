"""Worker loops around a work queue, shared by the controllers and the local node.

``work`` takes keys from a ``WorkQueue`` until it closes and reconciles each: a returned delay
requeues the key after that delay, a stale write (409) retries at once, a ``TemporaryError`` after its
delay, a ``PermanentError`` never; other errors requeue it with exponential back-off per key.
``ReconcileLoop`` is a queue with its worker threads around one reconcile function. One key is never
reconciled twice at once (``WorkQueue``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cdi.kube.errors import ApiError, Conflict, Forbidden, PermanentError, TemporaryError
from cdi.kube.informer import Key, WorkQueue

log = logging.getLogger(__name__)

Reconcile = Callable[[str, str], float | None]
MAX_BACKOFF = 60.0


def work(queue: WorkQueue, reconcile: Reconcile, *, name: str, failures: dict[Key, int] | None = None) -> None:
    """Reconcile keys from ``queue`` until it is closed (run it in a worker thread)."""
    failures = {} if failures is None else failures
    while (key := queue.get()) is not None:
        try:
            delay = reconcile(*key)
            failures.pop(key, None)
            if delay is not None:
                queue.add_after(key, delay)
        except Conflict:
            queue.add_after(key, 0.05)
        except TemporaryError as e:
            log.info("[%s/%s] %s waits retry_in=%.1fs reason=%s", key[0], key[1], name, e.delay, e)
            queue.add_after(key, e.delay)
        except Forbidden as e:
            # The controller's own RBAC: an operator's error, retried (a fixed role works without a restart).
            n = failures[key] = failures.get(key, 0) + 1
            delay = min(0.2 * 2 ** (n - 1), MAX_BACKOFF)
            log.error("[%s/%s] %s forbidden (403): %s; the controller's ClusterRole lacks this rule "
                      "(cdi/controller/permissions.py) retry_in=%.1fs", key[0], key[1], name, e, delay)
            queue.add_after(key, delay)
        except PermanentError as e:
            # The reconciler should have recorded it on the object; never retry what cannot succeed.
            failures.pop(key, None)
            log.warning("[%s/%s] %s failed for good reason=%s message=%s", key[0], key[1], name, e.reason, e)
        except Exception as e:
            if not isinstance(e, ApiError):
                log.exception("[%s/%s] %s reconcile crashed", key[0], key[1], name)
            n = failures[key] = failures.get(key, 0) + 1
            delay = min(0.2 * 2 ** (n - 1), MAX_BACKOFF)
            log.warning("[%s/%s] %s reconcile failed attempt=%d retry_in=%.1fs error=%s", key[0], key[1], name,
                        n, delay, e)
            queue.add_after(key, delay)
        finally:
            queue.done(key)


class ReconcileLoop:
    """One queue and its worker threads around one reconcile function."""

    def __init__(self, name: str, reconcile: Reconcile, workers: int) -> None:
        self.name = name
        self.queue = WorkQueue()
        failures: dict[Key, int] = {}
        self.threads = [
            threading.Thread(target=work, args=(self.queue, reconcile), kwargs={"name": name, "failures": failures},
                             name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.queue.close()
