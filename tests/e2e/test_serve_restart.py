"""kill -9 of ``cdi serve`` in the middle of imports: after a restart every import completes, correctly,
and no importer process is left behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cdi.kube import PVC
from tests.support.httpserver import HttpServer, Route
from tests.support.serve import Serve, dv_manifest

pytestmark = pytest.mark.slow


def importer_pids(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", "-m importer"], capture_output=True, text=True).stdout.split()
    pids = []
    for pid in out:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in env:
            pids.append(int(pid))
    return pids


def test_kill9_during_imports_then_restart(tmp_path: Path, image_factory) -> None:
    data = tmp_path / "data"
    with HttpServer() as files:
        files.add("/a.raw", Route(path=str(image_factory.raw), rate=1 << 20))
        files.add("/b.qcow2.gz", Route(path=str(image_factory.get("qcow2.gz")), rate=1 << 20))
        serve = Serve(data).start()
        try:
            serve.apply(dv_manifest("a", {"http": {"url": files.url("/a.raw")}}, size="16Mi"))
            serve.apply(dv_manifest("b", {"http": {"url": files.url("/b.qcow2.gz")}}, size="16Mi"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                phases = {(serve.dv(n).get("status") or {}).get("phase") for n in ("a", "b")}
                if phases == {"ImportInProgress"}:
                    break
                time.sleep(0.1)
            assert phases == {"ImportInProgress"}
            assert importer_pids(data)
            serve.kill9()
            time.sleep(0.5)
            assert importer_pids(data) == [], "importer processes outlived cdi serve"
            serve.start()
            for name in ("a", "b"):
                dv = serve.wait_phase(name, "Succeeded", timeout=120)
                pvc = serve.client.get(PVC, "default", name)
                disk = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"]) / "disk.img"
                with open(disk, "rb") as f:
                    assert f.read(8 << 20) == image_factory.raw.read_bytes()
                assert dv["status"]["restartCount"] >= 1  # the node restarted the killed importer
        finally:
            serve.stop()
        assert importer_pids(data) == []
