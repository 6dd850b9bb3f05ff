"""Which qcow2 files can be converted while they stream in, front to back, with no scratch file?

A forward-only reader can place every data cluster if, when it arrives, the reader already knows where
it goes: the L1 table must come before the L2 tables, and each L2 table before the data clusters it
maps. This script reads the tables of qcow2 files made in the usual ways and says whether their
layout allows that, and how many data bytes arrive before the table that maps them (what a streaming
converter would have to hold back). Run: ``.venv/bin/python bench/qcow2_layout.py``; prints a table.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

L2_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62


def layout(path: Path) -> tuple[bool, int, int]:
    """(streamable, data bytes that arrive before their L2 table, data clusters)."""
    with open(path, "rb") as f:
        head = f.read(104)
        cluster_bits = struct.unpack(">I", head[20:24])[0]
        l1_size = struct.unpack(">I", head[36:40])[0]
        l1_offset = struct.unpack(">Q", head[40:48])[0]
        cluster = 1 << cluster_bits
        f.seek(l1_offset)
        l1 = struct.unpack(f">{l1_size}Q", f.read(8 * l1_size))
        late = clusters = 0
        ok = True
        for entry in l1:
            l2_offset = entry & L2_MASK
            if not l2_offset:
                continue
            if l2_offset < l1_offset:
                ok = False  # an L2 table before the L1 table that points to it
            f.seek(l2_offset)
            for e in struct.unpack(f">{cluster // 8}Q", f.read(cluster)):
                host = e & ((1 << (62 - (cluster_bits - 8))) - 1) if e & COMPRESSED else e & L2_MASK
                if not host:
                    continue
                clusters += 1
                if host < l2_offset:
                    late += cluster
        return ok and late == 0, late, clusters


def qemu(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def make(work: Path) -> dict[str, Path]:
    raw = work / "disk.raw"
    rng = random.Random(3)
    with open(raw, "wb") as f:
        for _ in range(256):
            f.write(rng.randbytes(1 << 20) if rng.random() < 0.4 else bytes(1 << 20))
    out: dict[str, Path] = {}
    for name, opts in (("qemu-img convert", []), ("qemu-img convert -c (compressed)", ["-c"]),
                       ("qemu-img convert -o preallocation=metadata", ["-o", "preallocation=metadata"]),
                       ("qemu-img convert -o cluster_size=2M", ["-o", "cluster_size=2M"])):
        p = work / f"{len(out)}.qcow2"
        qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, str(raw), str(p))
        out[name] = p
    guest = work / "guest.qcow2"  # a disk written by a guest, in random order
    qemu("qemu-img", "create", "-f", "qcow2", str(guest), "1G")
    cmds = []
    for _ in range(400):
        cmds += ["-c", f"write -P {rng.randrange(1, 255)} {rng.randrange(0, (1 << 30) - (64 << 10)) & ~0xFFFF} 64k"]
    qemu("qemu-io", "-f", "qcow2", *cmds, str(guest))
    out["guest writes in random order"] = guest
    grown = work / "grown.qcow2"  # written, then resized: qemu moves the L1 table to the end
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(grown))
    qemu("qemu-img", "resize", str(grown), "300G")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 7 299G 1M", str(grown))
    out["converted, then resized to 300G and written"] = grown
    snap = work / "snap.qcow2"
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(snap))
    qemu("qemu-img", "snapshot", "-c", "s1", str(snap))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 9 0 64M", str(snap))
    out["with an internal snapshot, then overwritten"] = snap
    return out


class _File:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    def readinto(self, buf: memoryview | bytearray) -> int:
        return self.f.readinto(buf) or 0

    def close(self) -> None:
        self.f.close()


def streamed(path: Path, work: Path) -> tuple[int, bool]:
    """What ``importer/qcow2_stream`` needs for the image read once, front to back: scratch bytes, and
    whether its result equals ``qemu-img convert -O raw``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from importer.digest import volume_digest
    from importer.qcow2_stream import convert_stream
    from importer.target import Target

    out, ref = work / "streamed.raw", work / "reference.raw"
    reader = _File(path)
    try:
        result = convert_stream(reader, Target(str(out), "file", None, False), scratch_parent=str(work))
    finally:
        reader.close()
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(ref))
    same = volume_digest(str(out)) == volume_digest(str(ref))
    out.unlink()
    ref.unlink()
    return result.scratch_bytes, same


def main() -> int:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        images = make(Path(d))
        print("| qcow2 made by | tables before their data | data bytes before their table | data clusters "
              "| streamed: scratch bytes | streamed = qemu-img |")
        print("|---|---|---|---|---|---|")
        for name, path in images.items():
            ok, late, clusters = layout(path)
            scratch, same = streamed(path, Path(d))
            print(f"| {name} | {'yes' if ok else 'no'} | {late} | {clusters} | {scratch} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
