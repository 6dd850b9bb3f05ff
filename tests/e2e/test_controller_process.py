"""End to end: ``cdi controller`` as its own process against ``cdi serve --no-controllers``.

As ServiceAccount cdi/cdi-controller (the chart's ClusterRole), through a kubeconfig and through the
in-cluster configuration a pod has (token and CA files, KUBERNETES_SERVICE_HOST/PORT); two replicas
with a Lease elect one leader and hand over when it is killed; ``kubectl get --raw /metrics`` on a
full ``cdi serve`` shows CDI's metric names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdi.cli.main import main
from cdi.controller.account import ACCOUNT, NAMESPACE_NAME, ensure_account
from cdi.kube import NotFound
from cdi.kube.kinds import LEASE
from tests.support import images
from tests.support.httpserver import HttpServer, Route
from tests.support.serve import Serve, dv_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(tmp_path_factory.mktemp("ctl") / "data", "--no-controllers").start()
    ensure_account(s.client)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    raw = images.make_raw(tmp_path_factory.mktemp("files") / "disk.raw", 4 << 20)
    with HttpServer() as server:
        server.add("/disk.raw", Route(path=str(raw)))
        server.add("/slow.raw", Route(path=str(raw), rate=1 << 20))  # about 4 s: time to kill a leader
        yield server


def account_files(serve: Serve, where: Path) -> tuple[Path, dict[str, str]]:
    """The ServiceAccount's token and CA as the kubelet mounts them, and the pod's environment."""
    where.mkdir(parents=True, exist_ok=True)
    token = serve.client.request_token(NAMESPACE_NAME, ACCOUNT, seconds=3600)["status"]["token"]
    (where / "token").write_text(token)
    (where / "ca.crt").write_bytes(serve.client.server_ca() or b"")
    url = urllib.parse.urlsplit(serve.client.server)
    return where, {"KUBERNETES_SERVICE_HOST": str(url.hostname), "KUBERNETES_SERVICE_PORT": str(url.port)}


def start_controller(serve: Serve, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cdi.cli.main", "-v", "controller", "--workers", "2",
                                 "--progress-interval", "0.3",
                                 "--clone-token-key", str(serve.data_dir / "upload-token.pub"), *args],
                                stdout=out, stderr=out, env={**full_env, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def until(predicate: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what()}")


def holder(serve: Serve) -> str | None:
    try:
        return serve.client.get(LEASE, NAMESPACE_NAME, "cdi-controller")["spec"].get("holderIdentity")
    except NotFound:
        return None


def test_controller_through_a_kubeconfig_imports(serve: Serve, files: HttpServer, tmp_path: Path) -> None:
    serve.apply(dv_manifest("by-kubeconfig", {"http": {"url": files.url("/disk.raw")}}, size="8Mi"))
    # A kubeconfig for the ServiceAccount, as `kubectl config set-credentials --token` writes it.
    sa, _ = account_files(serve, tmp_path / "sa")
    config = yaml.safe_load(serve.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": (sa / "token").read_text()}
    kubeconfig = tmp_path / "controller.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    proc = start_controller(serve, tmp_path / "ctl.log", "--kubeconfig", str(kubeconfig))
    try:
        serve.wait_phase("by-kubeconfig", "Succeeded", timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, (tmp_path / "ctl.log").read_text()[-2000:]
    assert "controllers started" in (tmp_path / "ctl.log").read_text()


def test_two_in_cluster_replicas_elect_one_leader_and_the_other_takes_over(serve: Serve, files: HttpServer,
                                                                          tmp_path: Path) -> None:
    sa, env = account_files(serve, tmp_path / "serviceaccount")
    timing = ["--leader-elect", "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5",
              "--service-account-dir", str(sa)]
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    ports = {"a": free_port(), "b": free_port()}
    procs = {name: start_controller(serve, logs[name], *timing, "--identity", name, "--metrics-port",
                                    str(ports[name]), "--metrics-address", "127.0.0.1", env=env)
             for name in ("a", "b")}

    def metrics(name: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    try:
        leader = until(lambda: holder(serve), 20,
                       lambda: f"no leader; logs {[p.read_text()[-800:] for p in logs.values()]}")
        follower = "b" if leader == "a" else "a"
        serve.apply(dv_manifest("handover", {"http": {"url": files.url("/slow.raw")}}, size="8Mi"))
        serve.wait_phase("handover", "ImportInProgress", timeout=30)
        assert "leading" in logs[leader].read_text()
        assert "leading" not in logs[follower].read_text()  # only one reconciles
        assert "kubevirt_cdi_cr_ready 1.0" in metrics(leader)
        assert "kubevirt_cdi_cr_ready 0.0" in metrics(follower)
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait()
        until(lambda: holder(serve) == follower, 20,
              lambda: f"holder {holder(serve)}; {logs[follower].read_text()[-800:]}")
        dv = serve.wait_phase("handover", "Succeeded", timeout=60)
        assert dv["status"]["progress"] == "100.0%"
        lease = serve.client.get(LEASE, NAMESPACE_NAME, "cdi-controller")
        assert lease["spec"]["leaseTransitions"] >= 1
        assert "leading" in logs[follower].read_text()
        until(lambda: f'kubevirt_cdi_import_progress_total{{ownerUID="{dv["metadata"]["uid"]}"}} 100.0'
              in metrics(follower), 10, lambda: metrics(follower))
    finally:
        for proc in procs.values():
            stop(proc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_controller_without_credentials_or_with_a_wrong_token_says_what_to_fix(
        serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    # In this process: both end before the controllers would start.
    assert main(["controller", "--service-account-dir", str(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert "no in-cluster configuration" in said and "--kubeconfig" in said
    sa, env = account_files(serve, tmp_path / "tampered")
    (sa / "token").write_text((sa / "token").read_text()[:-4] + "AAAA")  # a forged signature
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["controller", "--service-account-dir", str(sa)]) == 2
    said = capsys.readouterr().err
    assert "refused the credentials (401" in said, said


def test_kubectl_get_raw_metrics_on_cdi_serve(tmp_path: Path, files: HttpServer) -> None:
    full = Serve(tmp_path / "data").start()
    try:
        full.apply(dv_manifest("measured", {"http": {"url": files.url("/disk.raw")}}, size="8Mi"))
        dv = full.wait_phase("measured", "Succeeded", timeout=60)
        text = until(lambda: (t := full.kubectl("get", "--raw", "/metrics").stdout)
                     and "kubevirt_cdi_import_progress_total{" in t and t, 10, lambda: "no progress metric")
        assert f'kubevirt_cdi_import_progress_total{{ownerUID="{dv["metadata"]["uid"]}"}} 100.0' in text
        for name in ("kubevirt_cdi_clone_progress_total", "kubevirt_cdi_upload_progress_total",
                     "kubevirt_cdi_datavolume_pending", "kubevirt_cdi_cr_ready 1.0"):
            assert name in text, text
        # RBAC as kube: a user without the monitoring role gets 403.
        sa = full.client.request_token("default", "default", seconds=3600)["status"]["token"]
        req = urllib.request.Request(full.client.server + "/metrics", headers={"Authorization": f"Bearer {sa}"})
        import ssl

        ctx = ssl.create_default_context(cadata=(full.client.server_ca() or b"").decode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        assert e.value.code == 403
    finally:
        full.stop()
