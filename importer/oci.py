"""A container registry client: the OCI distribution protocol spoken directly with httpx.

What an import from ``docker://host[:port]/repo[:tag|@digest]`` needs and nothing more: the image
reference, authentication (the registry's ``WWW-Authenticate`` challenge: Bearer tokens from its token
service, or Basic), TLS with a CA file or, for registries listed as insecure (CDI's
``insecureRegistries``), without verification or over plain http; manifests of every kind a registry
serves (Docker v2 manifest and manifest list, OCI manifest and index), the platform picked as CDI picks
it (linux and this machine's architecture); blobs streamed, continued with ``Range`` after a dropped
connection, and proven by their sha256 digest and size before anything read from them counts.

Nothing is believed: a manifest's digest is computed from its bytes (and compared with the digest asked
for and the ``Docker-Content-Digest`` header), every blob is hashed while it streams.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from importer.errors import NetworkError, Stalled
from importer.http_options import HttpOptions
from importer.oci_ref import (
    DIGEST_RE,
    DigestMismatch,
    ImageNotFound,
    InvalidReference,
    PlatformNotFound,
    Reference,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
    choose_platform,
    host_platform,
)
from importer.sources.http_client import LowSpeed, Meter

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20  # a manifest is a few KiB; more is not a manifest

# the reference, the platform and the errors live in importer.oci_ref; importers of this module find
# them here too
__all__ = [
    "DigestMismatch", "ImageNotFound", "InvalidReference", "PlatformNotFound", "Reference", "RegistryError",
    "RegistryUnavailable", "Unauthorized", "choose_platform", "host_platform", "Client", "BlobReader", "Image",
    "Credentials", "resolve_digest", "is_registry_url",
]


# -- the client --------------------------------------------------------------------------------------

@dataclass
class Image:
    """One platform's image: its manifest, and the digest the reference resolved to (the tag's own
    manifest digest, which is an index's digest for a multi-arch image, as CDI records it)."""

    reference: Reference
    digest: str
    manifest_digest: str
    manifest: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Credentials:
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure: bool = False  # skip TLS verification, and fall back to plain http (CDI's insecureRegistries)
    architecture: str | None = None  # the platform to pick, when not this machine's
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    speed_limit: int = 0  # bytes/s; a blob slower than this over speed_time seconds is a stall (0: no check)
    speed_time: float = 60.0
    max_stalled_retries: int = 3


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


