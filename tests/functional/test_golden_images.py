"""DataSources, DataVolume sourceRef, DataImportCron and the image cache, against the in-process API
server, the local node and the controllers (real importer and clone workers, real kubectl).

Sources are imported from a real HTTP server, and from a real ``docker-registry`` for the cron and the
cache. The cron's schedule is driven by a test clock (``FakeClock`` passed as the controllers' ``now``)
and ``GoldenImages.tick()``, so "every minute" takes no minute.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi.controller.dataimportcron import ANN_DESIRED_DIGEST, LABEL_CRON, DataImportCronReconciler, import_name
from cdi.controller.manager import ControllerManager
from cdi.controller.resources import ANN_DIGEST, ANN_SOURCE_DIGEST
from cdi.controller.vm_manager import VmControllerManager
from cdi.controller.vmi import VM
from cdi.kube import CONFIGMAP, DATAIMPORTCRON, DATASOURCE, DATAVOLUME, EVENT, PVC, SECRET, Client, NotFound, Obj
from cdi.kube.kinds import CDICONFIG
from importer.digest import volume_digest
from tests.functional.apiserver_fixtures import Cluster
from tests.functional.test_node_fixtures import add_admin_user, controlled_cluster
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.registry import Registry, container_disk, host_arch, push_new_image

NS = "default"


class FakeClock:
    """The cron controller's clock: real time until moved on by ``advance``."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class Env:
    def __init__(self, cluster: Cluster, client: Client, http: HttpServer, raw: Path, work: Path,
                 manager: ControllerManager, clock: FakeClock) -> None:
        self.cluster, self.client, self.http, self.raw, self.work = cluster, client, http, raw, work
        self.manager, self.clock = manager, clock

    def kubectl(self, *args: str, user: str | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ("--kubeconfig", str(self.work / "users" / f"{user}.kubeconfig")) if user else ()
        return self.cluster.kubectl(*extra, *args, check=check, input=input)

    def import_dv(self, name: str, ns: str = NS, path: str = "/disk.raw") -> Obj:
        return self.client.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"http": {"url": self.http.url(path)}},
                     "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}}}})

    def ref_dv(self, name: str, ds: str, ns: str = NS, ds_ns: str | None = None) -> Obj:
        ref: Obj = {"kind": "DataSource", "name": ds}
        if ds_ns:
            ref["namespace"] = ds_ns
        return self.client.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": ns},
            "spec": {"sourceRef": ref, "storage": {"resources": {"requests": {"storage": "8Mi"}}}}})

    def datasource(self, name: str, source: Obj, ns: str = NS) -> Obj:
        return self.client.create(DATASOURCE, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
                                               "metadata": {"name": name, "namespace": ns},
                                               "spec": {"source": source}})

    def events(self, name: str, ns: str = NS) -> list[Obj]:
        items, _ = self.client.list(EVENT, ns)
        return [e for e in items if e.get("involvedObject", {}).get("name") == name]

    def volume(self, name: str, ns: str = NS) -> Path:
        pvc = self.client.get(PVC, ns, name)
        return self.work / "data" / "volumes" / ns / f"{name}-{pvc['metadata']['uid'][:8]}" / "disk.img"


def until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except NotFound:
            last = None
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def holds(volume: Path, disk: Path) -> bool:
    """The volume holds the disk byte for byte, zeros after it (a volume is larger than its image)."""
    data, want = volume.read_bytes(), disk.read_bytes()
    return data[:len(want)] == want and data[len(want):].count(0) == len(data) - len(want)


def ready(obj: Obj) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


def phase_of(env: Env, name: str, ns: str = NS) -> str:
    return str((env.client.get(DATAVOLUME, ns, name).get("status") or {}).get("phase") or "")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("golden")
    clock = FakeClock()
    with controlled_cluster(work, now=clock.now) as up:
        vms = VmControllerManager(up.client).start()
        add_admin_user(work, up.cluster, "alice", "alice")
        raw = images.make_raw(work / "disk.raw", 6 << 20)
        try:
            with HttpServer() as http:
                http.add("/disk.raw", Route(path=str(raw)))
                http.add("/slow.raw", Route(path=str(raw), rate=2 << 20))
                yield Env(up.cluster, up.client, http, raw, work, up.manager, clock)
        finally:
            vms.stop()


