"""The local node projects a pod's ServiceAccount token as kubelet does, and the pod can use it."""

from __future__ import annotations

import json

import requests

from cdi.kube import POD, SERVICEACCOUNT
from tests.functional.test_node_fixtures import NS, NodeEnv, container_status, node_env, pod

__all__ = ["node_env"]

WHOAMI = """
import json, os, ssl, urllib.request
mounts = json.loads(os.environ["CDI_VOLUME_MOUNTS"])
sa = mounts.get("/var/run/secrets/kubernetes.io/serviceaccount")
if sa is None:
    print(json.dumps({"mounted": False}))
    raise SystemExit(0)
token = open(os.path.join(sa, "token")).read()
context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
request = urllib.request.Request(url, data=body, method="POST", headers={
    "Authorization": "Bearer " + token, "Content-Type": "application/json"})
review = json.load(urllib.request.urlopen(request, context=context))
print(json.dumps({"mounted": True, "user": review["status"]["userInfo"],
                  "namespace": open(os.path.join(sa, "namespace")).read()}))
"""


def _report(env: NodeEnv, name: str) -> dict:
    done = env.wait_pod_phase(name, "Succeeded", "Failed", timeout=30)
    assert done["status"]["phase"] == "Succeeded", container_status(done)
    log = env.client.pod_log(NS, name)
    return dict(json.loads(log.strip().splitlines()[-1]))


def test_a_pod_with_a_service_account_calls_the_api_with_its_token(node_env: NodeEnv) -> None:
    c = node_env.client
    c.create(SERVICEACCOUNT, {"metadata": {"name": "worker", "namespace": NS}})
    created = c.create(POD, pod("sa-user", WHOAMI, serviceAccountName="worker"))
    report = _report(node_env, "sa-user")
    assert report["namespace"] == NS
    assert report["user"]["username"] == f"system:serviceaccount:{NS}:worker"
    assert report["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [created["metadata"]["uid"]]
    token_file = next(node_env.data_dir.rglob("kube-api-access/token"))
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    url = node_env.cluster.server.url + "/api"
    ca = str(node_env.cluster.server.tls.ca_file)
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=10).status_code == 200
    # The token is bound to the pod: once the pod is gone, so is the token.
    c.delete(POD, NS, "sa-user")
    node_env.wait_gone(POD, "sa-user")
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=10).status_code == 401


def test_no_token_without_a_service_account_or_with_automount_off(node_env: NodeEnv) -> None:
    c = node_env.client
    c.create(POD, pod("no-sa", WHOAMI))
    assert _report(node_env, "no-sa") == {"mounted": False}
    c.create(POD, pod("no-automount", WHOAMI, serviceAccountName="default", automountServiceAccountToken=False))
    assert _report(node_env, "no-automount") == {"mounted": False}


def test_a_missing_service_account_keeps_the_pod_creating(node_env: NodeEnv) -> None:
    node_env.client.create(POD, pod("ghost-sa", WHOAMI, serviceAccountName="ghost"))
    waiting = node_env.wait(POD, "ghost-sa", lambda p: "ghost" in str(container_status(p).get("state")))
    state = container_status(waiting)["state"]["waiting"]
    assert state["reason"] == "ContainerCreating"
    assert state["message"].startswith('failed to fetch token for serviceaccount "ghost": ')
