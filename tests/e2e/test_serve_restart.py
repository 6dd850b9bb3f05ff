"""kill -9 of ``cdi serve`` in the middle of imports: after a restart every import completes, correctly,
and no importer process is left behind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cdi.kube import PVC
from cdi.kube.errors import ApiError
from importer import checkpoint
from tests.support.faultserver import Fault, FaultServer
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


def _checkpoint(serve: Serve, name: str) -> int:
    """The durable offset of the import of ``name`` (its resume point beside the disk), 0 when none."""
    try:
        pvc = serve.client.get(PVC, "default", name)
        local = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
        return int(json.loads((local / ".disk.img.cdi-resume.json").read_text())["offset"])
    except (KeyError, OSError, ValueError, TypeError, ApiError):
        return 0


def test_kill9_during_imports_then_restart(tmp_path: Path, image_factory) -> None:
    """The raw import continues from its durable point: the restarted importer asks for the rest and the
    server sends no more than that plus one resume interval."""
    data = tmp_path / "data"
    size = image_factory.raw.stat().st_size
    with HttpServer() as files, FaultServer() as faults:
        raw = faults.add("/a.raw", Fault(path=str(image_factory.raw), rate=1 << 20))
        files.add("/b.qcow2.gz", Route(path=str(image_factory.get("qcow2.gz")), rate=1 << 20))
        serve = Serve(data).start()
        try:
            serve.apply(dv_manifest("a", {"http": {"url": faults.url("/a.raw")}}, size="16Mi"))
            serve.apply(dv_manifest("b", {"http": {"url": files.url("/b.qcow2.gz")}}, size="16Mi"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                phases = {(serve.dv(n).get("status") or {}).get("phase") for n in ("a", "b")}
                if phases == {"ImportInProgress"} and _checkpoint(serve, "a") >= 2 << 20:
                    break
                time.sleep(0.05)
            assert phases == {"ImportInProgress"}
            point = _checkpoint(serve, "a")
            assert point >= 2 << 20
            assert importer_pids(data)
            serve.kill9()
            time.sleep(0.5)
            assert importer_pids(data) == [], "importer processes outlived cdi serve"
            first_request, sent_before = len(raw.requests), raw.sent
            raw.rate = None
            serve.start()
            for name in ("a", "b"):
                dv = serve.wait_phase(name, "Succeeded", timeout=120)
                pvc = serve.client.get(PVC, "default", name)
                disk = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"]) / "disk.img"
                with open(disk, "rb") as f:
                    assert f.read(8 << 20) == image_factory.raw.read_bytes()
                assert dv["status"]["restartCount"] >= 1  # the node restarted the killed importer
            after = [r.get("Range") for r in raw.requests[first_request:]]
            assert after, "the restarted importer sent no request"
            resumed_at = int((after[0] or "bytes=0-").removeprefix("bytes=").partition("-")[0])
            assert resumed_at >= point, after
            assert raw.sent - sent_before <= size - point + checkpoint.interval_for(size)
        finally:
            serve.stop()
        assert importer_pids(data) == []
