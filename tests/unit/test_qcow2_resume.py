"""A streaming qcow2 conversion resumed from its saved state, against qemu-img itself.

Every image is made by the real qemu-img and qemu-io. A first run takes a checkpoint after every few
KiB of the file; runs started from chosen states (inside the L1 table, inside an L2 table, in the middle
of a cluster, with bytes in the spool, compressed clusters half read, and points Hypothesis picks) get
only the rest of the file and a volume that a run after the checkpoint had already written further, and
must leave exactly the bytes ``qemu-img convert -O raw`` gives, with the digest of an uninterrupted run.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer import qcow2_resume
from importer.digest import volume_digest
from importer.qcow2_stream import Durable, convert_stream
from importer.target import Target
from tests.support import images

MiB = 1 << 20
CHUNK = 4099  # a prime: checkpoints fall at every kind of place in the file


def qemu(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


@dataclass
class Run:
    image: Path
    data: bytes
    digest: str  # of qemu-img convert -O raw
    size: int
    states: dict[str, list[tuple[int, bytes, str]]]  # where the cut falls -> (offset, state, prefix digest)
    spool: Path
    out: Path


def _where(state: bytes) -> set[str]:
    """Where in the image a checkpoint falls, from what its state still wants."""
    meta, blobs = qcow2_resume.decode(state)
    found = set()
    for need in meta["needs"]:
        kind = need["kind"]
        if kind == "table" and need["what"] == "L1 table" and blobs[need["buf"]]:
            found.add("inside-l1")
        elif kind == "tables" and blobs[need["buf"]]:
            found.add("inside-l2")
        elif kind == "clusters" and need["start"] > need["host"]:
            found.add("inside-cluster")
        elif kind == "compressed" and blobs[need["buf"]]:
            found.add("inside-compressed")
    if meta["spool"]["allocated"]:
        found.add("spool")
    if not meta["l1_read"]:
        found.add("before-l1")
    return found


def _first_run(image: Path, tmp: Path) -> Run:
    ref = image.with_suffix(".ref")
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(ref))
    data = image.read_bytes()
    states: dict[str, list[tuple[int, bytes, str]]] = {}
    count = [0]

    def keep(offset: int, state: bytes, prefix: str) -> None:
        count[0] += 1
        for where in _where(state) | ({"any"} if count[0] % 7 == 0 else set()):
            if len(states.setdefault(where, [])) < 3:
                states[where].append((offset, state, prefix))

    out, spool = tmp / f"{image.stem}.out", tmp / f"{image.stem}.spool"
    result = convert_stream(io.BytesIO(data), Target(str(out), "file", None, False), scratch_parent=str(tmp),
                            durable=Durable(on_checkpoint=keep, interval=2 * CHUNK, spool_path=str(spool)),
                            chunk=CHUNK)
    digest = volume_digest(str(ref))
    assert volume_digest(str(out)) == digest
    assert result.digest in (None, digest)
    return Run(image, data, digest, ref.stat().st_size, states, spool, out)


def _resume(run: Run, offset: int, state: bytes, prefix: str) -> str | None:
    """Continue from ``state`` with the rest of the file; the volume holds what the first run wrote
    after the checkpoint (a killed run got further than its last checkpoint)."""
    result = convert_stream(io.BytesIO(run.data[offset:]), Target(str(run.out), "file", None, False),
                            scratch_parent=str(run.out.parent),
                            durable=Durable(resume=state, prefix=prefix, spool_path=str(run.spool)), chunk=CHUNK)
    assert run.out.stat().st_size == run.size
    assert volume_digest(str(run.out)) == run.digest
    return result.digest


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("resume")
    raw = images.make_raw(tmp / "disk.raw", 6 * MiB + 4096, chunk=48 << 10, data_ratio=0.6)
    made: dict[str, Path] = {}
    # 4 KiB clusters: an L2 table maps 2 MiB, so several L2 tables sit between the data
    made["plain"] = images.convert(raw, "qcow2", tmp / "plain.qcow2", "cluster_size=4096")
    mixed = tmp / "mixed.qcow2"  # plain clusters, compressed ones after them, plain ones over some of those
    qemu("qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4096", str(mixed), "6M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 5 0 2560k", "-c", "write -c -P 1 3M 1M",
         "-c", "write -c -P 2 4M 1M", "-c", "write -P 7 3200k 300k", "-c", "write -P 9 5M 64k", str(mixed))
    made["mixed"] = mixed
    resized = tmp / "resized.qcow2"  # the L1 table moves behind the data: the data waits in the spool
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", str(raw), str(resized))
    qemu("qemu-img", "resize", str(resized), "64M")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 7 60M 100k", "-c", "write -P 8 1M 64k", str(resized))
    made["resized"] = resized
    return {name: _first_run(image, tmp) for name, image in made.items()}


@pytest.mark.parametrize(("name", "where"), [
    ("plain", "inside-l2"), ("plain", "inside-cluster"), ("plain", "any"),
    ("mixed", "inside-compressed"), ("mixed", "inside-l2"), ("mixed", "any"),
    ("resized", "inside-l1"), ("resized", "spool"), ("resized", "before-l1"), ("resized", "any"),
])
def test_a_conversion_resumed_from_its_state_is_exact(runs: dict[str, Run], name: str, where: str) -> None:
    run = runs[name]
    assert run.states.get(where), f"no checkpoint fell {where} of {name}"  # the layout makes one
    for offset, state, prefix in run.states[where]:
        # what a client sends to prove it continues the same file: the volume digest of its first bytes
        assert prefix == volume_digest(str(run.image), offset)
        digest = _resume(run, offset, state, prefix)
        assert digest in (None, run.digest)
        if name == "plain":
            assert digest == run.digest  # in guest order: the digest is taken inline, after a resume too


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=10**6))
def test_resume_from_any_checkpoint_hypothesis(runs: dict[str, Run], pick: int) -> None:
    name = sorted(runs)[pick % len(runs)]
    run = runs[name]
    points = [p for found in run.states.values() for p in found]
    offset, state, prefix = points[pick // len(runs) % len(points)]
    _resume(run, offset, state, prefix)


def test_state_round_trips_and_refuses_damage(runs: dict[str, Run], tmp_path: Path) -> None:
    offset, state, _ = runs["mixed"].states["inside-l2"][0]
    meta, blobs = qcow2_resume.decode(state)
    assert meta["pos"] == offset
    assert qcow2_resume.encode(meta, blobs) == state
    # the window, the block of the file under way (these chunks do not end on whole MiB) and a few
    # tables' keys: bounded
    assert len(state) < (2 << 20) + (100 << 10)
    path = tmp_path / "state"
    digest = qcow2_resume.save(str(path), state)
    assert qcow2_resume.load(str(path), digest) == state
    # a newer state saved, then a kill before its point: the point still names the older one, still there
    newer = qcow2_resume.save(str(path), bytes(reversed(state)))
    assert qcow2_resume.load(str(path), digest) == state
    qcow2_resume.prune(str(path), newer)  # the newer point saved: only its state stays
    assert [p.name for p in tmp_path.glob("state.*")] == [f"state.{newer[:16]}"]
    with pytest.raises(qcow2_resume.StateError, match="cannot be read"):
        qcow2_resume.load(str(path), digest)
    Path(qcow2_resume.versioned(str(path), newer)).write_bytes(state)  # altered in place
    with pytest.raises(qcow2_resume.StateError, match="torn or altered"):
        qcow2_resume.load(str(path), newer)
    with pytest.raises(qcow2_resume.StateError, match="wrong length"):
        qcow2_resume.decode(state + b"x")


def test_a_resume_with_the_first_bytes_of_another_file_is_refused(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["plain"]
    offset, state, prefix = run.states["inside-l2"][0]
    other = bytearray(run.data[:offset])
    other[offset // 2] ^= 1  # one data bit: the same header and tables, another image
    other_path = tmp_path / "other"
    other_path.write_bytes(other)
    for declared in (volume_digest(str(other_path)), None):
        with pytest.raises(qcow2_resume.StateError, match="were of another file"):
            convert_stream(io.BytesIO(run.data[offset:]), Target(str(run.out), "file", None, False),
                           scratch_parent=str(run.out.parent), durable=Durable(resume=state, prefix=declared))


@pytest.mark.parametrize("chunk", [511, 4099, 65536 + 512])
def test_compressed_clusters_whose_l2_table_comes_after_them_convert_at_any_chunk_size(
        runs: dict[str, Run], tmp_path: Path, chunk: int) -> None:
    """qemu allocates a new L2 table before it fills the rest of a cluster of compressed data, so a
    compressed cluster may begin, in the last sector of the one before, ahead of its own table: that
    sector is kept wherever a chunk ends."""
    run = runs["mixed"]
    out = tmp_path / "out"
    convert_stream(io.BytesIO(run.data), Target(str(out), "file", None, False), scratch_parent=str(tmp_path),
                   chunk=chunk)
    assert volume_digest(str(out)) == run.digest


def test_a_block_device_resumed_is_zeroed_where_the_killed_run_left_old_data(runs: dict[str, Run],
                                                                             tmp_path: Path) -> None:
    """A block device is not zeroed beforehand, and a killed run leaves whatever it wrote after its
    checkpoint: the resumed run writes or zeroes every byte from there (a file stands in for the device)."""
    run = runs["plain"]
    device = tmp_path / "device"
    device.write_bytes(b"\xaa" * (run.size + MiB))
    states: list[tuple[int, bytes, str]] = []
    convert_stream(io.BytesIO(run.data), Target(str(device), "block", run.size + MiB, True),
                   scratch_parent=str(tmp_path),
                   durable=Durable(on_checkpoint=lambda *point: states.append(point), interval=64 * CHUNK), chunk=CHUNK)
    offset, state, prefix = states[len(states) // 2]
    start = qcow2_resume.decode(state)[0]["writer"]["start"]
    assert 0 < start < run.size
    with open(device, "r+b") as f:  # old data again past the point: what a killed run may leave
        f.seek(start)
        f.write(b"\xaa" * (run.size + MiB - start))
    result = convert_stream(io.BytesIO(run.data[offset:]), Target(str(device), "block", run.size + MiB, True),
                            scratch_parent=str(tmp_path), durable=Durable(resume=state, prefix=prefix), chunk=CHUNK)
    expected = tmp_path / "expected"
    expected.write_bytes(b"")
    os.truncate(expected, run.size + MiB)
    with open(expected, "r+b") as f, open(run.out.with_suffix(".ref"), "rb") as ref:
        f.write(ref.read())
    assert volume_digest(str(device)) == volume_digest(str(expected))
    assert result.digest == volume_digest(str(expected))
