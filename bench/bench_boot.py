"""Boot-to-marker time: the launcher against the same qemu command started by hand.

For each repetition, in alternating order: (a) start ``python -m vm_runtime.launcher`` on the test disk
and time until the guest's marker appears in the console log; (b) start the identical qemu argv
(printed once, from ``vm_runtime.qemu_cmd.build_command``) and time the same. Prints medians and the
launcher's overhead in seconds, plus the one-off cost of the KVM probe (paid once per host boot).

    .venv/bin/python bench/bench_boot.py [--reps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bootdisk import build_boot_disk  # noqa: E402
from vm_runtime.accel import choose_accel, probe_kvm  # noqa: E402
from vm_runtime.qemu_cmd import build_command, prepare  # noqa: E402

MARKER = b"CDI-BOOT-OK"
TIMEOUT = 180.0
VMI = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "bench", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 10,
        "domain": {
            "memory": {"guest": "256Mi"},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
        },
        "volumes": [{"name": "root", "dataVolume": {"name": "root"}}],
    },
}


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], started: float) -> float:
    """Poll ``check`` every 10 ms; return the seconds since ``started`` when it first holds."""
    while time.monotonic() - started < TIMEOUT:
        try:
            if check():
                return time.monotonic() - started
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} too early")
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {TIMEOUT}s")


def run_launcher(work: Path, disk_dir: Path) -> tuple[float, float, float]:
    """Seconds from start to the marker, from start to qemu running, and from SIGTERM to exit."""
    (work / "vmi.json").write_text(json.dumps(VMI))
    log, status = work / "console.log", work / "status.json"
    env = dict(os.environ, VMI_SPEC_FILE=str(work / "vmi.json"), CDI_VOLUME_ROOT=str(disk_dir))
    env.update(LAUNCHER_WORK_DIR=str(work / "run"), GUEST_CONSOLE_LOG=str(log), PYTHONPATH=str(REPO))
    env["LAUNCHER_STATUS_FILE"] = str(status)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "vm_runtime.launcher"], env=env, stderr=subprocess.DEVNULL)
    try:
        qemu_started = wait_for(lambda: b"qemuPid" in status.read_bytes(), proc, started)
        marker = wait_for(lambda: MARKER in log.read_bytes(), proc, started)
    finally:
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        stopped = time.monotonic() - stopping
    return marker, qemu_started, stopped


def run_by_hand(argv: list[str], log: Path) -> float:
    log.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_for(lambda: MARKER in log.read_bytes(), proc, started)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        root = Path(tmp)
        disk_dir = build_boot_disk(root / "pvc").parent
        probe_started = time.monotonic()
        probe = probe_kvm()
        probe_cost = time.monotonic() - probe_started
        choice = choose_accel()
        manual_dir = root / "manual"
        manual_dir.mkdir()
        cmd = build_command(
            VMI,
            accel=choice.accel,
            workdir=manual_dir,
            resolve_volume=lambda *a: disk_dir,
            console_log=manual_dir / "console.log",
        )
        prepare(cmd)
        print(f"accel: {choice.accel} ({choice.reason})")
        print(f"qemu command (by hand):\n  {cmd.shell()}\n")
        launcher_times: list[float] = []
        manual_times: list[float] = []
        spawn_times: list[float] = []
        stop_times: list[float] = []
        for rep in range(args.reps):
            work = root / f"launcher-{rep}"
            work.mkdir()
            if rep % 2:  # alternate the order, so a drift in the machine's load hits both sides alike
                manual_times.append(run_by_hand(cmd.argv, cmd.console_log))
            marker, spawn, stop = run_launcher(work, disk_dir)
            launcher_times.append(marker)
            spawn_times.append(spawn)
            stop_times.append(stop)
            if not rep % 2:
                manual_times.append(run_by_hand(cmd.argv, cmd.console_log))
            print(
                f"rep {rep + 1}: launcher {launcher_times[-1]:.2f} s, by hand {manual_times[-1]:.2f} s",
                flush=True,
            )
    med_l, med_m = statistics.median(launcher_times), statistics.median(manual_times)
    print()
    print("| start -> marker on console | median s | min s | max s |")
    print("|---|---|---|---|")
    lo, hi = min(launcher_times), max(launcher_times)
    print(f"| launcher (python -m vm_runtime.launcher) | {med_l:.2f} | {lo:.2f} | {hi:.2f} |")
    print(f"| same qemu command by hand | {med_m:.2f} | {min(manual_times):.2f} | {max(manual_times):.2f} |")
    print(f"| launcher overhead | {med_l - med_m:+.2f} | | |")
    print(
        f"| launcher start -> qemu spawned (inside the above) | {statistics.median(spawn_times):.2f} "
        f"| {min(spawn_times):.2f} | {max(spawn_times):.2f} |"
    )
    print(
        f"| launcher SIGTERM -> exit (guest powers off via ACPI) | {statistics.median(stop_times):.2f} "
        f"| {min(stop_times):.2f} | {max(stop_times):.2f} |"
    )
    print(f"\nKVM probe (once per host boot, then cached): {probe_cost:.2f} s, ok={probe.ok}")


if __name__ == "__main__":
    main()
