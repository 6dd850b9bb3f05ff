"""qcow2 uploaded whole: converted while it streams, against the scratch path it replaces, in one run.

The same 2 GiB disk (about 40% data) as ``bench_upload.py``, as qcow2 written by ``qemu-img convert``:

- pipeline, scratch (before): the importer pipeline reading the image once, in order, from a pipe (an
  upload body without ranges), spooling it to a scratch file and converting that with qemu-img, as
  the upload server did before;
- pipeline, streamed (now): the same body converted as it streams (``importer/qcow2_stream.py``);
- upload server, scratch (before) and streamed (now): the real upload server (one mutual-TLS hop)
  receiving the file POSTed whole, with the upload server's former qcow2 path and with the new one;
- cdi serve + curl POST (now): the whole path, ``cdi serve``, a DataVolume with ``source.upload``,
  curl POSTing the file through the upload proxy as CDI's doc/upload.md shows;
- qemu-img convert of the local file (``-W -m 8 -t writeback``, as the importer runs it), for scale.

Each: wall seconds (``sync`` included), MB/s of disk size, peak RSS of the process tree, peak scratch
bytes, and whether the volume's digest equals the source's. Page cache dropped before each when
possible. Run: ``.venv/bin/python bench/bench_qcow2_stream.py [--size-mib 2048]``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_upload import OUT, Cdi, Result, Sampler, drop_caches, expected_digest, log, make_images  # noqa: E402

from importer.digest import volume_digest  # noqa: E402

WORK = OUT / "qcow2-stream"


def _case(kind: str, target: str, scratch: str, size: int) -> int:
    """The child process of one pipeline case: read the image from stdin, once, in order."""
    from importer import pipeline
    from importer.sources.upload import UploadSource

    class Stdin:
        def __init__(self) -> None:
            self.ended = False

        @property
        def complete(self) -> bool:
            return self.ended

        def readinto(self, buf: memoryview | bytearray) -> int:
            n = sys.stdin.buffer.readinto(buf)  # type: ignore[attr-defined]
            self.ended = self.ended or not n
            return n

    class Before(pipeline._GivenSource):
        """The upload server's qcow2 path before streaming: spool to scratch, then convert."""

        def _stream_qcow2(self, top, bottom, tap, hasher, source):  # type: ignore[no-untyped-def]
            self._via_scratch(top, bottom, tap, hasher, source)

    source = UploadSource(Stdin(), size=None, resumable=False)
    job = pipeline.ImportJob(source="upload", target=target, size=size, scratch_dir=scratch)
    runner = Before(job, source, None) if kind == "scratch" else pipeline._GivenSource(job, source, None)
    result = runner.run()
    print(json.dumps(result.to_dict()))
    return 0


def _server_case(kind: str, target: str, image: str) -> int:
    """The child process of one upload server case: the real upload server (one TLS hop, in this
    process) receiving the image POSTed whole by an http.client in a thread."""
    import http.client
    import threading

    from importer import pipeline
    from tests.functional.test_upload_server import Pki, start

    if kind == "scratch":  # the upload server's qcow2 path before streaming
        pipeline.Importer._stream_qcow2 = (  # type: ignore[method-assign]
            lambda self, top, bottom, tap, hasher, source: self._via_scratch(top, bottom, tap, hasher, source))
    work = Path(target).parent
    os.chdir(work)
    pki = Pki(work)
    size = Path(image).stat().st_size
    server = start(pki, Path(target), int(os.environ["BENCH_CAPACITY"]))
    answer: list[int] = []

    def send() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=pki.client_context(),
                                           timeout=600)
        with open(image, "rb") as f:
            conn.request("POST", "/v1beta1/upload", body=f, headers={"Content-Length": str(size)})
            answer.append(conn.getresponse().status)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    server.shutdown()
    assert answer == [200] and server.state.result is not None, answer
    print(json.dumps(server.state.result.to_dict()))
    return 0


