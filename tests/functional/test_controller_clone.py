"""Clones against the in-process API server, the local node and the controllers, in seconds.

Sources are imported from a real HTTP server; clones run the real clone worker. Users alice and bob
drive kubectl with their own kubeconfigs; tokens are signed as ``cdi serve`` signs them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi.apiserver.upload_tokens import set_token_signer
from cdi.clonetoken import ANN_CLONE_TOKEN
from cdi.controller.clone import ANN_CLONE_METHOD, ANN_CLONE_TYPE, ANN_FORCE_STREAM
from cdi.controller.clone_pod import clone_pod_name
from cdi.controller.clone_stream import ANN_TARGET, LABEL_TARGET_UID, source_pod_name
from cdi.controller.resources import ANN_DIGEST
from cdi.kube import DATAVOLUME, EVENT, POD, PVC, SECRET, Client, NotFound, Obj
from cdi.uploadtoken import Signer
from importer.digest import volume_digest
from tests.functional.apiserver_fixtures import Cluster
from tests.functional.test_node_fixtures import TEST_IMAGE, add_admin_user, controlled_cluster
from tests.support import images
from tests.support.httpserver import HttpServer, Route

NS = "default"


class Env:
    def __init__(self, cluster: Cluster, client: Client, http: HttpServer, raw: Path, work: Path,
                 signer: Signer) -> None:
        self.cluster, self.client, self.http, self.raw, self.work = cluster, client, http, raw, work
        self.signer = signer

    def kubectl(self, *args: str, user: str | None = None, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = ("--kubeconfig", str(self.work / "users" / f"{user}.kubeconfig")) if user else ()
        return self.cluster.kubectl(*extra, *args, input=input, check=check)

    def import_dv(self, name: str, ns: str = NS, size: str = "8Mi", mode: str = "Filesystem",
                  path: str = "/disk.raw") -> Obj:
        return self.client.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"http": {"url": self.http.url(path)}},
                     "pvc": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                             "resources": {"requests": {"storage": size}}}}})

    def clone_dv(self, name: str, source: str, ns: str = NS, source_ns: str | None = None, size: str | None = "8Mi",
                 mode: str = "Filesystem", annotations: dict[str, str] | None = None) -> Obj:
        claim: Obj = {"accessModes": ["ReadWriteOnce"], "volumeMode": mode}
        api = "pvc"
        if size:
            claim["resources"] = {"requests": {"storage": size}}
        else:  # as CDI: only the storage API may leave the size out, and only for a clone
            api = "storage"
        return self.client.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
            "spec": {"source": {"pvc": {"name": source, "namespace": source_ns or ns}}, api: claim}})

    def wait(self, name: str, predicate: Callable[[Obj], Any], ns: str = NS, timeout: float = 30) -> Obj:
        deadline = time.monotonic() + timeout
        obj: Obj = {}
        while time.monotonic() < deadline:
            try:
                obj = self.client.get(DATAVOLUME, ns, name)
            except NotFound:
                obj = {}
            if obj and predicate(obj):
                return obj
            time.sleep(0.05)
        raise AssertionError(f"DataVolume {ns}/{name} did not get there: {obj.get('status')}")

    def phase(self, name: str, *phases: str, ns: str = NS, timeout: float = 30) -> Obj:
        return self.wait(name, lambda d: (d.get("status") or {}).get("phase") in phases, ns, timeout)

    def events(self, name: str, ns: str = NS) -> list[Obj]:
        items, _ = self.client.list(EVENT, ns)
        return [e for e in items if e.get("involvedObject", {}).get("name") == name]

    def volume(self, name: str, ns: str = NS) -> Path:
        pvc = self.client.get(PVC, ns, name)
        vdir = self.work / "data" / "volumes" / ns / f"{name}-{pvc['metadata']['uid'][:8]}"
        return vdir / "block.img" if pvc["spec"].get("volumeMode") == "Block" else vdir / "disk.img"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("clone")
    with controlled_cluster(work) as up:
        add_admin_user(work, up.cluster, "alice", "alice")
        add_admin_user(work, up.cluster, "bob", "bobs")
        raw = images.make_raw(work / "disk.raw", 6 << 20)
        with HttpServer() as http:
            http.add("/disk.raw", Route(path=str(raw)))
            http.add("/slow.raw", Route(path=str(raw), rate=1 << 20))
            yield Env(up.cluster, up.client, http, raw, work, up.signer)


@pytest.fixture(scope="module")
def source(env: Env) -> str:
    env.import_dv("src")
    dv = env.phase("src", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    return "src"


def digest_of(env: Env, kind: Any, name: str, ns: str = NS) -> str:
    return str(env.client.get(kind, ns, name)["metadata"]["annotations"][ANN_DIGEST])


def test_same_namespace_clone_copies_the_volume_and_records_digest_and_method(env: Env, source: str) -> None:
    env.clone_dv("copy1", source)
    dv = env.phase("copy1", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert dv["status"]["progress"] == "100.0%"
    ann = dv["metadata"]["annotations"]
    assert ann[ANN_CLONE_TYPE] == "copy"
    assert ann[ANN_CLONE_METHOD] in ("reflink", "sparse")
    assert ANN_CLONE_TOKEN in ann
    target = env.volume("copy1")
    assert volume_digest(str(target)) == volume_digest(str(env.volume(source)))
    assert target.read_bytes()[: 6 << 20] == env.raw.read_bytes()
    assert digest_of(env, DATAVOLUME, "copy1") == digest_of(env, PVC, "copy1") == digest_of(env, PVC, source)
    reasons = [e["reason"] for e in env.events("copy1")]
    assert {"CloneScheduled", "CloneSucceeded", "CloneMethod"} <= set(reasons), reasons
    message = next(e["message"] for e in env.events("copy1") if e["reason"] == "CloneSucceeded")
    assert message == "Successfully cloned from default/src into default/copy1"


def test_an_empty_size_takes_the_sources(env: Env, source: str) -> None:
    env.clone_dv("nosize", source, size=None)
    dv = env.phase("nosize", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    requests = env.client.get(PVC, NS, "nosize")["spec"]["resources"]["requests"]["storage"]
    assert requests == env.client.get(PVC, NS, source)["spec"]["resources"]["requests"]["storage"]


def test_a_target_smaller_than_the_source_fails_with_cdis_event(env: Env, source: str) -> None:
    env.clone_dv("small", source, size="4Mi")
    dv = env.phase("small", "Failed", "Succeeded")
    assert dv["status"]["phase"] == "Failed"
    running = next(c for c in dv["status"]["conditions"] if c["type"] == "Running")
    assert running["reason"] == "CloneValidationFailed"
    warnings = [e["message"] for e in env.events("small") if e["type"] == "Warning"]
    assert ("The clone doesn't meet the validation requirements: target resources requests storage size is "
            "smaller than the source 4194304 < 8388608") in warnings
    assert env.client.find(PVC, NS, "small") is None


@pytest.mark.parametrize(("source_mode", "target_mode"), [("Filesystem", "Block"), ("Block", "Filesystem")])
def test_clone_between_filesystem_and_block(env: Env, source: str, source_mode: str, target_mode: str) -> None:
    src = source
    if source_mode == "Block":
        src = "srcblock"
        env.import_dv(src, mode="Block")
        assert env.phase(src, "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    name = f"to-{target_mode.lower()}"
    env.clone_dv(name, src, mode=target_mode, size="10Mi")
    dv = env.phase(name, "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    size = env.volume(src).stat().st_size
    assert volume_digest(str(env.volume(name)), size) == volume_digest(str(env.volume(src)))
    assert digest_of(env, DATAVOLUME, name) == digest_of(env, PVC, src)


def test_a_clone_waits_while_its_source_is_still_importing(env: Env) -> None:
    env.import_dv("slowsrc", path="/slow.raw")
    env.clone_dv("waiter", "slowsrc")
    dv = env.wait("waiter", lambda d: any(c.get("reason") == "ImportPVCNotReady"
                                          for c in (d.get("status") or {}).get("conditions") or []))
    assert dv["status"]["phase"] in ("Pending", "CloneScheduled")
    assert env.client.get(DATAVOLUME, NS, "slowsrc")["status"]["phase"] != "Succeeded"
    done = env.phase("waiter", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert digest_of(env, DATAVOLUME, "waiter") == digest_of(env, PVC, "slowsrc")


def test_source_ref_to_a_missing_datasource_waits_and_says_so(env: Env) -> None:
    env.client.create(DATAVOLUME, {
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "fromref", "namespace": NS},
        "spec": {"sourceRef": {"kind": "DataSource", "name": "fedora"},
                 "storage": {"resources": {"requests": {"storage": "8Mi"}}}}})
    dv = env.wait("fromref", lambda d: any(c.get("reason") == "DataSourceNotFound"
                                           for c in (d.get("status") or {}).get("conditions") or []))
    assert dv["status"]["phase"] == "Pending"
    assert any("DataSource default/fedora not found" in e["message"] for e in env.events("fromref"))


def test_a_clone_without_a_token_is_refused_by_the_controller(env: Env, source: str) -> None:
    # With no signer the admission cannot grant a token: the controller must not clone on its own say.
    set_token_signer(env.cluster.server.app, None)
    try:
        dv = env.clone_dv("untokened", source)
    finally:
        set_token_signer(env.cluster.server.app, env.signer)
    assert ANN_CLONE_TOKEN not in (dv["metadata"].get("annotations") or {})
    done = env.phase("untokened", "Failed", "Succeeded")
    running = next(c for c in done["status"]["conditions"] if c["type"] == "Running")
    assert (running["reason"], running["message"]) == (
        "CloneValidationFailed", "The clone doesn't meet the validation requirements: clone token missing")
    assert env.client.find(PVC, NS, "untokened") is None


def test_kubectl_as_two_users_cross_namespace_clone(env: Env) -> None:
    manifest = lambda name, src_ns: yaml.safe_dump({  # noqa: E731
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"pvc": {"namespace": src_ns, "name": "golden"}},
                 "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}}}})
    env.import_dv("golden", ns="alice")
    assert env.phase("golden", "Succeeded", "Failed", ns="alice")["status"]["phase"] == "Succeeded"
    # alice clones within her namespace.
    env.kubectl("create", "-n", "alice", "-f", "-", user="alice", input=manifest("mine", "alice"))
    assert env.phase("mine", "Succeeded", "Failed", ns="alice")["status"]["phase"] == "Succeeded"
    # bob may not clone from alice's namespace; kubectl auth can-i agrees.
    can = env.kubectl("auth", "can-i", "create", "datavolumes", "--subresource=source", "-n", "alice", user="bob",
                      check=False)
    assert can.stdout.strip() == "no"
    refused = env.kubectl("create", "-n", "bobs", "-f", "-", user="bob", input=manifest("theirs", "alice"),
                          check=False)
    assert refused.returncode == 1
    assert ("User bob has insufficient permissions in clone source namespace alice") in refused.stderr
    assert env.client.find(DATAVOLUME, "bobs", "theirs") is None
    env.kubectl("create", "rolebinding", "bob-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer",
                "--user=bob", "-n", "alice", user="alice")
    can = env.kubectl("auth", "can-i", "create", "datavolumes", "--subresource=source", "-n", "alice", user="bob")
    assert can.stdout.strip() == "yes"
    env.kubectl("create", "-n", "bobs", "-f", "-", user="bob", input=manifest("theirs", "alice"))
    dv = env.phase("theirs", "Succeeded", "Failed", ns="bobs", timeout=40)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert dv["metadata"]["annotations"][ANN_CLONE_METHOD] == "stream"
    assert digest_of(env, DATAVOLUME, "theirs", "bobs") == digest_of(env, PVC, "golden", "alice")


def test_the_host_assisted_stream_when_forced(env: Env, source: str) -> None:
    env.clone_dv("streamed", source, annotations={ANN_FORCE_STREAM: "true"})
    dv = env.phase("streamed", "Succeeded", "Failed", timeout=40)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert dv["metadata"]["annotations"][ANN_CLONE_METHOD] == "stream"
    assert volume_digest(str(env.volume("streamed"))) == volume_digest(str(env.volume(source)))
    assert digest_of(env, DATAVOLUME, "streamed") == digest_of(env, PVC, source)
    uid = env.client.get(PVC, NS, "streamed")["metadata"]["uid"]
    for kind in (POD, SECRET):  # the source side is cleaned up
        assert env.client.find(kind, NS, source_pod_name(uid)) is None
    assert any(e["message"].startswith("Cloned with stream copy") for e in env.events("streamed"))


def test_a_service_account_token_clones_from_a_script(env: Env, source: str) -> None:
    # A ServiceAccount in bobs, allowed to edit there and to read clone sources in default.
    env.kubectl("create", "serviceaccount", "robot", "-n", "bobs")
    env.kubectl("create", "rolebinding", "robot-edit", "--clusterrole=edit", "--serviceaccount=bobs:robot",
                "-n", "bobs")
    env.kubectl("create", "rolebinding", "robot-clones", "--clusterrole=cdi.kubevirt.io:clone-sourcer",
                "--serviceaccount=bobs:robot", "-n", NS)
    token = env.kubectl("create", "token", "robot", "-n", "bobs", "--duration", "10m").stdout.strip()
    server = yaml.safe_load(env.cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    script = f"""
