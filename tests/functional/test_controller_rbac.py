"""The controllers as ServiceAccount cdi/cdi-controller, bound to exactly the chart's ClusterRole.

Import, upload and clone each run end to end with nothing but the rules of
``cdi.controller.permissions``; a rule taken away shows as a 403 naming the verb and resource.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdi.clonetoken import TokenCheck
from cdi.controller.account import ACCOUNT, CLUSTERROLE, NAMESPACE_NAME, NSROLE, ROLE, controller_client, ensure_account
from cdi.controller.permissions import cluster_rules, namespace_rules
from cdi.controller.resources import ControllerSettings, importer_pod_name
from cdi.controller.run import Controllers, RunOptions
from cdi.kube import DATAVOLUME, NAMESPACE, NODE, POD, PVC, SECRET, Client, Forbidden, Invalid, NotFound, Obj
from cdi.kube.kinds import STORAGECLASS
from cdi.kube.storage import ANN_SELECTED_NODE
from cdi.node.ports import ANN_PORTS
from cdi.upload_runtime import KEY_FILE, start_upload_proxy
from cdi.uploadtoken import ensure_key, public_pem
from tests.functional.test_node_fixtures import NS, NodeEnv, make_env
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from uploadproxy.proxy import UploadProxy


@dataclass
class Env:
    node: NodeEnv
    admin: Client
    controller: Client
    proxy: UploadProxy
    http: HttpServer
    raw: Path

    def dv(self, name: str, source: Obj, size: str = "8Mi") -> Obj:
        return self.admin.create(DATAVOLUME, {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name, "namespace": NS},
            "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}})

    def phase(self, name: str, *phases: str, timeout: float = 30) -> Obj:
        return self.node.wait(DATAVOLUME, name, lambda d: (d.get("status") or {}).get("phase") in phases, timeout)

    def digest(self, name: str) -> str:
        pvc = self.admin.get(PVC, NS, name)
        return str(pvc["metadata"]["annotations"].get("cdi.kubevirt.io/storage.import.volumeDigest"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("rbac")
    node = make_env(work, max_running_pods=4)
    admin = node.client
    ensure_account(admin)
    controller = controller_client(admin)
    proxy = start_upload_proxy(node.cluster.server, admin, work, "127.0.0.1", 0)
    controllers = Controllers(controller, ControllerSettings(progress_interval=0.2), RunOptions(workers=2, vm=False),
                              clone_tokens=TokenCheck(public_pem(ensure_key(work / KEY_FILE)))).start()
    raw = images.make_raw(work / "disk.raw", 4 << 20)
    with HttpServer() as http:
        http.add("/disk.raw", Route(path=str(raw)))
        http.add("/slow.raw", Route(path=str(raw), rate=1 << 20))  # about 4 s
        yield Env(node, admin, controller, proxy, http, raw)
    controllers.stop()
    proxy.stop()
    node.node.stop()
    node.cluster.server.stop()


def test_the_controller_client_is_the_service_account_and_not_an_admin(env: Env) -> None:
    review = env.controller._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body={
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{NAMESPACE_NAME}:{ACCOUNT}"
    with pytest.raises(Forbidden, match="clusterroles"):  # no RBAC writes: it cannot grant itself more
        env.controller.patch(CLUSTERROLE, None, ROLE, {"rules": [{"apiGroups": ["*"], "resources": ["*"],
                                                                  "verbs": ["*"]}]})
    with pytest.raises(Forbidden):
        env.controller.list(NODE)


def test_the_controller_may_not_create_namespaces_nor_list_secrets(env: Env) -> None:
    with pytest.raises(Forbidden, match="namespaces"):
        env.controller.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mine"}})
    env.admin.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "unrelated"}})
    env.admin.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "stringData": {"password": "x"},
                              "metadata": {"name": "s", "namespace": "unrelated"}})
    with pytest.raises(Forbidden, match="secrets"):
        env.controller.list(SECRET, "unrelated")
    with pytest.raises(Forbidden, match="secrets"):
        env.controller.list(SECRET, NAMESPACE_NAME)  # the signers: get and create only, in the cdi namespace


def test_import_upload_and_clone_pass_with_exactly_the_charts_rules(env: Env) -> None:
    assert env.admin.get(CLUSTERROLE, None, ROLE)["rules"] == cluster_rules()
    assert env.admin.get(NSROLE, NAMESPACE_NAME, ROLE)["rules"] == namespace_rules()
    env.dv("imp", {"http": {"url": env.http.url("/disk.raw")}})
    env.dv("up", {"upload": {}})
    dv = env.phase("imp", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    env.dv("cln", {"pvc": {"namespace": NS, "name": "imp"}})

    env.phase("up", "UploadReady")
    token = env.admin._call("POST", f"/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{NS}/uploadtokenrequests",
                            body={"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
                                  "metadata": {"name": "up", "namespace": NS}, "spec": {"pvcName": "up"}})
    answer = httpx.post(env.proxy.url + "/v1beta1/upload", content=env.raw.read_bytes(), timeout=60,
                        headers={"Authorization": f"Bearer {token['status']['token']}"},
                        verify=ssl.create_default_context(cafile=str(env.node.cluster.server.tls.ca_file)))
    assert answer.status_code == 200, answer.text
    for name in ("up", "cln"):
        dv = env.phase(name, "Succeeded", "Failed")
        assert dv["status"]["phase"] == "Succeeded", (name, dv["status"])
    assert env.digest("imp") == env.digest("up") == env.digest("cln") != "None"


def _wait_for(predicate: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")


def test_a_missing_rule_is_a_clear_403(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    rules = cluster_rules()
    lacking = []  # the same rules but pods lose "create" (a rule naming pods among others is split)
    for r in rules:
        if r["apiGroups"] == [""] and "pods" in r["resources"] and "create" in r["verbs"]:
            others = [res for res in r["resources"] if res != "pods"]
            if others:
                lacking.append(dict(r, resources=others))
            lacking.append(dict(r, resources=["pods"], verbs=[v for v in r["verbs"] if v != "create"]))
        else:
            lacking.append(r)
    assert lacking != rules
    env.admin.patch(CLUSTERROLE, None, ROLE, {"rules": lacking})
    caplog.set_level(logging.ERROR, logger="cdi.kube.loop")
    try:
        env.dv("denied", {"http": {"url": env.http.url("/disk.raw")}})
        record = _wait_for(lambda: next((r for r in caplog.records if "[default/denied]" in r.getMessage()
                                         and "403" in r.getMessage()), None))
        text = record.getMessage()
        assert f'"system:serviceaccount:{NAMESPACE_NAME}:{ACCOUNT}" cannot create resource "pods"' in text, text
        assert "lacks this rule" in text
        assert (env.admin.get(DATAVOLUME, NS, "denied").get("status") or {}).get("phase") != "Succeeded"
    finally:
        env.admin.patch(CLUSTERROLE, None, ROLE, {"rules": rules})
    # With the rule back the same DataVolume completes: no restart, the retry picks it up.
    dv = env.phase("denied", "Succeeded", "Failed", timeout=60)
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    try:
        env.admin.delete(DATAVOLUME, NS, "denied")
    except NotFound:
        pass


def test_an_import_into_a_wait_for_first_consumer_class_binds_through_its_importer_pod(env: Env) -> None:
    env.admin.create(STORAGECLASS, {"metadata": {"name": "local-wffc"}, "provisioner": "cdi.kubevirt.io/local",
                                    "volumeBindingMode": "WaitForFirstConsumer"})
    with pytest.raises(Invalid, match="updates to volumeBindingMode are forbidden"):  # immutable, as in kube
        env.admin.patch(STORAGECLASS, None, "local-wffc", {"volumeBindingMode": "Immediate"})
    # A bare claim of the class has no consumer: the provisioner says it waits, and it stays Pending.
    env.admin.create(PVC, {"metadata": {"name": "no-consumer", "namespace": NS},
                           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-wffc",
                                    "resources": {"requests": {"storage": "1Mi"}}}})
    _wait_for(lambda: any(e.get("reason") == "WaitForFirstConsumer" for e in env.node.events("no-consumer")))
    claim = env.admin.get(PVC, NS, "no-consumer")
    assert claim["status"]["phase"] == "Pending"
    assert ANN_SELECTED_NODE not in (claim["metadata"].get("annotations") or {})

    phases: list[str] = []
    _, since = env.admin.list(DATAVOLUME, NS)  # every status write after this, whenever the watch opens

    def follow() -> None:
        for _, obj in env.admin.watch(DATAVOLUME, NS, resource_version=since, timeout_seconds=30,
                                      label_selector="test=wffc"):
            phases.append(str((obj.get("status") or {}).get("phase")))
            if phases[-1] in ("Succeeded", "Failed"):
                return

    threading.Thread(target=follow, daemon=True).start()
    body = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "wffc", "namespace": NS, "labels": {"test": "wffc"}},
            "spec": {"source": {"http": {"url": env.http.url("/disk.raw")}},
                     "storage": {"storageClassName": "local-wffc", "resources": {"requests": {"storage": "8Mi"}}}}}
    env.admin.create(DATAVOLUME, body)
    dv = env.phase("wffc", "Succeeded", "Failed")
    assert dv["status"]["phase"] == "Succeeded", dv["status"]
    claim = env.admin.get(PVC, NS, "wffc")
    assert claim["metadata"]["annotations"][ANN_SELECTED_NODE] == env.node.node.settings.node_name
    assert env.digest("wffc") == env.digest("imp")
    _wait_for(lambda: "Succeeded" in phases)
    assert "WaitForFirstConsumer" in phases, phases
    assert phases.index("WaitForFirstConsumer") < phases.index("Succeeded")


def test_the_importer_pod_serves_its_progress_as_cdis_importer_does(env: Env) -> None:
    dv = env.dv("measured", {"http": {"url": env.http.url("/slow.raw")}})
    env.phase("measured", "ImportInProgress")
    pod = env.admin.get(POD, NS, importer_pod_name("measured"))
    assert {"name": "metrics", "containerPort": 8443, "protocol": "TCP"} in pod["spec"]["containers"][0]["ports"]
    port = json.loads(pod["metadata"]["annotations"][ANN_PORTS])["8443"]
    line = f'kubevirt_cdi_import_progress_total{{ownerUID="{dv["metadata"]["uid"]}"}} '

    def progress() -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.ConnectError:  # the process runs, but its Python is still starting
            return -1.0
        return float(text.split(line, 1)[1].split()[0]) if line in text else -1.0

    assert _wait_for(lambda: 0 < progress() < 100), "no progress between 0 and 100 on the importer's /metrics"
    done = env.phase("measured", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
