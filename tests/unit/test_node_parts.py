"""Unit tests of the local node's pure parts: phases, back-off text, env expansion, argv, tails, records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdi.node.containers import Launcher, _duration
from cdi.node.images import WORKER_IMAGES, ImageError, resolve
from cdi.node.logs import read_tail
from cdi.node.podspec import ConfigError, PodVolumes, expand, volume_contract
from cdi.node.process import ProcessRecord, kill_recorded, start_ticks
from cdi.node.settings import NodeSettings
from cdi.node.status import ContainerRuntime, PodRuntime, pod_phase, pod_status


def runtime(policy: str, *states: dict, last: dict | None = None) -> PodRuntime:
    rt = PodRuntime(uid="u", namespace="ns", name="p", pod={"spec": {"restartPolicy": policy}}, dir=Path("/x"),
                    seq=0, scheduled=True)
    for i, state in enumerate(states):
        rt.containers[f"c{i}"] = ContainerRuntime(name=f"c{i}", spec={}, state=state, last_state=last or {})
    return rt


DONE = {"terminated": {"exitCode": 0}}
FAILED = {"terminated": {"exitCode": 1}}
RUNNING = {"running": {}}
WAITING = {"waiting": {"reason": "ContainerCreating"}}


@pytest.mark.parametrize(("policy", "states", "last", "phase"), [
    ("Never", [WAITING], None, "Pending"),
    ("Never", [RUNNING, DONE], None, "Running"),
    ("Never", [DONE, DONE], None, "Succeeded"),
    ("Never", [DONE, FAILED], None, "Failed"),
    ("OnFailure", [FAILED], None, "Running"),
    ("OnFailure", [{"waiting": {"reason": "CrashLoopBackOff"}}], FAILED, "Running"),
    ("Always", [DONE], None, "Running"),
])
def test_pod_phase_follows_kubelet(policy: str, states: list, last: dict | None, phase: str) -> None:
    assert pod_phase(runtime(policy, *states, last=last)) == phase


def test_unscheduled_pod_status_says_why() -> None:
    rt = runtime("Never", WAITING)
    rt.scheduled, rt.unschedulable = False, "no claim"
    status = pod_status(rt, {})
    assert status["phase"] == "Pending"
    assert status["conditions"][0]["reason"] == "Unschedulable"
    assert status["conditions"][0]["message"] == "no claim"


def test_condition_transition_time_kept_while_status_holds() -> None:
    rt = runtime("Never", RUNNING)
    first = pod_status(rt, {})
    for c in first["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = pod_status(rt, first)
    assert all(c["lastTransitionTime"] == "2020-01-01T00:00:00Z" for c in again["conditions"])
    rt.containers["c0"].state = DONE
    ready = {c["type"]: c for c in pod_status(rt, first)["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_duration_formats_like_go() -> None:
    assert [_duration(x) for x in (10, 0.2, 80, 300)] == ["10s", "0.2s", "1m20s", "5m0s"]


def test_expand_replaces_known_variables_only() -> None:
    assert expand("$(A)-$(B)-$$(A)", {"A": "1"}) == "1-$(B)-$(A)"


def test_worker_images_run_their_own_program_with_the_node_python() -> None:
    importer = {"image": "quay.io/kubevirt/cdi-importer:v1.60@sha256:abc", "command": ["python3", "-m", "importer"],
                "args": ["x"]}
    assert resolve(importer, WORKER_IMAGES, "/venv/python") == ["/venv/python", "-I", "-u", "-m", "importer", "x"]
    assert resolve({"image": "cdi-importer"}, WORKER_IMAGES, "/py") == ["/py", "-I", "-u", "-m", "importer"]
    tail = {"image": "cdi-virt-launcher:latest", "command": ["/usr/bin/python3", "-m", "vm_runtime.virt_tail"]}
    assert resolve(tail, WORKER_IMAGES, "/py") == ["/py", "-I", "-u", "-m", "vm_runtime.virt_tail"]


@pytest.mark.parametrize("container, words", [
    ({"image": "busybox", "command": ["sh", "-c", "id"]}, 'Failed to pull image "busybox"'),
    ({"image": "cdi-importer", "command": ["python3", "-c", "import os"]}, "has no program"),
    ({"image": "cdi-importer", "command": ["sh"], "args": ["-c", "id"]}, "has no program"),
    ({"image": "cdi-importer", "command": ["python3", "-m", "importer_evil"]}, "has no program"),
    ({"command": ["python3", "-m", "importer"]}, 'Failed to pull image ""'),
])
def test_other_images_and_commands_are_refused(container: dict, words: str) -> None:
    with pytest.raises(ImageError, match=re.escape(words)) as err:
        resolve(container, WORKER_IMAGES, "/py")
    assert "cdi-importer (python3 -m importer)" in str(err.value) or "has no program" in words


def test_volume_contract_maps_mounts_devices_and_capacities(tmp_path: Path) -> None:
    vols = PodVolumes(host_paths={"d": tmp_path, "b": tmp_path / "block.img"}, capacities={"d": 5, "b": 7})
    mounts, capacity = volume_contract({
        "volumeMounts": [{"name": "d", "mountPath": "/data", "subPath": "sub"}],
        "volumeDevices": [{"name": "b", "devicePath": "/dev/xvda"}],
    }, vols)
    assert mounts == {"/data": str(tmp_path / "sub"), "/dev/xvda": str(tmp_path / "block.img")}
    assert capacity == {"/data": 5, "/dev/xvda": 7}
    assert (tmp_path / "sub").is_dir()
    with pytest.raises(ConfigError):
        volume_contract({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, vols)


def test_read_tail(tmp_path: Path) -> None:
    f = tmp_path / "log"
    f.write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    assert read_tail(f, 2) == b"line 99998\nline 99999\n"
    assert read_tail(f, 0) == b""
    assert len(read_tail(f, None)) == f.stat().st_size
    assert read_tail(tmp_path / "missing", 3) == b""


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)


def test_kill_recorded_never_kills_a_reused_pid() -> None:
    proc = sleeper()
    try:
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        assert not kill_recorded(ProcessRecord(proc.pid, ticks + 1))  # same pid, another process
        assert proc.poll() is None
        assert kill_recorded(ProcessRecord(proc.pid, ticks))
        assert proc.wait(5) == -9
    finally:
        proc.kill()
        proc.wait()


def test_kill_recorded_takes_the_orphans_of_a_dead_leader(tmp_path: Path) -> None:
    # The leader starts a grandchild in its session and dies: PDEATHSIG would not reach the grandchild.
    pidfile = tmp_path / "child"
    script = ("import subprocess,sys; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(30)']); "
              f"open({str(pidfile)!r},'w').write(str(p.pid))")
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    record = ProcessRecord(leader.pid, start_ticks(leader.pid) or 0)
    leader.wait(10)
    child = int(pidfile.read_text())
    try:
        assert start_ticks(child) is not None
        assert kill_recorded(record)
        assert start_ticks(child) is None or Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z"
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_kill_leftovers_kills_recorded_processes(tmp_path: Path) -> None:
    settings = NodeSettings(data_dir=tmp_path)
    proc = sleeper()
    try:
        pod_dir = settings.pods_dir / "uid-1"
        pod_dir.mkdir(parents=True)
        record = ProcessRecord(proc.pid, start_ticks(proc.pid) or 0)
        (pod_dir / "state.json").write_text(json.dumps({"namespace": "ns", "name": "p", "uid": "uid-1",
                                                        "processes": {"main": record.to_dict()}}))
        assert Launcher(None, settings).kill_leftovers() == ["uid-1"]  # type: ignore[arg-type]
        assert proc.wait(5) == -9
        assert json.loads((pod_dir / "state.json").read_text())["processes"] == {}
    finally:
        proc.kill()
        proc.wait()


def test_settings_reject_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_running_pods"):
        NodeSettings(data_dir=tmp_path, max_running_pods=0).validate()
    with pytest.raises(ValueError, match="python"):
        NodeSettings(data_dir=tmp_path, python=os.path.join(str(tmp_path), "nope")).validate()