def test_datasource_ready_follows_its_pvc_and_its_import(env: Env) -> None:
    env.datasource("golden-ds", {"pvc": {"namespace": NS, "name": "golden"}})
    ds = until("NotFound", lambda: ready(env.client.get(DATASOURCE, NS, "golden-ds")).get("reason") == "NotFound"
               and env.client.get(DATASOURCE, NS, "golden-ds"))
    assert ready(ds)["status"] == "False" and ready(ds)["message"] == "PVC not found"
    assert ds["status"]["source"] == {}
    env.import_dv("golden", path="/slow.raw")
    until("the import's phase as the reason", lambda: ready(env.client.get(DATASOURCE, NS, "golden-ds")).get(
        "reason") in ("ImportScheduled", "ImportInProgress"))
    ds = until("Ready", lambda: ready(env.client.get(DATASOURCE, NS, "golden-ds")).get("status") == "True"
               and env.client.get(DATASOURCE, NS, "golden-ds"), timeout=60)
    assert phase_of(env, "golden") == "Succeeded"
    assert ready(ds)["reason"] == "Ready" and ready(ds)["message"] == "DataSource is ready to be consumed"
    assert ds["status"]["source"] == {"pvc": {"namespace": NS, "name": "golden"}}

    env.datasource("snap-ds", {"snapshot": {"namespace": NS, "name": "snap"}})
    env.datasource("empty-ds", {})
    env.datasource("chained-ds", {"dataSource": {"namespace": NS, "name": "golden-ds"}})
    env.datasource("self-ds", {"dataSource": {"namespace": NS, "name": "self-ds"}})
    expected = {"snap-ds": "NotSupported", "empty-ds": "NoSource", "chained-ds": "Ready", "self-ds": "SelfReference"}
    for name, reason in expected.items():
        until(f"{name} {reason}", lambda n=name, r=reason: ready(env.client.get(DATASOURCE, NS, n)).get("reason") == r)
    assert "not supported" in ready(env.client.get(DATASOURCE, NS, "snap-ds"))["message"]
    chained = env.client.get(DATASOURCE, NS, "chained-ds")
    assert chained["status"]["source"] == {"pvc": {"namespace": NS, "name": "golden"}}

    # kubectl knows the short names and shows CDI's columns
    out = env.kubectl("get", "das", "golden-ds").stdout.splitlines()
    assert out[0].split() == ["NAME", "AGE"] and out[1].split()[0] == "golden-ds"
    example = Path(__file__).resolve().parents[2] / "examples" / "golden-images.yaml"
    applied = env.kubectl("apply", "--dry-run=server", "-f", str(example)).stdout
    assert "dataimportcron.cdi.kubevirt.io/fedora-image-cron created (server dry run)" in applied, applied
    two = ("apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata: {name: two}\n"
           "spec: {source: {pvc: {namespace: default, name: a}, snapshot: {namespace: default, name: b}}}\n")
    bad = env.cluster.kubectl("create", "-f", "-", input=two, check=False)
    assert bad.returncode != 0 and "a DataSource has at most one source" in bad.stderr, bad.stderr


def test_sourceref_clones_the_datasource_pvc(env: Env) -> None:
    until("golden Ready", lambda: ready(env.client.get(DATASOURCE, NS, "golden-ds")).get("status") == "True",
          timeout=60)
    env.ref_dv("from-ref", "golden-ds")
    until("clone done", lambda: phase_of(env, "from-ref") in ("Succeeded", "Failed"), timeout=60)
    dv = env.client.get(DATAVOLUME, NS, "from-ref")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert volume_digest(str(env.volume("from-ref"))) == volume_digest(str(env.volume("golden")))
    assert dv["metadata"]["annotations"][ANN_DIGEST] == env.client.get(PVC, NS, "golden")["metadata"][
        "annotations"][ANN_DIGEST]
    assert "sourceRef" in dv["spec"] and "source" not in dv["spec"]  # the spec stays as written
    messages = [e["message"] for e in env.events("from-ref")]
    assert "Successfully cloned from default/golden into default/from-ref" in messages, messages


