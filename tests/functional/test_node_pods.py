"""Pod runner of the local node against a real API server: env, volumes, status, logs, restarts, limits."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from cdi.kube import CONFIGMAP, POD, PVC, SECRET, Invalid, NotFound, Obj
from tests.functional.test_node_fixtures import NS, TEST_IMAGE, NodeEnv, container_status, node_env, pod, pvc, secret

__all__ = ["node_env"]

REPORT = """
import json, os, stat, sys
mounts = json.loads(os.environ["CDI_VOLUME_MOUNTS"])
secret_file = os.path.join(mounts["/secrets"], "password")
report = {
    "env": {k: v for k, v in os.environ.items() if k.isupper()},
    "cwd": os.getcwd(),
    "secret": open(secret_file).read(),
    "secret_mode": oct(stat.S_IMODE(os.stat(secret_file).st_mode)),
    "config": open(os.path.join(mounts["/config"], "sub", "g.txt")).read(),
    "scratch_is_dir": os.path.isdir(mounts["/scratch"]),
}
print(json.dumps(report))
open(os.environ["TERMINATION_MESSAGE_PATH"], "w").write("done-msg")
"""


def test_pod_sees_env_volumes_and_reports_status(node_env: NodeEnv) -> None:
    c = node_env.client
    c.create(SECRET, secret("creds", password="hunter2"))
    c.create(CONFIGMAP, {"metadata": {"name": "settings", "namespace": NS}, "data": {"greeting": "hello"}})
    c.create(PVC, pvc("env-data", "10Mi"))
    c.create(PVC, pvc("env-blk", "4Mi", mode="Block"))
    env = [
        {"name": "PLAIN", "value": "v1"},
        {"name": "EXPANDED", "value": "$(PLAIN)-x"},
        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "GREET", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}},
    ] + [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": f}}} for n, f in [
        ("POD_NAME", "metadata.name"), ("POD_NS", "metadata.namespace"), ("POD_UID", "metadata.uid"),
        ("NODE", "spec.nodeName"), ("POD_IP", "status.podIP")]]
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "env-data"}},
        {"name": "blk", "persistentVolumeClaim": {"claimName": "env-blk"}},
        {"name": "sec", "secret": {"secretName": "creds"}},
        {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "greeting", "path": "sub/g.txt"}]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    container = {
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "sec", "mountPath": "/secrets"},
                         {"name": "cfg", "mountPath": "/config"}, {"name": "tmp", "mountPath": "/scratch"}],
        "volumeDevices": [{"name": "blk", "devicePath": "/dev/disk"}],
    }
    created = c.create(POD, pod("env", REPORT, env=env, volumes=volumes, container=container))
    done = node_env.wait_pod_phase("env", "Succeeded", "Failed")
    cs = container_status(done)
    assert done["status"]["phase"] == "Succeeded", cs
    term = cs["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (0, "Completed", "done-msg")
    assert cs["restartCount"] == 0 and cs["ready"] is False and cs["image"] == TEST_IMAGE
    conditions = {x["type"]: x for x in done["status"]["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert done["status"]["podIP"] == "127.0.0.1" and done["status"]["startTime"]
    assert done["spec"]["nodeName"] == "cdi-local"

    # The container's output through the real kubectl and the log provider.
    out = node_env.cluster.kubectl("logs", "env")
    report = json.loads(out.stdout)
    e = report["env"]
    assert (e["PLAIN"], e["EXPANDED"], e["PASS"], e["GREET"]) == ("v1", "v1-x", "hunter2", "hello")
    assert "OPT" not in e
    assert (e["POD_NAME"], e["POD_NS"], e["POD_UID"]) == ("env", NS, created["metadata"]["uid"])
    assert (e["NODE"], e["POD_IP"]) == ("cdi-local", "127.0.0.1")
    assert e["HOME"] == report["cwd"]
    pvcs = {n: c.get(PVC, NS, n)["metadata"]["annotations"]["cdi.kubevirt.io/local-path"]
            for n in ("env-data", "env-blk")}
    mounts = json.loads(e["CDI_VOLUME_MOUNTS"])
    assert mounts["/data"] == pvcs["env-data"] and mounts["/dev/disk"] == pvcs["env-blk"]
    assert set(mounts) == {"/data", "/dev/disk", "/secrets", "/config", "/scratch"}
    assert json.loads(e["CDI_VOLUME_CAPACITY"]) == {"/data": 10 << 20, "/dev/disk": 4 << 20}
    assert (report["secret"], report["secret_mode"], report["config"]) == ("hunter2", "0o600", "hello")
    assert report["scratch_is_dir"]


def test_envfrom_prefix_keeps_key_case(node_env: NodeEnv) -> None:
    # envFrom adds the prefix to the key as it is (no upper-casing), as kubelet does.
    script = "import os; print(os.environ.get('CM_greeting'))"
    node_env.client.create(POD, pod("envfrom", script, container={
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}]}))
    node_env.wait_pod_phase("envfrom", "Succeeded")
    assert node_env.cluster.kubectl("logs", "envfrom").stdout == "hello\n"


def test_missing_secret_waits_with_config_error_until_created(node_env: NodeEnv) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    node_env.client.create(POD, pod("waits", "import os; print(os.environ['TOKEN'])", env=env))
    got = node_env.wait(POD, "waits", lambda p: "waiting" in container_status(p).get("state", {})
                        and container_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError")
    assert container_status(got)["state"]["waiting"]["message"] == 'secret "late" not found'
    assert got["status"]["phase"] == "Pending"
    node_env.client.create(SECRET, secret("late", other="x"))
    node_env.wait(POD, "waits", lambda p: "couldn't find key token in Secret default/late"
                  in json.dumps(p.get("status")))
    node_env.client.patch(SECRET, NS, "late", {"stringData": {"token": "t0k"}})
    node_env.wait_pod_phase("waits", "Succeeded")
    assert node_env.cluster.kubectl("logs", "waits").stdout == "t0k\n"


def test_onfailure_restarts_with_backoff_until_success(node_env: NodeEnv) -> None:
    script = ("import os,sys; n=int(open('count').read()) if os.path.exists('count') else 0; n+=1; "
              "open('count','w').write(str(n)); print('run', n); sys.exit(0 if n >= 3 else 1)")
    node_env.client.create(POD, pod("flaky", script, restart="OnFailure"))
    done = node_env.wait_pod_phase("flaky", "Succeeded", "Failed", timeout=15)
    cs = container_status(done)
    assert done["status"]["phase"] == "Succeeded"
    assert cs["restartCount"] == 2
    assert cs["lastState"]["terminated"]["exitCode"] == 1 and cs["lastState"]["terminated"]["reason"] == "Error"
    assert node_env.cluster.kubectl("logs", "flaky").stdout == "run 3\n"
    assert node_env.cluster.kubectl("logs", "flaky", "--previous").stdout == "run 2\n"
    assert any(e["reason"] == "BackOff" for e in node_env.events("flaky"))


def test_never_ends_failed_with_message_from_logs(node_env: NodeEnv) -> None:
    script = "import sys; print('line1'); print('boom', file=sys.stderr); sys.exit(3)"
    node_env.client.create(POD, pod("fails", script, container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    done = node_env.wait_pod_phase("fails", "Failed")
    cs = container_status(done)
    term = cs["state"]["terminated"]
    assert (term["exitCode"], term["reason"], cs["restartCount"]) == (3, "Error", 0)
    assert "boom" in term["message"]
    assert node_env.cluster.kubectl("logs", "fails", "--tail=1").stdout == "boom\n"
    bad = node_env.cluster.kubectl("logs", "fails", "--previous", check=False)
    assert bad.returncode != 0 and "previous terminated container" in bad.stderr


def test_logs_follow_streams_until_exit(node_env: NodeEnv) -> None:
    script = "import time; print('first', flush=True); time.sleep(1.0); print('second')"
    node_env.client.create(POD, pod("talker", script))
    node_env.wait_pod_phase("talker", "Running")
    started = time.monotonic()
    out = node_env.cluster.kubectl("logs", "-f", "talker")
    assert out.stdout == "first\nsecond\n"
    assert time.monotonic() - started < 5


def test_running_containers_stay_within_the_limit(node_env: NodeEnv, tmp_path: Path) -> None:
    script = ("import os,time; d=os.environ['OUT']; s=time.time(); time.sleep(0.6); "
              "open(os.path.join(d, os.environ['NAME']), 'w').write(f'{s} {time.time()}')")
    names = [f"limit{i}" for i in range(5)]
    for n in names:
        node_env.client.create(POD, pod(n, script, env=[{"name": "OUT", "value": str(tmp_path)},
                                                          {"name": "NAME", "value": n}]))
    waiting = node_env.wait(POD, "limit4", lambda p: "limit" in json.dumps(p.get("status", {})))
    assert container_status(waiting)["state"]["waiting"]["reason"] == "ContainerCreating"
    assert waiting["status"]["phase"] == "Pending"
    for n in names:
        node_env.wait_pod_phase(n, "Succeeded", timeout=15)
    spans = {n: tuple(map(float, (tmp_path / n).read_text().split())) for n in names}
    for n, (start, _) in spans.items():
        running = sum(1 for s, e in spans.values() if s <= start < e)
        assert running <= 2, (n, spans)
    starts = [spans[n][0] for n in names]
    assert max(starts[:2]) < min(starts[2:]), "pods start in creation order"


def test_deleting_a_pod_kills_its_process(node_env: NodeEnv, tmp_path: Path) -> None:
    script = ("import os,signal,time\n"
              "d=os.environ['OUT']\n"
              "signal.signal(signal.SIGTERM, lambda *a: open(os.path.join(d,'term'),'w').write('1'))\n"
              "open(os.path.join(d,'pid'),'w').write(str(os.getpid()))\n"
              "while True: time.sleep(0.1)\n")
    created = node_env.client.create(POD, pod("stubborn", script, env=[{"name": "OUT", "value": str(tmp_path)}],
                                              terminationGracePeriodSeconds=1))
    node_env.wait(POD, "stubborn", lambda _: (tmp_path / "pid").exists())
    pid = int((tmp_path / "pid").read_text())
    pod_dir = node_env.data_dir / "pods" / created["metadata"]["uid"]
    assert pod_dir.is_dir()
    node_env.client.delete(POD, NS, "stubborn")
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the process survived its pod"
    assert (tmp_path / "term").exists(), "SIGTERM came first"
    deadline = time.monotonic() + 2
    while pod_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pod_dir.exists()
    try:
        node_env.client.get(POD, NS, "stubborn")
        raise AssertionError("pod still there")
    except NotFound:
        pass


def test_pod_waits_for_its_claim(node_env: NodeEnv) -> None:
    spec = pod("needs-claim", "print('ok')", volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "later"}}],
               container={"volumeMounts": [{"name": "d", "mountPath": "/data"}]})
    node_env.client.create(POD, spec)
    got = node_env.wait(POD, "needs-claim", lambda p: p.get("status", {}).get("conditions"))
    cond: Obj = got["status"]["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert 'persistentvolumeclaim "later" not found' in cond["message"]
    node_env.client.create(PVC, pvc("later", "1Mi"))
    node_env.wait_pod_phase("needs-claim", "Succeeded")


def test_missing_secret_volume_keeps_the_pod_creating(node_env: NodeEnv) -> None:
    script = "import json,os; print(open(json.loads(os.environ['CDI_VOLUME_MOUNTS'])['/s'] + '/k').read())"
    node_env.client.create(POD, pod("mounts", script, volumes=[{"name": "s", "secret": {"secretName": "vol-late"}}],
                                    container={"volumeMounts": [{"name": "s", "mountPath": "/s"}]}))
    got = node_env.wait(POD, "mounts", lambda p: container_status(p).get("state", {}).get("waiting", {}).get(
        "message") == 'secret "vol-late" not found')
    assert container_status(got)["state"]["waiting"]["reason"] == "ContainerCreating"
    node_env.client.create(SECRET, secret("vol-late", k="mounted"))
    node_env.wait_pod_phase("mounts", "Succeeded")
    assert node_env.cluster.kubectl("logs", "mounts").stdout == "mounted\n"
    assert sum(e["reason"] == "FailedMount" for e in node_env.events("mounts")) == 1


def test_pod_held_by_a_finalizer_is_stopped_and_reported_terminated(node_env: NodeEnv) -> None:
    spec = pod("held", "import time; time.sleep(60)")
    spec["metadata"]["finalizers"] = ["example.com/hold"]
    node_env.client.create(POD, spec)
    node_env.wait_pod_phase("held", "Running")
    node_env.client.delete(POD, NS, "held")
    got = node_env.wait(POD, "held", lambda p: "terminated" in container_status(p).get("state", {}))
    term = container_status(got)["state"]["terminated"]
    assert (term["exitCode"], term["signal"], got["status"]["phase"]) == (143, 15, "Failed")
    node_env.client.patch(POD, NS, "held", {"metadata": {"finalizers": None}})
    node_env.wait_gone(POD, "held")


def test_always_restarts_even_after_success(node_env: NodeEnv) -> None:
    node_env.client.create(POD, pod("loop", "print('tick')", restart="Always"))
    got = node_env.wait(POD, "loop", lambda p: container_status(p).get("restartCount", 0) >= 2)
    assert got["status"]["phase"] == "Running"
    assert container_status(got)["lastState"]["terminated"]["reason"] == "Completed"
    shown = node_env.cluster.kubectl("get", "pod", "loop").stdout
    assert "loop" in shown
    node_env.client.delete(POD, NS, "loop")
    node_env.wait_gone(POD, "loop")


def test_logs_of_each_container_of_a_two_container_pod(node_env: NodeEnv) -> None:
    spec = pod("two", "print('from a')")
    spec["spec"]["containers"].append({"name": "b", "image": TEST_IMAGE,
                                       "command": ["python3", "-c", "print('from b')"]})
    node_env.client.create(POD, spec)
    done = node_env.wait_pod_phase("two", "Succeeded")
    assert [s["name"] for s in done["status"]["containerStatuses"]] == ["main", "b"]
    assert node_env.cluster.kubectl("logs", "two", "-c", "main").stdout == "from a\n"
    assert node_env.cluster.kubectl("logs", "two", "-c", "b").stdout == "from b\n"
    assert node_env.cluster.kubectl("logs", "two").stdout == "from a\n"  # kubectl defaults to the first


def test_pod_bound_to_another_node_is_left_alone(node_env: NodeEnv) -> None:
    node_env.client.create(POD, pod("elsewhere", "print('no')", nodeName="other-node"))
    time.sleep(0.5)
    assert "containerStatuses" not in node_env.client.get(POD, NS, "elsewhere").get("status", {})
    node_env.client.delete(POD, NS, "elsewhere")


def test_the_importer_runs_as_a_pod_and_writes_its_volume(node_env: NodeEnv) -> None:
    # The pod a DataVolume controller creates for a blank image, run by the node with our importer.
    node_env.client.create(PVC, pvc("blank-blk", "8Mi", mode="Block"))
    container = {"name": "importer", "image": "quay.io/kubevirt/cdi-importer", "command": ["python3", "-m", "importer"],
                 "env": [{"name": "IMPORTER_SOURCE", "value": "none"}, {"name": "IMPORTER_IMAGE_SIZE", "value": "8Mi"}],
                 "volumeDevices": [{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}]}
    node_env.client.create(POD, {"metadata": {"name": "importer-blank", "namespace": NS}, "spec": {
        "restartPolicy": "OnFailure", "containers": [container],
        "volumes": [{"name": "cdi-data-vol", "persistentVolumeClaim": {"claimName": "blank-blk"}}]}})
    done = node_env.wait_pod_phase("importer-blank", "Succeeded", "Failed", timeout=20)
    term = container_status(done)["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", term
    assert json.loads(term["message"])["ok"] is True
    image = Path(node_env.client.get(PVC, NS, "blank-blk")["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    assert image.stat().st_size == 8 << 20


def test_an_image_the_node_does_not_ship_is_refused_like_an_unpullable_one(node_env: NodeEnv) -> None:
    marker = node_env.work / "must-not-exist"
    spec = pod("foreign", f"open({str(marker)!r}, 'w').write('ran')")
    spec["spec"]["containers"][0]["image"] = "docker.io/library/busybox:1.36"
    node_env.client.create(POD, spec)
    got = node_env.wait(POD, "foreign", lambda p: container_status(p).get("state", {}).get("waiting", {}).get(
        "reason") == "ErrImagePull")
    message = container_status(got)["state"]["waiting"]["message"]
    assert 'Failed to pull image "docker.io/library/busybox:1.36"' in message
    assert "cdi-importer (python3 -m importer)" in message and "cdi-virt-launcher" in message
    assert got["status"]["phase"] == "Pending"
    assert any(e["reason"] == "Failed" and "busybox" in e["message"] for e in node_env.events("foreign"))
    table = node_env.cluster.kubectl("get", "pod", "foreign").stdout
    assert "ErrImagePull" in table, table
    assert not marker.exists()
    node_env.client.delete(POD, NS, "foreign")
    node_env.wait_gone(POD, "foreign")


def test_a_worker_image_runs_only_its_own_programs(node_env: NodeEnv) -> None:
    marker = node_env.work / "shell-ran"
    spec = pod("shell", "")
    spec["spec"]["containers"][0].update(image="cdi-importer", command=["sh", "-c", f"touch {marker}"])
    node_env.client.create(POD, spec)
    got = node_env.wait(POD, "shell", lambda p: container_status(p).get("state", {}).get("waiting", {}).get(
        "reason") == "ErrImagePull")
    assert "image cdi-importer has no program 'sh -c touch" in container_status(got)["state"]["waiting"]["message"]
    assert not marker.exists()
    node_env.client.delete(POD, NS, "shell")
    node_env.wait_gone(POD, "shell")


def test_containers_run_without_capabilities_or_new_privileges(node_env: NodeEnv) -> None:
    script = ("import json; s = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() "
              "if ':\\t' in l); print(json.dumps({k: s[k].strip() for k in ('CapEff', 'CapPrm', 'CapBnd', "
              "'NoNewPrivs')}))")
    node_env.client.create(POD, pod("caps", script))
    node_env.wait_pod_phase("caps", "Succeeded")
    status = json.loads(node_env.cluster.kubectl("logs", "caps").stdout)
    assert status == {"CapEff": "0" * 16, "CapPrm": "0" * 16, "CapBnd": "0" * 16, "NoNewPrivs": "1"}
    node_env.client.delete(POD, NS, "caps")


def test_kubectl_get_nodes_shows_the_local_node_and_pods_are_bound_to_it(node_env: NodeEnv) -> None:
    table = node_env.cluster.kubectl("get", "nodes").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert table[1].split()[:3] == ["cdi-local", "Ready", "cdi-local"], table
    wide = node_env.cluster.kubectl("get", "node", "cdi-local", "-o", "wide").stdout
    assert "127.0.0.1" in wide and "INTERNAL-IP" in wide
    node_env.client.create(POD, pod("placed", "print('hi')"))
    done = node_env.wait_pod_phase("placed", "Succeeded")
    assert done["spec"]["nodeName"] == "cdi-local"
    listed = node_env.cluster.kubectl("get", "pods", "--field-selector", "spec.nodeName=cdi-local", "-o", "name")
    assert "pod/placed" in listed.stdout.split()
    node_env.client.delete(POD, NS, "placed")


def test_loader_and_interpreter_variables_never_reach_the_host_process(node_env: NodeEnv) -> None:
    # A module the pod's PYTHONPATH would load: if the interpreter imported it, the marker would appear.
    evil = node_env.work / "evil-site"
    evil.mkdir(exist_ok=True)
    marker = node_env.work / "sitecustomize-ran"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    bad = {"PYTHONPATH": str(evil), "PYTHONWARNINGS": "ignore::evil.W", "LD_PRELOAD": str(evil / "x.so"),
           "PATH": str(evil), "HOME": str(evil), "OPENSSL_CONF": str(evil / "o.cnf"), "PYTHONSTARTUP": "x"}
    script = f"import json, os, sys; print(json.dumps({{k: os.environ.get(k) for k in {sorted(bad)!r}}}))"
    env = [{"name": k, "value": v} for k, v in bad.items()] + [{"name": "KEPT", "value": "yes"}]
    node_env.client.create(POD, pod("envsafe", script + "; print(os.environ['KEPT'])", env=env))
    node_env.wait_pod_phase("envsafe", "Succeeded", "Failed")
    lines = node_env.cluster.kubectl("logs", "envsafe").stdout.splitlines()
    seen = json.loads(lines[0])
    assert lines[1] == "yes"
    assert not marker.exists()
    for name in ("PYTHONPATH", "PYTHONWARNINGS", "LD_PRELOAD", "OPENSSL_CONF", "PYTHONSTARTUP"):
        assert seen[name] is None, (name, seen[name])
    assert seen["PATH"] != str(evil) and seen["HOME"] != str(evil)
    ignored = [e["message"] for e in node_env.events("envsafe") if e["reason"] == "EnvIgnored"]
    assert len(ignored) == 1 and f"environment variables {', '.join(sorted(bad))} are not" in ignored[0], ignored
    node_env.client.delete(POD, NS, "envsafe")


def test_a_pod_that_sets_no_unsafe_variable_gets_no_env_warning(node_env: NodeEnv) -> None:
    # The node's own base environment (its PATH, TMPDIR, ...) is not the pod's doing: nothing to warn about.
    node_env.client.create(POD, pod("envplain", "import os; print(os.environ['KEPT'], bool(os.environ['PATH']))",
                                    env=[{"name": "KEPT", "value": "yes"}]))
    node_env.wait_pod_phase("envplain", "Succeeded")
    assert node_env.cluster.kubectl("logs", "envplain").stdout.split() == ["yes", "True"]
    assert [e for e in node_env.events("envplain") if e["reason"] == "EnvIgnored"] == []
    node_env.client.delete(POD, NS, "envplain")


def test_sub_paths_cannot_leave_their_volume(node_env: NodeEnv) -> None:
    c = node_env.client
    c.create(PVC, pvc("subs", "4Mi"))
    target = node_env.work / "escaped"
    script = "import json, os; open(json.loads(os.environ['CDI_VOLUME_MOUNTS'])['/data'] + '/f', 'w').write('x')"
    # The API refuses what kube refuses...
    for sub, words in (("../../escaped", "must not contain '..'"), (str(target), "must be a relative path")):
        spec = pod("sub-api", script, volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "subs"}}],
                   container={"volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": sub}]})
        with pytest.raises(Invalid, match=re.escape(words)):
            c.create(POD, spec)
    # ...and the node refuses a subPath that a symlink inside the volume would take elsewhere.
    c.create(POD, pod("mk-link", "import os; os.symlink('/tmp', os.path.join(__import__('json').loads("
                                 "os.environ['CDI_VOLUME_MOUNTS'])['/data'], 'out'))",
                      volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "subs"}}],
                      container={"volumeMounts": [{"name": "v", "mountPath": "/data"}]}))
    node_env.wait_pod_phase("mk-link", "Succeeded")
    c.create(POD, pod("via-link", script, volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "subs"}}],
                      container={"volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": "out"}]}))
    got = node_env.wait(POD, "via-link", lambda p: container_status(p).get("state", {}).get("waiting", {}).get(
        "reason") == "CreateContainerConfigError")
    assert "leads outside its volume" in container_status(got)["state"]["waiting"]["message"]
    assert not (Path("/tmp") / "f").exists() or (Path("/tmp") / "f").read_text() != "x"
    for name in ("mk-link", "via-link"):
        c.delete(POD, NS, name)


def test_the_local_path_annotation_is_never_read_as_a_path(node_env: NodeEnv) -> None:
    c = node_env.client
    c.create(PVC, pvc("annot", "4Mi"))
    bound = node_env.wait(PVC, "annot", lambda p: p.get("status", {}).get("phase") == "Bound")
    elsewhere = node_env.work / "not-a-volume"
    elsewhere.mkdir()
    c.patch(PVC, NS, "annot", {"metadata": {"annotations": {"cdi.kubevirt.io/local-path": str(elsewhere)}}})
    script = "import json, os; print(json.loads(os.environ['CDI_VOLUME_MOUNTS'])['/data'])"
    c.create(POD, pod("annot-user", script, volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "annot"}}],
                      container={"volumeMounts": [{"name": "v", "mountPath": "/data"}]}))
    node_env.wait_pod_phase("annot-user", "Succeeded")
    mounted = node_env.cluster.kubectl("logs", "annot-user").stdout.strip()
    assert mounted == bound["metadata"]["annotations"]["cdi.kubevirt.io/local-path"] != str(elsewhere)
    c.delete(POD, NS, "annot-user")


def test_pods_that_serve_do_not_hold_the_slots_work_needs(node_env: NodeEnv) -> None:
    # Three idle servers (an upload server waiting for its client) on a node limited to 2 running pods.
    servers = [f"idle-server-{i}" for i in range(3)]
    for name in servers:
        spec = pod(name, "import time; time.sleep(60)",
                   container={"ports": [{"containerPort": 8443, "name": "https"}]})
        node_env.client.create(POD, spec)
    for name in servers:
        node_env.wait(POD, name, lambda p: "running" in container_status(p).get("state", {}))
    node_env.client.create(POD, pod("work-meanwhile", "print('done')"))
    node_env.wait_pod_phase("work-meanwhile", "Succeeded", timeout=15)
    for name in [*servers, "work-meanwhile"]:
        node_env.client.delete(POD, NS, name)
    for name in servers:
        node_env.wait_gone(POD, name, timeout=40)


def test_pods_waiting_on_a_missing_secret_do_not_hold_the_slots(node_env: NodeEnv) -> None:
    # Two pods that cannot start (their Secret is missing) on a node limited to 2 running containers.
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "never-made", "key": "token"}}}]
    stuck = ["no-secret-0", "no-secret-1"]
    for name in stuck:
        node_env.client.create(POD, pod(name, "import os; print(os.environ['TOKEN'])", env=env))
    for name in stuck:
        node_env.wait(POD, name, lambda p: container_status(p).get("state", {}).get("waiting", {}).get("reason")
                      == "CreateContainerConfigError")
    for name in ("work-0", "work-1"):
        node_env.client.create(POD, pod(name, "print('done')"))
    for name in ("work-0", "work-1"):
        node_env.wait_pod_phase(name, "Succeeded", timeout=15)
    got = node_env.client.get(POD, NS, "no-secret-0")
    assert container_status(got)["state"]["waiting"] == {"reason": "CreateContainerConfigError",
                                                         "message": 'secret "never-made" not found'}
    # once the Secret exists they start as usual
    node_env.client.create(SECRET, secret("never-made", token="t0k"))
    for name in stuck:
        node_env.wait_pod_phase(name, "Succeeded", timeout=15)
    for name in [*stuck, "work-0", "work-1"]:
        node_env.client.delete(POD, NS, name)
