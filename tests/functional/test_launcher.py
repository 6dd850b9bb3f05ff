"""The launcher with real qemu: boot, console log and socket, graceful stop, failures.

Boot tests run under whatever ``vm_runtime.accel`` chooses (TCG on a PVM host) and allow 120 s per
boot on a shared 2-core machine. One qemu runs at a time.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bootdisk import build_boot_disk
from vm_runtime import console
from vm_runtime.qemu_cmd import build_command, prepare

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 120.0
MARKER = "CDI-BOOT-OK"

VMI: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "testvm", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 30,
        "domain": {
            "cpu": {"cores": 1},
            "memory": {"guest": "256Mi"},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]},
        },
        "volumes": [{"name": "root", "dataVolume": {"name": "root-dv"}}],
    },
}


def vmi_with(**spec_changes: Any) -> dict[str, Any]:
    v = copy.deepcopy(VMI)
    v["spec"].update(spec_changes)
    return v


def no_boot_vmi(grace: int = 2) -> dict[str, Any]:
    """A VM with only a blank disk: the BIOS finds nothing to boot and ignores the power button."""
    v = vmi_with(terminationGracePeriodSeconds=grace, volumes=[{"name": "root", "emptyDisk": {"capacity": "16Mi"}}])
    v["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    return v


@pytest.fixture(scope="module")
def boot_disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PVC directories holding the test disk: "normal" waits, "poweroff" powers off after the marker."""
    root = tmp_path_factory.mktemp("disks")
    return {
        "normal": build_boot_disk(root / "normal", MARKER).parent,
        "poweroff": build_boot_disk(root / "poweroff", MARKER, poweroff=True).parent,
    }


class Launcher:
    """``python -m vm_runtime.launcher`` as the local node runs it, with helpers to wait on it."""

    def __init__(self, workdir: Path, vmi: dict[str, Any], volumes: dict[str, Path]) -> None:
        self.workdir = workdir
        self.status_file = workdir / "status.json"
        self.log_file = workdir / "logs" / "guest-console.log"
        (workdir / "vmi.json").parent.mkdir(parents=True, exist_ok=True)
        (workdir / "vmi.json").write_text(json.dumps(vmi))
        env = dict(os.environ, VMI_SPEC_FILE=str(workdir / "vmi.json"), LAUNCHER_WORK_DIR=str(workdir / "run"))
        env.update(LAUNCHER_STATUS_FILE=str(self.status_file), GUEST_CONSOLE_LOG=str(self.log_file))
        env.update({f"CDI_VOLUME_{name.upper()}": str(path) for name, path in volumes.items()})
        env["PYTHONPATH"] = str(REPO)
        self.stderr_path = workdir / "launcher.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "vm_runtime.launcher"], env=env, stderr=err)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def console_text(self) -> str:
        try:
            return self.log_file.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; status={self.status()} "
                    f"console={self.console_text()[-500:]!r} stderr={self.stderr()[-2000:]}"
                )
            time.sleep(0.2)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"launcher did not exit; status={self.status()} stderr={self.stderr()[-2000:]}"
            ) from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    started: list[Launcher] = []

    def start(vmi: dict[str, Any], volumes: dict[str, Path] | None = None) -> Launcher:
        launcher = Launcher(tmp_path / f"l{len(started)}", vmi, volumes or {})
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop()


