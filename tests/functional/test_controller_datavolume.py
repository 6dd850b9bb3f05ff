"""The DataVolume controller and the local node together against the in-process API server, in seconds.

Real importer processes against a real HTTP server on 127.0.0.1; no ``cdi serve`` subprocess, so a
change to a reconciler is checked quickly: phases, transient and permanent failures, restartCount,
deletion in every phase, and the create/delete race.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ControllerSettings, importer_pod_name
from cdi.kube import DATAVOLUME, EVENT, POD, PVC, Obj
from cdi.node.claims import volume_dir_name
from tests.functional.test_node_fixtures import NS, NodeEnv, make_env
from tests.support import images
from tests.support.faultserver import Fault, FaultServer
from tests.support.httpserver import HttpServer, Route


class Env:
    def __init__(self, node: NodeEnv, http: HttpServer, raw: Path) -> None:
        self.node = node
        self.client = node.client
        self.http = http
        self.raw = raw
        self.claim_uids: dict[str, set[str]] = {}

    def dv(self, name: str, url: str, size: str = "16Mi", **spec: Any) -> Obj:
        body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"source": {"http": {"url": url}}, "storage": {"resources": {"requests": {"storage": size}}},
                         **spec}}
        return self.client.create(DATAVOLUME, body)

    def wait_dv(self, name: str, predicate: Callable[[Obj], Any], timeout: float = 20) -> Obj:
        return self.node.wait(DATAVOLUME, name, predicate, timeout)

    def phase(self, name: str, *phases: str, timeout: float = 20) -> Obj:
        return self.wait_dv(name, lambda d: (d.get("status") or {}).get("phase") in phases, timeout)

    def volume_dirs(self, name: str) -> list[Path]:
        """The volume of the DataVolume's PVC on disk (of every PVC it had: each gets its own)."""
        pvc = self.client.find(PVC, NS, name)
        if pvc is not None:
            self.claim_uids.setdefault(name, set()).add(pvc["metadata"]["uid"])
        root = self.node.data_dir / "volumes" / NS
        if not self.claim_uids.get(name) and len(name) <= 200:
            return list(root.glob(f"{name}-*"))
        return [root / volume_dir_name(name, uid) for uid in self.claim_uids.get(name, ())
                if (root / volume_dir_name(name, uid)).exists()]

    def wait_all_gone(self, name: str, timeout: float = 10) -> None:
        """The DataVolume, its PVC, its importer pod and its volume on disk are all gone."""
        deadline = time.monotonic() + timeout
        left: list[str] = []
        while time.monotonic() < deadline:
            left = [k.kind for k, n in ((DATAVOLUME, name), (PVC, name), (POD, importer_pod_name(name)))
                    if self.client.find(k, NS, n) is not None]
            left += [str(p) for p in self.volume_dirs(name)]
            if not left:
                return
            time.sleep(0.05)
        raise AssertionError(f"left behind {timeout}s after deletion of {name}: {left}")

    def delete(self, name: str, timeout: float = 10) -> float:
        start = time.monotonic()
        self.client.delete(DATAVOLUME, NS, name)
        self.wait_all_gone(name, timeout)
        return time.monotonic() - start


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("controller")
    node = make_env(work, max_running_pods=4)
    # A source that sends nothing for 2 s has stalled, and an importer run gives up on the first stall.
    settings = ControllerSettings(progress_interval=0.2, importer_speed_time=2, importer_max_stalled_retries=0)
    manager = ControllerManager(node.client, settings, workers=2).start()
    raw = images.make_raw(work / "disk.raw", 2 << 20)
    with HttpServer() as http, FaultServer() as faults:
        faults.add("/stalled.raw", Fault(path=str(raw), stall_after=0))
        http.faults = faults  # type: ignore[attr-defined]
        http.add("/disk.raw", Route(path=str(raw)))
        http.add("/missing.raw", Route(status=404))
        http.add("/slow.raw", Route(path=str(raw), rate=64 << 10))
        yield Env(node, http, raw)
    manager.stop()
    node.node.stop()
    node.cluster.server.stop()


def until(predicate: Callable[[], Any], timeout: float = 10, what: Callable[[], Any] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what()}")
        time.sleep(0.05)


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/disk.raw"