import kubernetes
cfg = kubernetes.client.Configuration()
cfg.host = {server!r}
cfg.verify_ssl = False
cfg.api_key = {{"authorization": "Bearer " + {token!r}}}
api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(cfg))
api.create_namespaced_custom_object("cdi.kubevirt.io", "v1beta1", "bobs", "datavolumes", {{
    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {{"name": "scripted"}},
    "spec": {{"source": {{"pvc": {{"namespace": {NS!r}, "name": {source!r}}}}},
             "pvc": {{"accessModes": ["ReadWriteOnce"], "resources": {{"requests": {{"storage": "8Mi"}}}}}}}}}})
print("created")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "created", out.stderr[-2000:]
    dv = env.phase("scripted", "Succeeded", "Failed", ns="bobs", timeout=40)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    assert digest_of(env, DATAVOLUME, "scripted", "bobs") == digest_of(env, PVC, source)


def test_deleting_a_datavolume_stops_its_stream_source_pod_in_the_other_namespace(env: Env) -> None:
    # The target first (a source pod of a DataVolume that does not exist is removed at once), then a
    # source-side pod of a stream into bobs/gone, as the controller makes it (labels, annotation).
    env.clone_dv("gone", "nothing-here", ns="bobs", source_ns="bobs")
    env.wait("gone", lambda d: any(c.get("reason") == "CloneWithoutSource"
                                   for c in (d.get("status") or {}).get("conditions") or []), ns="bobs")
    env.client.create(POD, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": source_pod_name("feedface-0000"), "namespace": NS,
                     "labels": {"cdi.kubevirt.io": "cdi-clone", LABEL_TARGET_UID: "feedface-0000"},
                     "annotations": {ANN_TARGET: "bobs/gone"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": TEST_IMAGE, "command": ["python3", "-c", "import time; time.sleep(60)"]}]}})
    deadline = time.monotonic() + 15
    while "running" not in ((((env.client.find(POD, NS, source_pod_name("feedface-0000")) or {}).get("status")
                              or {}).get("containerStatuses") or [{}])[0].get("state") or {}):
        assert time.monotonic() < deadline, "the stand-in source pod did not start"
        time.sleep(0.05)
    env.client.delete(DATAVOLUME, "bobs", "gone")
    deadline = time.monotonic() + 15
    while env.client.find(POD, NS, source_pod_name("feedface-0000")) is not None:
        assert time.monotonic() < deadline, "the source pod of a deleted clone was left running"
        time.sleep(0.05)


def test_a_clone_waits_while_a_pod_uses_its_source(env: Env, source: str) -> None:
    env.client.create(POD, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader", "namespace": NS},
        "spec": {"restartPolicy": "Never",
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": source}}],
                 "containers": [{"name": "c", "image": TEST_IMAGE, "command": ["python3", "-c",
                                                                          "import time; time.sleep(120)"],
                                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}})
    env.clone_dv("patient", source)
    dv = env.wait("patient", lambda d: any(c.get("reason") == "CloneSourceInUse"
                                           for c in (d.get("status") or {}).get("conditions") or []))
    assert dv["status"]["phase"] in ("Pending", "CloneScheduled")
    assert any(e["reason"] == "CloneSourceInUse" and e["message"] ==
               f"pod {NS}/reader using PersistentVolumeClaim {source}" for e in env.events("patient"))
    env.client.delete(POD, NS, "reader")
    done = env.phase("patient", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]


def test_deleting_a_clone_whose_worker_keeps_failing_releases_both_claims(env: Env) -> None:
    # A source claim with nothing in it: the clone worker fails and is restarted, holding both claims.
    env.client.create(PVC, {"metadata": {"name": "hollow", "namespace": NS}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Mi"}}}})
    env.clone_dv("stuck", "hollow", size="8Mi")
    deadline = time.monotonic() + 30
    while env.client.find(POD, NS, clone_pod_name("stuck")) is None:
        assert time.monotonic() < deadline, f"no clone worker: {env.client.find(DATAVOLUME, NS, 'stuck')}"
        time.sleep(0.05)
    env.client.delete(DATAVOLUME, NS, "stuck")
    env.client.delete(PVC, NS, "hollow")
    deadline = time.monotonic() + 15
    while any(env.client.find(kind, NS, name) is not None for kind, name in (
            (POD, clone_pod_name("stuck")), (PVC, "stuck"), (PVC, "hollow"))):
        assert time.monotonic() < deadline, "a deleted clone's worker kept its claims Terminating"
        time.sleep(0.05)
