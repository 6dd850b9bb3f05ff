"""End to end: DataVolumes imported through ``cdi serve`` from servers that drop, lie and change
(tests/support/faultserver.py). Each DataVolume ends Succeeded with the right bytes and digest, or
Failed with a reason that names the server's mistake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cdi.kube import PVC
from importer.digest import volume_digest
from tests.support import images
from tests.support.faultserver import Fault, FaultServer
from tests.support.serve import Serve, dv_manifest, serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    yield from serving(tmp_path_factory, "serve-faults")


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def _disk(serve: Serve, name: str) -> Path:
    pvc = serve.client.get(PVC, "default", name)
    path = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
    return path / "disk.img" if path.is_dir() else path


def _assert_volume(serve: Serve, name: str, raw: Path) -> None:
    """The volume holds ``raw`` then zeros, and the recorded digest describes exactly those bytes."""
    disk = _disk(serve, name)
    data = disk.read_bytes()
    expected = raw.read_bytes()
    assert data[: len(expected)] == expected
    assert data[len(expected):] == bytes(len(data) - len(expected))
    dv = serve.dv(name)
    assert dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.volumeDigest"] == volume_digest(str(disk))


def _running(serve: Serve, name: str) -> dict[str, str]:
    dv = serve.wait_phase(name, "Failed")
    return next(c for c in dv["status"]["conditions"] if c["type"] == "Running")


@pytest.mark.parametrize("name", ["raw", "raw.zst", "qcow2"])
def test_drops_at_30_percent_succeed_with_the_right_digest(serve, faults, image_factory, name) -> None:
    src = image_factory.get(name)
    path = "/drops-" + name.replace(".", "-")
    fault = faults.add(path, Fault(path=str(src), drop_p=0.3, drop_every=100_000, seed=5))
    dv = "drops-" + name.replace(".", "-")
    serve.apply(dv_manifest(dv, {"http": {"url": faults.url(path)}}, size="16Mi", api="pvc"))
    serve.wait_phase(dv, "Succeeded")
    assert fault.drops > 0
    _assert_volume(serve, dv, image_factory.raw)


def test_file_swapped_during_qcow2_import_gives_the_new_version(serve, faults, image_factory, tmp_path) -> None:
    other = images.make_raw(tmp_path / "other.raw", 8 << 20, seed=11)
    other_qcow2 = images.convert(other, "qcow2", tmp_path / "other.qcow2")
    fault = faults.add("/swap.qcow2", Fault(path=str(image_factory.get("qcow2")), swap_to=str(other_qcow2),
                                            swap_after=1 << 20, if_match=False, if_range=False))
    serve.apply(dv_manifest("swapped", {"http": {"url": faults.url("/swap.qcow2")}}, size="16Mi", api="pvc"))
    serve.wait_phase("swapped", "Succeeded")
    assert fault.swapped
    _assert_volume(serve, "swapped", other)


def test_truncated_zst_fails_saying_it_ends_early(serve, faults, image_factory, tmp_path) -> None:
    data = image_factory.get("raw.zst").read_bytes()
    cut = tmp_path / "cut.raw.zst"
    cut.write_bytes(data[: len(data) // 2])
    faults.add("/cut.raw.zst", Fault(path=str(cut)))
    serve.apply(dv_manifest("truncated", {"http": {"url": faults.url("/cut.raw.zst")}}, size="16Mi", api="pvc"))
    running = _running(serve, "truncated")
    assert running["reason"] == "InvalidImage"
    assert "zstd stream ends early" in running["message"]


def test_content_length_larger_than_the_body_fails_naming_it(serve, faults, image_factory) -> None:
    faults.add("/long.raw", Fault(path=str(image_factory.raw), length="large", ranges=False, advertise_ranges=False))
    serve.apply(dv_manifest("long", {"http": {"url": faults.url("/long.raw")}}, size="16Mi", api="pvc"))
    running = _running(serve, "long")
    assert "Content-Length is larger than the file" in running["message"]
    assert not _disk(serve, "long").exists() or _disk(serve, "long").stat().st_blocks == 0


def test_body_without_length_or_ranges_is_not_taken_for_the_whole_image(serve, faults, image_factory) -> None:
    faults.add("/nolen.raw", Fault(path=str(image_factory.raw), length="none", ranges=False,
                                   advertise_ranges=False, drop_p=1.0, drop_every=3 << 20))
    serve.apply(dv_manifest("nolen", {"http": {"url": faults.url("/nolen.raw")}}, size="16Mi", api="pvc"))
    running = _running(serve, "nolen")
    assert "no Content-Length" in running["message"]
