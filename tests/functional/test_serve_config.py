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
    assert cfg["controller"]["clone_host_assisted"] is False
    forced = serve("--data-dir", str(tmp_path / "d"), "--clone-host-assisted", "--upload-resume-interval", "2Mi",
                   "--show-config")
    assert json.loads(forced.stdout)["controller"]["upload_resume_interval"] == 2 << 20  # a quantity, as sizes are
    assert json.loads(forced.stdout)["controller"]["clone_host_assisted"] is True
    assert cfg["upload_proxy"] == {"address": "127.0.0.1", "port": 8443, "url": "https://127.0.0.1:8443"}
    assert cfg["console"] == {"address": "127.0.0.1", "port": 8444, "url": "https://127.0.0.1:8444/ui/"}
    assert not (tmp_path / "d").exists(), "--show-config must not create anything"


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000 is out of range"),
    (["--address", "localhost:1"], "is not an IP address"),
    (["--console-port", "-1"], "--console-port -1 is out of range 0-65535"),
    (["--max-running-pods", "0"], "--max-running-pods must be at least 1"),
    (["--filesystem-overhead", "1.5"], "--filesystem-overhead must be in [0, 1)"),
    (["--data-dir", "/nonexistent/dir/data"], "parent directory /nonexistent/dir does not exist"),
    (["--block-device", "/dev/nonexistent-disk"], "--block-device /dev/nonexistent-disk does not exist"),
    (["--upload-resume-interval", "1Mo"], "--upload-resume-interval: "),
])
def test_bad_settings_fail_at_start(args: list[str], message: str) -> None:
    proc = serve(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_the_data_directory_and_everything_secret_in_it_is_owner_only(tmp_path: Path) -> None:
    import os
    import stat

    from cdi.cli.runtime import Runtime
    from cdi.cli.serve import ServeConfig
    from cdi.kube import SECRET

    data = tmp_path / "d"
    data.mkdir(mode=0o755)  # an existing, world-readable directory is tightened too
    cfg = ServeConfig(data_dir=str(data))
    cfg.api.port = 0
    cfg.upload_proxy.port = 0
    cfg.console.port = 0
    runtime = Runtime(cfg).start()
    try:
        runtime.client.create(SECRET, {"metadata": {"name": "s", "namespace": "default"}, "data": {"k": "dg=="}})
    finally:
        runtime.stop()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data, *data.iterdir(), *(data / "tls").iterdir()]}
    assert modes["d"] == 0o700, modes
    for name in ("state.db", "token", "kubeconfig", "apiserver.key", "tls", "upload-token.key"):
        found = [m for n, m in modes.items() if n == name]
        assert found and found[0] & 0o077 == 0, (name, oct(found[0]) if found else None)
    for name, mode in modes.items():
        if name.startswith("state.db"):
            assert mode & 0o077 == 0, (name, oct(mode))
    assert os.access(data / "state.db", os.R_OK)
