"""The streaming qcow2 converter against qemu-img itself: every image made by the real qemu-img and
qemu-io, read once front to back, must give the bytes ``qemu-img convert -O raw`` gives (digests
compared); hostile headers are refused with the importer's words; mutated images are either refused
or converted exactly as qemu-img converts them, never differently."""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.digest import volume_digest
from importer.errors import CapacityExceeded, Error, FormatError, UnsafeImage
from importer.qcow2_stream import StreamResult, convert_stream
from importer.target import Target
from tests.support import images

MiB = 1 << 20


class Once:
    """A reader that can only go forward, in odd-sized pieces (as a network body arrives)."""

    def __init__(self, data: bytes, *, seed: int = 0) -> None:
        self.f = io.BytesIO(data)
        self.rnd = random.Random(seed)

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = min(len(buf), self.rnd.choice((1, 511, 4096, 65537, 1 << 20)))
        return self.f.readinto(memoryview(buf)[:n])

    def close(self) -> None:
        pass


def qemu(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def reference(image: Path) -> tuple[str, int]:
    out = image.with_suffix(".ref")
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(out))
    return volume_digest(str(out)), out.stat().st_size


def stream(image: Path, tmp: Path, *, capacity: int | None = None) -> tuple[StreamResult, Path]:
    out = tmp / (image.name + ".out")
    scratch = tmp / "scratch"
    result = convert_stream(Once(image.read_bytes()), Target(str(out), "file", capacity, False),
                            scratch_parent=str(scratch))
    assert not any(scratch.glob("*/*")) if scratch.exists() else True  # the spool is gone afterwards
    return result, out


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qcow2") / "disk.raw"
    images.make_raw(path, 6 * MiB + 4096 + 512, chunk=192 << 10)  # not a whole number of clusters
    return path


def _made(raw: Path, name: str, *opts: str) -> Path:
    out = raw.parent / f"{name}.qcow2"
    if not out.exists():
        qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, str(raw), str(out))
    return out


CONVERTED = {
    "default": [], "zlib": ["-c"], "zstd": ["-c", "-o", "compression_type=zstd"],
    "cluster-512": ["-o", "cluster_size=512"], "cluster-2M": ["-o", "cluster_size=2M"],
    "extended-l2": ["-o", "extended_l2=on"], "prealloc-metadata": ["-o", "preallocation=metadata"],
    "v2": ["-o", "compat=0.10"], "v2-zlib": ["-c", "-o", "compat=0.10"],
}


@pytest.mark.parametrize("name", list(CONVERTED))
def test_qemu_img_convert_output_streams_without_scratch(raw: Path, tmp_path: Path, name: str) -> None:
    image = _made(raw, name, *CONVERTED[name])
    digest, size = reference(image)
    result, out = stream(image, tmp_path)
    assert (volume_digest(str(out)), out.stat().st_size) == (digest, size)
    assert result.digest == digest  # taken while writing, in guest order
    if name != "cluster-512":  # 512 B clusters: qemu moves the refcount table behind its blocks
        assert result.scratch_bytes == 0


def _guest_writes(path: Path, *create: str, seed: int = 5) -> Path:
    """A disk written by a guest in random order, with zeroed ranges and discards."""
    qemu("qemu-img", "create", "-f", "qcow2", *create, str(path), "96M")
    rnd = random.Random(seed)
    cmds: list[str] = []
    for _ in range(120):
        off, n = rnd.randrange(0, 95 * MiB) & ~0x1FF, rnd.randrange(1, 300) * 512
        cmds += ["-c", f"write -P {rnd.randrange(1, 255)} {off} {n}"]
    cmds += ["-c", "write -z 2M 3M", "-c", "discard 40M 1M", "-c", "write -c 0 128k"]
    qemu("qemu-io", "-f", "qcow2", *cmds, str(path))
    return path


def _resized(raw: Path, path: Path) -> Path:
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    qemu("qemu-img", "resize", str(path), "1G")  # the L1 table moves behind the data
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 7 900M 1M", "-c", "write -P 8 1M 64k", str(path))
    return path


def _snapshotted(raw: Path, path: Path) -> Path:
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    qemu("qemu-img", "snapshot", "-c", "one", str(path))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 9 0 2M", "-c", "write -P 3 5M 100k", str(path))
    qemu("qemu-img", "snapshot", "-c", "two", str(path))
    qemu("qemu-io", "-f", "qcow2", "-c", "write -z 1M 1M", str(path))
    return path


