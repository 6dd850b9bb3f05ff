"""Accelerator choice: the KVM probe guest, its per-boot cache and the CDI_ACCEL override."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vm_runtime import accel

SOURCE = Path(accel.__file__).with_name("kvm_probe.S")


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CDI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CDI_ACCEL", raising=False)
    return tmp_path / "run"


def test_probe_sector_is_a_boot_sector() -> None:
    sector = accel.probe_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


@pytest.mark.skipif(not shutil.which("as") or not shutil.which("ld"), reason="binutils not installed")
def test_probe_sector_matches_its_source(tmp_path: Path) -> None:
    obj, out = tmp_path / "p.o", tmp_path / "p.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-e",
            "_start",
            "-o",
            str(out),
            str(obj),
        ],
        check=True,
    )
    assert out.read_bytes() == accel.probe_sector()


def test_probe_guest_passes_under_tcg(tmp_path: Path) -> None:
    """The probe can succeed: on an accelerator that works, every stage and the marker appear."""
    disk = tmp_path / "probe.img"
    disk.write_bytes(accel.probe_sector())
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "16",
        "-nodefaults",
        "-display",
        "none",
    ]
    argv += ["-no-reboot", "-serial", "stdio", "-drive", f"file={disk},format=raw,if=ide"]
    argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    out, err, rc = accel._run_probe(argv, 20)
    assert accel.PROBE_MARKER in out, err
    assert out.startswith(b"RPIJB")  # real, protected, interrupt, IRET, back to real, then long mode
    assert rc in (None, 33)  # stopped on the marker, or exited through isa-debug-exit: (0x10 << 1) | 1


def test_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDI_ACCEL", "tcg")
    assert accel.choose_accel() == ("tcg", "set by CDI_ACCEL=tcg")
    monkeypatch.setenv("CDI_ACCEL", "hvf")
    with pytest.raises(ValueError, match="CDI_ACCEL"):
        accel.choose_accel()


def test_choice_on_this_host_is_probed_and_cached(private_runtime_dir: Path) -> None:
    choice = accel.choose_accel()
    assert choice.accel in ("kvm", "tcg")
    if choice.accel == "kvm":
        assert "KVM probe passed" in choice.reason
    else:
        assert choice.reason.startswith("KVM unusable, using TCG: ")
    if os.path.exists("/sys/module/kvm_pvm"):
        # MEASURED.md: stock guests fail on this PVM host with a KVM emulation failure
        assert choice.accel == "tcg"
        assert "emulation failure" in choice.reason
    cache = private_runtime_dir / "accel-probe.json"
    assert cache.exists()
    again = accel.choose_accel()
    assert again.accel == choice.accel and again.reason.endswith("(probed earlier in this boot)")


def test_cache_is_keyed_by_boot_id(private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_probe(qemu: str | None = None, **kw: object) -> accel.ProbeResult:
        calls.append("probe")
        return accel.ProbeResult(False, "fake")

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    monkeypatch.setattr(accel, "_boot_id", lambda: "boot-1")
    accel.choose_accel()
    accel.choose_accel()
    assert calls == ["probe"]
    monkeypatch.setattr(accel, "_boot_id", lambda: "boot-2")  # the host rebooted
    assert accel.choose_accel() == ("tcg", "KVM unusable, using TCG: fake")
    assert calls == ["probe", "probe"]


def test_no_kvm_device(monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False if p == "/dev/kvm" else real_exists(p))
    assert accel.probe_kvm() == (False, "/dev/kvm does not exist")
