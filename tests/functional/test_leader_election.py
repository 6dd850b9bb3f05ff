"""Lease leader election against the in-process API server: one holder, hand-over, loss on a stolen Lease."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cdi.kube import Client, Invalid
from cdi.kube.kinds import LEASE
from cdi.kube.leader import LeaderElector, LeaseConfig
from tests.functional.apiserver_fixtures import Cluster, start_cluster

FAST = {"lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("lease"))
    yield c
    c.server.stop()


@pytest.fixture
def client(cluster: Cluster) -> Client:
    return Client.from_kubeconfig(str(cluster.kubeconfig))


class Candidate:
    def __init__(self, client: Client, name: str, lease: str) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.elector = LeaderElector(client, LeaseConfig(name=lease, namespace="default", identity=name, **FAST),
                                     on_started=self.started.set, on_stopped=self.stopped.set)


def until(predicate: Callable[[], Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def test_one_leader_then_a_hand_over_on_release(client: Client) -> None:
    a, b = Candidate(client, "a", "one"), Candidate(client, "b", "one")
    a.elector.start()
    assert a.started.wait(5)
    b.elector.start()
    # b has seen a's lease and waits: a renews, so b's view of it keeps changing and never expires.
    until(lambda: b.elector._observed is not None)
    assert client.get(LEASE, "default", "one")["spec"]["holderIdentity"] == "a"
    a.elector.stop()  # releases: b needs no lease duration to take over
    assert b.started.wait(5)
    lease = client.get(LEASE, "default", "one")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not a.stopped.is_set()  # a stopped campaigning, it did not lose
    b.elector.stop()


def test_a_leader_whose_lease_is_taken_stops_at_once(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="cdi.kube.leader")
    a = Candidate(client, "a", "two")
    a.elector.start()
    assert a.started.wait(5)
    lease = client.get(LEASE, "default", "two")
    lease["spec"]["holderIdentity"] = "intruder"
    client.replace(LEASE, lease)
    assert a.stopped.wait(5)
    assert not a.elector.leading.is_set()
    lost = [r.getMessage() for r in caplog.records if "lost leadership" in r.getMessage()]
    assert len(lost) == 1 and 'now held by "intruder"' in lost[0] and "not renewed" not in lost[0], lost


def test_a_dead_leader_is_replaced_after_the_lease_duration(client: Client) -> None:
    a, b = Candidate(client, "a", "three"), Candidate(client, "b", "three")
    a.elector.start()
    assert a.started.wait(5)
    a.elector.stop(release=False)  # as kill -9: no release, the lease just stops being renewed
    started = time.monotonic()
    b.elector.start()
    assert b.started.wait(10)
    assert time.monotonic() - started >= FAST["lease_duration"] - 0.1
    b.elector.stop()


def test_the_api_server_validates_a_lease(client: Client) -> None:
    with pytest.raises(Invalid, match="leaseDurationSeconds"):
        client.create(LEASE, {"metadata": {"name": "bad", "namespace": "default"},
                              "spec": {"holderIdentity": "x", "leaseDurationSeconds": 0}})
    with pytest.raises(ValueError, match="retry-period"):
        LeaseConfig(identity="x", lease_duration=3, renew_deadline=2, retry_period=2).validate()


class BreaksAfterLeading(Client):
    """A client whose requests fail with a non-API error once armed (as a token file the HTTP layer refuses)."""

    armed = False

    def find(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            raise ValueError("Invalid header value")
        return super().find(*args, **kwargs)


def test_a_failing_election_loop_ends_leadership(cluster: Cluster) -> None:
    broken = BreaksAfterLeading(Client.from_kubeconfig(str(cluster.kubeconfig)).api)
    a = Candidate(broken, "a", "broken")
    a.elector.start()
    assert a.started.wait(5)
    broken.armed = True
    assert a.stopped.wait(5), "the loop died but the candidate still counts as leading"
    assert not a.elector.leading.is_set()
    assert not a.elector._thread.is_alive()


def test_a_candidate_whose_loop_fails_before_leading_stops_too(cluster: Cluster) -> None:
    broken = BreaksAfterLeading(Client.from_kubeconfig(str(cluster.kubeconfig)).api)
    broken.armed = True
    a = Candidate(broken, "a", "broken-early")
    a.elector.start()
    assert a.stopped.wait(5)
    assert not a.started.is_set()
