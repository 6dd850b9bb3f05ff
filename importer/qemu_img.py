"""Thin wrapper around qemu-img: ``info`` under resource limits, ``convert`` with progress.

One function per subcommand; JSON output parsed; a non-zero exit becomes ``ToolError`` carrying the
command and its stderr. The binary is ``$QEMU_IMG`` or ``qemu-img`` on PATH. Images are untrusted:
``info`` runs with a CPU-time and address-space limit and a timeout, and ``convert`` opens the source
with ``backing: null`` so that no backing file is ever followed even if the image changed in between.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from importer.errors import FormatError, TemporaryError, ToolError, ToolTimedOut, UnsafeImage
from importer.procutil import die_with_parent

log = logging.getLogger(__name__)

INFO_CPU_SECONDS = 30
INFO_ADDRESS_SPACE = 1 << 30
INFO_TIMEOUT = 60.0
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def binary() -> str:
    return os.environ.get("QEMU_IMG", "qemu-img")


def _limits() -> None:  # runs in the child before exec
    die_with_parent()
    resource.setrlimit(resource.RLIMIT_CPU, (INFO_CPU_SECONDS, INFO_CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (INFO_ADDRESS_SPACE, INFO_ADDRESS_SPACE))


def source_spec(fmt: str, file: dict[str, Any]) -> str:
    """A ``json:`` filename opening ``file`` as ``fmt`` with backing files disabled."""
    opts: dict[str, Any] = {"driver": fmt, "file": file}
    if fmt == "qcow2":  # the only one of our formats with backing files
        opts["backing"] = None
    return "json:" + json.dumps(opts)


def file_node(path: str) -> dict[str, Any]:
    return {"driver": "file", "filename": os.path.abspath(path)}


def nbd_node(socket_path: str) -> dict[str, Any]:
    return {"driver": "nbd", "server": {"type": "unix", "path": socket_path}}


def info(spec: str, *, fmt: str | None = None) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``spec`` (a path or ``json:`` filename), under limits."""
    cmd = [binary(), "info", "--output=json"]
    if fmt:
        cmd += ["-f", fmt]
    cmd.append(spec)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=INFO_TIMEOUT, preexec_fn=_limits, check=False  # noqa: PLW1509
        )
    except subprocess.TimeoutExpired as e:
        raise ToolTimedOut(f"qemu-img info did not finish within {INFO_TIMEOUT:.0f}s: refusing the image") from e
    except FileNotFoundError as e:
        raise ToolError("qemu-img not found: install qemu-utils", cmd=cmd) from e
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        if proc.returncode < 0:
            raise FormatError(
                f"qemu-img info was stopped by signal {-proc.returncode} (CPU or memory limit): "
                "refusing the image"
            )
        raise FormatError(f"qemu-img cannot parse the image: {_last_line(stderr)}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ToolError("qemu-img info printed no JSON", cmd=cmd, stderr=stderr) from e
    return result


def check(spec: str) -> None:
    """``qemu-img check``: refuse an image whose metadata is corrupt (e.g. a truncated qcow2, which
    qemu would otherwise read as zeros past the end). Leaked clusters are harmless; formats without a
    checker pass."""
    cmd = [binary(), "check", "--output=json", spec]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=INFO_TIMEOUT, preexec_fn=_limits, check=False  # noqa: PLW1509
        )
    except subprocess.TimeoutExpired as e:
        raise ToolTimedOut(f"qemu-img check did not finish within {INFO_TIMEOUT:.0f}s: refusing the image") from e
    if proc.returncode in (0, 3, 63):
        return
    stderr = proc.stderr.decode(errors="replace")
    try:
        corruptions = json.loads(proc.stdout).get("corruptions", 0)
    except json.JSONDecodeError:
        corruptions = 0
    if proc.returncode == 2 or corruptions:
        first = next((ln for ln in stderr.splitlines() if ln.startswith("ERROR")), "")
        raise FormatError(f"image is corrupt or truncated: qemu-img check found {corruptions} corruptions"
                          + (f" ({first.removeprefix('ERROR: ')})" if first else ""))
    raise FormatError(f"qemu-img check failed: {_last_line(stderr)}")


