"""Where scratch space goes: beside the target for the CLI, nowhere in a worker pod without a scratch
mount. Such a pod ends, before it writes anything into its volume, with CDI's "scratch space
required" (exit 0, so that it is not restarted without it), and its controller gives it a claim."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from importer.errors import ScratchSpaceRequired
from importer.pipeline import ImportJob, run_import
from tests.support import images
from tests.support.httpserver import HttpServer, Route


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_pod_without_scratch_ends_asking_for_it_and_writes_nothing(tmp_path: Path, http_server: HttpServer) -> None:
    vmdk = images.convert(images.make_raw(tmp_path / "d.raw", 4 << 20), "vmdk", tmp_path / "d.vmdk")
    http_server.add("/d.vmdk", Route(path=str(vmdk), ranges=False))
    volume = tmp_path / "volume"
    volume.mkdir()
    message = tmp_path / "termination-log"
    env = {"PATH": os.environ["PATH"], "IMPORTER_SOURCE": "http", "IMPORTER_ENDPOINT": http_server.url("/d.vmdk"),
           "IMPORTER_TARGET_PATH": str(volume / "disk.img"), "IMPORTER_IMAGE_SIZE": str(8 << 20),
           "IMPORTER_SCRATCH_BESIDE_TARGET": "false", "TERMINATION_MESSAGE_PATH": str(message)}
    done = subprocess.run([sys.executable, "-m", "importer"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # as CDI's importer: the pod completes and is not restarted bare
    assert json.loads(message.read_text()) == {
        "ok": False, "reason": "ScratchSpaceRequired", "message": "scratch space required and none found",
        "permanent": False, "scratchSpaceRequired": True}
    assert _leftovers(volume) == []  # no image, no partial volume, no scratch directory in the volume

    # the same job with a scratch mount (what the controller gives the next pod) completes there
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-m", "importer"], env={**env, "IMPORTER_SCRATCH_DIR": str(scratch)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(message.read_text())
    assert result["ok"] and result["result"]["scratch_bytes"] > 0
    assert _leftovers(volume) == ["disk.img"] and _leftovers(scratch) == []
    reference = tmp_path / "reference.raw"
    images.qemu_img("convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(reference))
    with open(reference, "r+b") as f:
        f.truncate(8 << 20)
    assert images.same_content(volume / "disk.img", reference)


def test_a_qcow2_whose_tables_come_last_stops_mid_stream_and_leaves_no_partial_volume(
        tmp_path: Path, http_server: HttpServer) -> None:
    image = images.convert(images.make_raw(tmp_path / "d.raw", 12 << 20), "qcow2", tmp_path / "d.qcow2")
    images.qemu_img("resize", str(image), "1G")  # qemu moves the L1 table behind the data
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 5 1000M 64k", str(image)], check=True,
                   capture_output=True)
    http_server.add("/late.qcow2", Route(path=str(image), ranges=False))
    volume = tmp_path / "volume"
    volume.mkdir()
    job = ImportJob(source=http_server.url("/late.qcow2"), target=str(volume / "disk.img"), size=1 << 30,
                    scratch_beside_target=False)
    with pytest.raises(ScratchSpaceRequired, match="scratch space required and none found"):
        run_import(job)
    assert _leftovers(volume) == []  # no partial volume, no spool directory beside it
    # (the same image beside the target or in a scratch directory: test_upload_server's tables-last test)


def test_a_checksum_needs_scratch_and_a_raw_image_never_does(tmp_path: Path, http_server: HttpServer) -> None:
    raw = images.make_raw(tmp_path / "d.raw", 4 << 20)
    vhdx = images.convert(raw, "vhdx", tmp_path / "d.vhdx")
    http_server.add("/d.vhdx", Route(path=str(vhdx)))
    http_server.add("/d.raw", Route(path=str(raw)))
    volume = tmp_path / "volume"
    volume.mkdir()
    digest = hashlib.sha256(vhdx.read_bytes()).hexdigest()
    with pytest.raises(ScratchSpaceRequired):  # ranges, but a checksum to prove before qemu-img reads it
        run_import(ImportJob(source=http_server.url("/d.vhdx"), target=str(volume / "disk.img"), size=8 << 20,
                             checksum=f"sha256:{digest}", scratch_beside_target=False))
    assert _leftovers(volume) == []
    result = run_import(ImportJob(source=http_server.url("/d.raw"), target=str(volume / "disk.img"), size=8 << 20,
                                  checksum="sha256:" + hashlib.sha256(raw.read_bytes()).hexdigest(),
                                  scratch_beside_target=False))
    assert result.scratch_bytes == 0 and (volume / "disk.img").read_bytes()[:4 << 20] == raw.read_bytes()
