"""The registry source against a real docker-registry on 127.0.0.1, images pushed by real skopeo.

containerDisk images in KubeVirt's layout (the disk under /disk/), raw and qcow2, gzip, zstd and
uncompressed layers, a multi-arch index, several layers and whiteouts; TLS with a CA and basic auth;
every refusal (wrong credentials, missing tag, no disk, tampered layer) with its reason, and no volume
left behind when it fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from importer import oci
from importer.errors import Stalled
from importer.http_options import HttpOptions
from importer.pipeline import ImportJob, run_import
from importer.sources.registry import NoDisk
from tests.support import images
from tests.support.registry import (
    OciLayout,
    Registry,
    container_disk,
    host_arch,
    layout_blobs,
    push_new_image,
    registry_fixture,  # noqa: F401  (the registry fixture)
    tls_auth_registry_fixture,  # noqa: F401  (the tls_auth_registry fixture)
)
from tests.support.s3server import CuttingProxy


def _job(url: str, out: Path, **http: object) -> ImportJob:
    options = HttpOptions(backoff=0.05, retries=2, **http)  # type: ignore[arg-type]
    return ImportJob(source=url, target=str(out), http=options, scratch_dir=str(out.parent / "scratch"))


@pytest.mark.parametrize(("fmt", "compression"), [("raw", "gzip"), ("qcow2", "zstd")])
def test_disk_streams_out_of_its_layer(image_factory, registry: Registry, tmp_path, fmt, compression) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get(fmt), compression=compression)
    digest = registry.push(layout, f"disks/{fmt}-{compression}", "v1", src_tag="latest")
    out = tmp_path / "out.img"
    result = run_import(_job(registry.url(f"disks/{fmt}-{compression}", "v1"), out, insecure=True))
    assert result.formats[-1] == fmt
    assert images.same_content(out, image_factory.raw)
    if fmt == "raw":
        assert result.scratch_bytes == 0  # streamed from the layer into the volume
    assert result.source_digest == digest


def test_uncompressed_layer_converts_qcow2_as_it_streams_without_scratch(image_factory, registry: Registry,
                                                                        tmp_path) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("qcow2"), compression=None)
    registry.push_layout_http(layout, "disks/plain", "v1", src_tag="latest")  # skopeo would gzip the layer on its way
    out = tmp_path / "out.img"
    result = run_import(_job(registry.url("disks/plain", "v1"), out, insecure=True))
    assert result.scratch_bytes == 0  # a qemu-img-written qcow2 streams in order: no scratch, no Range reads
    assert images.same_content(out, image_factory.raw)


@pytest.mark.parametrize("manifests", ["oci", "v2s2"])
def test_multi_arch_index_picks_this_machine(image_factory, registry: Registry, tmp_path, manifests) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("qcow2"), arches=("arm64", "amd64", "s390x"))
    repo = f"disks/multi-{manifests}"
    digest = registry.push(layout, repo, "v1", src_tag="latest", manifest_format=manifests)
    with registry.http() as http:  # what the registry now serves: an OCI index or a Docker manifest list
        kind = http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": oci.ACCEPT}).json()["mediaType"]
    assert kind == {"oci": oci.OCI_INDEX, "v2s2": oci.DOCKER_LIST}[manifests]
    out = tmp_path / "out.img"
    result = run_import(_job(registry.url(repo, "v1"), out, insecure=True))
    assert images.same_content(out, image_factory.raw)
    assert result.source_digest == digest  # the index's digest, as the tag points at it
    # pinned by digest, the same image
    out2 = tmp_path / "out2.img"
    run_import(_job(registry.url(repo, digest), out2, insecure=True))
    assert images.same_content(out2, image_factory.raw)
    # source.registry.platform.architecture picks another image of the index
    other = "s390x" if host_arch() != "s390x" else "arm64"
    out3 = tmp_path / "out3.img"
    run_import(_job(registry.url(repo, "v1"), out3, insecure=True, architecture=other))
    assert out3.read_bytes().startswith(f"not the {host_arch()} disk: {other}".encode())
    with pytest.raises(oci.PlatformNotFound, match="no linux/riscv64 image in its index"):
        run_import(_job(registry.url(repo, "v1"), tmp_path / "out4.img", insecure=True, architecture="riscv64"))


def test_last_layer_with_a_disk_wins_and_whiteouts_hide(image_factory, registry: Registry, tmp_path) -> None:
    layout = OciLayout(tmp_path / "layout")
    old = layout.layer({"disk/": None, "disk/old.img": b"old disk".ljust(1 << 20, b"\0")})
    new = layout.layer({"disk/": None, "disk/new.qcow2": image_factory.get("qcow2")}, compression="zstd")
    other = layout.layer({"etc/": None, "etc/motd": b"hello"})
    gone = layout.layer({"disk/.wh.new.qcow2": None})
    layout.tag(layout.image([old, new, other]), "two")
    layout.tag(layout.image([old, new, gone]), "whiteout")
    layout.tag(layout.image([old, new, layout.layer({"disk/.wh..wh..opq": None})]), "opaque")
    layout.tag(layout.image([old, new, layout.layer({".wh.disk": None})]), "nodiskdir")
    layout.tag(layout.image([other]), "nodisk")
    layout.tag(layout.image([old, new, layout.layer({".wh..wh..opq": None})]), "rootopaque")
    layout.tag(layout.image([old, new, layout.layer({"disk/": None, "disk/new.qcow2/": None})]), "nowadir")
    for tag in ("two", "whiteout", "opaque", "nodiskdir", "nodisk", "rootopaque", "nowadir"):
        registry.push(layout, "disks/layers", tag)
    out = tmp_path / "out.img"
    run_import(_job(registry.url("disks/layers", "two"), out, insecure=True))
    assert images.same_content(out, image_factory.raw)
    out.unlink()
    run_import(_job(registry.url("disks/layers", "whiteout"), out, insecure=True))
    assert out.read_bytes()[:8] == b"old disk"  # the newer disk was deleted by the last layer
    out.unlink()
    run_import(_job(registry.url("disks/layers", "nowadir"), out, insecure=True))
    assert out.read_bytes()[:8] == b"old disk"  # disk/new.qcow2 became a directory: the file is gone
    out.unlink()
    for tag in ("opaque", "nodiskdir", "nodisk", "rootopaque"):
        with pytest.raises(NoDisk, match="Failed to find VM disk image file in the container image"):
            run_import(_job(registry.url("disks/layers", tag), out, insecure=True))
        assert not out.exists()


def test_two_disks_in_one_layer_are_refused(registry: Registry, tmp_path) -> None:
    layout = OciLayout(tmp_path / "layout")
    layout.tag(layout.image([layout.layer({"disk/a.img": b"a" * 4096, "disk/b.img": b"b" * 4096})]), "v1")
    registry.push(layout, "disks/two", "v1")
    out = tmp_path / "out.img"
    with pytest.raises(NoDisk, match="more than one file"):
        run_import(_job(registry.url("disks/two", "v1"), out, insecure=True))
    assert not out.exists()


def test_one_disk_entry_repeated_is_refused_saying_so(registry: Registry, tmp_path) -> None:
    layout = OciLayout(tmp_path / "layout")
    layout.tag(layout.image([layout.layer({"disk/disk.img": b"a" * 4096, "./disk/disk.img": b"b" * 4096})]), "v1")
    registry.push(layout, "disks/repeated", "v1")
    out = tmp_path / "out.img"
    with pytest.raises(NoDisk, match=r"holds disk/disk.img 2 times \(the same tar entry repeated\): rebuild"):
        run_import(_job(registry.url("disks/repeated", "v1"), out, insecure=True))
    assert not out.exists()


@pytest.mark.parametrize(("compression", "how"), [("gzip", "recompressed"), ("gzip", "flipped"), (None, "flipped")])
def test_tampered_layer_fails_with_digest_mismatch(image_factory, registry: Registry, tmp_path, compression,
                                                   how) -> None:
    fmt = "raw" if compression else "qcow2"  # qcow2 in a plain layer: converted as it streams
    name = f"{how}.img"  # a layer of its own (the registry stores each blob once)
    layout = container_disk(tmp_path / "layout", image_factory.get(fmt), compression=compression, name=name)
    repo = f"disks/tampered-{compression or 'plain'}-{how}"
    if compression:
        registry.push(layout, repo, "v1", src_tag="latest")
    else:
        registry.push_layout_http(layout, repo, "latest")
    layer = next(layout_blobs(layout, "latest"))
    stored = registry.stored_blob(layer["digest"])
    data = bytearray(stored.read_bytes())
    if how == "recompressed":  # the same disk, recompressed: a valid layer, but not the one the manifest names
        import zlib

        comp = zlib.compressobj(9, zlib.DEFLATED, 31)
        data = bytearray(comp.compress(zlib.decompress(bytes(data), 47)) + comp.flush())
    else:  # one byte in the middle: gzip fails to decode (the digest is named as the cause); qcow2 still opens
        data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    out = tmp_path / "out.img"
    with pytest.raises(oci.DigestMismatch, match="layer digest mismatch"):
        run_import(_job(registry.url(repo, "latest" if not compression else "v1"), out, insecure=True))
    assert not out.exists()


def test_refusals_name_the_cause(image_factory, registry: Registry, tmp_path) -> None:
    out = tmp_path / "out.img"
    with pytest.raises(oci.ImageNotFound, match="not found in the registry"):
        run_import(_job(registry.url("disks/none", "v9"), out, insecure=True))
    with pytest.raises(oci.RegistryError, match="insecureRegistries"):
        run_import(_job(registry.url("disks/none", "v9"), out))  # plain http, not declared insecure
    with pytest.raises(oci.InvalidReference):
        run_import(_job("docker://127.0.0.1:1/Upper/Case", out))
    assert not out.exists()


def test_tls_and_basic_auth(image_factory, tls_auth_registry: Registry, tmp_path) -> None:
    reg = tls_auth_registry
    layout = container_disk(tmp_path / "layout", image_factory.get("qcow2"))
    digest = reg.push(layout, "private/disk", "v1", src_tag="latest")
    url = reg.url("private/disk", "v1")
    out = tmp_path / "out.img"
    result = run_import(_job(url, out, ca_file=str(reg.ca_file), user="cdi", password="s3cret-pw"))
    assert images.same_content(out, image_factory.raw)
    assert result.source_digest == digest
    out.unlink()
    with pytest.raises(oci.Unauthorized, match="check the secretRef"):
        run_import(_job(url, out, ca_file=str(reg.ca_file), user="cdi", password="wrong"))
    with pytest.raises(oci.Unauthorized, match="requires credentials"):
        run_import(_job(url, out, ca_file=str(reg.ca_file)))
    with pytest.raises(oci.RegistryError, match="certConfigMap"):
        run_import(_job(url, out, user="cdi", password="s3cret-pw"))
    assert not out.exists()


def test_resolve_digest_follows_a_new_push(image_factory, registry: Registry, tmp_path) -> None:
    disk = image_factory.get("raw")
    first = push_new_image(registry, tmp_path, disk, "disks/moving", "latest", label="one")
    assert oci.resolve_digest(registry.url("disks/moving", "latest"), insecure=True) == first
    second = push_new_image(registry, tmp_path, disk, "disks/moving", "latest", label="two")
    assert second != first
    assert oci.resolve_digest(registry.url("disks/moving", "latest"), insecure=True) == second
    with pytest.raises(oci.ImageNotFound):
        oci.resolve_digest(registry.url("disks/moving", "nope"), insecure=True)


@pytest.mark.parametrize(("url", "expected"), [
    ("docker://127.0.0.1:5000/disks/a:v1", ("127.0.0.1:5000", "disks/a", "v1", None)),
    ("docker://quay.io/containerdisks/fedora", ("quay.io", "containerdisks/fedora", "latest", None)),
    ("docker://kubevirt/cirros-container-disk-demo:v1.0", ("registry-1.docker.io",
                                                           "kubevirt/cirros-container-disk-demo", "v1.0", None)),
    ("docker://busybox", ("registry-1.docker.io", "library/busybox", "latest", None)),
    ("docker://localhost/a@sha256:" + "a" * 64, ("localhost", "a", None, "sha256:" + "a" * 64)),
])
def test_reference_parsing(url: str, expected: tuple[object, ...]) -> None:
    ref = oci.Reference.parse(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


def test_bearer_token_auth(image_factory, tmp_path) -> None:
    with Registry(tmp_path / "registry", auth=("robot", "t0ken-pw"), token=True) as reg:
        assert reg.token_server is not None
        digest = reg.push(container_disk(tmp_path / "layout", image_factory.get("raw")), "team/disk", "v1",
                          src_tag="latest")
        out = tmp_path / "out.img"
        url = reg.url("team/disk", "v1")
        result = run_import(_job(url, out, insecure=True, user="robot", password="t0ken-pw"))
        assert images.same_content(out, image_factory.raw) and result.source_digest == digest
        assert any("scope=repository%3Ateam%2Fdisk%3Apull" in r for r in reg.token_server.requests)
        out.unlink()
        with pytest.raises(oci.Unauthorized, match="token service refused the credentials"):
            run_import(_job(url, out, insecure=True, user="robot", password="wrong"))
        with pytest.raises(oci.Unauthorized, match="requires credentials"):
            run_import(_job(url, out, insecure=True))
        assert not out.exists()


def test_a_layer_cut_mid_body_resumes_with_a_range(image_factory, registry: Registry, tmp_path) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("raw"), compression="zstd")
    digest = registry.push(layout, "disks/cut", "v1", src_tag="latest")
    with CuttingProxy(registry.port, cut_after=1 << 20) as proxy:
        out = tmp_path / "out.img"
        url = f"docker://127.0.0.1:{proxy.port}/disks/cut:v1"
        result = run_import(_job(url, out, insecure=True))
        assert proxy.cut == 1
    assert result.resumes == 1 and result.source_digest == digest
    assert images.same_content(out, image_factory.raw)


def test_tampered_manifest_fails_with_digest_mismatch(image_factory, registry: Registry, tmp_path) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("raw"), compression="zstd", name="m.img")
    digest = registry.push(layout, "disks/tampered-manifest", "v1", src_tag="latest")
    stored = registry.stored_blob(digest)
    stored.write_bytes(stored.read_bytes() + b" ")  # still valid JSON, no longer the digest
    out = tmp_path / "out.img"
    with pytest.raises(oci.DigestMismatch, match="digest"):
        run_import(_job(registry.url("disks/tampered-manifest", "v1"), out, insecure=True))
    with pytest.raises(oci.DigestMismatch, match=f"not {digest} as asked"):
        run_import(_job(registry.url("disks/tampered-manifest", digest), out, insecure=True))
    assert not out.exists()


class _FlippingProxy:
    """An HTTP proxy before the registry that flips one byte in the middle of blob answers: only in
    answers to ``Range`` requests (``ranged=True``) or only in full answers. With ``trickle``, it flips
    nothing but sends the first ``trickle`` blob answers' first third at once (none of a ranged
    answer), then one byte every 0.2 s on the same connection."""

    def __init__(self, registry: Registry, *, ranged: bool = False, trickle: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        upstream = httpx.Client(base_url=registry.base.replace("docker://", "http://"))
        proxy = self
        self.flipped = 0
        self.trickle = trickle
        self.stopped = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, body: bool) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                resp = upstream.request(self.command, self.path, headers=headers)
                data = bytearray(resp.content)
                slow = body and "/blobs/" in self.path and proxy.trickle > 0
                if slow:
                    proxy.trickle -= 1
                elif (body and "/blobs/" in self.path and len(data) > 4096
                        and ("range" in {k.lower() for k in headers}) == ranged):
                    data[len(data) // 2] ^= 0xFF
                    proxy.flipped += 1
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if body else resp.headers.get("content-length", 0)))
                self.end_headers()
                if slow:
                    third = 0 if "range" in {k.lower() for k in headers} else len(data) // 3
                    self.wfile.write(bytes(data[:third]))
                    self.wfile.flush()
                    for i in range(third, len(data)):
                        if proxy.stopped.wait(0.2):
                            return
                        self.wfile.write(bytes(data[i:i + 1]))
                        self.wfile.flush()
                elif body:
                    self.wfile.write(bytes(data))

            def do_GET(self) -> None:
                self._forward(True)

            def do_HEAD(self) -> None:
                self._forward(False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._upstream = upstream
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FlippingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()


@pytest.mark.parametrize("ranged", [True, False], ids=["ranged-answers-altered", "full-answers-altered"])
def test_qcow2_in_a_plain_layer_never_takes_unverified_bytes(image_factory, registry: Registry, tmp_path,
                                                             ranged) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("qcow2"), compression=None, name="flip.img")
    registry.push_layout_http(layout, "disks/flip", "v1", src_tag="latest")
    out = tmp_path / "out.img"
    with _FlippingProxy(registry, ranged=ranged) as proxy:
        url = f"docker://127.0.0.1:{proxy.port}/disks/flip:v1"
        if ranged:  # nothing is read with ranges: every byte of the volume passed the layer's digest
            run_import(_job(url, out, insecure=True))
            assert proxy.flipped == 0
            assert images.same_content(out, image_factory.raw)
        else:
            with pytest.raises(oci.DigestMismatch, match="layer digest mismatch"):
                run_import(_job(url, out, insecure=True))
            assert proxy.flipped >= 1
            assert not out.exists()


def test_a_trickling_registry_is_a_stall_not_a_hang(image_factory, registry: Registry, tmp_path) -> None:
    layout = container_disk(tmp_path / "layout", image_factory.get("raw"), name="trickle.img")
    registry.push(layout, "disks/trickle", "v1", src_tag="latest")
    limits = {"speed_limit": 64 << 10, "speed_time": 1.0}
    # the first answer trickles after a third: dropped after a second, continued with a range
    with _FlippingProxy(registry, trickle=1) as proxy:
        out = tmp_path / "out.img"
        result = run_import(_job(f"docker://127.0.0.1:{proxy.port}/disks/trickle:v1", out, insecure=True, **limits))
    assert result.resumes >= 1
    assert images.same_content(out, image_factory.raw)
    # every answer trickles: Stalled after max_stalled_retries, in seconds rather than never
    with _FlippingProxy(registry, trickle=100) as proxy:
        out2 = tmp_path / "out2.img"
        with pytest.raises(Stalled, match="the registry stalled: less than 65536 bytes/s for 1s"):
            run_import(_job(f"docker://127.0.0.1:{proxy.port}/disks/trickle:v1", out2, insecure=True,
                            max_stalled_retries=1, **limits))
    assert not out2.exists()