def talk_through_console(sock_path: Path, line: str, expect: str, timeout: float = 60) -> tuple[str, bytes]:
    """Attach console.attach to pipes, type ``line``, wait for ``expect``, leave with Ctrl+]."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(console.attach(sock_path, in_r, out_w)))
    worker.start()
    seen = b""
    os.set_blocking(out_r, False)
    deadline = time.monotonic() + timeout
    next_send = 0.0
    try:
        while expect.encode() not in seen and time.monotonic() < deadline:
            if time.monotonic() >= next_send:  # the guest may not read yet: repeat until it answers
                os.write(in_w, f"{line}\n".encode())
                next_send = time.monotonic() + 5
            try:
                seen += os.read(out_r, 4096)
            except BlockingIOError:
                time.sleep(0.1)
    finally:
        os.write(in_w, console.ESCAPE)
        worker.join(10)
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
    return (result[0] if result else "still running"), seen


@pytest.mark.slow
def test_boot_console_and_sigterm(launch: Callable[..., Launcher], boot_disks: dict[str, Path]) -> None:
    launcher = launch(VMI, {"root": boot_disks["normal"]})
    launcher.wait_for("phase Running", lambda: launcher.status().get("phase") == "Running")
    status = launcher.status()
    assert status["qemuPid"] > 0 and status["accel"] in ("kvm", "tcg") and status["accelReason"]
    launcher.wait_for("the marker in the console log", lambda: MARKER in launcher.console_text())
    why, seen = talk_through_console(Path(status["consoleSocket"]), "hello-console", "cdi-echo: hello-console")
    assert b"cdi-echo: hello-console" in seen
    assert why == "escape"
    assert "cdi-echo: hello-console" in launcher.console_text()  # the log saw it too
    why, seen = talk_through_console(Path(status["consoleSocket"]), "second-visit", "cdi-echo: second-visit")
    assert why == "escape" and b"cdi-echo: second-visit" in seen  # qemu listens again after a client left
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    status = launcher.status()
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Succeeded", "Stopped", 0)
    assert "CDI-POWER-BUTTON" in launcher.console_text()  # the guest saw the ACPI power button


@pytest.mark.slow
def test_guest_powering_itself_off(launch: Callable[..., Launcher], boot_disks: dict[str, Path]) -> None:
    launcher = launch(VMI, {"root": boot_disks["poweroff"]})
    assert launcher.wait_exit(BOOT_TIMEOUT) == 0
    status = launcher.status()
    assert (status["phase"], status["reason"], status["qemuExitCode"]) == ("Succeeded", "GuestShutdown", 0)
    assert MARKER in launcher.console_text() and "CDI-POWEROFF" in launcher.console_text()


def test_guest_ignoring_powerdown_is_ended_after_grace(launch: Callable[..., Launcher]) -> None:
    launcher = launch(no_boot_vmi(grace=2))
    launcher.wait_for("phase Running", lambda: launcher.status().get("phase") == "Running", 60)
    started = time.monotonic()
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    assert time.monotonic() - started >= 2
    status = launcher.status()
    assert (status["phase"], status["reason"]) == ("Succeeded", "StoppedAfterGracePeriod")


def test_qemu_crash_fails(launch: Callable[..., Launcher]) -> None:
    launcher = launch(no_boot_vmi())
    launcher.wait_for("phase Running", lambda: launcher.status().get("phase") == "Running", 60)
    os.kill(launcher.status()["qemuPid"], signal.SIGKILL)
    assert launcher.wait_exit() == 1
    status = launcher.status()
    assert (status["phase"], status["reason"]) == ("Failed", "QemuCrashed")
    assert "signal 9" in status["message"]


def test_missing_disk_fails(launch: Callable[..., Launcher], tmp_path: Path) -> None:
    launcher = launch(VMI, {"root": tmp_path / "no-such-pvc"})
    assert launcher.wait_exit() == 2
    status = launcher.status()
    assert (status["phase"], status["reason"]) == ("Failed", "VolumeError")
    assert (
        "no-such-pvc/disk.img does not exist" in status["message"] or "no-such-pvc does not exist" in status["message"]
    )
    assert "VolumeError" in launcher.stderr()


def test_unset_volume_fails(launch: Callable[..., Launcher]) -> None:
    launcher = launch(VMI, {})
    assert launcher.wait_exit() == 2
    assert "set CDI_VOLUME_ROOT" in launcher.status()["message"]


def test_bad_qemu_option_fails_with_stderr(launch: Callable[..., Launcher]) -> None:
    v = no_boot_vmi()
    v["spec"]["domain"]["machine"] = {"type": "pc-q35-99.9"}
    launcher = launch(v)
    assert launcher.wait_exit() == 1
    status = launcher.status()
    assert (status["phase"], status["reason"]) == ("Failed", "QemuStartFailed")
    assert "unsupported machine type" in status["qemuStderr"]
    assert "unsupported machine type" in launcher.stderr()


def test_invalid_spec_names_the_field(launch: Callable[..., Launcher]) -> None:
    v = no_boot_vmi()
    v["spec"]["domain"]["cpu"] = {"cores": -1}
    launcher = launch(v)
    assert launcher.wait_exit() == 2
    status = launcher.status()
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.domain.cpu.cores" in status["message"]


def test_every_device_kind_is_accepted_by_qemu(tmp_path: Path) -> None:
    """Start (paused) a VM using every supported bus, cdrom, cloud-init, emptyDisk, EFI and a NIC."""
    import asyncio

    from qemu.qmp import QMPClient

    pvcs = {name: tmp_path / name for name in ("root", "data", "iso")}
    for pvc in pvcs.values():
        pvc.mkdir()
        with (pvc / "disk.img").open("wb") as f:
            f.truncate(16 << 20)
    v = vmi_with(
        networks=[{"name": "default", "pod": {}}],
        volumes=[
            {"name": "root", "dataVolume": {"name": "root-dv"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "iso", "persistentVolumeClaim": {"claimName": "iso"}},
            {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}},
            {
                "name": "cloudinit",
                "cloudInitNoCloud": {"userData": "#cloud-config\n", "networkData": "version: 2\n"},
            },
        ],
    )
    v["spec"]["domain"]["cpu"] = {"sockets": 1, "cores": 2, "threads": 1}
    v["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": True}}}
    v["spec"]["domain"]["devices"] = {
        "disks": [
            {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
            {"name": "data", "disk": {"bus": "sata"}},
            {"name": "iso", "cdrom": {"bus": "scsi"}, "bootOrder": 2},
            {"name": "scratch", "disk": {"bus": "scsi"}},
            {"name": "cloudinit", "cdrom": {"bus": "sata"}},
        ],
        "interfaces": [{"name": "default", "masquerade": {}, "model": "e1000e"}],
        "rng": {},
    }
    run = tmp_path / "run"
    cmd = build_command(v, accel="tcg", workdir=run, resolve_volume=lambda name, kind, claim: pvcs[name])
    prepare(cmd)

    async def check() -> str:
        proc = await asyncio.create_subprocess_exec(*cmd.argv, "-S", stderr=asyncio.subprocess.PIPE)
        try:
            for _ in range(200):
                if cmd.qmp_socket.exists() or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert proc.returncode is None, (await proc.stderr.read()).decode() if proc.stderr else ""
            client = QMPClient("check")
            await client.connect(str(cmd.qmp_socket))
            status: Any = await client.execute("query-status")
            blocks: Any = await client.execute("query-block")
            qdevs = " ".join(str(b.get("qdev")) for b in blocks)
            for disk in ("disk-root", "disk-data", "disk-iso", "disk-scratch", "disk-cloudinit"):
                assert disk in qdevs
            await client.execute("quit")
            with contextlib.suppress(Exception):  # disconnect re-raises the EOF of qemu quitting
                await client.disconnect()
            return str(status["status"])
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    assert asyncio.run(check()) == "prelaunch"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/sys/module/kvm_pvm"), reason="needs a PVM host, where KVM cannot run BIOS guests"
)
def test_guest_stopping_on_kvm_internal_error_fails(
    launch: Callable[..., Launcher], boot_disks: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced onto KVM where it does not work, qemu pauses the guest: the launcher ends it as Failed."""
    monkeypatch.setenv("CDI_ACCEL", "kvm")
    v = copy.deepcopy(VMI)
    v["spec"]["domain"]["cpu"]["model"] = "qemu64"  # -cpu host makes qemu abort at start on PVM instead
    launcher = launch(v, {"root": boot_disks["normal"]})
    assert launcher.wait_exit(60) == 1
    status = launcher.status()
    assert (status["phase"], status["reason"], status["accel"]) == ("Failed", "GuestInternalError", "kvm")
    assert "emulation failure" in status["qemuStderr"]


