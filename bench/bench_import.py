"""Import benchmarks: ``cdi import`` against the standard tools, on the same files, in one run.

Builds a raw test disk (about 40% random 1 MiB chunks, the rest zeros, deterministic seed) and its
qcow2, raw.gz (pigz), raw.xz (``xz -T0``, multi-block) and raw.zst (zstd) forms, plus sparse images
(100 GiB virtual with 1 GiB of data, its dense 1 GiB twin, and a 20 GiB-virtual qcow2 with 2 GiB of
data); all are cached in ``bench/out/images`` under names that carry their parameters. An nginx of our
own serves them on 127.0.0.1 (Range support). Each case runs ours and the baseline as shell commands
ending in ``sync``, with the page cache dropped before every run, ``--reps`` times (median wall time).
A sampler reads /proc every 20 ms for the peak RSS of the whole process tree and the scratch space
in the work directory. Every output is checked against the source raw with the volume digest.

    bash bench/run.sh                      # everything, 2 GiB image, 3 repetitions
    bash bench/run.sh --quick              # smoke run on a 256 MiB image, 1 repetition
    bash bench/run.sh --cases qcow2,xz,reader
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from importer.digest import volume_digest  # noqa: E402
from tests.support.images import data_extents  # noqa: E402

OUT = REPO / "bench" / "out"
IMAGES = OUT / "images"
WORK = OUT / "work"
CDI = REPO / ".venv" / "bin" / "cdi"
PYTHON = REPO / ".venv" / "bin" / "python"
MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
SEED = 20261128
DATA_FRACTION = 0.4
SAMPLE_INTERVAL = 0.02
PAGE = os.sysconf("SC_PAGE_SIZE")
ALL_CASES = ("qcow2", "xz", "gz", "zst", "raw", "sparse-qcow2", "sparse-zst", "reader", "memory-20g")

# The reader reads as the pipeline's read-ahead thread does: into reused buffers of the read-ahead's
# chunk size (128 KiB, which stays in the CPU cache; a 1 MiB buffer measured 2-3x slower here).
READER_SCRIPT = """
import sys
from importer.sources.http import HttpSource
from importer.stream import READ_AHEAD_CHUNK
src = HttpSource(sys.argv[1])
src.open()
buf = bytearray(READ_AHEAD_CHUNK)
total = 0
while True:
    n = src.readinto(buf)
    if not n:
        break
    total += n