def test_sourceref_waits_for_a_missing_datasource_then_clones(env: Env) -> None:
    env.ref_dv("waiter", "later-ds")
    dv = until("waiting", lambda: (c := next((c for c in env.client.get(DATAVOLUME, NS, "waiter").get(
        "status", {}).get("conditions", []) if c["type"] == "Running"), None)) and c.get("reason") ==
        "DataSourceNotFound" and env.client.get(DATAVOLUME, NS, "waiter"))
    assert dv["status"]["phase"] == "Pending"
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert running["message"] == "DataSource default/later-ds not found; waiting for it to be created"
    assert any(e["reason"] == "DataSourceNotFound" and e["type"] == "Warning" for e in env.events("waiter"))
    # a DataSource whose PVC is still being imported: the DataVolume waits, saying so
    env.import_dv("later", path="/slow.raw")
    env.datasource("later-ds", {"pvc": {"namespace": NS, "name": "later"}})
    until("continues once Ready", lambda: phase_of(env, "waiter") == "Succeeded", timeout=60)
    reasons = {e["reason"] for e in env.events("waiter")}
    assert "DataSourceNotReady" in reasons or "ImportPVCNotReady" in reasons, reasons
    assert volume_digest(str(env.volume("waiter"))) == volume_digest(str(env.volume("later")))


def test_a_datasource_does_not_reach_a_pvc_its_user_could_not_clone(env: Env) -> None:
    """alice owns namespace alice only: a DataSource of hers naming a PVC in default is no way in."""
    for verb, resource in (("create", "datasources"), ("create", "dataimportcrons"), ("watch", "datasources")):
        can = env.kubectl("auth", "can-i", verb, resource, "-n", "alice", user="alice", check=False).stdout.strip()
        assert can == "yes", (verb, resource, can)
    until("golden", lambda: phase_of(env, "golden") == "Succeeded", timeout=60)
    manifest = ("apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata: {name: sneaky, namespace: alice}\n"
                "spec: {source: {pvc: {namespace: default, name: golden}}}\n")
    env.cluster.kubectl("--kubeconfig", str(env.work / "users" / "alice.kubeconfig"), "create", "-f", "-",
                        input=manifest)
    dv = ("apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: stolen, namespace: alice}\n"
          "spec: {sourceRef: {kind: DataSource, name: sneaky}, storage: {}}\n")
    refused = env.cluster.kubectl("--kubeconfig", str(env.work / "users" / "alice.kubeconfig"), "create", "-f", "-",
                                  input=dv, check=False)
    assert refused.returncode != 0
    assert "User alice has insufficient permissions in clone source namespace default" in refused.stderr
    with pytest.raises(NotFound):
        env.client.get(DATAVOLUME, "alice", "stolen")

    # the DataSource in default itself: the same rule, and once default lets her clone, it works
    theirs = ("apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: granted, namespace: alice}\n"
              "spec: {sourceRef: {kind: DataSource, name: golden-ds, namespace: default}, storage: {}}\n")
    refused = env.cluster.kubectl("--kubeconfig", str(env.work / "users" / "alice.kubeconfig"), "create", "-f", "-",
                                  input=theirs, check=False)
    assert "User alice has insufficient permissions in clone source namespace default" in refused.stderr
    env.kubectl("create", "rolebinding", "alice-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer",
                "--user=alice", "-n", "default")
    env.cluster.kubectl("--kubeconfig", str(env.work / "users" / "alice.kubeconfig"), "create", "-f", "-",
                        input=theirs)
    until("the clone across namespaces", lambda: phase_of(env, "granted", "alice") in ("Succeeded", "Failed"),
          timeout=60)
    assert phase_of(env, "granted", "alice") == "Succeeded"
    assert holds(env.volume("granted", "alice"), env.raw)


