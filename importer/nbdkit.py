"""Thin wrapper around nbdkit's curl plugin: serves an HTTP(S) URL as a read-only NBD export on a unix
socket, so qemu-img can convert straight from the network with random access and no scratch file.
The retry filter reopens the connection when a request fails. The binary is ``$NBDKIT`` or ``nbdkit``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from types import TracebackType

from importer.errors import ToolError
from importer.http_options import HttpOptions


def available() -> bool:
    return shutil.which(os.environ.get("NBDKIT", "nbdkit")) is not None


class CurlExport:
    """``with CurlExport(url, options) as sock:`` gives the unix socket path of the export."""

    def __init__(self, url: str, options: HttpOptions, *, workdir: str | None = None) -> None:
        self.url = url
        self.options = options
        self._dir = tempfile.mkdtemp(prefix="cdi-nbd-", dir=workdir)
        self.socket = os.path.join(self._dir, "nbd.sock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = os.path.join(self._dir, "nbdkit.log")

    def __enter__(self) -> str:
        nbdkit = os.environ.get("NBDKIT", "nbdkit")
        cmd = [
            nbdkit, "--foreground", "--readonly", "--exit-with-parent", "--unix", self.socket,
            "--filter=retry", "curl", f"url={self.url}", f"timeout={int(self.options.timeout)}",
            "retry-delay=1", f"retries={max(1, self.options.retries)}", "followlocation=true",
        ]
        if self.options.user is not None:
            cmd.append(f"user={self.options.user}")
            pw_file = os.path.join(self._dir, "password")
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.options.password or "")
            cmd.append(f"password=+{pw_file}")
        if self.options.ca_file:
            cmd.append(f"cainfo={self.options.ca_file}")
        if self.options.insecure:
            cmd.append("sslverify=false")
        for name, value in self.options.headers:
            cmd.append(f"header={name}: {value}")
        log_f = open(self._log, "wb")  # noqa: SIM115 - closed right after Popen
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_f, stderr=log_f)
        except FileNotFoundError as e:
            raise ToolError("nbdkit not found: install nbdkit", cmd=cmd) from e
        finally:
            log_f.close()
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise ToolError("nbdkit did not start", cmd=cmd, stderr=self._read_log())
            time.sleep(0.01)
        return self.socket

    def _read_log(self) -> str:
        try:
            with open(self._log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
