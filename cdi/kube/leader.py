"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Each candidate tries to create or take over the Lease; the holder renews it every ``retry_period``.
Another candidate takes over only once it has seen the same Lease record unchanged for
``lease_duration`` by its own clock (so clocks of different machines never need to agree), and every
write carries the resourceVersion it read, so two candidates that race get one winner and one 409.
A leader that cannot renew within ``renew_deadline`` has lost, and so has a candidate whose election
loop fails with any error: ``on_stopped`` runs and the caller must
stop reconciling at once (``cdi controller`` exits, as kube's controllers do, and is restarted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cdi.kube.client import Client, Obj
from cdi.kube.errors import AlreadyExists, ApiError, Conflict, NotFound
from cdi.kube.kinds import LEASE

log = logging.getLogger(__name__)


def micro_time() -> str:
    """kube's MicroTime: RFC 3339 with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease lives and how long a leader keeps it (client-go's defaults: 15 s, 10 s, 2 s)."""

    name: str = "cdi-controller"
    namespace: str = "cdi"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def validate(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if not self.lease_duration > self.renew_deadline > 0:
            raise ValueError("--lease-duration must be greater than --renew-deadline, which must be positive")
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError("--retry-period must be positive and less than --renew-deadline")


class LeaderElector:
    """Acquire, renew and (on ``stop``) release one Lease; callbacks when leading starts and ends."""

    def __init__(self, client: Client, config: LeaseConfig, *, on_started: Callable[[], None],
                 on_stopped: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        config.validate()
        self.client = client
        self.config = config
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._observed: tuple[str, str, int] | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> LeaderElector:
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; a leader gives the Lease up so another replica takes over at once."""
        self._stop.set()
        self._thread.join(timeout=self.config.retry_period + 5)
        if release and self.leading.is_set():
            self._release()

    # -- one attempt -------------------------------------------------------------------------------

    def _spec(self, old: Obj | None) -> Obj:
        now = micro_time()
        spec = dict((old or {}).get("spec") or {})
        was_mine = spec.get("holderIdentity") == self.config.identity
        spec.update({"holderIdentity": self.config.identity,
                     "leaseDurationSeconds": max(1, round(self.config.lease_duration)), "renewTime": now})
        if not was_mine:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if old is not None else 0)
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the Lease afterwards."""
        c = self.config
        lease = self.client.find(LEASE, c.namespace, c.name)
        if lease is None:
            try:
                self.client.create(LEASE, {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                                           "metadata": {"name": c.name, "namespace": c.namespace},
                                           "spec": self._spec(None)})
            except (AlreadyExists, Conflict):
                return False
            self._observe(None)
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        self._observe(lease)
        duration = float(spec.get("leaseDurationSeconds") or c.lease_duration)
        if holder and holder != c.identity and self.clock() < self._observed_at + duration:
            return False  # held by another, and not yet seen to expire
        lease["spec"] = self._spec(lease)
        try:
            self.client.replace(LEASE, lease)  # carries the resourceVersion read: a racing writer gets 409
        except (Conflict, NotFound):
            return False
        return True

    def _observe(self, lease: Obj | None) -> None:
        spec = (lease or {}).get("spec") or {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""),
                  int(spec.get("leaseTransitions") or 0))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    def _release(self) -> None:
        try:
            lease = self.client.get(LEASE, self.config.namespace, self.config.name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.config.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                self.client.replace(LEASE, lease)
                log.info("released lease %s/%s", self.config.namespace, self.config.name)
        except ApiError as e:
            log.warning("cannot release lease %s/%s: %s", self.config.namespace, self.config.name, e)

    # -- the loop ----------------------------------------------------------------------------------

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except ApiError as e:
            log.warning("lease %s/%s: %s", self.config.namespace, self.config.name, e)
            return False

    def _run(self) -> None:
        """The election loop; any failure of it ends leadership, as a lost Lease does (a replica that
        reconciles without renewing would act beside the next leader)."""
        try:
            self._campaign()
        except Exception as e:  # noqa: BLE001 (whatever broke the loop, the Lease is no longer renewed)
            log.error("leader election failed lease=%s/%s identity=%s: %s: %s", self.config.namespace,
                      self.config.name, self.config.identity, type(e).__name__, e)
            self.leading.clear()
            self.on_stopped()

    def _campaign(self) -> None:
        c = self.config
        while not self._stop.is_set():  # acquire
            if self._attempt():
                break
            self._stop.wait(c.retry_period)
        if self._stop.is_set():
            return
        log.warning("became leader lease=%s/%s identity=%s", c.namespace, c.name, c.identity)
        self.leading.set()
        self.on_started()
        last_renew = self.clock()
        while not self._stop.wait(c.retry_period):  # renew
            if self._attempt():
                last_renew = self.clock()
                continue
            taken = self._observed is not None and self._observed[0] not in ("", c.identity)
            if taken or self.clock() - last_renew >= c.renew_deadline:
                why = (f'the Lease is now held by "{self._observed[0]}"' if taken and self._observed is not None
                       else f"not renewed for {self.clock() - last_renew:.1f}s (renew deadline {c.renew_deadline}s)")
                log.error("lost leadership lease=%s/%s identity=%s: %s", c.namespace, c.name, c.identity, why)
                self.leading.clear()
                self.on_stopped()
                return