@pytest.mark.parametrize("kind", ["guest", "guest-extended-l2", "resized", "snapshots"])
def test_out_of_order_layouts_convert_exactly(raw: Path, tmp_path: Path, kind: str) -> None:
    image = {"guest": lambda: _guest_writes(tmp_path / "g.qcow2"),
             "guest-extended-l2": lambda: _guest_writes(tmp_path / "gx.qcow2", "-o",
                                                        "extended_l2=on,cluster_size=128k"),
             "resized": lambda: _resized(raw, tmp_path / "r.qcow2"),
             "snapshots": lambda: _snapshotted(raw, tmp_path / "s.qcow2")}[kind]()
    digest, size = reference(image)
    result, out = stream(image, tmp_path)
    assert (volume_digest(str(out)), out.stat().st_size) == (digest, size)
    if kind == "resized":
        assert result.scratch_bytes > 0  # the tables came last: what they map was kept in scratch


def test_a_volume_larger_than_the_image_is_filled_to_its_capacity(raw: Path, tmp_path: Path) -> None:
    image = _made(raw, "default")
    digest, size = reference(image)
    result, out = stream(image, tmp_path, capacity=size + 3 * MiB)
    assert out.stat().st_size == size + 3 * MiB and result.digest == volume_digest(str(out))


def _patched(image: Path, tmp: Path, at: int, value: bytes) -> Path:
    data = bytearray(image.read_bytes())
    data[at:at + len(value)] = value
    out = tmp / "patched.qcow2"
    out.write_bytes(bytes(data))
    return out


def test_hostile_headers_are_refused_with_the_importers_words(raw: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"secret")
    backed = tmp_path / "backed.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(backed))
    with pytest.raises(UnsafeImage, match="has a backing file .*base.raw"):
        stream(backed, tmp_path)
    external = tmp_path / "ext.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(external), "1M")
    with pytest.raises(UnsafeImage, match="external data file .*data.raw"):
        stream(external, tmp_path)
    image = _made(raw, "default")
    with pytest.raises(UnsafeImage, match="encrypted"):
        stream(_patched(image, tmp_path, 32, struct.pack(">I", 1)), tmp_path)
    with pytest.raises(UnsafeImage, match="features this importer does not know"):
        stream(_patched(image, tmp_path, 72, struct.pack(">Q", 1 << 9)), tmp_path)
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity"):
        stream(image, tmp_path, capacity=4 * MiB)


def test_a_truncated_image_is_refused_not_read_as_zeros(raw: Path, tmp_path: Path) -> None:
    image = _made(raw, "default")
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(image.read_bytes()[: image.stat().st_size - 70000])
    with pytest.raises(FormatError, match="truncated"):
        stream(cut, tmp_path)


def test_a_zero_flag_in_a_version_2_image_is_refused(raw: Path, tmp_path: Path) -> None:
    image = _made(raw, "v2")
    data = image.read_bytes()
    l1_offset = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1_offset:l1_offset + 8])[0] & 0x00FFFFFFFFFFFE00
    entry = struct.unpack(">Q", data[l2:l2 + 8])[0] | 1
    with pytest.raises(FormatError, match="zero cluster entry"):
        stream(_patched(image, tmp_path, l2, struct.pack(">Q", entry)), tmp_path)


def test_a_cluster_used_twice_is_refused(raw: Path, tmp_path: Path) -> None:
    image = _made(raw, "default")
    data = image.read_bytes()
    l1_offset = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1_offset:l1_offset + 8])[0] & 0x00FFFFFFFFFFFE00
    entries = struct.unpack(">96Q", data[l2:l2 + 768])
    used = [e for e in entries if e & 0x00FFFFFFFFFFFE00]
    with pytest.raises(FormatError, match="twice"):
        stream(_patched(image, tmp_path, l2 + 8 * entries.index(used[1]), struct.pack(">Q", used[0])), tmp_path)


