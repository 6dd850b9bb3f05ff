"""``cdi serve --show-config`` and bad settings, without starting anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdi.cli.main", "serve", *args], capture_output=True, text=True,
                          timeout=60)


def test_show_config_prints_resolved_settings(tmp_path: Path) -> None:
    proc = serve("--data-dir", str(tmp_path / "d"), "--port", "7443", "--max-running-pods", "2", "--show-config")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["data_dir"] == str((tmp_path / "d").resolve())
    assert cfg["api"] == {"address": "127.0.0.1", "port": 7443, "watch_history": 10000}
    assert cfg["node"]["max_running_pods"] == 2
    assert cfg["controller"]["filesystem_overhead"] == 0.06
    assert not (tmp_path / "d").exists(), "--show-config must not create anything"


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000 is out of range"),
    (["--address", "localhost:1"], "is not an IP address"),
    (["--max-running-pods", "0"], "--max-running-pods must be at least 1"),
    (["--filesystem-overhead", "1.5"], "--filesystem-overhead must be in [0, 1)"),
    (["--data-dir", "/nonexistent/dir/data"], "parent directory /nonexistent/dir does not exist"),
    (["--block-device", "/dev/nonexistent-disk"], "--block-device /dev/nonexistent-disk does not exist"),
])
def test_bad_settings_fail_at_start(args: list[str], message: str) -> None:
    proc = serve(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