class Client:
    """One repository of one registry; not shared between threads (``clone()`` gives another)."""

    def __init__(self, ref: Reference, creds: Credentials | None = None) -> None:
        self.ref = ref
        self.creds = creds or Credentials()
        self.scheme = "https"
        self._auth: str | None = None  # the Authorization header that the registry accepted
        self._http = self._new_http()

    def _new_http(self) -> httpx.Client:
        verify: Any = True
        if self.creds.insecure:
            verify = False
        elif self.creds.ca_file:
            verify = ssl.create_default_context(cafile=self.creds.ca_file)
        timeout = self.creds.timeout
        if self.creds.speed_limit > 0:  # nothing at all for speed_time seconds is a stall too
            timeout = min(timeout, self.creds.speed_time)
        return httpx.Client(verify=verify, timeout=timeout, follow_redirects=True)

    def clone(self) -> Client:
        other = Client(self.ref, self.creds)
        other.scheme, other._auth = self.scheme, self._auth
        return other

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.ref.registry}/v2/{self.ref.repository}/{path}"

    # -- requests and authentication ---------------------------------------------------------------

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, *,
                stream: bool = False) -> httpx.Response:
        """Send one request, answering an auth challenge once; network errors and 5xx are retried."""
        delay = self.creds.backoff
        for attempt in range(self.creds.retries + 1):
            try:
                resp = self._send(method, path, headers or {}, stream=stream)
                if resp.status_code == 401:
                    challenge = resp.headers.get("WWW-Authenticate", "")
                    self._drop(resp)
                    self._authenticate(challenge)
                    resp = self._send(method, path, headers or {}, stream=stream)
                if resp.status_code < 500 or attempt == self.creds.retries:
                    return resp
                error: BaseException = RegistryUnavailable(f"the registry answered HTTP {resp.status_code}")
                self._drop(resp)
            except httpx.TransportError as e:
                error = e
                if attempt == self.creds.retries:
                    raise self._network_error(e) from e
            log.warning("registry request failed path=%s error=%s retry_in=%.2fs", path, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, headers: dict[str, str], *, stream: bool) -> httpx.Response:
        all_headers = dict(headers)
        if self._auth:
            all_headers["Authorization"] = self._auth
        try:
            req = self._http.build_request(method, self.url(path), headers=all_headers)
            return self._http.send(req, stream=stream)
        except httpx.ConnectError as e:
            if self.creds.insecure and self.scheme == "https" and _tls_failure(e):
                log.info("registry %s does not speak TLS; insecure registry: using http", self.ref.registry)
                self.scheme = "http"
                req = self._http.build_request(method, self.url(path), headers=all_headers)
                return self._http.send(req, stream=stream)
            if _tls_failure(e):
                raise RegistryError(
                    f"TLS connection to the registry {self.ref.registry} failed ({e}): give its CA in "
                    "certConfigMap, or list it in the CDIConfig's insecureRegistries"
                ) from e
            raise

    def _authenticate(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        user, password = self.creds.username, self.creds.password
        if scheme == "basic":
            if user is None:
                raise Unauthorized(f"the registry {self.ref.registry} requires credentials: give a secretRef "
                                   "with accessKeyId and secretKey")
            basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._auth = f"Basic {basic}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise Unauthorized(f"the registry {self.ref.registry} refused access (HTTP 401, challenge "
                               f"{challenge!r})")
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        auth = (user, password or "") if user is not None else None
        try:
            resp = self._http.get(params["realm"], params=query, auth=auth)
        except httpx.TransportError as e:
            raise self._network_error(e, what=f"the token service {params['realm']}") from e
        if resp.status_code in (401, 403) and user is None:
            raise Unauthorized(f"the registry {self.ref.registry} requires credentials for {self.ref}: give a "
                               "secretRef with accessKeyId and secretKey")
        if resp.status_code in (401, 403):
            raise Unauthorized(f"the registry's token service refused the credentials (HTTP {resp.status_code}) "
                               f"for {self.ref}: check the secretRef's accessKeyId and secretKey")
        if resp.status_code != 200:
            raise RegistryUnavailable(f"the registry's token service answered HTTP {resp.status_code}")
        token: str | None = None
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            pass
        if not token:
            raise RegistryError(f"the registry's token service at {params['realm']} returned no token")
        self._auth = f"Bearer {token}"

    def _network_error(self, e: BaseException, what: str | None = None) -> Exception:
        return NetworkError(f"cannot reach {what or 'the registry ' + self.ref.registry}: {e}")

    @staticmethod
    def _drop(resp: httpx.Response) -> None:
        """Discard an answer's body (a registry may announce more body than it sends with an error)."""
        try:
            resp.read()
        except (httpx.TransportError, httpx.StreamError):
            pass
        finally:
            resp.close()

    def _refused(self, resp: httpx.Response, what: str) -> Exception:
        """An error for a 4xx answer, named as CDI names them where it can."""
        codes = ""
        try:
            codes = ",".join(e.get("code", "") for e in resp.json().get("errors", []))
        except (ValueError, AttributeError, json.JSONDecodeError):
            pass
        status = resp.status_code
        if status == 401 or status == 403 or "DENIED" in codes or "UNAUTHORIZED" in codes:
            hint = ("check the secretRef's accessKeyId and secretKey, and that they may pull this repository"
                    if self.creds.username is not None else
                    "the repository does not exist, or the registry requires credentials (a secretRef with "
                    "accessKeyId and secretKey); registries such as Docker Hub answer both the same way")
            return Unauthorized(f"access to {self.ref} denied (HTTP {status}): {hint}")
        if status == 404:
            return ImageNotFound(f"{what} not found in the registry (HTTP 404{', ' + codes if codes else ''}): "
                                 f"check the image name and tag of {self.ref}")
        return RegistryError(f"the registry refused {what} (HTTP {status}{', ' + codes if codes else ''})")

    # -- manifests -----------------------------------------------------------------------------------

    def manifest(self, ref: str) -> tuple[str, bytes, str]:
        """(media type, bytes, digest) of the manifest ``ref`` (a tag or digest), digest verified."""
        resp = self.request("GET", f"manifests/{ref}", {"Accept": ACCEPT})
        what = f"the image {self.ref}" if ref == self.ref.ref else f"the manifest {ref} of {self.ref}"
        if resp.status_code != 200:
            raise self._refused(resp, what)
        body = resp.content
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"the manifest of {self.ref} is {len(body)} bytes: not a manifest")
        digest = _sha256(body)
        header = resp.headers.get("Docker-Content-Digest")
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatch(f"the registry sent a manifest whose digest is {digest}, not {ref} as asked")
        if header and header.startswith("sha256:") and header != digest:
            raise DigestMismatch(f"the registry says the manifest of {self.ref} has digest {header}, but its bytes "
                                 f"have digest {digest}")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise RegistryError(f"the manifest of {self.ref} is not JSON") from e
        media_type = doc.get("mediaType") or media_type
        if media_type not in (*INDEX_TYPES, *MANIFEST_TYPES):
            if "manifests" in doc:
                media_type = OCI_INDEX
            elif "layers" in doc:
                media_type = OCI_MANIFEST
            else:
                raise RegistryError(f"unsupported manifest type {media_type!r} for {self.ref} (Docker v2 schema 2 "
                                    "and OCI manifests and indexes are supported)")
        return media_type, body, digest

    def resolve(self) -> Image:
        """The manifest of this machine's image (through an index when there is one)."""
        media_type, body, digest = self.manifest(self.ref.ref)
        doc = json.loads(body)
        manifest_digest = digest
        if media_type in INDEX_TYPES:
            desc = choose_platform(doc, self.ref, self.creds.architecture)
            media_type, body, manifest_digest = self.manifest(desc["digest"])
            doc = json.loads(body)
            if media_type in INDEX_TYPES:
                raise RegistryError(f"the index of {self.ref} points at another index; nested indexes are not "
                                    "supported")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise RegistryError(f"the manifest of {self.ref} has no layers")
        for layer in layers:
            if not isinstance(layer, dict) or not DIGEST_RE.match(str(layer.get("digest", ""))):
                raise RegistryError(f"the manifest of {self.ref} has a layer without a sha256 digest")
            if not isinstance(layer.get("size"), int) or layer["size"] < 0:
                raise RegistryError(f"the manifest of {self.ref} has a layer without a size")
        if self.creds.architecture and manifest_digest == digest:  # one image, not an index: check it
            self._check_architecture(doc)
        return Image(self.ref, digest, manifest_digest, doc, layers)

    def _check_architecture(self, manifest: dict[str, Any]) -> None:
        """An image asked for by architecture must be of it (its config says), as CDI checks."""
        config = manifest.get("config") or {}
        if not DIGEST_RE.match(str(config.get("digest", ""))) or int(config.get("size") or 0) > MAX_MANIFEST:
            raise RegistryError(f"the manifest of {self.ref} has no valid config")
        reader = self.blob(config)
        chunks = bytearray()
        buf = bytearray(65536)
        while n := reader.readinto(buf):
            chunks += buf[:n]
        arch = json.loads(bytes(chunks) or b"{}").get("architecture")
        if arch != self.creds.architecture:
            raise PlatformNotFound(f'manifest image architecture: "{arch}" doesn\'t match requested architecture: '
                                   f'"{self.creds.architecture}" ({self.ref})')

    # -- blobs ---------------------------------------------------------------------------------------

    def blob(self, desc: dict[str, Any]) -> BlobReader:
        return BlobReader(self, desc["digest"], int(desc["size"]))


