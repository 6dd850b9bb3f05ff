"""Imports into a real block device (a loop device over a file), when this machine allows losetup."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.errors import CapacityExceeded
from importer.pipeline import ImportJob, run_import


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:  # stale data everywhere: the import must not leave any of it
        for _ in range(16):
            f.write(b"\xa5" * (1 << 20))
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"losetup unavailable here: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.parametrize("name", ["qcow2", "raw.gz", "raw"])
def test_import_into_block_device_overwrites_stale_data(image_factory, loop_device, name: str) -> None:
    dev, _ = loop_device
    result = run_import(ImportJob(source=str(image_factory.get(name)), target=dev))
    assert result.capacity == 16 << 20
    with open(dev, "rb") as f:
        data = f.read()
    expected = image_factory.raw.read_bytes()
    assert data[: len(expected)] == expected
    assert data[len(expected):] == bytes(len(data) - len(expected)), "stale bytes past the image"
    assert os.path.exists(dev), "a block device target is never removed"


def test_block_device_too_small(image_factory, loop_device, tmp_path: Path) -> None:
    dev, _ = loop_device
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(big), "32M"], check=True, capture_output=True)
    with pytest.raises(CapacityExceeded, match="larger than the volume capacity 16777216"):
        run_import(ImportJob(source=str(big), target=dev))
