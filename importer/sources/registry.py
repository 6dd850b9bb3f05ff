"""Registry source: the disk of a containerDisk image, streamed out of its layer.

KubeVirt's containerDisk layout puts the VM disk as the one file under ``/disk/`` of the image. This
source resolves the image (``importer.oci``), then looks for that file from the last layer back to the
first: the last layer that holds one wins, and a whiteout (``disk/.wh.NAME``, ``.wh.disk``, or the
opaque marker ``disk/.wh..wh..opq``) in a later layer hides what earlier layers hold. Only the layers from the last
one down to the disk's own are read; earlier layers are never fetched.

The disk's bytes come straight out of the layer as it streams (gzip, zstd or uncompressed tar): no
layer and no image is written to scratch. The layer's sha256 is proven before the end of the disk is
reported: the rest of the layer is read (a second disk file there is refused, as CDI refuses two files
under /disk/) and hashed, so a tampered layer fails with a digest mismatch before the volume is
finished. An uncompressed layer is also read at random with blob ``Range`` requests
(``capabilities.random_access``), so a qcow2 converts with no scratch; the whole blob is then read once
more in order to prove its digest (``capabilities.verify``), before the volume counts as complete.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from typing import Any, cast

import httpx

from importer import formats, oci
from importer.archive import open_stream
from importer.errors import FormatError, NetworkError, SourceError
from importer.http_options import HttpOptions
from importer.sources import Capabilities
from importer.stream import CHUNK, Peekable, Reader, open_decompressor

log = logging.getLogger(__name__)

DISK_DIR = "disk"
OPAQUE = ".wh..wh..opq"
GZIP_TYPES = ("tar+gzip", "tar.gzip")
ZSTD_TYPES = ("tar+zstd", "tar.zstd")


class NoDisk(SourceError):
    reason = "NoDiskInImage"


def layer_compression(media_type: str) -> str | None:
    """gzip, zstd or None (plain tar) from a layer's media type; "" when the type says nothing."""
    if media_type.endswith(GZIP_TYPES):
        return "gzip"
    if media_type.endswith(ZSTD_TYPES):
        return "zstd"
    if media_type.endswith((".tar", "layer.v1.tar")):
        return None
    return ""