class BlobReader:
    """A blob read in order, continued with ``Range`` after a dropped connection (a blob never changes:
    its digest names it), and proven at its end: its size and sha256 must match its descriptor, else
    ``DigestMismatch``. ``readinto`` returns 0 only after that proof.

    curl's low-speed check, as the http source has it: fewer than ``speed_limit`` bytes in the last
    ``speed_time`` seconds (not an average since the start) drops the connection and continues with a
    ``Range``; ``max_stalled_retries`` such stalls in a row (no healthy period between) are ``Stalled``."""

    def __init__(self, client: Client, digest: str, size: int) -> None:
        self.client = client
        self.digest = digest
        self.size = size
        self.position = 0
        self.resumes = 0
        self.verified = False
        self._hash = hashlib.sha256()
        self._resp: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._left = memoryview(b"")
        creds = client.creds
        self._meter = Meter(HttpOptions(speed_limit=creds.speed_limit, speed_time=creds.speed_time))
        self._stalls = 0
        self._healthy_from = 0  # position where the last stall left off

    def _stalled(self, why: str) -> None:
        """A stall: drop the connection, continue where it stopped, or give up after too many."""
        creds = self.client.creds
        self._close_response()
        if self.position - self._healthy_from >= creds.speed_limit * creds.speed_time:
            self._stalls = 0  # a healthy period since the last stall
        self._stalls += 1
        self._healthy_from = self.position
        if self._stalls > creds.max_stalled_retries:
            raise Stalled(f"the registry stalled: less than {creds.speed_limit} bytes/s for {creds.speed_time:g}s "
                          f"reading layer {self.digest} at byte {self.position} of {self.size} ({why}), "
                          f"{self._stalls} times in a row (limits: --speed-limit, --speed-time, "
                          "--max-stalled-retries)")
        self.resumes += 1
        log.warning("registry blob stalled digest=%s at=%d (%s): continuing with a range", self.digest,
                    self.position, why)

    def _open(self) -> None:
        if self.position == 0:
            self._meter.reset()  # the window starts with the transfer (a resume keeps it running)
        headers = {"Range": f"bytes={self.position}-"} if self.position else {}
        resp = self.client.request("GET", f"blobs/{self.digest}", headers, stream=True)
        if resp.status_code == 416:
            self.client._drop(resp)
            raise DigestMismatch(f"layer digest mismatch: the layer {self.digest} ends at byte {self.position}, "
                                 f"before the {self.size} bytes its manifest says (a corrupt or tampered registry)")
        if resp.status_code not in (200, 206):
            self.client._drop(resp)
            raise self.client._refused(resp, f"the layer {self.digest} of {self.client.ref}")
        if self.position and resp.status_code != 206:
            self.client._drop(resp)
            raise RegistryUnavailable(f"the registry cannot continue blob {self.digest} at byte {self.position} "
                                      "(no range support)")
        self._resp = resp
        self._chunks = resp.iter_raw()

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        attempts = 0
        while True:
            if self._left:
                n = min(len(view), len(self._left))
                view[:n] = self._left[:n]
                self._hash.update(self._left[:n])
                self._left = self._left[n:]
                self.position += n
                return n
            if self.verified:
                return 0
            if self.position >= self.size:  # all the bytes the manifest promised: prove them
                self._close_response()
                self._verify()
                return 0
            try:
                if self._chunks is None:
                    self._open()
                assert self._chunks is not None
                chunk = next(self._chunks, None)
                self._meter.add(len(chunk or b""))
            except LowSpeed as e:
                self._stalled(str(e))
                continue
            except httpx.ReadTimeout as e:
                if self.client.creds.speed_limit <= 0:
                    raise NetworkError(f"reading layer {self.digest} failed at byte {self.position}: {e}") from e
                self._stalled(f"nothing for {self.client.creds.speed_time:g}s")
                continue
            except (httpx.TransportError, httpx.StreamError) as e:
                self._close_response()
                attempts += 1
                if attempts > self.client.creds.retries:
                    raise NetworkError(f"reading layer {self.digest} failed at byte {self.position}: {e}") from e
                self.resumes += 1
                log.warning("registry blob interrupted digest=%s at=%d error=%s", self.digest, self.position, e)
                continue
            if chunk is None:  # the answer ended before the size the manifest gives: continue there
                self._close_response()
                attempts += 1
                if attempts > self.client.creds.retries:
                    raise NetworkError(f"the layer {self.digest} keeps ending at byte {self.position} of {self.size}")
                self.resumes += 1
                continue
            attempts = 0
            self._left = memoryview(chunk)[: self.size - self.position]  # never more than the manifest says

    def _verify(self) -> None:
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(f"layer digest mismatch: the registry sent a layer whose sha256 is {actual}, but "
                                 f"the image's manifest says {self.digest} (a corrupt or tampered registry or mirror)")
        self.verified = True

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None
        self._chunks = None

    def close(self) -> None:
        self._close_response()


def _tls_failure(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e.__cause__ or e.__context__, ssl.SSLError) or "ssl" in text or "certificate" in text


def credentials_for(url: str, *, username: str | None = None, password: str | None = None,
                    ca_file: str | None = None, insecure: bool = False) -> tuple[Reference, Credentials]:
    return Reference.parse(url), Credentials(username, password, ca_file, insecure)


def resolve_digest(url: str, *, username: str | None = None, password: str | None = None,
                   ca_file: str | None = None, insecure: bool = False) -> str:
    """The ``sha256:...`` digest of the manifest ``url``'s tag points at (an index's own digest for a
    multi-arch image), verified against the bytes, as a DataImportCron polls it. Raises
    ``InvalidReference``, ``ImageNotFound``, ``Unauthorized``, ``RegistryError``, ``DigestMismatch``
    (permanent) or ``RegistryUnavailable``/``NetworkError`` (temporary)."""
    ref, creds = credentials_for(url, username=username, password=password, ca_file=ca_file, insecure=insecure)
    client = Client(ref, creds)
    try:
        return client.manifest(ref.ref)[2]
    finally:
        client.close()


def is_registry_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == "docker"
