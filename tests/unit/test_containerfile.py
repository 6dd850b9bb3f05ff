"""The Containerfile: what can be checked without a container engine (there is none on these machines).

Its Debian packages exist in Debian 12's archive (apt-cache, the same release as the image's base),
it copies every package pyproject installs, runs as the non-root user the chart's pods ask for, and
the programs the chart and the controller start in it exist: `cdi` subcommands and worker modules.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

from cdi.cli.main import build_parser
from cdi.node.images import WORKER_IMAGES

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "Containerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", TEXT))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def _apt_packages() -> list[str]:
    (run,) = [arg for op, arg in _instructions() if op == "RUN" and "apt-get install" in arg]
    words = shlex.split(run.split("apt-get install", 1)[1].split("&&", 1)[0])
    return [w for w in words if not w.startswith("-")]


def test_base_is_debian_12_and_every_package_exists_there() -> None:
    assert _instructions()[0] == ("FROM", "docker.io/library/debian:12-slim")
    assert Path("/etc/debian_version").read_text().startswith("12.")  # this machine's archive is the image's
    packages = _apt_packages()
    assert {"python3", "python3-venv", "qemu-utils", "nbdkit", "qemu-system-x86"} <= set(packages)
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(set(re.findall(r"(?m)^Package: (\S+)$", proc.stdout))) == sorted(set(packages))


def test_copies_every_installed_package_and_runs_as_the_charts_user() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {arg.split()[0] for op, arg in _instructions() if op == "COPY"}
    assert include <= copied
    assert pyproject["project"]["scripts"]["cdi"] == "cdi.cli.main:main"
    users = [arg for op, arg in _instructions() if op == "USER"]
    assert users == ["1000:1000"]
    helpers = (ROOT / "charts" / "cdi" / "templates" / "_helpers.tpl").read_text()
    assert "runAsUser: 1000" in helpers and "runAsNonRoot: true" in helpers
    env = " ".join(arg for op, arg in _instructions() if op == "ENV")
    assert "PATH=/opt/cdi/bin:" in env  # worker pods' `python3` is the one cdi is installed in


def test_programs_the_chart_and_the_controller_start_exist() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    rendered = []
    for template in (ROOT / "charts" / "cdi" / "templates").glob("*.yaml"):
        rendered += re.findall(r'command: \["cdi", "([a-z-]+)"\]', template.read_text())
    assert sorted(set(rendered)) == ["controller", "upload-api", "upload-proxy", "webhook"]
    assert set(rendered) <= commands
    for image in WORKER_IMAGES.values():
        for program in image.programs:
            assert program.command[:2] == ("python3", "-m")
            assert importlib.util.find_spec(program.command[2]) is not None, program.render()
    assert yaml.safe_load((ROOT / "charts" / "cdi" / "Chart.yaml").read_text())["appVersion"] == pyproject_version()


def pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
