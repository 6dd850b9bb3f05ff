"""A real container registry for tests: Debian's ``docker-registry`` on 127.0.0.1, and containerDisk
images built by hand in an OCI layout and pushed to it with ``skopeo``.

- ``Registry``: plain http, TLS with a self-signed CA (``tls=True``), htpasswd basic auth (bcrypt,
  ``auth=(user, password)``), on an ephemeral port; its storage directory is known, so a test can
  tamper with a blob the way a broken mirror would.
- ``OciLayout``: blobs, layers (tar, gzip, zstd; whiteouts), image manifests, multi-arch indexes and
  tags, written as files in an OCI image layout (KubeVirt's containerDisk layout: the disk under
  ``/disk/``).
- ``container_disk()`` builds a one-layer containerDisk layout; ``Registry.push()`` sends a layout's
  tag with ``skopeo copy``; ``push_new_image()`` replaces what a tag points at (its digest changes);
  ``Registry.push_layout_http()`` sends a layout with plain ``/v2/`` uploads, for what skopeo would
  rewrite (it compresses uncompressed layers on the way to a registry).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REGISTRY_BIN = os.environ.get("CDI_TEST_DOCKER_REGISTRY", "/usr/bin/docker-registry")
SKOPEO = os.environ.get("CDI_TEST_SKOPEO", "skopeo")
Descriptor = dict[str, Any]
FileSpec = bytes | Path | None  # content, a local file to copy, or None for a whiteout/directory marker


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class _HashingWriter(io.RawIOBase):
    """What tarfile writes: hashed as the uncompressed tar (diff_id), compressed, hashed again (digest)."""

    def __init__(self, out: Any, compression: str | None, level: int) -> None:
        self.out = out
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.size = 0
        if compression == "gzip":
            self.comp: Any = zlib.compressobj(level, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self.comp = zstandard.ZstdCompressor(level=level).compressobj()
        else:
            self.comp = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.diff.update(data)
        self._emit(self.comp.compress(data) if self.comp else data)
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.out.write(data)
            self.size += len(data)

    def finish(self) -> None:
        if self.comp is not None:
            self._emit(self.comp.flush())


class OciLayout:
    """An OCI image layout directory written by hand (the image-spec's layout, nothing more)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        if not (self.root / "index.json").exists():
            self._write_index([])

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_json(self, obj: Any, media_type: str) -> Descriptor:
        return self.add_blob(json.dumps(obj, separators=(",", ":")).encode(), media_type)

    def layer(self, files: dict[str, FileSpec], *, compression: str | None = "gzip",
              level: int = 1) -> tuple[Descriptor, str]:
        """A tar layer holding ``files`` (archive path -> bytes, a local Path, or None for a directory;
        a name like ``disk/.wh.disk.img`` is a whiteout). Returns its descriptor and diff_id."""
        tmp = self.root / "blobs" / f".layer-{os.getpid()}-{time.monotonic_ns()}"
        with open(tmp, "wb") as out:
            writer = _HashingWriter(out, compression, level)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, spec in files.items():
                    info = tarfile.TarInfo(name.rstrip("/"))
                    info.uid = info.gid = 107  # qemu's user in KubeVirt's containerDisk images
                    info.mtime = 0
                    if spec is None and not os.path.basename(name).startswith(".wh."):
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                    elif isinstance(spec, Path):
                        info.size = spec.stat().st_size
                        info.mode = 0o440
                        with open(spec, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        data = spec or b""
                        info.size = len(data)
                        info.mode = 0o440
                        tar.addfile(info, io.BytesIO(data))
            writer.finish()
        digest = "sha256:" + writer.blob.hexdigest()
        os.replace(tmp, self.blob_path(digest))
        desc = {"mediaType": LAYER_TYPES[compression], "digest": digest, "size": writer.size}
        return desc, "sha256:" + writer.diff.hexdigest()

    def image(self, layers: list[tuple[Descriptor, str]], *, arch: str = "amd64", os_name: str = "linux",
              labels: dict[str, str] | None = None) -> Descriptor:
        config = {
            "architecture": arch, "os": os_name,
            "config": {"Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        }
        cfg = self.add_json(config, OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                    "layers": [desc for desc, _ in layers]}
        desc = self.add_json(manifest, OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": os_name}
        return desc

    def index(self, manifests: list[Descriptor]) -> Descriptor:
        return self.add_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX)

    def tag(self, desc: Descriptor, tag: str) -> None:
        entries = [m for m in self._read_index() if _ref_name(m) != tag]
        entry = {k: v for k, v in desc.items() if k in ("mediaType", "digest", "size")}
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self._write_index([*entries, entry])

    def _read_index(self) -> list[Descriptor]:
        return list(json.loads((self.root / "index.json").read_text()).get("manifests", []))

    def _write_index(self, manifests: list[Descriptor]) -> None:
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def _ref_name(desc: Descriptor) -> str | None:
    return desc.get("annotations", {}).get("org.opencontainers.image.ref.name")


def container_disk(root: Path, disk: Path, *, tag: str = "latest", compression: str | None = "gzip",
                   name: str | None = None, arches: tuple[str, ...] = (), level: int = 1) -> OciLayout:
    """A containerDisk layout: one layer with ``disk/<name>``. With ``arches``, a multi-arch index
    whose every image carries a disk whose first bytes name its architecture (only the one for this
    machine holds ``disk`` unchanged)."""
    layout = OciLayout(root)
    member = f"disk/{name or disk.name}"
    if not arches:
        desc = layout.image([layout.layer({"disk/": None, member: disk}, compression=compression, level=level)])
        layout.tag(desc, tag)
        return layout
    manifests = []
    for arch in arches:
        files: dict[str, FileSpec] = {"disk/": None, member: disk if arch == host_arch() else
                                      f"not the {host_arch()} disk: {arch}".encode().ljust(1 << 16, b"\0")}
        manifests.append(layout.image([layout.layer(files, compression=compression, level=level)], arch=arch))
    layout.tag(layout.index(manifests), tag)
    return layout


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TokenServer:
    """A registry token service (Docker's token auth): checks Basic credentials, grants the scopes
    asked for in a JWT signed by a key whose certificate the registry trusts (``x5c`` header)."""

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        import base64 as b64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        import jwt
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        ca = trustme.CA()
        self.cert_file = workdir / "token-ca.pem"
        ca.cert_pem.write_to_path(str(self.cert_file))
        key = ca.private_key_pem.bytes()
        x5c = [b64.b64encode(x509.load_pem_x509_certificate(ca.cert_pem.bytes()).public_bytes(Encoding.DER)).decode()]
        self.service, self.issuer = "cdi-test-registry", "cdi-test-tokens"
        self.requests: list[str] = []
        expected = "Basic " + b64.b64encode(f"{user}:{password}".encode()).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                outer.requests.append(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                now = int(time.time())
                claims = {"iss": outer.issuer, "sub": user, "aud": outer.service, "exp": now + 600,
                          "nbf": now - 60, "iat": now, "jti": os.urandom(8).hex(), "access": access}
                token = jwt.encode(claims, key, algorithm="ES256", headers={"x5c": x5c})
                body = json.dumps({"token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Registry:
    """``docker-registry`` on 127.0.0.1; ``with Registry(workdir) as reg:`` starts and stops it.
    ``auth`` alone: htpasswd (Basic); with ``token=True``: Bearer tokens from a ``TokenServer``."""

    workdir: Path
    tls: bool = False
    auth: tuple[str, str] | None = None
    token: bool = False
    token_server: TokenServer | None = None
    port: int = 0
    ca_file: Path | None = None  # the CA that signed the server's certificate (tls)
    cert_dir: Path | None = None  # ``ca.crt`` in a directory, as skopeo's --*-cert-dir wants it
    proc: subprocess.Popen[bytes] | None = None
    pushed: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def url(self, repo: str, ref: str = "latest") -> str:
        """``docker://127.0.0.1:PORT/repo:tag`` (or ``@sha256:...``), as a DataVolume names it."""
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"docker://{self.host}/{repo}{sep}{ref}"

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        storage = self.workdir / "storage"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                        "cache": {"blobdescriptor": ""}},  # no cache: a tampered blob is read as it is
            "http": {"addr": "", "secret": "cdi-tests"},
        }
        if self.tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_file = self.workdir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.workdir / "server.pem"))
            self.cert_dir = self.workdir / "certs.d"
            self.cert_dir.mkdir(exist_ok=True)
            shutil.copy(self.ca_file, self.cert_dir / "ca.crt")
            config["http"]["tls"] = {"certificate": str(self.workdir / "server.pem"),
                                     "key": str(self.workdir / "server.pem")}
        if self.auth and self.token:
            self.token_server = TokenServer(self.workdir, *self.auth)
            config["auth"] = {"token": {"realm": self.token_server.realm, "service": self.token_server.service,
                                        "issuer": self.token_server.issuer,
                                        "rootcertbundle": str(self.token_server.cert_file)}}
        elif self.auth:
            import bcrypt

            user, password = self.auth
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (self.workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "cdi-test", "path": str(self.workdir / "htpasswd")}}
        for _ in range(5):  # a port taken between choosing and binding: choose again
            self.port = _free_port()
            config["http"]["addr"] = self.host
            (self.workdir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
            with open(self.workdir / "registry.log", "wb") as log:
                self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.workdir / "config.yml")],
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.workdir / 'registry.log').read_text()[-2000:]}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pushing ---------------------------------------------------------------------------------

    def _skopeo_args(self, prefix: str) -> list[str]:
        """TLS and credential flags for skopeo (``prefix``: "dest-" for copy, "" for inspect)."""
        args = [f"--{prefix}cert-dir", str(self.cert_dir)] if self.tls else [f"--{prefix}tls-verify=false"]
        return args + ([f"--{prefix}creds", f"{self.auth[0]}:{self.auth[1]}"] if self.auth else [])

    def push(self, layout: OciLayout | Path, repo: str, tag: str = "latest", *, src_tag: str | None = None,
             manifest_format: str | None = None) -> str:
        """``skopeo copy --all oci:DIR:SRC_TAG docker://HOST/repo:tag``; returns the tag's manifest digest.
        ``manifest_format`` "v2s2": Docker v2 manifests (and a Docker manifest list) instead of OCI's."""
        root = layout.root if isinstance(layout, OciLayout) else Path(layout)
        fmt = ["--format", manifest_format] if manifest_format else []
        cmd = [SKOPEO, "copy", "--all", "--quiet", *fmt, *self._skopeo_args("dest-"),
               f"oci:{root}:{src_tag or tag}", f"docker://{self.host}/{repo}:{tag}"]
        done = subprocess.run(cmd, capture_output=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode(errors='replace')[-2000:]}")
        digest = self.digest(repo, tag)
        self.pushed.append(f"{repo}:{tag}@{digest}")
        return digest

    def digest(self, repo: str, tag: str) -> str:
        """What the tag points at now, by skopeo (``inspect --raw`` hashed): independent of importer.oci."""
        cmd = [SKOPEO, "inspect", "--raw", *self._skopeo_args(""), f"docker://{self.host}/{repo}:{tag}"]
        raw = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def push_layout_http(self, layout: OciLayout, repo: str, tag: str = "latest", *, src_tag: str | None = None) -> str:
        """Push ``layout``'s ``src_tag`` (default ``tag``) as ``repo:tag`` with plain ``/v2/`` monolithic
        uploads (blobs as they are, no recompression); returns the manifest digest."""
        entry = next(m for m in layout._read_index() if _ref_name(m) == (src_tag or tag))
        with self.http() as client:
            self._push_manifest(client, layout, repo, entry, tag)
        return str(entry["digest"])

    def _push_manifest(self, client: httpx.Client, layout: OciLayout, repo: str, desc: Descriptor, ref: str) -> None:
        body = layout.blob_path(desc["digest"]).read_bytes()
        doc = json.loads(body)
        for child in doc.get("manifests", []):
            self._push_manifest(client, layout, repo, child, child["digest"])
        for blob in [doc["config"], *doc["layers"]] if "layers" in doc else []:
            start = client.post(f"/v2/{repo}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["Location"]
            with open(layout.blob_path(blob["digest"]), "rb") as f:
                put = client.put(httpx.URL(location).copy_add_param("digest", blob["digest"]), content=f.read(),
                                 headers={"Content-Type": "application/octet-stream"})
            put.raise_for_status()
        put = client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": desc["mediaType"]})
        put.raise_for_status()

    def http(self) -> httpx.Client:
        """A client of the registry's ``/v2/`` API (basic auth and the test CA when configured)."""
        return httpx.Client(base_url=self.base, auth=self.auth, verify=str(self.ca_file) if self.tls else True,
                            timeout=60)

    # -- tampering -------------------------------------------------------------------------------

    def stored_blob(self, digest: str) -> Path:
        """Where the registry keeps a blob on disk (to tamper with it as a broken mirror would)."""
        hexd = digest.split(":", 1)[1]
        return self.workdir / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def push_new_image(registry: Registry, workdir: Path, disk: Path, repo: str, tag: str = "latest", *,
                   compression: str | None = "gzip", label: str | None = None) -> str:
    """Push a new containerDisk under ``repo:tag`` (even with the same disk, a new label makes a new
    config, so the tag's digest changes); returns the new digest."""
    label = label or f"{time.time_ns()}"
    layout = OciLayout(workdir / f"layout-{re.sub('[^A-Za-z0-9]', '-', label)}")
    desc = layout.image([layout.layer({"disk/": None, f"disk/{disk.name}": disk}, compression=compression)],
                        labels={"build": label})
    layout.tag(desc, tag)
    return registry.push(layout, repo, tag)


def layout_blobs(layout: OciLayout, tag: str) -> Iterator[Descriptor]:
    """Every layer descriptor reachable from ``tag`` in ``layout``."""
    entry = next(m for m in layout._read_index() if _ref_name(m) == tag)
    stack = [entry]
    while stack:
        doc = json.loads(layout.blob_path(stack.pop()["digest"]).read_bytes())
        stack.extend(doc.get("manifests", []))
        yield from doc.get("layers", [])


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-http registry for a test module."""
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module", name="tls_auth_registry")
def tls_auth_registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with TLS (self-signed CA in ``ca_file``) and basic auth ``("cdi", "s3cret-pw")``."""
    with Registry(tmp_path_factory.mktemp("registry-tls"), tls=True, auth=("cdi", "s3cret-pw")) as reg:
        yield reg
