"""Scratch claims, as CDI makes them: an importer pod that needs scratch space and has none ends with
"scratch space required", and the controller runs it again with ``<pvc>-scratch`` mounted at /scratch.

The controllers run as the ServiceAccount bound to the chart's rules (so the rules are proven too),
against the in-process API server and the local node; real importer processes, a real HTTP server,
real qemu-img for the reference bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cdi.clonetoken import TokenCheck
from cdi.controller.account import controller_client, ensure_account
from cdi.controller.resources import ANN_POD_PHASE, ControllerSettings, importer_pod_name
from cdi.controller.run import Controllers, RunOptions
from cdi.controller.scratch import ANN_REQUIRES_SCRATCH
from cdi.kube import DATAVOLUME, POD, PVC, Client, Obj
from cdi.kube.kinds import CDICONFIG, STORAGECLASS
from cdi.uploadtoken import ensure_key, public_pem
from tests.functional.test_node_fixtures import NS, NodeEnv, make_env
from tests.support import images
from tests.support.httpserver import HttpServer, Route


@dataclass
class Env:
    node: NodeEnv
    admin: Client
    http: HttpServer
    raw: Path
    reference: Path  # what qemu-img makes of the vmdk, as raw
    claims: dict[str, list[Obj]] = field(default_factory=dict)  # every version of every PVC seen
    volumes: dict[str, list[Obj]] = field(default_factory=dict)  # every version of every DataVolume seen

    def dv(self, name: str, url: str, size: str = "8Mi", **http: Any) -> Obj:
        return self.admin.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": {"http": {"url": url, **http}},
                     "storage": {"resources": {"requests": {"storage": size}}}}})

    def phase(self, name: str, *phases: str, timeout: float = 30) -> Obj:
        return self.node.wait(DATAVOLUME, name, lambda d: (d.get("status") or {}).get("phase") in phases, timeout)

    def volume(self, name: str) -> bytes:
        pvc = self.admin.get(PVC, NS, name)
        (vdir,) = (self.node.data_dir / "volumes" / NS).glob(f"{name}-{pvc['metadata']['uid'][:8]}")
        return (vdir / "disk.img").read_bytes()

    def scratch_dirs(self, name: str) -> list[Path]:
        return list((self.node.data_dir / "volumes" / NS).glob(f"{name}-scratch-*"))


def until(predicate: Callable[[], Any], timeout: float = 15, what: Callable[[], Any] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what()}")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("scratch")
    node = make_env(work, max_running_pods=4)
    admin = node.client
    ensure_account(admin)
    controllers = Controllers(controller_client(admin), ControllerSettings(progress_interval=0.2),
                              RunOptions(workers=2, vm=False),
                              clone_tokens=TokenCheck(public_pem(ensure_key(work / "upload-token.key")))).start()
    raw = images.make_raw(work / "disk.raw", 6 << 20)
    vmdk = images.convert(raw, "vmdk", work / "disk.vmdk")
    reference = work / "reference.raw"
    images.qemu_img("convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(reference))
    qcow2 = images.convert(raw, "qcow2", work / "disk.qcow2")
    claims: dict[str, list[Obj]] = {}
    volumes: dict[str, list[Obj]] = {}
    stop = threading.Event()

    def follow(kind: Any, seen: dict[str, list[Obj]]) -> None:  # every version: scratch claims last seconds
        _, since = admin.list(kind, NS)
        while not stop.is_set():
            for _, obj in admin.watch(kind, NS, resource_version=since, timeout_seconds=1):
                since = obj["metadata"].get("resourceVersion") or since
                if obj.get("kind") == kind.kind:
                    seen.setdefault(obj["metadata"]["name"], []).append(obj)

    for kind, seen in ((PVC, claims), (DATAVOLUME, volumes)):
        threading.Thread(target=follow, args=(kind, seen), daemon=True).start()
    with HttpServer() as http:
        # no ranges: qemu-img cannot read the vmdk over the network, so it is spooled to scratch first
        http.add("/noranges.vmdk", Route(path=str(vmdk), ranges=False))
        http.add("/slow-noranges.vmdk", Route(path=str(vmdk), ranges=False, rate=1 << 20))
        http.add("/noranges.qcow2", Route(path=str(qcow2), ranges=False))
        http.add("/disk.raw", Route(path=str(raw)))
        yield Env(node, admin, http, raw, reference, claims, volumes)
    stop.set()
    controllers.stop()
    node.node.stop()
    node.cluster.server.stop()


def _condition(status: Obj, kind: str) -> Obj:
    return next((c for c in status["conditions"] if c["type"] == kind), {"reason": None})


def test_a_vmdk_without_ranges_is_imported_through_a_scratch_claim_that_goes_afterwards(env: Env) -> None:
    env.dv("vmdk", env.http.url("/noranges.vmdk"))
    dv = env.phase("vmdk", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    volume = env.volume("vmdk")
    reference = env.reference.read_bytes()
    assert volume[:len(reference)] == reference and not volume[len(reference):].strip(b"\0")
    # the target claim says it needed scratch (every later pod gets it, even after a controller restart)
    assert env.admin.get(PVC, NS, "vmdk")["metadata"]["annotations"][ANN_REQUIRES_SCRATCH] == "true"
    # the scratch claim was there, in CDI's shape, owned by the second importer pod ...
    seen = until(lambda: env.claims.get("vmdk-scratch"))
    first = seen[0]
    assert [o["kind"] for o in first["metadata"]["ownerReferences"]] == ["Pod"]
    assert first["metadata"]["ownerReferences"][0]["name"] == importer_pod_name("vmdk")
    assert first["metadata"]["labels"]["app"] == "containerized-data-importer"
    assert first["metadata"]["labels"]["velero.io/exclude-from-backup"] == "true"
    assert first["spec"]["accessModes"] == ["ReadWriteOnce"] and first["spec"]["volumeMode"] == "Filesystem"
    # CDI's size rule: the target's usable space (9Mi less 6 %, down to 8Mi) plus the overhead, up to 9Mi
    assert env.admin.get(PVC, NS, "vmdk")["spec"]["resources"]["requests"]["storage"] == "9Mi"
    assert first["spec"]["resources"]["requests"]["storage"] == "9Mi"
    assert not any(k.startswith("cdi.kubevirt.io/") for k in first["metadata"].get("annotations") or {})
    # ... and is gone, with its volume on disk, now that the import is over
    until(lambda: env.admin.find(PVC, NS, "vmdk-scratch") is None and not env.scratch_dirs("vmdk"),
          what=lambda: env.scratch_dirs("vmdk"))
    # the DataVolume said so, in CDI's words, while it happened, and never left ImportScheduled/InProgress
    history = [(d.get("status") or {}) for d in env.volumes["vmdk"]]
    running = [(_condition(h, "Running")["reason"], _condition(h, "Running").get("message")) for h in history
               if h.get("conditions")]
    bound = [(_condition(h, "Bound")["reason"], _condition(h, "Bound").get("message")) for h in history
             if h.get("conditions")]
    assert ("Scratch space required", "scratch space required and none found") in running, running
    assert ("CreatingScratchSpace", "Creating scratch space") in bound, bound
    phases = [h.get("phase") for h in history if h.get("phase")]
    assert set(phases) <= {"Pending", "ImportScheduled", "ImportInProgress", "Succeeded"}, phases
    order = ["Pending", "ImportScheduled", "ImportInProgress", "Succeeded"]
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases), phases  # never back
    events = [(e["reason"], e["message"]) for e in env.node.events("vmdk")]
    assert ("CreatingScratchSpace", "Creating scratch space") in events, events
    assert not any(e[0] == "ImportFailed" or "scratch space required" in e[1] for e in events), events


def test_the_scratch_claim_takes_cdiconfigs_class_and_a_wait_for_first_consumer_class_binds(env: Env) -> None:
    env.admin.create(STORAGECLASS, {"metadata": {"name": "scratch-wffc"}, "provisioner": "cdi.kubevirt.io/local",
                                    "volumeBindingMode": "WaitForFirstConsumer"})
    config = env.admin.find(CDICONFIG, None, "config")
    body = {"spec": {"scratchSpaceStorageClass": "scratch-wffc"}}
    if config is None:
        env.admin.create(CDICONFIG, {"apiVersion": CDICONFIG.api_version, "kind": "CDIConfig",
                                     "metadata": {"name": "config"}, **body})
    else:
        env.admin.patch(CDICONFIG, None, "config", body)
    try:
        env.dv("classed", env.http.url("/noranges.vmdk"))
        dv = env.phase("classed", "Succeeded", "Failed")
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        seen = until(lambda: env.claims.get("classed-scratch"))
        assert seen[0]["spec"]["storageClassName"] == "scratch-wffc"
        # the importer pod was its first consumer: the node was selected for it and it got bound
        assert any((c.get("status") or {}).get("phase") == "Bound" for c in seen)
        # a class named in CDIConfig that does not exist: the target's class, as CDI
        env.admin.patch(CDICONFIG, None, "config", {"spec": {"scratchSpaceStorageClass": "no-such-class"}})
        env.dv("fallback", env.http.url("/noranges.vmdk"))
        dv = env.phase("fallback", "Succeeded", "Failed")
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        seen = until(lambda: env.claims.get("fallback-scratch"))
        target_class = env.admin.get(PVC, NS, "fallback")["spec"].get("storageClassName")
        assert seen[0]["spec"].get("storageClassName") == target_class
        until(lambda: env.admin.find(PVC, NS, "classed-scratch") is None
              and env.admin.find(PVC, NS, "fallback-scratch") is None)
    finally:
        env.admin.patch(CDICONFIG, None, "config", {"spec": {"scratchSpaceStorageClass": None}})


def test_deleting_the_datavolume_mid_import_removes_the_scratch_claim(env: Env) -> None:
    env.dv("doomed", env.http.url("/slow-noranges.vmdk"))
    # the second importer, with its scratch claim bound, is downloading into scratch
    until(lambda: any((c.get("status") or {}).get("phase") == "Bound" for c in env.claims.get("doomed-scratch", [])))
    dv = env.phase("doomed", "ImportInProgress")
    assert dv["status"]["phase"] == "ImportInProgress"
    pod = env.node.wait(POD, importer_pod_name("doomed"), lambda p: "running" in (
        ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {}))
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["cdi-scratch-vol"] == "/scratch"
    assert {"name": "IMPORTER_SCRATCH_DIR", "value": "/scratch"} in pod["spec"]["containers"][0]["env"]
    assert env.scratch_dirs("doomed")
    env.admin.delete(DATAVOLUME, NS, "doomed")
    until(lambda: all(env.admin.find(k, NS, n) is None for k, n in
                      ((DATAVOLUME, "doomed"), (PVC, "doomed"), (PVC, "doomed-scratch"),
                       (POD, importer_pod_name("doomed")))) and not env.scratch_dirs("doomed"),
          what=lambda: env.scratch_dirs("doomed"))


def test_imports_that_stream_create_no_scratch_claim(env: Env) -> None:
    # raw, and a qcow2 in qemu-img's layout from a server without ranges: both stream into the volume
    env.dv("plain", env.http.url("/disk.raw"))
    env.dv("streamed", env.http.url("/noranges.qcow2"))
    for name in ("plain", "streamed"):
        dv = env.phase(name, "Succeeded", "Failed")
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        assert ANN_REQUIRES_SCRATCH not in (env.admin.get(PVC, NS, name)["metadata"].get("annotations") or {})
    raw = env.raw.read_bytes()
    assert env.volume("streamed")[:len(raw)] == raw
    # the watch has seen each claim's outcome: a scratch claim, made before the importer ran, would be seen too
    def outcome_seen(name: str) -> bool:
        return any((o["metadata"].get("annotations") or {}).get(ANN_POD_PHASE) == "Succeeded"
                   for o in env.claims.get(name, []))

    until(lambda: outcome_seen("plain") and outcome_seen("streamed"))
    assert "plain-scratch" not in env.claims and "streamed-scratch" not in env.claims
    assert not env.scratch_dirs("plain") and not env.scratch_dirs("streamed")


def test_a_pvc_that_has_the_scratch_claims_name_is_left_alone_and_named(env: Env) -> None:
    # a DataVolume called twin-scratch: its claim has the name the scratch claim of "twin" would take
    env.dv("twin-scratch", env.http.url("/disk.raw"))
    assert env.phase("twin-scratch", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    env.dv("twin", env.http.url("/noranges.vmdk"))
    dv = env.node.wait(DATAVOLUME, "twin", lambda d: _condition(d.get("status") or {"conditions": []},
                                                                "Running")["reason"] == "ScratchClaimConflict")
    assert dv["status"]["phase"] == "ImportInProgress"
    assert "PVC twin-scratch exists and is not its scratch claim: delete or rename that PVC" in \
        _condition(dv["status"], "Running")["message"]
    other = env.admin.get(PVC, NS, "twin-scratch")
    assert not other["metadata"].get("deletionTimestamp")
    assert [o["kind"] for o in other["metadata"]["ownerReferences"]] == ["DataVolume"]
    assert any(e["reason"] == "ScratchClaimConflict" for e in env.node.events("twin"))
    # once that DataVolume is gone the import goes on by itself
    env.admin.delete(DATAVOLUME, NS, "twin-scratch")
    dv = env.phase("twin", "Succeeded", "Failed", timeout=40)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    volume = env.volume("twin")
    reference = env.reference.read_bytes()
    assert volume[:len(reference)] == reference
    until(lambda: env.admin.find(PVC, NS, "twin-scratch") is None)