def data_end(spec: str) -> int:
    """The end of the highest data extent in the image file (``qemu-img map``), under the same limits
    as ``info``. ``qemu-img check`` says nothing for some formats (vdi): a truncated one would read
    its missing blocks as zeros, so the caller compares this with the size of the file."""
    cmd = [binary(), "map", "--output=json", spec]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, timeout=INFO_TIMEOUT, preexec_fn=_limits, check=False  # noqa: PLW1509
        )
    except subprocess.TimeoutExpired as e:
        raise ToolTimedOut(f"qemu-img map did not finish within {INFO_TIMEOUT:.0f}s: refusing the image") from e
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise FormatError(f"qemu-img cannot map the image: {_last_line(stderr)}")
    try:
        extents = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ToolError("qemu-img map printed no JSON", cmd=cmd, stderr=stderr) from e
    return max((int(e["offset"]) + int(e["length"]) for e in extents
                if e.get("data") and e.get("offset") is not None), default=0)


def check_safe(data: dict[str, Any], *, expected_format: str, image_name: str | None = None) -> None:
    """Refuse what an untrusted image must not do. Messages say what was found."""
    found = data.get("format")
    if found != expected_format:
        raise UnsafeImage(
            f"image format mismatch: the header says {expected_format} but qemu-img reads {found}"
        )
    backing = data.get("backing-filename") or data.get("full-backing-filename")
    if backing:
        raise UnsafeImage(f"image has a backing file ({backing!r}); images with backing files are refused")
    if data.get("encrypted"):
        raise UnsafeImage("image is encrypted; encrypted images are not supported")
    specific = (data.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise UnsafeImage(f"image uses an external data file ({specific['data-file']!r}); refused")
    for extent in specific.get("extents") or []:
        name = extent.get("filename")
        if image_name is not None and name and name != image_name:
            raise UnsafeImage(f"vmdk extent points outside the image file ({name!r}); refused")


def convert(
    spec: str,
    dest: str,
    *,
    block_device: bool = False,
    target_is_zero: bool = False,
    on_progress: Callable[[float], None] | None = None,
    stall_timeout: float = 120.0,
) -> None:
    """``qemu-img convert`` to raw at ``dest``. ``on_progress`` gets 0..100.

    ``-W`` (out-of-order writes) measured ~1.5x faster than the default here; ``-t writeback`` keeps
    the target in the page cache until the final fsync, which we do ourselves. A convert whose progress
    does not move for ``stall_timeout`` seconds is killed (qemu's network drivers can hang).
    """
    cmd = [binary(), "convert", "-p", "-W", "-m", "8", "-t", "writeback", "-O", "raw"]
    if block_device:
        cmd.append("-n")
        if target_is_zero:
            cmd.append("--target-is-zero")
    cmd += [spec, dest]
    log.debug("running cmd=%s", cmd)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    except FileNotFoundError as e:
        raise ToolError("qemu-img not found: install qemu-utils", cmd=cmd) from e
    stderr_chunks: list[bytes] = []
    assert proc.stderr is not None and proc.stdout is not None
    drain = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    last_change = time.monotonic()
    stalled = threading.Event()

    def watchdog() -> None:
        while proc.poll() is None:
            if time.monotonic() - last_change > stall_timeout:
                stalled.set()
                proc.kill()
                return
            time.sleep(min(1.0, stall_timeout / 4))

    threading.Thread(target=watchdog, daemon=True).start()
    pending = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        pending += chunk
        matches = list(_PROGRESS.finditer(pending))
        if matches:
            last_change = time.monotonic()
            if on_progress is not None:
                on_progress(float(matches[-1].group(1)))
            pending = pending[matches[-1].end() :]
    rc = proc.wait()
    drain.join()
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    if stalled.is_set():
        raise TemporaryError(f"qemu-img convert made no progress for {stall_timeout:.0f}s and was stopped")
    if rc != 0:
        raise ToolError(f"qemu-img convert failed (exit {rc})", cmd=cmd, stderr=stderr)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("qemu-img: ") if lines else "no error message"
