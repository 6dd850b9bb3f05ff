"""What a bad network costs an import: bytes the server sent per byte of image, and wall time, for raw,
raw.zst and qcow2 served by the fault-injecting test server (tests/support/faultserver.py) with and
without dropped connections, in one run.

Each import is ``cdi import`` in its own process (``--root`` picks the checkout whose importer runs,
so an older commit can be measured the same way). The image is ``--size`` bytes, about 40% random
1 MiB chunks and 60% zeros; every result is checked byte for byte against the source.

    .venv/bin/python bench/bench_faults.py                       # 256 MiB, 30% drops every 1 MiB
    .venv/bin/python bench/bench_faults.py --size 64Mi --drop-p 0.5 --formats raw,qcow2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cdi.units import parse_size  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.faultserver import Fault, FaultServer  # noqa: E402


def run_case(server: FaultServer, root: Path, src: Path, raw: Path, work: Path, *, drop_p: float,
             drop_every: int, timeout: float) -> dict[str, object]:
    path = f"/{src.name}-{drop_p}"
    fault = server.add(path, Fault(path=str(src), drop_p=drop_p, drop_every=drop_every, seed=1))
    out = work / "out.img"
    if out.exists():
        out.unlink()
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "cdi.cli.main", "import", server.url(path), str(out),
                               "--progress", "none"], cwd=root, capture_output=True, text=True, timeout=timeout)
        rc: object = proc.returncode
        error = proc.stderr.strip().splitlines()[-1][:100] if proc.returncode and proc.stderr.strip() else ""
        result = json.loads(proc.stdout) if proc.returncode == 0 else {}
    except subprocess.TimeoutExpired:
        rc, error, result = "timeout", f"stopped after {timeout:.0f}s", {}
    seconds = time.monotonic() - started
    size = src.stat().st_size
    right = rc == 0 and images.same_content(out, raw)
    return {"image": src.name.partition(".")[2], "drop_p": drop_p, "sent_per_byte": fault.sent / size,
            "seconds": seconds, "drops": fault.drops, "resumes": result.get("resumes"),
            "restarts": result.get("restarts"), "requests": len(fault.requests),
            "outcome": "ok" if right else ("WRONG DATA" if rc == 0 else f"exit {rc}: {error}")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256Mi")
    ap.add_argument("--drop-p", type=float, default=0.3)
    ap.add_argument("--drop-every", default="1Mi")
    ap.add_argument("--formats", default="raw,raw.zst,qcow2")
    ap.add_argument("--root", default=str(REPO), help="checkout whose importer runs (default: this one)")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    raw = images.make_raw(work / "disk.raw", parse_size(args.size), chunk=1 << 20)
    files = {"raw": raw}
    for name in args.formats.split(","):
        if name == "qcow2":
            files[name] = images.convert(raw, "qcow2", work / "disk.qcow2")
        elif name != "raw":
            files[name] = images.compress(raw, {"raw.zst": "zstd", "raw.gz": "gzip", "raw.xz": "xz"}[name])
    rows = []
    with FaultServer() as server:
        for name in args.formats.split(","):
            for p in (0.0, args.drop_p):
                rows.append(run_case(server, Path(args.root), files[name], raw, work, drop_p=p,
                                     drop_every=parse_size(args.drop_every), timeout=args.timeout))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nimage {args.size} ({os.path.basename(args.root)}), drops every {args.drop_every} with p={args.drop_p}\n")
    print("| image | drop p | sent / image byte | seconds | drops | resumes | restarts | requests | outcome |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['drop_p']} | {r['sent_per_byte']:.3f} | {r['seconds']:.2f} | {r['drops']} | "
              f"{r['resumes']} | {r['restarts']} | {r['requests']} | {r['outcome']} |")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
