"""What the image cache saves: the same containerDisk digest imported twice through ``cdi serve``.

A raw disk (about 40% data) is pushed as a containerDisk (gzip layer) to a real ``docker-registry``; a
first DataVolume imports it from the registry, a second one with the same digest is served from the
cache (a clone of the first volume). Prints the seconds from creation to Succeeded of each, the blob
GETs the registry answered (from its own request log, not our counters), and whether both volumes hold
the same volume digest.

    .venv/bin/python bench/bench_image_cache.py [--size-mib 1024] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cdi.kube import DATAVOLUME, PVC  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.registry import Registry, container_disk  # noqa: E402
from tests.support.serve import Serve  # noqa: E402


def dv(name: str, url: str, size_mib: int) -> dict[str, object]:
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{size_mib}Mi"}}}
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"source": {"registry": {"url": url}}, "pvc": claim}}


def run(serve: Serve, name: str, url: str, size_mib: int) -> float:
    start = time.monotonic()
    serve.client.create(DATAVOLUME, dv(name, url, size_mib))
    while True:
        phase = (serve.client.get(DATAVOLUME, "default", name).get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            assert phase == "Succeeded", serve.client.get(DATAVOLUME, "default", name)["status"]
            return time.monotonic() - start
        time.sleep(0.05)


def blob_gets(reg_log: Path) -> int:
    """Blob GETs the registry answered, from its own request log."""
    lines = reg_log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "response completed" in line and "method=GET" in line and "/blobs/" in line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        disk = images.make_raw(work / "disk.raw", args.size_mib << 20, data_ratio=0.4)
        serve = Serve(work / "data").start()
        try:
            with Registry(work / "registry") as reg:
                digest = reg.push(container_disk(work / "layout", disk), "bench/disk")
                serve.kubectl("patch", "cdiconfig", "config", "--type=merge", "-p",
                              f'{{"spec": {{"insecureRegistries": ["{reg.host}"]}}}}')
                url = reg.url("bench/disk", digest)
                size = args.size_mib + 64
                first = run(serve, "first", url, size)
                logs = [reg.workdir / "registry.log"]
                before = blob_gets(logs[0]) if logs else -1
                second = run(serve, "second", url, size)
                after = blob_gets(logs[0]) if logs else -1
            ann = [serve.client.get(PVC, "default", n)["metadata"]["annotations"] for n in ("first", "second")]
            same = ann[0]["cdi.kubevirt.io/storage.import.volumeDigest"] == \
                ann[1]["cdi.kubevirt.io/storage.import.volumeDigest"]
            method = serve.client.get(DATAVOLUME, "default", "second")["metadata"]["annotations"].get(
                "cdi.kubevirt.io/storage.clone.method")
        finally:
            serve.stop()
    print(f"| {args.size_mib} MiB containerDisk | import from the registry | {first:.1f} s | "
          f"{before if before >= 0 else '?'} blob GETs |")
    print(f"| same digest again | served from cache ({method} clone) | {second:.1f} s | "
          f"{after - before if before >= 0 else '?'} blob GETs | same volume digest: {same} |")


if __name__ == "__main__":
    main()