def test_second_sigterm_cuts_the_grace_period_short(launch: Callable[..., Launcher]) -> None:
    launcher = launch(no_boot_vmi(grace=120))
    launcher.wait_for("phase Running", lambda: launcher.status().get("phase") == "Running", 60)
    started = time.monotonic()
    launcher.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait_exit(30) == 0
    assert time.monotonic() - started < 20
    assert launcher.status()["reason"] == "StoppedAfterGracePeriod"


def test_inline_spec_and_default_paths(tmp_path: Path) -> None:
    """VMI_SPEC carries the JSON itself; status and console log default to the work dir."""
    v = no_boot_vmi()
    v["spec"]["domain"]["memory"] = {"guest": "not-a-size"}
    env = dict(os.environ, VMI_SPEC=json.dumps(v), LAUNCHER_WORK_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    for var in ("VMI_SPEC_FILE", "LAUNCHER_STATUS_FILE", "GUEST_CONSOLE_LOG"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "vm_runtime.launcher"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2
    status = json.loads((tmp_path / "launcher-status.json").read_text())
    assert status["reason"] == "InvalidSpec" and "spec.domain.memory.guest" in status["message"]
    assert status["guestConsoleLog"] == str(tmp_path / "guest-console.log")
    assert b"spec.domain.memory.guest" in proc.stderr


class TestConsoleClient:
    """console.attach against a plain unix socket server standing in for qemu's serial chardev."""

    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
        import socket

        path = tmp_path / "serial.sock"
        received: list[bytes] = []
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                with contextlib.suppress(OSError):  # the client may already have left
                    conn.sendall(b"login: ")
                with contextlib.suppress(ConnectionResetError):  # a client leaving with unread data
                    while data := conn.recv(4096):
                        received.append(data)
                        if b"bye" in data:
                            return  # the guest side closes

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield path, received
        srv.close()

    def run(self, path: Path, typed: bytes) -> tuple[str, bytes]:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, typed)
        os.close(in_w)
        try:
            why = console.attach(path, in_r, out_w)
            os.close(out_w)
            out_w = -1
            output = os.read(out_r, 4096)
        finally:
            for fd in (in_r, out_r, out_w):
                if fd >= 0:
                    os.close(fd)
        return why, output

    def test_escape_stops_and_sends_what_came_before(self, server: tuple[Path, list[bytes]]) -> None:
        path, received = server
        why, output = self.run(path, b"root\n" + console.ESCAPE + b"never sent")
        assert why == "escape"
        time.sleep(0.2)
        assert b"".join(received) == b"root\n"

    def test_guest_side_closing_ends_the_session(self, server: tuple[Path, list[bytes]]) -> None:
        path, _ = server
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, b"bye\n")
        try:
            assert console.attach(path, in_r, out_w) == "console-closed"
            assert os.read(out_r, 4096) == b"login: "
        finally:
            for fd in (in_r, in_w, out_r, out_w):
                os.close(fd)

    def test_status_file_names_the_socket(self, tmp_path: Path) -> None:
        status = tmp_path / "status.json"
        status.write_text(json.dumps({"consoleSocket": "/run/x/serial0.sock"}))
        assert console.socket_from(status) == Path("/run/x/serial0.sock")
        with pytest.raises(console.ConsoleError, match="cannot connect"):
            console.attach(tmp_path / "absent.sock", 0, 1)


