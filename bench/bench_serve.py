"""Control-plane benchmark: 100 blank DataVolumes applied at once against ``cdi serve`` until all are
Succeeded, and API latency (get, list, watch-event delivery) with percentiles.

    .venv/bin/python bench/bench_serve.py [--count 100] [--max-running-pods 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdi.kube import DATAVOLUME, Client  # noqa: E402
from tests.support.serve import Serve, dv_manifest  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def blank_dvs(serve: Serve, count: int) -> float:
    text = "\n---\n".join(
        f"apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: blank-{i}}}\n"
        f"spec: {{source: {{blank: {{}}}}, storage: {{resources: {{requests: {{storage: 1Gi}}}}}}}}"
        for i in range(count))
    start = time.monotonic()
    serve.kubectl("apply", "-f", "-", input=text, timeout=120)
    applied = time.monotonic() - start
    while True:
        items, _ = serve.client.list(DATAVOLUME, "default")
        done = sum(1 for dv in items if (dv.get("status") or {}).get("phase") == "Succeeded")
        failed = [dv["metadata"]["name"] for dv in items if (dv.get("status") or {}).get("phase") == "Failed"]
        if failed:
            raise SystemExit(f"failed DataVolumes: {failed[:5]}")
        if done == count:
            break
        if time.monotonic() - start > 600:
            raise SystemExit(f"only {done}/{count} Succeeded after 600 s")
        time.sleep(0.2)
    total = time.monotonic() - start
    print(f"{count} blank DataVolumes: kubectl apply {applied:.1f} s, all Succeeded after {total:.1f} s")
    return total


def latencies(client: Client, n: int = 300) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"get": [], "list (100 dv)": [], "watch event": []}
    for _ in range(n):
        t = time.perf_counter()
        client.get(DATAVOLUME, "default", "blank-0")
        out["get"].append(time.perf_counter() - t)
    for _ in range(n // 3):
        t = time.perf_counter()
        client.list(DATAVOLUME, "default")
        out["list (100 dv)"].append(time.perf_counter() - t)
    client.create(DATAVOLUME, dv_manifest("lat", {"blank": {}}, size="1Mi") | {"metadata": {"name": "lat",
                                                                                             "namespace": "default"}})
    sent: dict[str, float] = {}
    got = threading.Event()
    seen: list[float] = []
    _, rv = client.list(DATAVOLUME, "default")

    def watch() -> None:
        for etype, obj in client.watch(DATAVOLUME, "default", resource_version=rv, timeout_seconds=120):
            mark = (obj["metadata"].get("labels") or {}).get("mark")
            if etype == "MODIFIED" and mark in sent:
                seen.append(time.perf_counter() - sent.pop(mark))
                got.set()
            if len(seen) >= n // 3:
                return

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.5)
    for i in range(n // 3):
        got.clear()
        sent[str(i)] = time.perf_counter()
        client.patch(DATAVOLUME, "default", "lat", {"metadata": {"labels": {"mark": str(i)}}})
        got.wait(5)
    out["watch event"] = seen
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--max-running-pods", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdi-bench-serve-") as tmp:
        serve = Serve(Path(tmp) / "data", "--max-running-pods", str(args.max_running_pods)).start()
        try:
            total = blank_dvs(serve, args.count)
            lat = latencies(serve.client)
        finally:
            serve.stop()
    print(f"\n| measure | value | target |\n|---|---|---|\n| {args.count} blank DVs to Succeeded | {total:.1f} s "
          f"| <= 30 s ({'met' if total <= 30 else 'missed'}) |")
    for name, values in lat.items():
        print(f"| {name} p50 / p99 | {statistics.median(values) * 1000:.1f} / {pct(values, 99) * 1000:.1f} ms "
              f"(n={len(values)}) | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
