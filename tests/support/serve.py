"""Runs a real ``cdi serve`` as a subprocess for end-to-end tests, with kubectl and a client on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cdi.kube import Client

KUBECTL = os.environ.get("CDI_KUBECTL", "kubectl")


class Serve:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.kubeconfig = data_dir / "kubeconfig"
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"

    def start(self, timeout: float = 30) -> Serve:
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdi.cli.main", "-v", "serve", "--data-dir", str(self.data_dir), "--port", "0",
             "--uploadproxy-port", "0", "--console-port", "0", "--restart-backoff", "0.3", "--progress-interval", "0.3",
             *self.extra],
            stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.kubeconfig.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cdi serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.client = Client.from_kubeconfig(str(self.kubeconfig))
        return self

    def pids(self, pattern: str) -> list[int]:
        """Processes matching ``pattern`` (``pgrep -f``) that belong to this serve: their command line or
        environment names its data directory (other tests' serves may run beside it)."""
        out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split()
        mine = []
        for pid in out:
            try:
                seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if str(self.data_dir).encode() in seen:
                mine.append(int(pid))
        return mine

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.data_dir.parent)}
        proc = subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n"
                                 f"serve log tail:\n{self.log.read_text()[-2000:]}")
        return proc

    def apply(self, manifest: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.kubectl("apply", "-f", "-", input=text)

    def dv(self, name: str, namespace: str = "default") -> dict[str, Any]:
        from cdi.kube import DATAVOLUME

        return self.client.get(DATAVOLUME, namespace, name)

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        dv: dict[str, Any] = {}
        while time.monotonic() < deadline:
            dv = self.dv(name)
            current = (dv.get("status") or {}).get("phase")
            if current == phase:
                return dv
            if current == "Failed" and phase != "Failed":
                raise AssertionError(f"dv {name} failed: {dv.get('status')}")
            time.sleep(0.1)
        raise AssertionError(f"dv {name} not {phase} within {timeout}s: {dv.get('status')}\n"
                             f"serve log tail:\n{self.log.read_text()[-3000:]}")


def dv_manifest(name: str, source: dict[str, Any], *, size: str = "64Mi", api: str = "storage",
                volume_mode: str | None = None, annotations: dict[str, str] | None = None,
                content_type: str | None = None) -> dict[str, Any]:
    claim: dict[str, Any] = {"resources": {"requests": {"storage": size}}}
    if api == "pvc":
        claim["accessModes"] = ["ReadWriteOnce"]
    if volume_mode:
        claim["volumeMode"] = volume_mode
    spec: dict[str, Any] = {"source": source, api: claim}
    if content_type:
        spec["contentType"] = content_type
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": meta, "spec": spec}


def serving(tmp_path_factory: Any, name: str, *extra: str) -> Iterator[Serve]:
    """A ``cdi serve`` in a fresh directory for a module's tests (``yield from`` it in a fixture), stopped
    afterwards however the tests ended."""
    s = Serve(tmp_path_factory.mktemp(name) / "data", *extra).start()
    try:
        yield s
    finally:
        s.stop()
