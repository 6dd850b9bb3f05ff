"""VirtualMachine create -> marker on the serial console, against the same qemu started by hand.

One run of ``cdi serve``: the test boot disk is imported once into DataVolume ``bench-root`` (not
timed). Then, for each repetition, in alternating order: (a) create a VirtualMachine whose volume is
that PVC (``runStrategy: Always``) and time from the create request until the guest's marker is in
the launcher's console log (found through the node's pod directory); delete the VM and wait until
its qemu has gone; (b) start the identical qemu command (``vm_runtime.qemu_cmd.build_command`` on the
same volume) by hand and time the same. Prints medians and our overhead (target: at most 1 s).

    .venv/bin/python bench/bench_vm.py [--reps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bench.bench_boot import MARKER, VMI, run_by_hand  # noqa: E402
from cdi.kube import PVC, Kind, NotFound  # noqa: E402
from tests.bootdisk import build_boot_disk  # noqa: E402
from tests.support.httpserver import HttpServer, Route  # noqa: E402
from tests.support.serve import Serve, dv_manifest  # noqa: E402
from vm_runtime.accel import choose_accel  # noqa: E402
from vm_runtime.qemu_cmd import build_command, prepare  # noqa: E402

VM = Kind("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
VMI_KIND = Kind("kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances")
TIMEOUT = 180.0


def vm_body(name: str) -> dict[str, Any]:
    spec = dict(VMI["spec"])
    spec["volumes"] = [{"name": "root", "persistentVolumeClaim": {"claimName": "bench-root"}}]
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"runStrategy": "Always", "template": {"spec": spec}}}


def console_logs(data_dir: Path) -> list[Path]:
    return list((data_dir / "pods").glob("*/volumes/virt-private/launcher/guest-console.log"))


def run_vm(serve: Serve, name: str) -> float:
    started = time.monotonic()
    serve.client.create(VM, vm_body(name))
    try:
        while time.monotonic() - started < TIMEOUT:
            for log in console_logs(serve.data_dir):
                try:
                    if MARKER in log.read_bytes():
                        return time.monotonic() - started
                except FileNotFoundError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"no marker within {TIMEOUT}s; see {serve.log}")
    finally:
        serve.client.delete(VM, "default", name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                serve.client.get(VMI_KIND, "default", name)
            except NotFound:
                break
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        root = Path(tmp)
        raw = build_boot_disk(root / "disk")
        serve = Serve(root / "data").start()
        try:
            with HttpServer() as http:
                http.add("/boot.raw", Route(path=str(raw)))
                serve.apply(dv_manifest("bench-root", {"http": {"url": http.url("/boot.raw")}}, size="64Mi"))
                serve.wait_phase("bench-root", "Succeeded", timeout=120)
            pvc = serve.client.get(PVC, "default", "bench-root")
            disk_dir = Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"])
            manual = root / "manual"
            manual.mkdir()
            choice = choose_accel()
            cmd = build_command(VMI, accel=choice.accel, workdir=manual, resolve_volume=lambda *a: disk_dir,
                                console_log=manual / "console.log")
            prepare(cmd)
            print(f"accel: {choice.accel} ({choice.reason})\nqemu command (by hand):\n  {cmd.shell()}\n")
            vm_times: list[float] = []
            hand_times: list[float] = []
            for rep in range(args.reps):
                if rep % 2:
                    hand_times.append(run_by_hand(cmd.argv, cmd.console_log))
                vm_times.append(run_vm(serve, f"bench-{rep}"))
                if not rep % 2:
                    hand_times.append(run_by_hand(cmd.argv, cmd.console_log))
                print(f"rep {rep + 1}: VirtualMachine {vm_times[-1]:.2f} s, by hand {hand_times[-1]:.2f} s",
                      flush=True)
        finally:
            serve.stop()
    med_vm, med_hand = statistics.median(vm_times), statistics.median(hand_times)
    print()
    print("| create -> marker on the serial console | median s | min s | max s |")
    print("|---|---|---|---|")
    print(f"| VirtualMachine on cdi serve (PVC already imported) | {med_vm:.2f} | {min(vm_times):.2f} "
          f"| {max(vm_times):.2f} |")
    print(f"| same qemu command by hand | {med_hand:.2f} | {min(hand_times):.2f} | {max(hand_times):.2f} |")
    print(f"| overhead (target <= 1 s) | {med_vm - med_hand:+.2f} | | |")


if __name__ == "__main__":
    main()
