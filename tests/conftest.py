"""Shared fixtures: a session image factory (real qemu-img, real compressors) and real HTTP servers."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import images
from tests.support.httpserver import HttpServer


class ImageFactory:
    """Makes each image once per session: ``raw``, ``qcow2``, ``vmdk``, ..., ``raw.xz``, ``qcow2.gz``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = images.make_raw(root / "disk.raw", 8 << 20)
        self._cache: dict[str, Path] = {"raw": self.raw}

    def get(self, name: str) -> Path:
        if name in self._cache:
            return self._cache[name]
        base, _, comp = name.partition(".")
        if comp:
            src = self.get(base)
            path = images.compress(src, {"gz": "gzip", "xz": "xz", "zst": "zstd", "bz2": "bzip2"}[comp])
        else:
            options = {
                "qcow2c": ("qcow2", ["-c"]),
                "vpcfixed": ("vpc", ["-o", "subformat=fixed,force_size=on"]),
                "vpc": ("vpc", ["-o", "force_size=on"]),
                "vhdx": ("vhdx", []),
                "vmdkstream": ("vmdk", ["-o", "subformat=streamOptimized"]),
            }
            fmt, extra = options.get(base, (base, []))
            path = self.root / f"disk.{base}"
            images.qemu_img("convert", "-f", "raw", "-O", fmt, *extra, str(self.raw), str(path))
        self._cache[name] = path
        return path

    def expected_raw(self, name: str) -> Path:
        """What qemu-img itself makes of the image: the reference for byte comparison."""
        return self.raw


@pytest.fixture(scope="session")
def image_factory(tmp_path_factory: pytest.TempPathFactory) -> ImageFactory:
    return ImageFactory(tmp_path_factory.mktemp("images"))


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[HttpServer]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    with HttpServer(ssl_context=ctx) as server:
        yield server


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)
