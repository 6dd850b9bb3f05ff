"""The local node's path contract: in-pod paths map to host paths, and nothing else of the host is reachable."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cdi.podenv import MountsError, PathMap
from importer.errors import PermanentError
from importer.job_env import job_from_env


def test_paths_under_mounts_map_to_the_host_and_dotdot_cannot_climb_out(tmp_path: Path) -> None:
    paths = PathMap({"CDI_VOLUME_MOUNTS": json.dumps({"/data": str(tmp_path / "vol")})})
    assert paths("/data/disk.img") == str(tmp_path / "vol") + "/disk.img"
    for outside in ("/etc/shadow", "/data/../etc/shadow", "/datax/disk.img", "/"):
        with pytest.raises(MountsError, match="outside the pod's volumes"):
            paths(outside)
    assert not paths.exists("/etc/passwd")


def test_the_working_directory_is_the_pods_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = PathMap({"CDI_VOLUME_MOUNTS": "{}"})  # a pod without volumes is still confined
    assert paths(str(tmp_path / "status.json")) == str(tmp_path / "status.json")
    assert paths("relative.log") == str(tmp_path / "relative.log")
    with pytest.raises(MountsError):
        paths("/etc/passwd")
    with pytest.raises(MountsError):
        paths("../../etc/passwd")


def test_outside_a_local_node_paths_are_used_as_they_are() -> None:
    assert PathMap({})("/etc/anything") == "/etc/anything"


@pytest.mark.parametrize("env, words", [
    ({"IMPORTER_SOURCE": "http", "IMPORTER_ENDPOINT": "/etc/shadow"}, "not an http(s) URL"),
    ({"IMPORTER_SOURCE": "http", "IMPORTER_ENDPOINT": "file:///etc/shadow"}, "not an http(s) URL"),
    ({"IMPORTER_SOURCE": "file", "IMPORTER_ENDPOINT": "file:///etc/shadow"}, "outside the pod's volumes"),
    ({"IMPORTER_SOURCE": "none", "IMPORTER_TARGET_PATH": "/etc/cdi-overwritten"}, "outside the pod's volumes"),
])
def test_an_importer_pod_cannot_read_or_write_host_files(env: dict[str, str], words: str, tmp_path: Path) -> None:
    env = {"CDI_VOLUME_MOUNTS": json.dumps({"/data": str(tmp_path)}), "IMPORTER_IMAGE_SIZE": "1Mi", **env}
    with pytest.raises((PermanentError, MountsError), match=re.escape(words)):
        job_from_env(env)
    assert not os.path.exists("/etc/cdi-overwritten")
