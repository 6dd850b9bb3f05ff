"""What resume points cost a qcow2 converted as it streams, and what a resume saves, in one run.

The 2 GiB disk (about 40% data) of ``bench_upload.py`` as qcow2 written by ``qemu-img convert``, read
once, in order, from a pipe by the importer pipeline in a child process (an upload body of known size):

- no resume points: the conversion alone (an upload of unknown size);
- resume points: the same with checkpoints (volume and spool fdatasync'ed, the converter's state saved,
  every byte of the file hashed for the prefix digest), as an upload of known size runs now;
- cut at half, resumed: the first process gets half the file and fails; a second one continues from
  its last point with the rest (the client's prefix digest of the first part counted in).

Each: wall seconds (``sync`` included), MB/s of disk size, checkpoints taken, and whether the volume's
digest equals the raw disk's. Page cache dropped before each when possible.
Run: ``.venv/bin/python bench/bench_qcow2_resume.py [--size-mib 2048]``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_upload import OUT, drop_caches, expected_digest, log, make_images  # noqa: E402

from importer.digest import volume_digest  # noqa: E402

WORK = OUT / "qcow2-resume"


def _child(target: str, size: int, capacity: int, offset: int, prefix: str | None, resume: bool) -> int:
    """Read the image from ``offset`` on stdin into ``target``; print the result (or the error)."""
    from importer import checkpoint, pipeline
    from importer.errors import Error
    from importer.sources.upload import UploadSource

    class Stdin:
        def __init__(self) -> None:
            self.left = size - offset

        @property
        def complete(self) -> bool:
            return self.left == 0

        def readinto(self, buf: memoryview | bytearray) -> int:
            n = sys.stdin.buffer.readinto(memoryview(buf)[: self.left])  # type: ignore[attr-defined]
            self.left -= n
            return n

    points = [0]
    save = checkpoint.save

    def counted(path: str, point: checkpoint.Checkpoint) -> None:
        points[0] += 1
        save(path, point)

    checkpoint.save = counted  # type: ignore[assignment]
    source = UploadSource(Stdin(), size=size, offset=offset, prefix=prefix)
    job = pipeline.ImportJob(source="upload", target=target, size=capacity, resume=resume)
    try:
        result = pipeline.run_with_source(job, source).to_dict()
    except Error as e:
        result = {"error": str(e)}
    print(json.dumps({**result, "checkpoints": points[0]}))
    return 0


def _run(image: Path, target: Path, *, start: int, end: int, capacity: int, resume: bool) -> dict[str, object]:
    size = image.stat().st_size
    prefix = volume_digest(str(image), start) if start else None
    cmd = [sys.executable, __file__, "--child", str(target), "--size", str(size), "--capacity", str(capacity),
           "--offset", str(start)] + (["--prefix", prefix] if prefix else []) + ([] if resume else ["--no-resume"])
    with open(image, "rb") as src:
        src.seek(start)
        feed = subprocess.Popen(["head", "-c", str(end - start)], stdin=src, stdout=subprocess.PIPE)
        out = subprocess.run(cmd, stdin=feed.stdout, capture_output=True, text=True, check=True).stdout
        feed.wait()
    return dict(json.loads(out.splitlines()[-1]))


def case(name: str, image: Path, raw: Path, size: int, *, resume: bool, cut: bool) -> str:
    target = WORK / "disk.img"
    for old in WORK.glob("*disk.img*"):
        old.unlink()
    drop_caches()
    began = time.monotonic()
    whole = image.stat().st_size
    points = 0
    first: dict[str, object] = {}
    if cut:
        first = _run(image, target, start=0, end=whole // 2, capacity=size, resume=True)
        assert "error" in first, first
        points += int(first["checkpoints"])  # type: ignore[call-overload]
        held = json.loads((WORK / ".disk.img.cdi-resume.json").read_text())["offset"]
    else:
        held = 0
    result = _run(image, target, start=held, end=whole, capacity=size, resume=resume)
    subprocess.run(["sync"], check=True)
    wall = time.monotonic() - began
    points += int(result["checkpoints"])  # type: ignore[call-overload]
    ok = result.get("digest") == volume_digest(str(target)) == expected_digest(raw, size)
    note = f"resumed at {held >> 20} MiB of {whole >> 20}" if cut else ""
    return f"| {name} | {wall:.2f} | {size / wall / 1e6:.0f} | {points} | {ok} | {note} |"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--child")
    ap.add_argument("--size", type=int)
    ap.add_argument("--capacity", type=int)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--prefix")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.size, args.capacity, args.offset, args.prefix, not args.no_resume)
    size = args.size_mib << 20
    WORK.mkdir(parents=True, exist_ok=True)
    raw, qcow2 = make_images(size)
    rows = ["| case | wall s | MB/s | checkpoints | digest ok | |", "|---|---|---|---|---|---|"]
    for name, resume, cut in (("no resume points", False, False), ("resume points", True, False),
                              ("cut at half, resumed", True, True)):
        log(name)
        rows.append(case(name, qcow2, raw, size, resume=resume, cut=cut))
    print(f"qcow2 of a {size >> 20} MiB disk ({qcow2.stat().st_size >> 20} MiB file)")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
