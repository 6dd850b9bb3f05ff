"""Choose the accelerator for guests: KVM when it really runs ordinary guests, else TCG.

``/dev/kvm`` existing is not enough: on a PVM host (``/sys/module/kvm_pvm``) KVM initialises but a
stock BIOS guest stops with "KVM internal error ... emulation failure" as soon as its boot loader
takes an interrupt in protected mode. So KVM is chosen only after a real probe passed: a 512-byte
boot sector (source in ``kvm_probe.S``) booted by SeaBIOS under ``-accel kvm`` that goes through
real, protected and long mode and prints ``CDI-KVM-PROBE-OK`` on the serial port.

The answer is cached per boot of the host (keyed by ``/proc/sys/kernel/random/boot_id`` and the
qemu binary) in ``$CDI_RUNTIME_DIR/accel-probe.json``. ``CDI_ACCEL=kvm|tcg`` overrides everything.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from vm_runtime.qemu_cmd import qemu_binary

log = logging.getLogger(__name__)

PROBE_MARKER = b"CDI-KVM-PROBE-OK"
# A working KVM runs the probe in well under a second; on the PVM host SeaBIOS alone takes 4-5 s
# before the guest fails (more when the machine is loaded), and the probe stops at that failure.
PROBE_TIMEOUT = 20.0
_CACHE_VERSION = 2  # bump when the probe changes, so earlier answers are probed again

# Assembled from kvm_probe.S (see the build command there); padded to 510 bytes plus 0x55AA.
_PROBE_HEX = (
    "fa31c08ed88ec08ed0bc007cbaf803b052ee660f0116407d660f011e667d0f20c06683c8010f22c066ea307c00000800"
    "66b810008ed88ec08ed0bc007c0000b050eeccb04aeeea517c00001800b049eecfb820008ed88ec08ed00f20c06683e0"
    "fe0f22c0ea697c000031c08ed88ed0660f011e6c7db042ee0f20c06683c8010f22c066ea8a7c0000080066b810008ed8"
    "8ec08ed0bf0010000031c0b9000c0000f3abc7050010000003200000c7050020000003300000c7050030000083000000"
    "b8001000000f22d80f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d000000800f22c0eaf17c000028"
    "0066baf803be727d0000ac84c07403eeebf866baf400b010eef4ebfd8d7426000000000000000000ffff0000009acf00"
    "ffff00000092cf00ffff0000009a0000ffff000000920000ffff0000009aaf002f00107d000000000000000000000000"
    "00000000000000000000000000004d7c0800008e00001f00467d0000ff03000000000d0a4344492d4b564d2d50524f42"
    "452d4f4b0d0a"
)


class AccelChoice(NamedTuple):
    """The accelerator to pass to ``-accel`` and a sentence saying why it was chosen."""

    accel: str
    reason: str


class ProbeResult(NamedTuple):
    ok: bool
    detail: str


def probe_sector() -> bytes:
    """The 512-byte boot sector of the probe guest."""
    code = bytes.fromhex(_PROBE_HEX)
    return code + b"\0" * (510 - len(code)) + b"\x55\xaa"


def runtime_dir() -> Path:
    """Where per-boot state lives: ``$CDI_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/cdi``, else /tmp."""
    base = os.environ.get("CDI_RUNTIME_DIR")
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(xdg, "cdi") if xdg else os.path.join(tempfile.gettempdir(), f"cdi-{os.getuid()}")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid != os.getuid():
        # someone else's directory (e.g. a pre-created /tmp/cdi-N): do not trust what it holds
        raise PermissionError(f"{path} is not owned by uid {os.getuid()}")
    return path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _binary_key(qemu: str) -> str:
    """Identify the qemu binary, so an upgrade of qemu triggers a new probe."""
    found = shutil.which(qemu)
    if not found:
        return qemu
    st = os.stat(found)
    return f"{os.path.realpath(found)}:{st.st_size}:{int(st.st_mtime)}"


def probe_kvm(
    qemu: str | None = None, *, timeout: float = PROBE_TIMEOUT, workdir: Path | None = None
) -> ProbeResult:
    """Boot the probe sector under KVM; ok only when its marker reached the serial port.

    It boots twice: with qemu's default CPU model (does KVM run a guest at all?), then with
    ``-cpu host``, the model the launcher gives KVM guests (does KVM accept the host's CPU state?).
    """
    if not os.path.exists("/dev/kvm"):
        return ProbeResult(False, "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ProbeResult(False, "/dev/kvm is not readable and writable by this user")
    qemu = qemu or qemu_binary()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="kvm-probe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(probe_sector())
        base = [qemu, "-accel", "kvm", "-machine", "pc", "-m", "16", "-no-user-config", "-nodefaults"]
        base += [
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-drive",
            f"file={_esc(disk)},format=raw,if=ide",
        ]
        base += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        for label, extra in (("the default CPU model", []), ("-cpu host", ["-cpu", "host"])):
            result = _judge(*_run_probe(base + extra, timeout), timeout=timeout, label=label)
            if not result.ok:
                return result
    return ProbeResult(
        True, "a probe guest ran through real, protected and long mode under KVM (default CPU and -cpu host)"
    )


def _esc(path: Path) -> str:
    return str(path).replace(",", ",,")


def _judge(out: bytes, err: bytes, rc: int | None, *, timeout: float, label: str) -> ProbeResult:
    if PROBE_MARKER in out:
        return ProbeResult(True, label)
    text_err = err.decode(errors="replace")
    stages = out.decode(errors="replace").strip() or "none"
    if "emulation failure" in text_err or "KVM internal error" in text_err:
        summary = f"KVM internal error: emulation failure with {label} (probe stages reached: {stages})"
    elif rc is None:
        summary = f"probe guest with {label} gave no marker within {timeout:g}s (stages reached: {stages})"
    else:
        last = text_err.strip().splitlines()[-1:] or ["no error output"]
        how = f"died of signal {-rc}" if rc < 0 else f"exited with code {rc}"
        summary = f"probe qemu with {label} {how} without the marker: {last[0]}"
    if os.path.exists("/sys/module/kvm_pvm"):
        summary += "; this is a PVM host (/sys/module/kvm_pvm)"
    return ProbeResult(False, summary)


def _run_probe(argv: list[str], timeout: float) -> tuple[bytes, bytes, int | None]:
    """Run the probe, stopping as soon as it succeeded or KVM reported an internal error.

    The exit code is None when the probe had to be killed (timeout or internal error).

    A KVM internal error pauses the guest rather than ending qemu, so waiting for the exit would
    always cost the full timeout on the hosts we are trying to detect.
    """
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as e:
        return b"", f"cannot run {argv[0]}: {e}".encode(), -1
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                key.data.extend(chunk)
            if PROBE_MARKER in out or b"emulation failure" in err:
                break
    finally:
        sel.close()
        killed = proc.poll() is None
        if killed:
            proc.kill()
        rc = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(out), bytes(err), None if killed else rc


def _read_cache(path: Path, key: dict[str, str]) -> AccelChoice | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key or data.get("accel") not in ("kvm", "tcg"):
        return None
    return AccelChoice(data["accel"], str(data.get("reason", "")))


def _write_cache(path: Path, key: dict[str, str], choice: AccelChoice) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason}))
    os.replace(tmp, path)


def choose_accel(*, qemu: str | None = None, use_cache: bool = True) -> AccelChoice:
    """Return ("kvm"|"tcg", reason). KVM only if ``CDI_ACCEL=kvm`` or the probe passed."""
    override = os.environ.get("CDI_ACCEL", "").strip().lower()
    if override:
        if override not in ("kvm", "tcg"):
            raise ValueError(f"CDI_ACCEL must be 'kvm' or 'tcg', not {override!r}")
        return AccelChoice(override, f"set by CDI_ACCEL={override}")
    qemu = qemu or qemu_binary()
    key = {"version": str(_CACHE_VERSION), "boot_id": _boot_id(), "qemu": _binary_key(qemu)}
    try:
        cache: Path | None = runtime_dir() / "accel-probe.json"
    except OSError as e:
        log.warning("accel cache unavailable error=%s", e)
        cache = None
    if use_cache and cache is not None:
        cached = _read_cache(cache, key)
        if cached is not None:
            log.debug("accel cached accel=%s", cached.accel)
            return AccelChoice(cached.accel, cached.reason + " (probed earlier in this boot)")
    started = time.monotonic()
    result = probe_kvm(qemu)
    if result.ok:
        choice = AccelChoice("kvm", f"KVM probe passed: {result.detail}")
    else:
        choice = AccelChoice("tcg", f"KVM unusable, using TCG: {result.detail}")
    log.info(
        "accel probed accel=%s seconds=%.2f reason=%r",
        choice.accel,
        time.monotonic() - started,
        choice.reason,
    )
    try:
        if cache is not None:
            _write_cache(cache, key, choice)
    except OSError as e:
        log.warning("accel cache not written path=%s error=%s", cache, e)
    return choice
