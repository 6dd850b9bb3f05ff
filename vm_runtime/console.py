"""Attach a terminal to a guest's serial console (the launcher's ``consoleSocket``).

``attach`` copies bytes both ways between a unix socket and a pair of streams until the escape
byte (Ctrl+], as in ``virtctl console``) is typed, the input ends or the guest side closes. It
works on any file descriptors, so tests drive it with pipes; ``main`` puts a real terminal in raw
mode around it. qemu serves one console client at a time: a second client waits until the first
one leaves. The guest output is also in the launcher's console log, whoever is attached.

    python -m vm_runtime.console PATH    # PATH: the serial socket or the launcher status file
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ESCAPE = b"\x1d"  # Ctrl+]
_CHUNK = 4096


class ConsoleError(Exception):
    """The console cannot be reached."""


def _fd(stream: IO[bytes] | IO[str] | int) -> int:
    return stream if isinstance(stream, int) else stream.fileno()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(sock: socket.socket, in_fd: int, out_fd: int, *, escape: bytes = ESCAPE) -> str:
    """Copy in_fd -> sock and sock -> out_fd; return "escape", "input-closed" or "console-closed"."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(in_fd, selectors.EVENT_READ, "in")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "sock":
                    data = sock.recv(_CHUNK)
                    if not data:
                        return "console-closed"
                    _write_all(out_fd, data)
                    continue
                data = os.read(in_fd, _CHUNK)
                if not data:
                    return "input-closed"
                cut = data.find(escape)
                if cut >= 0:
                    sock.sendall(data[:cut])
                    return "escape"
                sock.sendall(data)
    finally:
        sel.close()


def connect(path: Path | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise ConsoleError(f"cannot connect to the console at {path}: {e.strerror or e}") from e
    return sock


def attach(
    path: Path | str,
    stdin: IO[bytes] | IO[str] | int,
    stdout: IO[bytes] | IO[str] | int,
    *,
    escape: bytes = ESCAPE,
) -> str:
    """Connect to the console socket at ``path`` and relay until escape or end (see ``relay``)."""
    with connect(path) as sock:
        return relay(sock, _fd(stdin), _fd(stdout), escape=escape)


def socket_from(path: Path | str) -> Path:
    """Accept the socket itself or a launcher status file naming it in ``consoleSocket``."""
    p = Path(path)
    if p.suffix == ".json" or (p.is_file() and not p.is_socket()):
        try:
            status = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ConsoleError(f"cannot read launcher status {p}: {e}") from e
        if not isinstance(status, dict) or not status.get("consoleSocket"):
            raise ConsoleError(f"{p} names no consoleSocket (is the VM running?)")
        return Path(status["consoleSocket"])
    return p


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode for a tty (so Ctrl+C and friends reach the guest), untouched for anything else."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vm_runtime.console SOCKET|STATUS_FILE", file=sys.stderr)
        return 2
    try:
        path = socket_from(args[0])
        sock = connect(path)
    except ConsoleError as e:
        print(f"console: {e}", file=sys.stderr)
        return 1
    print(f"Successfully connected to {path}. Press Ctrl+] to exit.\r", file=sys.stderr)
    with sock, raw_terminal(sys.stdin.fileno()):
        why = relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    print(f"\r\nconsole: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