def _normalise(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class _Layer:
    """One layer being read: its verified blob, decompressed, as a tar stream."""

    def __init__(self, client: oci.Client, desc: dict[str, Any]) -> None:
        self.desc = desc
        self.blob = client.blob(desc)
        kind = layer_compression(str(desc.get("mediaType", "")))
        top: Reader = self.blob
        if kind == "":  # an unknown media type: look at the bytes
            peek = Peekable(self.blob)
            kind = formats.detect_compression(peek.peek(formats.SNIFF_BYTES))
            if kind not in (None, "gzip", "zstd"):
                raise FormatError(f"the layer {desc['digest']} is {kind}-compressed ({desc.get('mediaType')}); "
                                  "only gzip, zstd and uncompressed layers are supported")
            top = peek
        self.compressed = kind is not None
        self.stream: Reader = open_decompressor(kind, top) if kind else top
        self.tar = open_stream(self.stream)

    def next(self) -> tarfile.TarInfo | None:
        try:
            return self.tar.next()
        except tarfile.TarError as e:
            raise FormatError(f"the layer {self.desc['digest']} is not a valid tar stream: {e}") from e

    def finish(self) -> None:
        """Read the layer to its end, so that its digest is proven (``DigestMismatch`` otherwise)."""
        buf = bytearray(CHUNK)
        while self.stream.readinto(buf):
            pass
        if not self.blob.verified:  # a decompressor that stopped at its end marker before the blob's end
            while self.blob.readinto(buf):
                pass

    def close(self) -> None:
        try:
            self.tar.close()
        finally:
            self.stream.close()


class RegistrySource:
    """The disk file of a containerDisk image, as a sequential source (see the module docstring)."""

    def __init__(self, url: str, options: HttpOptions | None = None) -> None:
        opts = options or HttpOptions()
        self.url = url
        self.ref = oci.Reference.parse(url)
        self.client = oci.Client(self.ref, oci.Credentials(
            username=opts.user, password=opts.password, ca_file=opts.ca_file, insecure=opts.insecure,
            timeout=opts.timeout, retries=opts.retries, backoff=opts.backoff, architecture=opts.architecture))
        self.capabilities = Capabilities()
        self.image: oci.Image | None = None
        self.disk_name: str | None = None
        self.position = 0
        self.resumes = 0
        self._layer: _Layer | None = None
        self._member: tarfile.TarInfo | None = None
        self._file: Any = None
        self._disk_layer: dict[str, Any] | None = None
        self._done = False

    # -- opening: find the disk ----------------------------------------------------------------

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        """Resolve the image and stop at the start of its disk file; never continues an earlier run."""
        self.image = self.client.resolve()
        log.info("registry image=%s digest=%s manifest=%s layers=%d", self.ref, self.image.digest,
                 self.image.manifest_digest, len(self.image.layers))
        hidden: set[str] = set()  # disk/NAME paths deleted by a later layer
        opaque = False  # a later layer made disk/ opaque: earlier layers' disk files are gone
        for desc in reversed(self.image.layers):
            if opaque:
                break
            layer = _Layer(self.client, desc)
            try:
                member, opaque = self._scan(layer, hidden)
            except BaseException:
                layer.close()
                raise
            if member is not None:
                self._start(layer, member)
                return False
            layer.finish()
            self.resumes += layer.blob.resumes
            layer.close()
        raise NoDisk(f"Failed to find VM disk image file in the container image {self.ref}: a containerDisk holds "
                     "its disk as the one file under /disk/ (KubeVirt's layout)")

    def _scan(self, layer: _Layer, hidden: set[str]) -> tuple[tarfile.TarInfo | None, bool]:
        """Read tar headers until a disk file not hidden by a later layer; note this layer's whiteouts."""
        opaque = False
        whiteouts: set[str] = set()
        while (member := layer.next()) is not None:
            name = _normalise(member.name)
            parent, base = posixpath.split(name)
            if name == ".wh." + DISK_DIR:  # the whole /disk/ of lower layers deleted
                opaque = True
                continue
            if parent != DISK_DIR:
                continue
            if base == OPAQUE:
                opaque = True
                continue
            if base.startswith(".wh."):
                whiteouts.add(posixpath.join(DISK_DIR, base[4:]))
                continue
            if name in hidden or member.isdir():
                continue
            if not member.isfile():
                raise NoDisk(f"{name} in the image {self.ref} is not a regular file ({_kind(member)}): the disk "
                             "under /disk/ must be a file")
            return member, opaque
        hidden |= whiteouts
        return None, opaque

    def _start(self, layer: _Layer, member: tarfile.TarInfo) -> None:
        self._layer, self._member = layer, member
        self._disk_layer = layer.desc  # kept after close(): random reads and the proof come later
        self.disk_name = _normalise(member.name)
        self._file = layer.tar.extractfile(member)
        random = not layer.compressed and not member.issparse()
        log.info("disk found name=%s size=%d layer=%s compressed=%s", self.disk_name, member.size,
                 layer.desc["digest"], layer.compressed)
        assert self.image is not None
        self.capabilities = Capabilities(size=member.size, resumable=False, random_access=random,
                                         verify=self._verify_blob if random else None, digest=self.image.digest)

    # -- reading -------------------------------------------------------------------------------

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._done or self._file is None:
            return 0
        try:
            n = int(cast(Any, self._file).readinto(buf) or 0)
        except tarfile.TarError as e:
            raise FormatError(f"the layer holding {self.disk_name} ends early or is corrupt: {e}") from e
        if n:
            self.position += n
            return n
        if len(buf):
            self._finish()
        return 0

    def _finish(self) -> None:
        """After the disk's last byte: no second disk in its layer, and the layer's digest proven."""
        layer = self._layer
        assert layer is not None
        others = []
        while (member := layer.next()) is not None:
            name = _normalise(member.name)
            parent, base = posixpath.split(name)
            if parent == DISK_DIR and member.isfile() and not base.startswith(".wh."):
                others.append(name)
        if others:
            raise NoDisk(f"image directory contains more than one file ({', '.join([self.disk_name or '', *others])}) "
                         f"in the image {self.ref}: a containerDisk holds exactly one disk under /disk/")
        layer.finish()
        self.resumes += layer.blob.resumes
        self._done = True
        log.info("layer digest verified digest=%s", layer.desc["digest"])

    @property
    def end_verified(self) -> bool:
        return self._done

    @property
    def validator(self) -> str | None:
        return None  # an import from a registry is not continued across runs (blobs resume within one)

    # -- random access -------------------------------------------------------------------------

    def range_reader(self) -> BlobRangeReader:
        assert self._disk_layer is not None and self._member is not None
        return BlobRangeReader(self.client.clone(), self._disk_layer["digest"], self._member.offset_data,
                               self._member.size)

    def _verify_blob(self) -> None:
        """After random reads: read the layer once, in order, to prove its digest."""
        assert self._disk_layer is not None
        client = self.client.clone()
        blob = client.blob(self._disk_layer)
        try:
            buf = bytearray(CHUNK)
            while blob.readinto(buf):
                pass
        finally:
            blob.close()
            client.close()
        log.info("layer digest verified after random reads digest=%s", self._disk_layer["digest"])

    def close(self) -> None:
        if self._layer is not None:
            self._layer.close()
            self._layer = None
        self.client.close()


class BlobRangeReader:
    """Random reads of the disk file inside an uncompressed layer: ``Range`` requests at ``base`` +
    offset of the blob (a blob never changes: its digest names it); a cut read continues."""

    def __init__(self, client: oci.Client, digest: str, base: int, size: int) -> None:
        self.client = client
        self.digest = digest
        self.base = base
        self.size = size
        self.resumes = 0
        self.received = 0

    def pread(self, view: memoryview, offset: int) -> None:
        if offset + len(view) > self.size:
            raise SourceError(f"read past the end of the disk ({offset + len(view)} > {self.size})")
        got = 0
        failures = 0
        while got < len(view):
            first = self.base + offset + got
            resp = self.client.blob_range(self.digest, first, self.base + offset + len(view) - 1)
            try:
                for chunk in resp.iter_raw():
                    n = min(len(chunk), len(view) - got)
                    view[got:got + n] = chunk[:n]
                    got += n
                    self.received += n
            except (httpx.TransportError, httpx.StreamError) as e:
                failures += 1
                self.resumes += 1
                if failures > self.client.creds.retries:
                    raise NetworkError(f"range reads of layer {self.digest} keep failing: {e}") from e
                log.warning("registry range read interrupted at=%d error=%s", offset + got, e)
                continue
            finally:
                resp.close()
            if got < len(view):  # the answer ended early without an error: ask again for the rest
                failures += 1
                self.resumes += 1
                if failures > self.client.creds.retries:
                    raise NetworkError(f"range reads of layer {self.digest} keep ending early at byte {offset + got}")

    def close(self) -> None:
        self.client.close()


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symlink to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    return "a device or special file"