@pytest.mark.slow
def test_efi_secure_boot_firmware_runs(launch: Callable[..., Launcher], boot_disks: dict[str, Path]) -> None:
    """OVMF with secure boot starts, and refuses the unsigned EFI shell it finds (proof secure boot is on)."""
    v = vmi_with(terminationGracePeriodSeconds=1)
    v["spec"]["domain"]["firmware"] = {"bootloader": {"efi": {"secureBoot": True}}}
    launcher = launch(v, {"root": boot_disks["normal"]})
    launcher.wait_for("the EFI boot manager", lambda: "BdsDxe: failed to start" in launcher.console_text())
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait_exit() == 0
    assert launcher.status()["reason"] == "StoppedAfterGracePeriod"  # firmware ignores the power button


@pytest.mark.slow
def test_cloud_init_nocloud_reaches_the_guest(launch: Callable[..., Launcher], boot_disks: dict[str, Path]) -> None:
    """The guest finds the cidata ISO on its second virtio disk and reads meta-data and user-data."""
    v = vmi_with(
        volumes=[
            {"name": "root", "dataVolume": {"name": "root-dv"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: cdi-guest\n"}},
        ]
    )
    v["spec"]["domain"]["devices"]["disks"].append({"name": "cloudinit", "disk": {"bus": "virtio"}})
    launcher = launch(v, {"root": boot_disks["normal"]})
    launcher.wait_for("the marker", lambda: MARKER in launcher.console_text())
    text = launcher.console_text().replace("\r", "")
    begin, end = text.find("cdi-cidata-begin /dev/vdb"), text.find("cdi-cidata-end")
    assert 0 <= begin < end, text[-2000:]
    seen = text[begin:end]
    assert "instance-id: testvm.default" in seen and "local-hostname: testvm" in seen
    assert "#cloud-config\nhostname: cdi-guest\n" in seen
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.wait_exit() == 0