def test_import_succeeds_with_a_decimal_exponent_size(env: Env) -> None:
    # "1.6e7" is a valid quantity: admission, controller and node must read it the same way.
    env.dv("exp", env.http.url("/disk.raw"), size="1.6e7")
    dv = env.phase("exp", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.volumeDigest"].startswith("sha256")
    pvc = env.client.get(PVC, NS, "exp")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "17Mi"  # 1.6e7 / 0.94, MiB-aligned
    data = (env.volume_dirs("exp")[0] / "disk.img").read_bytes()
    source = env.raw.read_bytes()
    assert data[:len(source)] == source and not data[len(source):].strip(b"\0")


def test_a_404_fails_for_good_without_retries(env: Env) -> None:
    env.dv("gone", env.http.url("/missing.raw"))
    dv = env.phase("gone", "Failed")
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert "404" in running["message"]
    assert dv["status"].get("restartCount", 0) == 0
    assert any(e["reason"] == "ImportFailed" and "404" in e["message"] for e in env.node.events("gone"))


def test_a_failed_import_shows_no_progress(env: Env) -> None:
    # every byte is read, then the checksum does not match: the volume holds nothing, so no "100.00%"
    body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "badsum", "namespace": NS},
            "spec": {"source": {"http": {"url": env.http.url("/disk.raw"), "checksum": "sha256:" + "0" * 64}},
                     "storage": {"resources": {"requests": {"storage": "16Mi"}}}}}
    env.client.create(DATAVOLUME, body)
    dv = env.phase("badsum", "Failed", "Succeeded")
    assert dv["status"]["phase"] == "Failed"
    assert "checksum" in next(c for c in dv["status"]["conditions"] if c["type"] == "Running")["message"].lower()
    assert dv["status"]["progress"] == "N/A"


def test_a_transient_failure_is_retried_then_deletion_finishes_in_seconds(env: Env) -> None:
    # The importer gives up on a closed port after its own reconnects; the node restarts it.
    env.dv("retry", closed_port_url())
    dv = env.wait_dv("retry", lambda d: (d.get("status") or {}).get("restartCount", 0) >= 1, timeout=60)
    assert dv["status"]["phase"] == "ImportInProgress"
    until(lambda: any(e["reason"] == "ImportRetry" for e in env.node.events("retry")))
    for event in (e for e in env.node.events("retry") if e["reason"] == "ImportRetry"):
        why = event["message"].split(":", 1)[1].strip()
        assert why, f"an ImportRetry event without a reason: {event['message']!r}"
    # Deleting it while the importer fails and is restarted must not leave the PVC Terminating.
    assert env.delete("retry") < 10


def test_a_stalled_server_fails_the_run_saying_so_and_is_retried(env: Env) -> None:
    # The controller passes the stall limits on to importer pods (cdi serve --speed-time ...).
    env.dv("stalled", env.http.faults.url("/stalled.raw"))  # type: ignore[attr-defined]
    dv = env.wait_dv("stalled", lambda d: (d.get("status") or {}).get("restartCount", 0) >= 1, timeout=40)
    assert dv["status"]["phase"] == "ImportInProgress"
    until(lambda: any("stalled" in e["message"] for e in env.node.events("stalled") if e["reason"] == "ImportRetry"),
          what=lambda: [(e["reason"], e["message"]) for e in env.node.events("stalled")])
    env.delete("stalled")


def test_delete_while_pending(env: Env) -> None:
    env.dv("pending", env.http.url("/disk.raw"), size="900Ei")  # more than any disk: never provisioned
    # The DataVolume says why its claim stays Pending, not only that it does.
    env.wait_dv("pending", lambda d: any(c["type"] == "Bound" and c["status"] == "False"
                                         and "ProvisioningFailed" in c["message"] and "free" in c["message"]
                                         for c in (d.get("status") or {}).get("conditions") or []))
    env.delete("pending")


def test_delete_while_the_import_runs_stops_the_importer(env: Env) -> None:
    env.dv("running", env.http.url("/slow.raw"))
    env.phase("running", "ImportInProgress")
    env.node.wait(POD, "importer-running", lambda p: "running" in (
        ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}))
    assert env.delete("running") < 10


def test_delete_after_success_and_after_failure(env: Env) -> None:
    env.dv("done", env.http.url("/disk.raw"))
    env.phase("done", "Succeeded")
    env.delete("done")
    env.delete("gone")


