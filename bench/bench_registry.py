"""Registry benchmark: a 2 GiB containerDisk (qcow2, about 40% data, one gzip layer) imported from a real
docker-registry on 127.0.0.1, in one run.

- cdi: ``cdi import docker://127.0.0.1:PORT/bench/disk:v1 OUT`` (the import data path every registry
  DataVolume runs: manifest and layer digests verified, the disk streamed out of the layer).
- standard tools: ``skopeo copy docker://... dir:DIR`` + ``tar -xzf`` of the layer + ``qemu-img convert
  -O raw`` (what CDI's registry import does in spirit: pull the image to scratch, extract, convert).

For each: wall seconds (``sync`` included), MB/s of virtual size, peak RSS of the process tree, peak
scratch bytes (everything written outside the target), and whether the volume digest equals the source
raw's. The page cache is dropped before each run when possible. Run: ``.venv/bin/python
bench/bench_registry.py [--size-mib 2048]``; writes bench/out/registry.md. Heavy: run it once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_upload import Sampler, drop_caches, make_images  # noqa: E402
from importer.digest import volume_digest  # noqa: E402
from tests.support.registry import Registry, container_disk  # noqa: E402

OUT = REPO / "bench" / "out" / "registry"
PY = sys.executable


@dataclass
class Row:
    tool: str
    wall: float
    size: int
    peak_rss: int
    scratch: int
    verified: bool

    @property
    def rate(self) -> float:
        return self.size / self.wall / 1e6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_tree(cmd: list[str] | str, *, scratch: Path | None, shell: bool = False) -> tuple[float, int, int]:
    """Run ``cmd`` then ``sync``; (wall seconds, peak RSS of its process tree, peak scratch bytes)."""
    drop_caches()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with Sampler(proc.pid, scratch) as sampler:
        _, err = proc.communicate()
        subprocess.run(["sync"], check=True)
    wall = time.monotonic() - start
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, sampler.rss, sampler.scratch_peak


def cdi_row(url: str, target: Path, size: int, expected: str) -> tuple[Row, dict[str, object]]:
    scratch = OUT / "cdi-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    target.unlink(missing_ok=True)
    result_file = OUT / "cdi-result.json"
    cmd = f"{PY} -m cdi.cli.main import {url} {target} --insecure-skip-verify --progress none " \
          f"--scratch-dir {scratch} > {result_file}"
    wall, rss, scratch_peak = run_tree(cmd, scratch=scratch, shell=True)
    result = json.loads(result_file.read_text())
    verified = volume_digest(str(target), size) == expected
    return Row("cdi import docker://", wall, size, rss, max(scratch_peak, int(result.get("scratch_bytes") or 0)),
               verified), result


def tools_row(reg: Registry, target: Path, size: int, expected: str) -> Row:
    work = OUT / "tools-scratch"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    target.unlink(missing_ok=True)
    script = (
        f"set -e; skopeo copy -q --src-tls-verify=false docker://{reg.host}/bench/disk:v1 dir:{work}/image; "
        f"mkdir {work}/rootfs; "
        f"layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"layers\"][0][\"digest\"]"
        f".split(\":\")[1])' {work}/image/manifest.json); "
        f"tar -xzf {work}/image/$layer -C {work}/rootfs; "
        f"qemu-img convert -f qcow2 -O raw {work}/rootfs/disk/disk.qcow2 {target}"
    )
    wall, rss, scratch_peak = run_tree(["bash", "-c", script], scratch=work)
    verified = volume_digest(str(target), size) == expected
    shutil.rmtree(work, ignore_errors=True)
    return Row("skopeo copy + tar -x + qemu-img convert", wall, size, rss, scratch_peak, verified)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    size = args.size_mib << 20
    OUT.mkdir(parents=True, exist_ok=True)
    log("making images")
    raw, qcow2 = make_images(size)
    expected = volume_digest(str(raw), size)
    layout_dir = OUT / f"layout-{args.size_mib}M"
    if not (layout_dir / "index.json").exists():
        shutil.rmtree(layout_dir, ignore_errors=True)
        disk = OUT / "disk.qcow2"
        shutil.copy(qcow2, disk)
        container_disk(layout_dir, disk, compression="gzip", level=1)
        disk.unlink()
    target = OUT / "out.raw"
    rows: list[Row] = []
    with Registry(OUT / "registry") as reg:
        log("pushing with skopeo")
        reg.push(layout_dir, "bench/disk", "v1", src_tag="latest")
        layer = max(p.stat().st_size for p in (layout_dir / "blobs" / "sha256").iterdir() if p.is_file())
        log("cold start of the cdi command (fixed cost, reported apart)")
        start_cost, _, _ = run_tree([PY, "-m", "cdi.cli.main", "import", "--help"], scratch=None)
        log("cdi import")
        row, result = cdi_row(reg.url("bench/disk", "v1"), target, size, expected)
        rows.append(row)
        log(f"cdi: {row}; phases {result.get('phases')}")
        log("skopeo + tar + qemu-img")
        rows.append(tools_row(reg, target, size, expected))
        log(f"tools: {rows[-1]}")
    target.unlink(missing_ok=True)
    ours, theirs = rows
    lines = [
        f"# Registry import, {time.strftime('%Y-%m-%d %H:%M')} (2 GiB-class containerDisk: qcow2 of "
        f"{qcow2.stat().st_size >> 20} MiB in one gzip layer of {layer >> 20} MiB; virtual {size >> 20} MiB)",
        "",
        "| tool | wall s | MB/s | peak RSS MiB | scratch MiB | verified |",
        "|---|---:|---:|---:|---:|---|",
        *[f"| {r.tool} | {r.wall:.2f} | {r.rate:,.0f} | {r.peak_rss >> 20} | {r.scratch >> 20} | "
          f"{'yes' if r.verified else 'NO'} |" for r in rows],
        "",
        f"ratio (tools time / cdi time): {theirs.wall / ours.wall:.2f}; cdi's phases (s): {result.get('phases')}; "
        f"cold start of the cdi command alone (`cdi import --help` after dropping the page cache): "
        f"{start_cost:.2f} s, included in its wall time",
    ]
    text = "\n".join(lines) + "\n"
    (REPO / "bench" / "out" / "registry.md").write_text(text)
    print(text)
    return 0 if all(r.verified for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