def server_case(kind: str, image: Path, raw: Path, size: int) -> Result:
    target = WORK / "server" / "disk.img"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    drop_caches()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--server-case", kind, "--target", str(target), "--image",
                             str(image)], stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "BENCH_CAPACITY": str(size)})

    def scratch_dir() -> Path | None:
        return next(target.parent.glob(".cdi-scratch-*"), None)

    with Sampler(proc.pid, scratch_dir) as s:
        out, _ = proc.communicate()
        subprocess.run(["sync"], check=True)
        wall = time.monotonic() - start
    assert proc.returncode == 0, out
    result = json.loads(out.splitlines()[-1])
    ok = result["digest"] == volume_digest(str(target)) == expected_digest(raw, size)
    name = "upload server, scratch (before)" if kind == "scratch" else "upload server, streamed (now)"
    return Result(name, "qcow2", wall, size, s.rss, s.scratch_peak, image.stat().st_size, ok)


def pipeline_case(kind: str, image: Path, raw: Path, size: int) -> Result:
    target, scratch = WORK / "target.raw", WORK / "scratch"
    target.unlink(missing_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    drop_caches()
    with open(image, "rb") as src:
        start = time.monotonic()
        cat = subprocess.Popen(["cat"], stdin=src, stdout=subprocess.PIPE)
        proc = subprocess.Popen([sys.executable, __file__, "--case", kind, "--target", str(target), "--scratch",
                                 str(scratch), "--size", str(size)], stdin=cat.stdout, stdout=subprocess.PIPE)
        assert cat.stdout is not None
        cat.stdout.close()
        with Sampler(proc.pid, scratch) as s:
            out, _ = proc.communicate()
            cat.wait()
            subprocess.run(["sync"], check=True)
            wall = time.monotonic() - start
    assert proc.returncode == 0, out
    result = json.loads(out)
    ok = result["digest"] == volume_digest(str(target)) == expected_digest(raw, size)
    name = "pipeline, scratch (before)" if kind == "scratch" else "pipeline, streamed (now)"
    # allocated bytes: the scratch path reports its file's apparent size, the sampler sees what it uses
    scratch_bytes = s.scratch_peak if kind == "scratch" else max(s.scratch_peak, result["scratch_bytes"])
    return Result(name, "qcow2", wall, size, s.rss, scratch_bytes, image.stat().st_size, ok)


def qemu_img_case(image: Path, raw: Path, size: int) -> Result:
    target = WORK / "target.raw"
    target.unlink(missing_ok=True)
    drop_caches()
    start = time.monotonic()
    proc = subprocess.Popen(["qemu-img", "convert", "-W", "-m", "8", "-t", "writeback", "-f", "qcow2", "-O", "raw",
                             str(image), str(target)])
    with Sampler(proc.pid, None) as s:
        proc.wait()
        subprocess.run(["sync"], check=True)
        wall = time.monotonic() - start
    return Result("qemu-img convert (local file)", "qcow2", wall, size, s.rss, 0, 0,
                  volume_digest(str(target), size) == expected_digest(raw, size))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--case", choices=["scratch", "stream"])
    ap.add_argument("--target")
    ap.add_argument("--scratch")
    ap.add_argument("--size", type=int)
    ap.add_argument("--server-case", choices=["scratch", "stream"])
    ap.add_argument("--image")
    args = ap.parse_args()
    if args.case:
        return _case(args.case, args.target, args.scratch, args.size)
    if args.server_case:
        return _server_case(args.server_case, args.target, args.image)
    size = args.size_mib << 20
    WORK.mkdir(parents=True, exist_ok=True)
    raw, qcow2 = make_images(size)
    results = []
    for kind in ("scratch", "stream"):
        log(f"pipeline {kind}")
        results.append(pipeline_case(kind, qcow2, raw, size))
    for kind in ("scratch", "stream"):
        log(f"upload server {kind}")
        results.append(server_case(kind, qcow2, raw, size))
    log("cdi serve + curl")
    cdi = Cdi()
    try:
        r = cdi.curl("qcow2-stream", qcow2, raw, size)
        results.append(Result("cdi serve + curl POST (now)", r.image, r.wall, r.size, r.peak_rss, r.scratch, r.sent,
                              r.verified))
    finally:
        cdi.stop()
    log("qemu-img convert")
    results.append(qemu_img_case(qcow2, raw, size))
    print(f"qcow2 of {size >> 20} MiB virtual, {qcow2.stat().st_size >> 20} MiB file, one run\n")
    print("| case | wall s | MB/s | peak RSS MiB | scratch MiB | verified |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.case} | {r.wall:.2f} | {r.rate:.0f} | {r.peak_rss / 2**20:.0f} | {r.scratch / 2**20:.0f} | "
              f"{'yes' if r.verified else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