def test_create_then_delete_at_once_leaves_nothing_behind(env: Env) -> None:
    names = [f"race-{i}" for i in range(10)]
    for name in names:
        env.dv(name, env.http.url("/disk.raw"))
        env.client.delete(DATAVOLUME, NS, name)
    for name in names:
        env.wait_all_gone(name, timeout=15)
    pvcs = [p["metadata"]["name"] for p in env.client.list(PVC, NS)[0] if p["metadata"]["name"].startswith("race-")]
    pods = [p["metadata"]["name"] for p in env.client.list(POD, NS)[0] if "race-" in p["metadata"]["name"]]
    assert pvcs == [] and pods == []


def test_a_pvc_deleted_under_a_live_datavolume_is_released_then_made_again(env: Env) -> None:
    env.dv("lost", env.http.url("/slow.raw"))
    first = env.node.wait(PVC, "lost", lambda p: (p.get("status") or {}).get("phase") == "Bound")
    env.phase("lost", "ImportInProgress")
    env.client.delete(PVC, NS, "lost")
    again = env.node.wait(PVC, "lost", lambda p: p["metadata"]["uid"] != first["metadata"]["uid"], timeout=15)
    assert again["metadata"]["ownerReferences"][0]["name"] == "lost"
    env.delete("lost", timeout=30)  # two claims' volumes, each freed once its importer has stopped: under load
    # that took more than 10 s (how fast a deletion stops an importer is the test above)


def test_a_datavolume_blocked_by_a_pvc_it_does_not_own_imports_once_that_pvc_is_gone(env: Env) -> None:
    env.client.create(PVC, {"metadata": {"name": "taken", "namespace": NS},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Mi"}}}})
    env.dv("taken", env.http.url("/disk.raw"))
    env.wait_dv("taken", lambda d: any(c.get("reason") == "NotOwned" for c in (d.get("status") or {})
                                       .get("conditions") or []))
    env.client.delete(PVC, NS, "taken")
    assert env.phase("taken", "Succeeded", timeout=5)  # at once, no edit of the DataVolume needed
    env.delete("taken")


@pytest.mark.parametrize("length", [253, 246, 237])
def test_every_valid_name_works_on_disk_and_in_events(env: Env, length: int) -> None:
    # Two names of the same length that differ only at the end: their children must not collide.
    names = [("n" * (length - 2)) + suffix for suffix in ("-a", "-b")]
    for name in names:
        env.dv(name, env.http.url("/disk.raw"))
    for name in names:
        dv = env.phase(name, "Succeeded", "Failed", timeout=30)
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        reasons = {e["reason"] for e in env.node.events(name)}
        assert {"Pending", "ImportScheduled", "Succeeded"} <= reasons, reasons
        assert len(env.volume_dirs(name)) == 1
    assert importer_pod_name(names[0]) != importer_pod_name(names[1])
    for name in names:
        env.delete(name)


def test_a_name_deleted_and_made_again_at_once_gets_a_fresh_import(env: Env) -> None:
    # The first DataVolume's importer keeps failing; its successor of the same name must not wait on it.
    env.dv("reuse", closed_port_url())
    env.phase("reuse", "ImportScheduled", "ImportInProgress")
    env.client.delete(DATAVOLUME, NS, "reuse")
    second = env.dv("reuse", env.http.url("/disk.raw"))
    dv = env.phase("reuse", "Succeeded", "Failed", timeout=30)
    assert dv["metadata"]["uid"] == second["metadata"]["uid"] and dv["status"]["phase"] == "Succeeded", dv["status"]
    pvc = env.client.get(PVC, NS, "reuse")
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == second["metadata"]["uid"]
    env.delete("reuse")


def test_an_unsupported_source_says_so_in_an_event(env: Env) -> None:
    body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "unsup", "namespace": NS},
            "spec": {"source": {"gcs": {"url": "gs://bucket/object"}},
                     "storage": {"resources": {"requests": {"storage": "1Mi"}}}}}
    env.client.create(DATAVOLUME, body)
    until(lambda: any(e["reason"] == "UnsupportedSource" for e in env.node.events("unsup")))
    env.delete("unsup")


def test_every_event_says_what_happened(env: Env) -> None:
    events = env.client.list(EVENT, NS)[0]
    assert events
    empty = [(e["reason"], e["involvedObject"]["name"]) for e in events if not (e.get("message") or "").strip()]
    assert empty == []