src.close()
print(total)
"""


# -- configuration ---------------------------------------------------------------------------------


@dataclass
class Config:
    size: int  # the main test image, bytes
    sparse_virtual: int  # the sparse image's virtual size
    sparse_data: int  # bytes of data in the sparse image (and its dense twin)
    big_virtual: int  # the memory case's qcow2
    big_data: int
    reps: int
    cases: list[str]
    drop_caches: bool = False
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB image, small sparse images, 1 repetition")
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of {','.join(ALL_CASES)}")
    p.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 3, 1 with --quick)")
    p.add_argument("--size-mib", type=int, default=None, help="main image size in MiB (default 2048)")
    p.add_argument("--sparse-gib", type=int, default=None, help="virtual size of the sparse image (default 100)")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ALL_CASES)}")
    if args.quick:
        cfg = Config(256 * MiB, 8 * GiB, 128 * MiB, 2 * GiB, 256 * MiB, args.reps or 1, cases)
    else:
        cfg = Config(2 * GiB, 100 * GiB, 1 * GiB, 20 * GiB, 2 * GiB, args.reps or 3, cases)
    if args.size_mib:
        cfg.size = args.size_mib * MiB
    if args.sparse_gib:
        cfg.sparse_virtual = args.sparse_gib * GiB
    return cfg


# -- helpers ---------------------------------------------------------------------------------------


def sh(cmd: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", "-c", "set -eo pipefail; " + cmd], check=True, **kw)


def allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def human(n: float) -> str:
    return f"{n / MiB:,.0f}"


def try_drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def random_chunks(seed: int) -> Callable[[], bytes]:
    rng = random.Random(seed)
    return lambda: rng.randbytes(CHUNK)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- test images -----------------------------------------------------------------------------------


class Images:
    """Builds (once) and names the test images; digests of the raw forms are cached in digests.json."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        IMAGES.mkdir(parents=True, exist_ok=True)
        self._digest_file = IMAGES / "digests.json"
        self._digests: dict[str, str] = {}
        if self._digest_file.exists():
            self._digests = json.loads(self._digest_file.read_text())
        self.build_times: dict[str, float] = {}

    def _timed(self, name: str, build: Callable[[Path], None]) -> Path:
        path = IMAGES / name
        if path.exists():
            return path
        tmp = IMAGES / f".{name}.partial"
        tmp.unlink(missing_ok=True)
        log(f"building {name}")
        started = time.monotonic()
        build(tmp)
        tmp.rename(path)
        self.build_times[name] = time.monotonic() - started
        log(f"built {name} in {self.build_times[name]:.1f}s ({human(allocated(path))} MiB allocated)")
        return path

    def digest(self, raw: Path) -> str:
        if raw.name not in self._digests:
            self._digests[raw.name] = volume_digest(str(raw))
            self._digest_file.write_text(json.dumps(self._digests, indent=1))
        return self._digests[raw.name]

    # main image: dense on disk, as a server would hold it
    def main_raw(self) -> Path:
        size = self.cfg.size

        def build(tmp: Path) -> None:
            rng = random.Random(SEED)
            data = random_chunks(SEED + 1)
            zeros = bytes(CHUNK)
            with open(tmp, "wb") as f:
                for _ in range(size // CHUNK):
                    f.write(data() if rng.random() < DATA_FRACTION else zeros)

        return self._timed(f"main-{size // MiB}M-p{int(DATA_FRACTION * 100)}-s{SEED}.raw", build)

    def derived(self, raw: Path, kind: str) -> Path:
        src = shlex.quote(str(raw))
        commands = {
            "qcow2": f"qemu-img convert -f raw -O qcow2 {src} {{out}}",
            "gz": f"pigz -c {src} > {{out}}",
            "xz": f"xz -T0 -c {src} > {{out}}",
            "zst": f"zstd -q -T0 -c {src} > {{out}}",
        }
        name = raw.name.removesuffix(".raw") + (".qcow2" if kind == "qcow2" else f".raw.{kind}")
        return self._timed(name, lambda tmp: sh(commands[kind].format(out=shlex.quote(str(tmp)))))

    # sparse images: data chunks written with pwrite into a sparse file, never the zeros
    def spread_raw(self, virtual: int, data: int, tag: str) -> Path:
        def build(tmp: Path) -> None:
            chunks = data // CHUNK
            stride = virtual // chunks // CHUNK * CHUNK
            gen = random_chunks(SEED + 2)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for i in range(chunks):
                    os.pwrite(fd, gen(), i * stride + (stride // 2 // CHUNK * CHUNK))
                os.ftruncate(fd, virtual)
            finally:
                os.close(fd)

        return self._timed(f"{tag}-{virtual // GiB}G-{data // MiB}M-s{SEED}.raw", build)

    def dense_raw(self, data: int) -> Path:
        def build(tmp: Path) -> None:
            gen = random_chunks(SEED + 2)  # the same chunks as spread_raw
            with open(tmp, "wb") as f:
                for _ in range(data // CHUNK):
                    f.write(gen())

        return self._timed(f"dense-{data // MiB}M-s{SEED}.raw", build)

    def sparse_zst(self, raw: Path) -> Path:
        """zstd level 3, 2 worker threads (what ``zstd -T0`` does), fed in-process so that the zeros are
        never read from the file: reading holes costs ~2.3 s/GiB of kernel time here."""

        def build(tmp: Path) -> None:
            import zstandard

            size = raw.stat().st_size
            zeros = memoryview(bytes(16 * MiB))
            cctx = zstandard.ZstdCompressor(level=3, threads=-1)
            with open(tmp, "wb") as out, cctx.stream_writer(out, size=size, closefd=False) as w, \
                    open(raw, "rb", buffering=0) as f:
                pos = 0
                for start, end in data_extents(raw) + [(size, size)]:
                    while pos < start:
                        n = min(len(zeros), start - pos)
                        w.write(zeros[:n])
                        pos += n
                    while pos < end:
                        buf = os.pread(f.fileno(), min(16 * MiB, end - pos), pos)
                        w.write(buf)
                        pos += len(buf)

        return self._timed(raw.name.removesuffix(".raw") + ".raw.zst", build)


# -- nginx -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """Our own nginx on 127.0.0.1 serving ``IMAGES``, in the foreground as a child process."""

    def __init__(self) -> None:
        self.prefix = OUT / "nginx"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.prefix / "nginx.conf"

    def url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self.port}/{path.name}"

    def __enter__(self) -> Nginx:
        tmp = self.prefix / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.getuid() == 0 else ""
        temps = "".join(f"    {k}_temp_path {tmp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf.write_text(
            f"daemon off;\n{user}worker_processes 1;\npid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/error.log warn;\n"
            "events { worker_connections 64; }\n"
            "http {\n    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
            f"    default_type application/octet-stream;\n{temps}"
            f"    server {{\n        listen 127.0.0.1:{self.port};\n        root {IMAGES};\n    }}\n}}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        cmd = [nginx, "-c", str(self.conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(self.prefix / 'error.log').read_text()}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- measuring -------------------------------------------------------------------------------------


def tree_rss(root: int) -> int:
    """Sum of the RSS of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    """Every ~20 ms: the process tree's RSS and the bytes allocated in the work directory by files
    other than the target (scratch)."""

    def __init__(self, root: int, workdir: Path, target: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.workdir = workdir
        self.target = target
        self.peak_rss = 0
        self.peak_scratch = 0
        self.stop = threading.Event()

    def scratch(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.workdir):
            for name in files:
                path = Path(dirpath) / name
                if path != self.target:
                    total += allocated(path)
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss(self.root))
            self.peak_scratch = max(self.peak_scratch, self.scratch())
            self.stop.wait(SAMPLE_INTERVAL)


@dataclass
class Run:
    wall: float
    rss: int
    scratch: int
    allocated: int
    verified: bool | None
    stdout: str


@dataclass
class Result:
    case: str
    tool: str
    command: str
    bytes: int  # uncompressed virtual bytes (or bytes read for the reader case)
    runs: list[Run]
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def rate(self) -> float:
        return self.bytes / self.wall / 1e6

    @property
    def verified(self) -> str:
        checks = [r.verified for r in self.runs if r.verified is not None]
        if not checks:
            return "-"
        return "yes" if all(checks) else "NO"


def measure(cfg: Config, command: str, target: Path | None, expect: str | None, *, drop: bool = True,
            cleanup: bool = True) -> Run:
    """Run ``command`` under bash once; target is removed before and (after checks) afterwards."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    if drop and cfg.drop_caches:
        try_drop_caches()
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", "set -eo pipefail; " + command], stdout=subprocess.PIPE)
    sampler = Sampler(proc.pid, WORK, target or WORK / "-")
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {command}")
    alloc = allocated(target) if target else 0
    verified = None
    if target is not None and expect is not None:
        verified = volume_digest(str(target)) == expect
    if cleanup:
        shutil.rmtree(WORK, ignore_errors=True)
    return Run(wall, sampler.peak_rss, sampler.peak_scratch, alloc, verified, stdout.decode(errors="replace"))


def compare(cfg: Config, case: str, tools: list[tuple[str, str]], nbytes: int, target: Path | None,
            expect: str | None, *, drop: bool = True) -> list[Result]:
    """Alternate the tools run by run (ours, baseline, ours, ...) so drift hits both alike."""
    results = [Result(case, tool, cmd, nbytes, []) for tool, cmd in tools]
    for rep in range(cfg.reps):
        for res in results:
            run = measure(cfg, res.command, target, expect, drop=drop)
            res.runs.append(run)
            log(f"{case} {res.tool} rep {rep + 1}: {run.wall:.2f}s rss {human(run.rss)} MiB "
                f"scratch {human(run.scratch)} MiB alloc {human(run.allocated)} MiB verified {run.verified}")
    return results


# -- cases -----------------------------------------------------------------------------------------


def ours(url: str, target: Path) -> str:
    return f"{CDI} import {url} {target} --progress none && sync"


def dd_pipeline(url: str, decompress: str | None, target: Path) -> str:
    middle = f" | {decompress}" if decompress else ""
    return f"curl -s {url}{middle} | dd of={target} bs=64K conv=sparse status=none && sync"


@dataclass
class Row:
    result: Result
    ratio: str = ""
    target: str = ""
    met: str = ""


def run_cases(cfg: Config, images: Images, web: Nginx) -> list[Row]:
    rows: list[Row] = []
    target = WORK / "target.raw"
    main = images.main_raw() if any(c in cfg.cases for c in ("qcow2", "xz", "gz", "zst", "raw", "reader")) else None
    main_digest = images.digest(main) if main else ""

    if "qcow2" in cfg.cases and main:
        img = images.derived(main, "qcow2")
        tmp = WORK / "download.qcow2"
        base = (f"curl -s -o {tmp} {web.url(img)} && qemu-img convert -O raw {tmp} {target} && sync")
        o, b = compare(cfg, "qcow2 over http", [("ours", ours(web.url(img), target)), ("curl + qemu-img", base)],
                       cfg.size, target, main_digest)
        ratio = o.wall / b.wall
        scratch_ok = max(r.scratch for r in o.runs) == 0
        rows += [Row(o, f"{ratio:.2f}x time", "<= 0.75x time, 0 scratch",
                     "yes" if ratio <= 0.75 and scratch_ok else "no"), Row(b)]

    for kind, tool in (("xz", "xz -T0 -dc"), ("gz", "pigz -dc"), ("zst", "zstd -dc")):
        if kind not in cfg.cases or not main:
            continue
        img = images.derived(main, kind)
        o, b = compare(cfg, f"raw.{kind} over http",
                       [("ours", ours(web.url(img), target)),
                        (f"curl | {tool} | dd", dd_pipeline(web.url(img), tool, target))],
                       cfg.size, target, main_digest)
        ratio = o.rate / b.rate
        rows += [Row(o, f"{ratio:.2f}x MB/s", ">= 0.9x MB/s", "yes" if ratio >= 0.9 else "no"), Row(b)]

    if "raw" in cfg.cases and main:
        o, b = compare(cfg, "raw over http", [("ours", ours(web.url(main), target)),
                                              ("curl | dd", dd_pipeline(web.url(main), None, target))],
                       cfg.size, target, main_digest)
        rows += [Row(o, f"{o.rate / b.rate:.2f}x MB/s", "(none)", "-"), Row(b)]

    if "reader" in cfg.cases and main:
        url = web.url(main)
        py = f"cd {REPO} && {PYTHON} -c {shlex.quote(READER_SCRIPT)} {url}"
        sh(f"cat {main} > /dev/null")  # warm: this case measures the client, not the disk
        o, b = compare(cfg, "http reader (warm file)", [("ours HttpSource", py),
                                                          ("curl -o /dev/null", f"curl -s -o /dev/null {url}")],
                       cfg.size, None, None, drop=False)
        bad = [r.stdout.strip() for r in o.runs if r.stdout.strip() != str(cfg.size)]
        if bad:
            o.note = f"read {bad[0]} bytes, expected {cfg.size}"
        ratio = o.rate / b.rate
        rows += [Row(o, f"{ratio:.2f}x MB/s", ">= 0.8x MB/s", "yes" if ratio >= 0.8 and not bad else "no"), Row(b)]

    if "sparse-qcow2" in cfg.cases or "sparse-zst" in cfg.cases:
        sparse = images.spread_raw(cfg.sparse_virtual, cfg.sparse_data, "sparse")
        sparse_digest = images.digest(sparse)
        vname = f"{cfg.sparse_virtual // GiB} GiB virtual, {cfg.sparse_data // MiB} MiB data"
        if "sparse-qcow2" in cfg.cases:
            dense = images.dense_raw(cfg.sparse_data)
            dense_q = images.derived(dense, "qcow2")
            sparse_q = images.derived(sparse, "qcow2")
            s = compare(cfg, f"sparse qcow2 ({vname})", [("ours", ours(web.url(sparse_q), target))],
                        cfg.sparse_virtual, target, sparse_digest)[0]
            d = compare(cfg, f"dense qcow2 ({cfg.sparse_data // MiB} MiB virtual, same data)",
                        [("ours", ours(web.url(dense_q), target))], cfg.sparse_data, target,
                        images.digest(dense))[0]
            ratio = s.wall / d.wall
            rows += [Row(s, f"{ratio:.2f}x time of dense", "<= 1.3x time", "yes" if ratio <= 1.3 else "no"), Row(d)]
        if "sparse-zst" in cfg.cases:
            zst = images.sparse_zst(sparse)
            o, b = compare(cfg, f"sparse raw.zst ({vname})",
                           [("ours", ours(web.url(zst), target)),
                            ("curl | zstd -dc | dd", dd_pipeline(web.url(zst), "zstd -dc", target))],
                           cfg.sparse_virtual, target, sparse_digest)
            alloc = statistics.median(r.allocated for r in o.runs)
            off = alloc / cfg.sparse_data - 1
            rows += [Row(o, f"alloc {off:+.1%} of data; {o.rate / b.rate:.2f}x MB/s", "alloc within 5% of data",
                         "yes" if abs(off) <= 0.05 else "no"), Row(b)]

    if "memory-20g" in cfg.cases:
        big = images.spread_raw(cfg.big_virtual, cfg.big_data, "big")
        big_q = images.derived(big, "qcow2")
        o = compare(cfg, f"qcow2 ({cfg.big_virtual // GiB} GiB virtual, {cfg.big_data // MiB} MiB data)",
                    [("ours", ours(web.url(big_q), target))], cfg.big_virtual, target, images.digest(big))[0]
        rows.append(Row(o))
    return rows


# -- report ----------------------------------------------------------------------------------------


def memory_rows(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        r = row.result
        if r.tool != "ours" or not (r.case.startswith(("qcow2", "raw.xz"))):
            continue
        peak = max(x.rss for x in r.runs)
        met = "yes" if peak < 100 * MiB else "no"
        out.append(f"| memory: {cell(r.case)} | ours | {human(peak)} MiB | < 100 MiB | {met} |")
    return out


def report(cfg: Config, rows: list[Row], images: Images, started: str, argv: list[str]) -> str:
    lines = [
        f"# Import benchmark, {started}",
        "",
        f"Machine: nproc {os.cpu_count()}; `free -g`: {_free_g()}; {_uname()}.",
        f"Command: `bash bench/run.sh {' '.join(shlex.quote(a) for a in argv)}`; {cfg.reps} repetition(s) per tool, "
        "median wall time, tools alternated run by run.",
        "Page cache: " + ("dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every run, except the http "
                          "reader case (warm file: it measures the client)."
                          if cfg.drop_caches else "NOT dropped: /proc/sys/vm/drop_caches is not writable here."),
        "MB/s = uncompressed virtual bytes of the image / wall time (10^6 bytes); for the reader case, bytes read. "
        "Wall time includes `sync`. Peak RSS = sum of RSS over the whole process tree (bash wrapper included), "
        "sampled every 20 ms. Scratch = peak bytes allocated in the work directory outside the target. "
        "Verified = volume digest of the output equals that of the source raw.",
        "",
        "| case | tool | wall s | MB/s | peak RSS MiB | scratch MiB | target alloc MiB | verified | ratio | target "
        "| met |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {cell(r.case)} | {cell(r.tool)} | {r.wall:.2f} | {r.rate:,.0f} | {human(max(x.rss for x in r.runs))} "
            f"| {human(max(x.scratch for x in r.runs))} | {human(statistics.median(x.allocated for x in r.runs))} "
            f"| {r.verified} | {row.ratio} | {row.target} | {row.met}{' ' + r.note if r.note else ''} |"
        )
    mem = memory_rows(rows)
    if mem:
        lines += ["", "| memory target | tool | peak RSS of the tree | target | met |", "|---|---|---:|---|---|", *mem]
    lines += ["", "Per-run wall times (s) and our phase times (from cdi's JSON result):", ""]
    for row in rows:
        r = row.result
        walls = ", ".join(f"{x.wall:.2f}" for x in r.runs)
        phases = ""
        if r.tool == "ours":
            ph = [_phases(x.stdout) for x in r.runs]
            if any(ph):
                phases = "; phases " + " / ".join(json.dumps(p, separators=(",", ":")) for p in ph)
        lines.append(f"- {r.case}, {r.tool}: {walls}{phases}")
    lines += ["", "Commands:", ""]
    for row in rows:
        lines.append(f"- {row.result.case}, {row.result.tool}: `{row.result.command}`")
    if images.build_times:
        lines += ["", "Images built in this run: " + ", ".join(f"{k} {v:.0f}s" for k, v in images.build_times.items())]
    lines += [f"- {n}" for n in cfg.notes]
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    """Text for a markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def _phases(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return dict(data.get("phases") or {})
    try:
        data = json.loads(stdout)
        return dict(data.get("phases") or {}) if isinstance(data, dict) else {}
    except json.JSONDecodeError:
        return {}


def _free_g() -> str:
    out = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.splitlines()
    return " / ".join(" ".join(line.split()) for line in out)


def _uname() -> str:
    return " ".join(os.uname()[i] for i in (0, 2, 4))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cfg.drop_caches = try_drop_caches()
    if not cfg.drop_caches:
        log("cannot drop the page cache here (/proc/sys/vm/drop_caches not writable): runs are warm")
    images = Images(cfg)
    with Nginx() as web:
        rows = run_cases(cfg, images, web)
    shutil.rmtree(WORK, ignore_errors=True)
    text = report(cfg, rows, images, started, argv)
    (OUT / "last-results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