# -- DataImportCron and the image cache, with a real registry -----------------------------------------

@pytest.fixture(scope="module")
def reg(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-http registry, listed in CDIConfig's insecureRegistries as CDI's users list theirs."""
    with Registry(tmp_path_factory.mktemp("registry")) as r:
        config = env.client.find(CDICONFIG, None, "config")
        if config is None:
            env.client.create(CDICONFIG, {"apiVersion": CDICONFIG.api_version, "kind": "CDIConfig",
                                          "metadata": {"name": "config"}, "spec": {"insecureRegistries": [r.host]}})
        else:
            env.client.patch(CDICONFIG, None, "config", {"spec": {"insecureRegistries": [r.host]}})
        yield r


def cron_manifest(reg: Registry, name: str, managed: str, repo: str, *, keep: int) -> Obj:
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"schedule": "* * * * *", "managedDataSource": managed, "importsToKeep": keep,
                     "template": {"spec": {"source": {"registry": {"url": reg.url(repo)}},
                                           "storage": {"resources": {"requests": {"storage": "8Mi"}}}}}}}


def condition(obj: Obj, ctype: str) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def points_to(env: Env, ds: str, pvc: str) -> bool:
    obj = env.client.get(DATASOURCE, NS, ds)
    return bool(obj["spec"]["source"] == {"pvc": {"namespace": NS, "name": pvc}} and ready(obj).get("status") == "True")


def alice_vm(name: str, template_spec: Obj) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": "alice"},
        "spec": {"runStrategy": "Halted", "dataVolumeTemplates": [{"metadata": {"name": f"{name}-root"},
                                                                    "spec": template_spec}],
                 "template": {"spec": {"domain": {"memory": {"guest": "128Mi"}, "devices": {
                     "disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                     "volumes": [{"name": "root", "dataVolume": {"name": f"{name}-root"}}]}}}})


def test_a_vm_template_does_not_reach_a_pvc_its_user_could_not_clone(env: Env) -> None:
    """The VM controller creates a VM's DataVolumes as its ServiceAccount: the VM's author is checked instead."""
    env.kubectl("delete", "rolebinding", "alice-clones", "-n", "default", "--ignore-not-found")
    until("golden", lambda: phase_of(env, "golden") == "Succeeded", timeout=60)
    for name, spec in (("vm-by-ref", {"sourceRef": {"kind": "DataSource", "namespace": "default", "name": "golden-ds"},
                                      "storage": {}}),
                       ("vm-by-pvc", {"source": {"pvc": {"namespace": "default", "name": "golden"}}, "storage": {}})):
        refused = env.kubectl("create", "-f", "-", user="alice", check=False, input=alice_vm(name, spec))
        assert refused.returncode != 0
        assert ('admission webhook "virtualmachine-validator.kubevirt.io" denied the request: '
                "spec.dataVolumeTemplates[0]: Authorization failed, message is: User alice has insufficient "
                "permissions in clone source namespace default") in refused.stderr, refused.stderr
        with pytest.raises(NotFound):
            env.client.get(VM, "alice", name)
        assert env.client.find(DATAVOLUME, "alice", f"{name}-root") is None

    # once default lets her clone, the VM is admitted and the DataVolume its controller makes clones
    env.kubectl("create", "rolebinding", "alice-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer",
                "--user=alice", "-n", "default")
    env.kubectl("create", "-f", "-", user="alice", input=alice_vm("vm-by-ref", {
        "sourceRef": {"kind": "DataSource", "namespace": "default", "name": "golden-ds"}, "storage": {}}))
    until("the VM's clone", lambda: phase_of(env, "vm-by-ref-root", "alice") in ("Succeeded", "Failed"), timeout=60)
    assert phase_of(env, "vm-by-ref-root", "alice") == "Succeeded"
    assert holds(env.volume("vm-by-ref-root", "alice"), env.raw)


def test_dataimportcron_imports_at_once_follows_a_new_digest_and_collects_old_imports(
        env: Env, reg: Registry, tmp_path: Path) -> None:
    first = reg.push(container_disk(tmp_path / "v1", env.raw), "golden/fedora")
    env.client.create(DATAIMPORTCRON, cron_manifest(reg, "fedora-cron", "fedora", "golden/fedora", keep=1))
    name1 = import_name("fedora", first)
    dv1 = until("the first import, at once", lambda: env.client.get(DATAVOLUME, NS, name1))
    assert dv1["spec"]["source"]["registry"]["url"] == f"docker://{reg.host}/golden/fedora@{first}"
    assert dv1["metadata"]["labels"][LABEL_CRON] == "fedora-cron"
    assert dv1["metadata"]["annotations"][ANN_DESIRED_DIGEST] == first
    until("the DataSource follows", lambda: points_to(env, "fedora", name1), timeout=60)
    cron = until("up to date", lambda: condition(c := env.client.get(DATAIMPORTCRON, NS, "fedora-cron"),
                                                 "UpToDate").get("status") == "True" and c)
    status = cron["status"]
    assert status["lastImportedPVC"] == {"namespace": NS, "name": name1}
    assert status["currentImports"] == [{"DataVolumeName": name1, "Digest": first}]
    assert status["lastExecutionTimestamp"] and status["lastImportTimestamp"] and status["sourceFormat"] == "pvc"
    assert condition(cron, "Progressing")["reason"] == "NoImport"
    rows = env.kubectl("get", "dic").stdout.splitlines()
    assert rows[0].split() == ["NAME", "FORMAT", "AGE"] and rows[1].split()[:2] == ["fedora-cron", "pvc"]
    assert holds(env.volume(name1), env.raw)

    # A VirtualMachine whose dataVolumeTemplate refers to the DataSource gets its disk from it.
    env.client.create(VM, {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                           "metadata": {"name": "golden-vm", "namespace": NS},
                           "spec": {"runStrategy": "Halted",
                                    "dataVolumeTemplates": [{"metadata": {"name": "golden-vm-root"}, "spec": {
                                        "sourceRef": {"kind": "DataSource", "name": "fedora"}, "storage": {}}}],
                                    "template": {"spec": {"domain": {"memory": {"guest": "128Mi"}, "devices": {
                                        "disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                                        "volumes": [{"name": "root", "dataVolume": {"name": "golden-vm-root"}}]}}}})
    until("the VM's disk", lambda: phase_of(env, "golden-vm-root") == "Succeeded", timeout=60)
    assert holds(env.volume("golden-vm-root"), env.raw)

    # A new image under the tag: nothing happens before the schedule says so ...
    disk2 = images.make_raw(tmp_path / "disk2.raw", 6 << 20, seed=2)
    second = push_new_image(reg, tmp_path, disk2, "golden/fedora")
    assert second != first
    DataImportCronReconciler(env.client, now=env.clock.now).reconcile(NS, "fedora-cron")
    annotations = env.client.get(DATAIMPORTCRON, NS, "fedora-cron")["metadata"]["annotations"]
    assert annotations[ANN_DESIRED_DIGEST] == first
    # ... and a minute later the poll finds it, imports it, and the DataSource follows.
    env.clock.advance(61)
    env.manager.golden.tick()
    name2 = import_name("fedora", second)
    until("the DataSource follows the new digest", lambda: points_to(env, "fedora", name2), timeout=60)
    until("the old import collected (importsToKeep 1)", lambda: env.client.find(DATAVOLUME, NS, name1) is None
          and env.client.find(PVC, NS, name1) is None, timeout=30)
    cron = until("the cron records it", lambda: (c := env.client.get(DATAIMPORTCRON, NS, "fedora-cron"))[
        "status"]["lastImportedPVC"] == {"namespace": NS, "name": name2} and c)
    assert cron["status"]["currentImports"] == [{"DataVolumeName": name2, "Digest": second}]
    assert cron["metadata"]["annotations"][ANN_DESIRED_DIGEST] == second
    assert {e["reason"] for e in env.events("fedora-cron")} >= {"ImportScheduled", "DataSourceUpdated",
                                                                 "ImportCollected"}
    env.ref_dv("after-update", "fedora")
    until("a clone of the new image", lambda: phase_of(env, "after-update") == "Succeeded", timeout=60)
    assert holds(env.volume("after-update"), disk2)


def registry_dv(name: str, ns: str, url: str, size: str = "8Mi") -> Obj:
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"registry": {"url": url}},
                     "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}}


def test_a_digest_already_imported_is_served_by_cloning_its_volume(env: Env, reg: Registry, tmp_path: Path) -> None:
    env.kubectl("create", "namespace", "cache")
    digest = reg.push(container_disk(tmp_path / "c1", env.raw), "cache/disk")
    pinned = reg.url("cache/disk", digest)
    env.client.create(DATAVOLUME, registry_dv("first", "cache", reg.url("cache/disk")))  # by tag: the importer
    # records the digest it verified, and that makes the volume a cache entry
    until("the first import", lambda: phase_of(env, "first", "cache") in ("Succeeded", "Failed"), timeout=60)
    assert phase_of(env, "first", "cache") == "Succeeded"
    assert "ImportFromCache" not in {e["reason"] for e in env.events("first", "cache")}
    assert env.client.get(PVC, "cache", "first")["metadata"]["annotations"][ANN_SOURCE_DIGEST] == digest

    # the same digest again, pinned or behind the tag: a clone of "first", no download
    env.client.create(DATAVOLUME, registry_dv("second", "cache", pinned))
    env.client.create(DATAVOLUME, registry_dv("by-tag", "cache", reg.url("cache/disk")))
    for name in ("second", "by-tag"):
        until(f"{name} done", lambda n=name: phase_of(env, n, "cache") in ("Succeeded", "Failed"), timeout=60)
        dv = env.client.get(DATAVOLUME, "cache", name)
        assert dv["status"]["phase"] == "Succeeded", dv["status"]
        events = until("CloneSucceeded", lambda n=name: (ev := env.events(n, "cache")) and any(
            e["reason"] == "CloneSucceeded" for e in ev) and ev)
        served = [e["message"] for e in events if e["reason"] == "ImportFromCache"]
        assert served == [f"served from cache of PVC cache/first, digest {digest}"], served
        reasons = {e["reason"] for e in events}
        assert "CloneSucceeded" in reasons and "ImportScheduled" not in reasons, reasons
        assert dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.cachedFrom"] == "cache/first"
        claim = env.client.get(PVC, "cache", name)
        assert claim["metadata"]["annotations"]["cdi.kubevirt.io/storage.clone.source"] == "cache/first"
        assert volume_digest(str(env.volume(name, "cache"))) == volume_digest(str(env.volume("first", "cache")))

    # a cached volume written since its import is not passed off as the image
    with open(env.volume("first", "cache"), "r+b") as f:
        f.seek(1 << 20)
        f.write(b"tampered" * 512)
    env.client.create(DATAVOLUME, registry_dv("after-tamper", "cache", pinned))
    until("refused", lambda: phase_of(env, "after-tamper", "cache") in ("Succeeded", "Failed"), timeout=60)
    dv = env.client.get(DATAVOLUME, "cache", "after-tamper")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]  # imported from the registry instead
    skipped = [e["message"] for e in env.events("after-tamper", "cache") if e["reason"] == "ImportFromCacheSkipped"]
    assert len(skipped) == 1 and "the cache volume cache/first changed since it was imported" in skipped[0], skipped
    data, raw = env.volume("after-tamper", "cache").read_bytes(), env.raw.read_bytes()
    assert data[:len(raw)] == raw and not data[len(raw):].strip(b"\0")  # the image, not the changed volume
    assert env.client.get(PVC, "cache", "first")["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.cacheStale"]
    # (another, unchanged copy of the image, a cache clone made earlier, may serve it instead)
    assert dv["metadata"].get("annotations", {}).get("cdi.kubevirt.io/storage.import.cachedFrom") != "cache/first"
    # the changed volume is no longer offered: the next DataVolume of the image is served by the new import
    env.client.create(DATAVOLUME, registry_dv("after-skip", "cache", pinned))
    until("after-skip done", lambda: phase_of(env, "after-skip", "cache") in ("Succeeded", "Failed"), timeout=60)
    reasons = {e["message"] for e in env.events("after-skip", "cache") if e["reason"] == "ImportFromCache"}
    assert len(reasons) == 1 and "cache/first" not in reasons.pop()
    assert "ImportFromCacheSkipped" not in {e["reason"] for e in env.events("after-skip", "cache")}

    # conservative: a volume of another size than the cached one, and another namespace, import for themselves
    env.client.create(DATAVOLUME, registry_dv("smaller", "cache", pinned, size="7Mi"))
    env.client.create(DATAVOLUME, registry_dv("elsewhere", "alice", pinned))
    for ns, name in (("cache", "smaller"), ("alice", "elsewhere")):
        until(f"{name} done", lambda n=name, s=ns: phase_of(env, n, s) in ("Succeeded", "Failed"), timeout=60)
        assert phase_of(env, name, ns) == "Succeeded"
        reasons = {e["reason"] for e in env.events(name, ns)}
        assert "ImportFromCache" not in reasons and "CloneSucceeded" not in reasons, reasons


def test_the_cache_serves_only_the_platform_that_was_imported(env: Env, reg: Registry, tmp_path: Path) -> None:
    env.kubectl("create", "namespace", "arches")
    other = "arm64" if host_arch() != "arm64" else "s390x"
    digest = reg.push(container_disk(tmp_path / "multi", env.raw, arches=(host_arch(), other)), "arches/disk")
    env.client.create(DATAVOLUME, registry_dv("native", "arches", reg.url("arches/disk", digest)))
    until("the first import", lambda: phase_of(env, "native", "arches") in ("Succeeded", "Failed"), timeout=60)
    assert phase_of(env, "native", "arches") == "Succeeded"
    foreign = registry_dv("foreign", "arches", reg.url("arches/disk", digest))
    foreign["spec"]["source"]["registry"]["platform"] = {"architecture": other}
    env.client.create(DATAVOLUME, foreign)
    until("the other platform", lambda: phase_of(env, "foreign", "arches") in ("Succeeded", "Failed"), timeout=60)
    assert phase_of(env, "foreign", "arches") == "Succeeded"
    assert "ImportFromCache" not in {e["reason"] for e in env.events("foreign", "arches")}
    assert env.volume("foreign", "arches").read_bytes()[:64].startswith(f"not the {host_arch()} disk: {other}".encode())
    # the same platform, named explicitly, is the cached one
    same = registry_dv("same", "arches", reg.url("arches/disk", digest))
    same["spec"]["source"]["registry"]["platform"] = {"architecture": host_arch()}
    env.client.create(DATAVOLUME, same)
    until("same platform", lambda: phase_of(env, "same", "arches") in ("Succeeded", "Failed"), timeout=60)
    assert "ImportFromCache" in {e["reason"] for e in env.events("same", "arches")}
    assert volume_digest(str(env.volume("same", "arches"))) == volume_digest(str(env.volume("native", "arches")))


def test_dataimportcron_failures_ownership_and_retention(env: Env, reg: Registry, tmp_path: Path) -> None:
    # a tag that does not exist: the poll fails and says so, and the cron imports nothing
    env.client.create(DATAIMPORTCRON, cron_manifest(reg, "missing-cron", "missing", "golden/nothing", keep=1))
    cron = until("PollFailed", lambda: condition(c := env.client.get(DATAIMPORTCRON, NS, "missing-cron"),
                                                 "UpToDate").get("reason") == "PollFailed" and c)
    message = condition(cron, "UpToDate")["message"]
    assert message.startswith(f"Polling {reg.url('golden/nothing')} failed: "), message
    assert any(e["reason"] == "PollFailed" and e["type"] == "Warning" for e in env.events("missing-cron"))
    assert not (cron["status"].get("currentImports") or [])

    # a second cron for a DataSource another cron manages is refused, and touches nothing
    env.client.create(DATAIMPORTCRON, cron_manifest(reg, "rival-cron", "fedora", "golden/fedora", keep=1))
    until("ErrDataSourceAlreadyManaged", lambda: any(e["reason"] == "ErrDataSourceAlreadyManaged"
                                                     for e in env.events("rival-cron")))
    assert env.client.get(DATASOURCE, NS, "fedora")["metadata"]["labels"][LABEL_CRON] == "fedora-cron"

    # retentionPolicy None: the DataSource and the imports go with the cron (the import itself came from the
    # cache: the digest is already in fedora-<hex>)
    manifest = cron_manifest(reg, "tmp-cron", "tmp", "golden/fedora", keep=1)
    manifest["spec"]["retentionPolicy"] = "None"
    env.client.create(DATAIMPORTCRON, manifest)
    until("tmp Ready", lambda: ready(env.client.get(DATASOURCE, NS, "tmp")).get("status") == "True", timeout=60)
    name = env.client.get(DATASOURCE, NS, "tmp")["spec"]["source"]["pvc"]["name"]
    assert any(e["reason"] == "ImportFromCache" for e in env.events(name))
    env.kubectl("delete", "dic", "tmp-cron")
    until("retention None", lambda: env.client.find(DATASOURCE, NS, "tmp") is None
          and env.client.find(DATAVOLUME, NS, name) is None, timeout=30)
    # the default (All) keeps them
    env.kubectl("delete", "dic", "fedora-cron")
    DataImportCronReconciler(env.client, now=env.clock.now).reconcile(NS, "fedora-cron")  # its cleanup, run now
    kept = env.client.get(DATASOURCE, NS, "fedora")
    assert env.client.find(DATAVOLUME, NS, kept["spec"]["source"]["pvc"]["name"]) is not None


def test_dataimportcron_polls_with_the_templates_credentials_and_ca(env: Env, tmp_path: Path) -> None:
    """TLS with a private CA and basic auth: the poll uses the template's secretRef and certConfigMap, and
    a wrong password says so."""
    with Registry(tmp_path / "tls-registry", tls=True, auth=("cdi", "s3cret-pw")) as reg:
        digest = reg.push(container_disk(tmp_path / "secure", env.raw), "secure/disk")
        assert reg.ca_file is not None
        env.client.create(CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "reg-ca", "namespace": NS},
                                      "data": {"ca.crt": reg.ca_file.read_text()}})
        for name, password in (("reg-good", "s3cret-pw"), ("reg-bad", "wrong-pw")):
            env.client.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": name, "namespace": NS},
                                       "stringData": {"accessKeyId": "cdi", "secretKey": password}})
        for cron, secret in (("secure-cron", "reg-good"), ("denied-cron", "reg-bad")):
            manifest = cron_manifest(reg, cron, cron.replace("-cron", ""), "secure/disk", keep=1)
            manifest["spec"]["template"]["spec"]["source"]["registry"].update(secretRef=secret,
                                                                              certConfigMap="reg-ca")
            env.client.create(DATAIMPORTCRON, manifest)
        until("the secure import", lambda: points_to(env, "secure", import_name("secure", digest)), timeout=60)
        assert holds(env.volume(import_name("secure", digest)), env.raw)
        cron = until("PollFailed", lambda: condition(c := env.client.get(DATAIMPORTCRON, NS, "denied-cron"),
                                                     "UpToDate").get("reason") == "PollFailed" and c)
        message = condition(cron, "UpToDate")["message"]
        assert "denied (HTTP 401): check the secretRef's accessKeyId and secretKey" in message, message
