"""Registry source: the disk of a containerDisk image, streamed out of its layer.

KubeVirt's containerDisk layout puts the VM disk as the one file under ``/disk/`` of the image. This
source resolves the image (``importer.oci``), then looks for that file from the last layer back to the
first: the last layer that holds one wins, and a whiteout (``disk/.wh.NAME``, ``.wh.disk``, or the
opaque marker ``disk/.wh..wh..opq``, or ``.wh..wh..opq`` at the root) in a later layer hides what
earlier layers hold, as does a later ``disk/NAME`` directory (or a ``/disk`` that is no directory).
Only the layers from the last one down to the disk's own are read; earlier layers are never fetched.

The disk's bytes come straight out of the layer as it streams (gzip, zstd or uncompressed tar): no
layer and no image is written to scratch. The layer's sha256 is proven before the end of the disk is
reported: the rest of the layer is read (a second disk file there is refused, as CDI refuses two files
under /disk/) and hashed, so a tampered layer fails with a digest mismatch before the volume is
finished. A layer is never read at random (blob ``Range`` requests for qemu-img): those bytes would
reach the volume before any digest covered them, and a second, in-order read proves only that the
registry can send the right bytes once, not that it sent them to qemu-img. A qcow2 converts as it
streams (``importer.qcow2_stream``) out of the one verified read, whatever the layer's compression.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from typing import Any, cast

from importer import formats, oci
from importer.archive import open_stream
from importer.errors import FormatError, SourceError
from importer.http_options import HttpOptions
from importer.sources import Capabilities, RangeReader
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

    def blame(self, error: FormatError) -> BaseException:
        """A layer that does not decompress or untar: if its bytes are not the ones the manifest names,
        say that (the clearer cause) rather than what the decompressor made of them."""
        buf = bytearray(CHUNK)
        try:
            while self.blob.readinto(buf):
                pass
        except oci.DigestMismatch as mismatch:
            return mismatch
        except Exception:  # noqa: BLE001 - the original error stays the answer
            return error
        return error

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
            timeout=opts.timeout, retries=opts.retries, backoff=opts.backoff, architecture=opts.architecture,
            speed_limit=opts.speed_limit, speed_time=opts.speed_time, max_stalled_retries=opts.max_stalled_retries))
        self.capabilities = Capabilities()
        self.image: oci.Image | None = None
        self.disk_name: str | None = None
        self.position = 0
        self.resumes = 0
        self._layer: _Layer | None = None
        self._member: tarfile.TarInfo | None = None
        self._file: Any = None
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
                if member is None:
                    layer.finish()
            except FormatError as e:
                blamed = layer.blame(e)
                layer.close()
                raise blamed from e
            except BaseException:
                layer.close()
                raise
            if member is not None:
                self._start(layer, member)
                return False
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
            if name in (".wh." + DISK_DIR, OPAQUE) or (name == DISK_DIR and not member.isdir()):
                opaque = True  # /disk/ of lower layers deleted, the root made opaque, or /disk a file now
                continue
            if parent != DISK_DIR:
                continue
            if base == OPAQUE:
                opaque = True
                continue
            if base.startswith(".wh."):
                whiteouts.add(posixpath.join(DISK_DIR, base[4:]))
                continue
            if name in hidden:
                continue
            if member.isdir():  # disk/NAME is a directory here: a lower layer's file of that name is gone
                whiteouts.add(name)
                continue
            if not member.isfile():
                raise NoDisk(f"{name} in the image {self.ref} is not a regular file ({_kind(member)}): the disk "
                             "under /disk/ must be a file")
            return member, opaque
        hidden |= whiteouts
        return None, opaque

    def _start(self, layer: _Layer, member: tarfile.TarInfo) -> None:
        self._layer, self._member = layer, member
        self.disk_name = _normalise(member.name)
        self._file = layer.tar.extractfile(member)
        log.info("disk found name=%s size=%d layer=%s compressed=%s", self.disk_name, member.size,
                 layer.desc["digest"], layer.compressed)
        assert self.image is not None
        # random_access stays False: every byte written must have passed the layer's digest check
        self.capabilities = Capabilities(size=member.size, resumable=False, random_access=False,
                                         digest=self.image.digest)

    # -- reading -------------------------------------------------------------------------------

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._done or self._file is None:
            return 0
        assert self._layer is not None
        try:
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
        except FormatError as e:
            raise self._layer.blame(e) from e

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
        if others and set(others) == {self.disk_name}:
            raise NoDisk(f"the layer {layer.desc['digest']} of the image {self.ref} holds {self.disk_name} "
                         f"{len(others) + 1} times (the same tar entry repeated): rebuild the image with the "
                         "disk added once")
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

    def range_reader(self) -> RangeReader:
        """Never offered (``random_access`` is False): ranged bytes would bypass the layer's digest."""
        raise SourceError("a registry layer is read only in order, through its digest check")

    def close(self) -> None:
        if self._layer is not None:
            self._layer.close()
            self._layer = None
        self.client.close()


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symlink to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    return "a device or special file"