# -- mutations: refuse, or agree with qemu-img ------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    raw = images.make_raw(root / "d.raw", 2 * MiB, chunk=64 << 10, data_ratio=0.5)
    made = {}
    for name, opts in (("plain", []), ("zlib", ["-c"]), ("extl2", ["-o", "extended_l2=on,cluster_size=16k"])):
        out = root / f"{name}.qcow2"
        qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, str(raw), str(out))
        made[name] = out
    snap = root / "snap.qcow2"
    qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(snap))
    qemu("qemu-img", "snapshot", "-c", "one", str(snap))
    made["snapshot"] = snap
    return made


def _metadata_offsets(data: bytes) -> list[int]:
    """Offsets worth mutating: the header, the L1 table and the first L2 table's entries."""
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & 0x00FFFFFFFFFFFE00
    snapshots = struct.unpack(">Q", data[64:72])[0]
    table = range(snapshots, snapshots + 64) if snapshots else range(0)
    return [*range(0, 112), *range(l1, l1 + 16), *range(l2, l2 + 512), *table]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["plain", "zlib", "extl2", "snapshot"]), picks=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_images_are_refused_or_equal_to_qemu_img(small: dict[str, Path], tmp_path: Path, name: str,
                                                         picks: list[tuple[int, int]]) -> None:
    data = bytearray(small[name].read_bytes())
    offsets = _metadata_offsets(bytes(data))
    for pick, value in picks:
        data[offsets[pick % len(offsets)]] = value
    image = tmp_path / "m.qcow2"
    image.write_bytes(bytes(data))
    out = tmp_path / "m.out"
    out.unlink(missing_ok=True)
    try:
        result = convert_stream(Once(bytes(data)), Target(str(out), "file", 8 * MiB, False),
                                scratch_parent=str(tmp_path / "scratch"))
    except Error:
        return  # refused: always allowed
    ref = tmp_path / "m.ref"
    done = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(ref)],
                          capture_output=True, timeout=30)
    assert done.returncode == 0, f"converted an image qemu-img refuses: {done.stderr!r}"
    assert result.virtual_size == ref.stat().st_size <= 8 * MiB
    os.truncate(ref, 8 * MiB)  # the volume: the disk, then zeros up to the capacity
    assert volume_digest(str(out)) == volume_digest(str(ref))


def test_an_l2_table_named_twice_is_refused(raw: Path, tmp_path: Path) -> None:
    image = _made(raw, "cluster-4k", "-o", "cluster_size=4k")  # an L2 table maps 2 MiB: several tables
    data = image.read_bytes()
    l1 = struct.unpack(">Q", data[40:48])[0]
    with pytest.raises(FormatError, match="twice"):
        stream(_patched(image, tmp_path, l1 + 8, data[l1:l1 + 8]), tmp_path)


@pytest.mark.parametrize("kind", ["in-order", "guest"])
def test_a_device_full_of_old_data_reads_back_exactly_the_image(raw: Path, tmp_path: Path, kind: str) -> None:
    """A block device is not zeroed beforehand: every byte the image does not write must be zeroed
    (a regular file stands in for the device; the writer treats it as one)."""
    image = _made(raw, "default") if kind == "in-order" else _guest_writes(tmp_path / "g.qcow2")
    digest, size = reference(image)
    device = tmp_path / "device"
    device.write_bytes(b"\xaa" * (size + MiB))
    result = convert_stream(Once(image.read_bytes()), Target(str(device), "block", size + MiB, True),
                            scratch_parent=str(tmp_path / "scratch"))
    expected = tmp_path / "expected"
    expected.write_bytes(image.with_suffix(".ref").read_bytes() + bytes(MiB))
    assert volume_digest(str(device)) == volume_digest(str(expected))
    assert result.digest in (None, volume_digest(str(expected)))


def test_memory_stays_flat_for_a_huge_sparse_disk(tmp_path: Path) -> None:
    """A 4 TiB disk with data at both ends: holes cost no memory (no per-MiB digest entries, no
    buffer), and the digest is still right."""
    import tracemalloc

    image = tmp_path / "huge.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", str(image), "4T")
    qemu("qemu-io", "-f", "qcow2", "-c", "write -P 3 0 1M", "-c", "write -P 4 2T 64k", "-c",
         f"write -P 5 {(4 << 40) - (64 << 10)} 64k", str(image))
    tracemalloc.start()
    try:
        result, out = stream(image, tmp_path, capacity=4 << 40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, peak
    digest, size = reference(image)
    assert out.stat().st_size == size == 4 << 40
    assert volume_digest(str(out)) == digest and result.digest in (None, digest)
