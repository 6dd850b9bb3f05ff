"""The import worker as a phase machine: source -> layers -> format -> write or convert -> verify.

``run_import(job)`` turns one ``ImportJob`` into a complete, verified raw volume (or an extracted
directory for contentType archive) and returns an ``ImportResult``. Each phase has one method:

- probe: open the source, peel compression and tar layers by magic bytes, detect the image format;
- transfer: raw images stream straight into the target, zero blocks left as holes; qcow2 from a
  source read once, in order, is converted as it streams (``qcow2_stream``); other formats stream
  into a scratch file only when qemu-img cannot read the source itself;
- convert: qemu-img converts to raw, from the local file, from scratch, or over the network through
  an NBD export of verified range reads (no scratch) when the source offers random access;
- verify: the source checksum, then the volume digest.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from importer import archive, checkpoint, formats, qcow2_resume, qcow2_stream, qemu_img, sources
from importer.digest import volume_digest
from importer.errors import (
    CapacityExceeded,
    ChecksumMismatch,
    Error,
    FormatError,
    NetworkError,
    PermanentError,
    RestartFromZero,
    SourceError,
    ToolTimedOut,
    UnsafeImage,
)
from importer.http_options import HttpOptions
from importer.progress import Progress
from importer.scratch import Scratch
from importer.sources import Source
from importer.stream import CHUNK, Peekable, ReadAhead, Reader, Tap, open_decompressor
from importer.target import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_ZERO_RANGE,
    SparseWriter,
    Target,
    fallocate,
    remove_partial,
    resolve_target,
)

log = logging.getLogger(__name__)

CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
MAX_RESTARTS = 3
MAX_LAYERS = 4


class Step(enum.Enum):
    PROBE = "probe"
    TRANSFER = "transfer"
    CONVERT = "convert"
    VERIFY = "verify"
    DONE = "done"


@dataclass
class ImportJob:
    source: str
    target: str
    content_type: str = "kubevirt"
    size: int | None = None
    http: HttpOptions = field(default_factory=HttpOptions)
    checksum: str | None = None  # "sha256:<hex>"
    scratch_dir: str | None = None
    # without scratch_dir, scratch goes beside the target (the CLI); False: there is none (a worker pod
    # without a scratch mount), and a job that needs it ends with ScratchSpaceRequired
    scratch_beside_target: bool = True
    device_zeroed: bool = False
    resume: bool = True  # keep resume points and continue from them (raw over http with ranges)


@dataclass
class ImportResult:
    formats: list[str]
    virtual_size: int | None
    capacity: int | None
    bytes_transferred: int | None
    bytes_written: int
    digest: str | None
    source_checksum: str | None
    scratch_bytes: int
    resumes: int
    restarts: int
    files: int | None
    phases: dict[str, float]
    source_digest: str | None = None  # the digest naming what was imported (a registry image's manifest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_checksum(text: str) -> tuple[str, str]:
    algo, sep, value = text.partition(":")
    algo = algo.lower().strip()
    value = value.strip().lower()
    if not sep or algo not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"invalid checksum {text!r}: write ALGO:HEX with ALGO one of {', '.join(CHECKSUM_ALGORITHMS)}")
    if len(value) != hashlib.new(algo).digest_size * 2 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"invalid {algo} checksum {value!r}: expected {hashlib.new(algo).digest_size * 2} hex digits")
    return algo, value


class Importer:
    """Runs one job. Not reusable."""

    def __init__(self, job: ImportJob, progress: Progress | None = None) -> None:
        self.job = job
        self.progress = progress or Progress()
        self.archive = job.content_type == "archive"
        if job.content_type not in ("kubevirt", "archive"):
            raise PermanentError(f"invalid contentType {job.content_type!r}: use kubevirt or archive")
        self.checksum = parse_checksum(job.checksum) if job.checksum else None
        self.target: Target = resolve_target(job.target, size=job.size, archive=self.archive)
        self.layers: list[str] = []
        self.fmt: str | None = None
        self.virtual_size: int | None = None
        self.transferred: int | None = None
        self.scratch_bytes = 0
        self.resumes = 0
        self.restarts = 0
        self.files: int | None = None
        self.phase_times: dict[str, float] = {}
        self.step = Step.PROBE  # the phase running now: named in the log when an import fails
        self.source_sum: str | None = None
        self.source_digest: str | None = None
        self.resumed_at = 0
        self.resumed_from: checkpoint.Checkpoint | None = None
        self.inline_digest: str | None = None  # taken while writing, when the writer could
        self.ckpt_path = checkpoint.path_for(self.target.path, self.target.kind, job.scratch_dir)

    # -- driver -----------------------------------------------------------------------------------

    def run(self) -> ImportResult:
        try:
            if not self.job.source:
                self._blank()
            cuts: set[tuple[int, int | None]] = set()
            for attempt in range(MAX_RESTARTS + 1 if self.job.source else 0):
                try:
                    self._run_once()
                    break
                except RestartFromZero as e:
                    # the same cut at the same byte twice will not change on another try
                    if e.cut_at is not None and (e.cut_at, e.announced) in cuts:
                        if e.announced is not None:
                            raise SourceError(
                                f"the server ends its body at byte {e.cut_at} every time, though its "
                                f"Content-Length says {e.announced}: its Content-Length is larger than the file"
                            ) from e
                        raise SourceError(
                            f"the server's body breaks off at byte {e.cut_at} every time ({e}), and it does not "
                            "support range requests: the end of the image cannot be reached"
                        ) from e
                    if e.cut_at is not None:
                        cuts.add((e.cut_at, e.announced))
                    if attempt == MAX_RESTARTS:
                        raise
                    checkpoint.remove(self.ckpt_path)  # what was written is of a version now gone
                    self.restarts += 1
                    log.warning("restarting transfer from byte 0 reason=%s", e)
            digest = self._verify()
        except BaseException as e:
            self.progress.end(completed=False)  # a failed run reports what it got, not 100%
            log.warning("import failed step=%s error=%s", self.step.value, e)
            # what was written stays only when a later run can continue from it
            resumable = isinstance(e, Error) and not e.permanent and os.path.exists(self.ckpt_path)
            if not resumable and not isinstance(e, KeyboardInterrupt):
                checkpoint.remove(self.ckpt_path)
                remove_partial(self.target)
            raise
        finally:
            self.progress.end()
        checkpoint.remove(self.ckpt_path)
        self.step = Step.DONE
        return ImportResult(
            formats=[*self.layers, self.fmt or "unknown"],
            virtual_size=self.virtual_size,
            capacity=self.target.capacity,
            bytes_transferred=self.transferred,
            bytes_written=_allocated(self.target),
            digest=digest,
            source_checksum=self.source_sum,
            scratch_bytes=self.scratch_bytes,
            resumes=self.resumes,
            restarts=self.restarts,
            files=self.files,
            phases=self.phase_times,
            source_digest=self.source_digest,
        )

    def _blank(self) -> None:
        """CDI's blank image: an empty volume of the whole capacity (a hole in a file)."""
        if self.archive or self.target.capacity is None:
            raise PermanentError("a blank image needs a volume size (IMPORTER_IMAGE_SIZE) and kubevirt content")
        self.fmt = "raw"
        writer = SparseWriter(self.target, device_zeroed=self.job.device_zeroed, digest=True)
        try:
            writer.finish()
            self.inline_digest = writer.digest
        finally:
            writer.close()
        self.virtual_size = self.target.capacity

    def _timed(self, step: Step, started: float) -> None:
        """Account the seconds of one phase."""
        name = step.value
        self.phase_times[name] = round(self.phase_times.get(name, 0.0) + time.monotonic() - started, 3)

    # -- probe ------------------------------------------------------------------------------------

    def _new_source(self) -> Source:
        return sources.opener(self.job.source)(self.job.source, self.job.http)

    def _open_source(self) -> Source:
        src = self.job.source
        source = self._new_source()
        point = checkpoint.load(self.ckpt_path) if self.job.resume else None
        if point and (point.url, point.target, point.capacity) != (src, self.target.path, self.target.capacity):
            point = None
        if point and source.open(start=point.offset, validator=point.validator):
            log.info("resuming an interrupted import at byte %d of %s", point.offset, point.size)
            self.resumed_at = point.offset
            self.resumed_from = point
            self.resumes += 1
            self.target.existed = False  # ours: a previous run of this import created it
        elif point:
            log.warning("cannot resume at byte %d: the server sent the whole body (file changed or no "
                        "ranges); starting over", point.offset)
            checkpoint.remove(self.ckpt_path)
        if not point:
            source.open()
        return source

    def _run_once(self) -> None:
        started = time.monotonic()
        self.layers = []
        source = self._open_source()
        caps = source.capabilities
        self.source_digest = caps.digest
        hasher = hashlib.new(self.checksum[0]) if self.checksum else None
        self.progress.plan(["transfer"])
        self.progress.start_phase("transfer", caps.size)
        if self.resumed_at:
            self.progress.set_done(self.resumed_at)
            if hasher is not None:
                _rehash(self.target.path, self.resumed_at, hasher)
        tap = Tap(source, hasher=hasher, on_bytes=self.progress.advance)
        bottom = ReadAhead(tap)  # reads ahead only once the plan is to stream
        top = Peekable(bottom)
        try:
            if self.resumed_at:
                assert self.resumed_from is not None
                self.fmt = self.resumed_from.format
                bottom.start()
                if self.fmt == "qcow2":
                    self._stream_qcow2(top, bottom, tap, hasher, source)
                else:
                    self._stream_raw(top, bottom, tap, hasher, source)
                return
            head = top.peek(formats.SNIFF_BYTES)
            if not head:
                raise FormatError(f"the source {self.job.source} is empty")
            if formats.looks_like_html(head, caps.content_type):
                raise FormatError(
                    f"the source returned a web page ({caps.content_type or 'HTML'}), not a disk image: "
                    "check the URL and credentials"
                )
            top, head = self._peel_layers(top, head)
            self._timed(Step.PROBE, started)
            if self.archive:
                bottom.start()
                self._extract(top, bottom, tap, hasher, source)
                return
            self.fmt = formats.detect_image(head)
            self._refuse_unsupported(self.fmt, head)
            log.info("detected layers=%s format=%s", ",".join(self.layers) or "none", self.fmt)
            if self.fmt in ("raw", "iso"):
                bottom.start()
                self._stream_raw(top, bottom, tap, hasher, source)
                return
            if not self.layers and caps.local_path and hasher is None:
                top.close()
                self._convert(qemu_img.file_node(caps.local_path), caps.local_path)
                return
            if not self.layers and not caps.local_path and self._can_convert_remotely(source):
                self._convert_remote(source, head=head, first_bytes=tap.count)
                return
            bottom.start()
            if self.fmt == "qcow2":
                self._stream_qcow2(top, bottom, tap, hasher, source)
                return
            self._via_scratch(top, bottom, tap, hasher, source)
        finally:
            top.close()
            self.resumes += source.resumes

    def _peel_layers(self, top: Peekable, head: bytes) -> tuple[Peekable, bytes]:
        while True:
            kind = formats.detect_compression(head)
            if kind is not None:
                if len(self.layers) >= MAX_LAYERS:
                    raise FormatError(f"more than {MAX_LAYERS} nested layers ({', '.join(self.layers)}); refused")
                self.layers.append(kind)
                top = Peekable(open_decompressor(kind, top))
            elif formats.is_tar(head) and not self.archive and "tar" not in self.layers:
                self.layers.append("tar")
                member = archive.MemberReader(archive.open_stream(top), top)
                log.info("importing tar member name=%s size=%d", member.name, member.size)
                top = Peekable(member)
            else:
                return top, head
            head = top.peek(formats.SNIFF_BYTES)
            if not head:
                raise FormatError(f"the {self.layers[-1]} layer is empty")

    def _refuse_unsupported(self, fmt: str, head: bytes) -> None:
        if fmt == "vmdk-descriptor":
            raise UnsafeImage("image is a bare vmdk descriptor whose data lives in other files; refused")
        if fmt == "luks":
            raise UnsafeImage("image is LUKS-encrypted; encrypted images are not supported")
        if fmt in ("qed", "qcow"):
            raise FormatError(f"image format {fmt} is not supported; convert it to qcow2 or raw first")

    def _can_convert_remotely(self, source: Source) -> bool:
        caps = source.capabilities
        if self.checksum is not None:
            log.info("checksum requested: downloading to scratch so the bytes can be verified before use")
            return False
        if not caps.random_access:
            log.info("the server did not answer a range request with 206 and a validator (ETag or "
                     "Last-Modified): using scratch space")
            return False
        return True

    def _check_end(self, source: Source) -> None:
        """Data of unproven length is accepted only when a layer proved its own end: a compressed
        stream's end marker, or the size of the tar member imported (a whole archive extracted proves
        nothing: tar does not check its end-of-archive marker)."""
        proven = any(layer != "tar" for layer in self.layers) or ("tar" in self.layers and not self.archive)
        if not source.end_verified and not proven:
            raise SourceError(
                f"the server sent no Content-Length and no chunked encoding, and does not support range "
                f"requests: the body stopped at byte {source.position} but the end of the image cannot be "
                f"verified (a dropped connection looks the same) at {self.job.source}"
            )

    # -- transfer ----------------------------------------------------------------------------------

    def _stream_raw(self, top: Reader, bottom: Reader, tap: Tap, hasher: Any, source: Source) -> None:
        self.step = Step.TRANSFER
        started = time.monotonic()
        size = source.capabilities.size
        if self.target.capacity is not None and not self.layers and size and size > self.target.capacity + 512:
            raise CapacityExceeded(
                f"image virtual size {size} is larger than the volume capacity {self.target.capacity}"
            )
        writer = SparseWriter(self.target, device_zeroed=self.job.device_zeroed, resume_at=self.resumed_at,
                              digest=True, drop_cache=True)
        save_point = None
        validator = source.validator
        if self.job.resume and not self.layers and source.capabilities.resumable and validator:
            url = self.job.source

            def save_point() -> None:
                assert validator is not None
                point = checkpoint.Checkpoint(url, validator, size, self.target.path,
                                              self.target.capacity, writer.sync())
                checkpoint.save(self.ckpt_path, point)

        try:
            _copy(top, writer, on_interval=save_point, interval=checkpoint.interval_for(size))
            _drain(bottom)
            self._check_end(source)
            self._check_sum(hasher)
            self.virtual_size = writer.finish()
            self.inline_digest = writer.digest
            if writer.vhd_fixed:
                self.fmt = "vpc"
        finally:
            writer.close()
        self.transferred = tap.count + self.resumed_at
        self._timed(Step.TRANSFER, started)

    def _stream_qcow2(self, top: Reader, bottom: Reader, tap: Tap, hasher: Any, source: Source) -> None:
        """Convert a qcow2 image as it streams in (a source read once, in order: an upload body, an
        http server without ranges, a compressed or archived image); scratch only for the bytes its
        layout makes arrive before the table that maps them."""
        self.step = Step.TRANSFER
        started = time.monotonic()
        log.info("converting qcow2 as it streams reason=%s", "compressed or archived" if self.layers
                 else "source cannot be read at random" if not self.checksum else "checksum requested")
        result = qcow2_stream.convert_stream(top, self.target, scratch_parent=self._scratch_parent(),
                                             device_zeroed=self.job.device_zeroed,
                                             durable=self._qcow2_durable(source))
        _drain(bottom)
        self._check_end(source)
        self._check_sum(hasher)
        self.virtual_size = result.virtual_size
        self.inline_digest = result.digest
        self.scratch_bytes = result.scratch_bytes
        self.transferred = tap.count + self.resumed_at
        log.info("qcow2 streamed clusters=%d in_order=%s scratch_bytes=%d", result.data_clusters,
                 result.in_order, result.scratch_bytes)
        self._timed(Step.TRANSFER, started)

    def _qcow2_durable(self, source: Source) -> qcow2_stream.Durable:
        """Resume points for a qcow2 converted as it streams from a source that can continue at an
        offset (a ranged upload): the state every interval, the spool beside the point; or the state
        an interrupted run saved, when this run continues it."""
        caps = source.capabilities
        validator = source.validator
        # a checksum covers the file's bytes, which a resumed run no longer has (its volume is converted)
        if not (self.job.resume and not self.layers and caps.resumable and validator and self.checksum is None):
            return qcow2_stream.Durable()
        url, size, state_file = self.job.source, caps.size, checkpoint.state_path(self.ckpt_path)
        resume = None
        if self.resumed_from is not None:
            resume = qcow2_resume.load(state_file, self.resumed_from.state)

        def save_point(offset: int, state: bytes, prefix: str) -> None:
            digest = qcow2_resume.save(state_file, state)
            checkpoint.save(self.ckpt_path, checkpoint.Checkpoint(
                url, validator, size, self.target.path, self.target.capacity, offset, format="qcow2",
                state=digest, prefix=prefix))
            qcow2_resume.prune(state_file, digest)  # the older states: no point names them any more

        return qcow2_stream.Durable(on_checkpoint=save_point, interval=checkpoint.interval_for(size),
                                    spool_path=checkpoint.spool_path(self.ckpt_path), resume=resume,
                                    prefix=caps.prefix)

    def _scratch_parent(self) -> str | None:
        """Where scratch space goes; None: nowhere (entering a ``Scratch`` then raises
        ``ScratchSpaceRequired`` before anything is read past the format probe)."""
        if self.job.scratch_dir:
            return self.job.scratch_dir
        if not self.job.scratch_beside_target:
            return None
        return os.path.dirname(os.path.abspath(self.target.path))

    def _plan_convert(self) -> None:
        if "convert" not in self.progress.planned:
            self.progress.plan([*self.progress.planned, "convert"])

    def _via_scratch(self, top: Reader, bottom: Reader, tap: Tap, hasher: Any, source: Source) -> None:
        """Spool the (decompressed) image to a scratch file, then convert it locally."""
        self.step = Step.TRANSFER
        started = time.monotonic()
        scratch_parent = self._scratch_parent()
        limit = None
        if self.target.capacity is not None:  # the image file may carry metadata beyond the virtual size
            limit = self.target.capacity + self.target.capacity // 10 + (64 << 20)
        with Scratch(scratch_parent) as scratch_dir:
            self._plan_convert()  # known now: the figure spreads over both from here, and never falls back
            scratch = os.path.join(scratch_dir, "image")
            log.info("using scratch space path=%s reason=%s", scratch_dir,
                     "compressed or archived" if self.layers else "source cannot be read at random")
            writer = SparseWriter(Target(scratch, "file", limit, False))
            try:
                _copy(top, writer)
                _drain(bottom)
                self._check_end(source)
                self._check_sum(hasher)
                writer.finish()
            except CapacityExceeded as e:
                raise CapacityExceeded(f"image file is larger than the volume capacity allows: {e}") from e
            finally:
                writer.close()
            self.scratch_bytes = os.stat(scratch).st_size
            self.transferred = tap.count
            self._timed(Step.TRANSFER, started)
            self._convert(qemu_img.file_node(scratch), scratch)

    def _extract(self, top: Reader, bottom: Reader, tap: Tap, hasher: Any, source: Source) -> None:
        self.step = Step.TRANSFER
        started = time.monotonic()
        if "tar" in self.layers or not formats.is_tar(top.peek(1024) if isinstance(top, Peekable) else b""):
            head = top.peek(65536) if isinstance(top, Peekable) else b""
            raise FormatError(
                f"contentType archive needs a tar archive, but the source is {formats.describe(head)}"
            )
        self.layers.append("tar")
        self.fmt = "archive"
        self.files, size = archive.extract(top, self.target.path, capacity=self.target.capacity)
        _drain(bottom)
        self._check_end(source)
        self._check_sum(hasher)
        self.virtual_size = size
        self.transferred = tap.count
        self._timed(Step.TRANSFER, started)

    def _check_sum(self, hasher: Any) -> None:
        if hasher is None or self.checksum is None:
            return
        algo, expected = self.checksum
        actual = hasher.hexdigest()
        self.source_sum = f"{algo}:{actual}"
        if actual != expected:
            raise ChecksumMismatch(f"checksum mismatch: expected {algo}:{expected}, got {algo}:{actual}")

    # -- convert -----------------------------------------------------------------------------------

    def _convert(self, node: dict[str, Any], image_name: str | None, *, file_size: int | None = None) -> None:
        """``file_size``: the size of the image file (for a remote convert, the size the server gave)."""
        assert self.fmt is not None
        started = time.monotonic()
        spec = qemu_img.source_spec(self.fmt, node)
        data = qemu_img.info(spec)
        qemu_img.check_safe(data, expected_format=self.fmt, image_name=image_name)
        qemu_img.check(spec)
        if file_size is None:
            file_size = os.path.getsize(node["filename"])
        end = qemu_img.data_end(spec)
        if end > file_size:
            raise FormatError(f"image is truncated: its data reaches byte {end} but the file has {file_size} bytes")
        self.step = Step.CONVERT
        self.virtual_size = int(data["virtual-size"])
        capacity = self.target.capacity
        if capacity is not None and self.virtual_size > capacity:
            raise CapacityExceeded(
                f"image virtual size {self.virtual_size} is larger than the volume capacity {capacity}"
            )
        self._timed(Step.PROBE, started)
        started = time.monotonic()
        self._plan_convert()
        self.progress.start_phase("convert", self.virtual_size)
        total = self.virtual_size
        qemu_img.convert(
            spec, self.target.path, block_device=self.target.is_block,
            target_is_zero=self.job.device_zeroed,
            on_progress=lambda pct: self.progress.set_done(int(total * pct / 100)),
        )
        self._finish_converted()
        self._timed(Step.CONVERT, started)

    def _convert_remote(self, source: Source, *, head: bytes, first_bytes: int) -> None:
        """Convert from an NBD export of verified range reads of the same version of the file."""
        from importer.nbd_export import NbdExport

        log.info("converting over the network url=%s (no scratch)", self.job.source)
        self.progress.plan([])
        size = source.capabilities.size
        assert size is not None
        export = NbdExport(size, source.range_reader, head=head)
        source.close()  # the first answer was read to its end by the format detection
        try:
            with export as node:
                self._convert(node, None, file_size=size)
        except Error as e:
            raise _reason(export, e) from e
        finally:
            self.resumes += export.resumes
            self.transferred = first_bytes + export.received
        if export.error is not None:  # qemu-img got past a failed read: never trust such a volume
            raise _reason(export, export.error)
        if source.capabilities.verify is not None:  # e.g. a registry layer's digest, read once more in order
            self.step = Step.VERIFY
            source.capabilities.verify()

    def _finish_converted(self) -> None:
        """Grow a file to the capacity; zero a block device past the image."""
        assert self.virtual_size is not None
        final = self.target.capacity if self.target.capacity is not None else self.virtual_size
        fd = os.open(self.target.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if self.target.kind == "file":
                os.ftruncate(fd, final)
            elif final > self.virtual_size and not self.job.device_zeroed:
                fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, self.virtual_size, final - self.virtual_size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verify ------------------------------------------------------------------------------------

    def _verify(self) -> str | None:
        if self.archive:
            return None
        if self.inline_digest is not None:
            return self.inline_digest
        self.step = Step.VERIFY
        started = time.monotonic()
        self.progress.start_phase("verify", None)
        digest = volume_digest(self.target.path, self.target.capacity)
        self._timed(Step.VERIFY, started)
        return digest


def _reason(export: Any, error: BaseException) -> BaseException:
    """What made a remote convert fail: the source's own error (a changed file, a stalled or lying
    server) rather than what qemu-img made of the failed read."""
    if export.error is None:
        if isinstance(error, ToolTimedOut) and export.resumes:  # slow because the network was failing
            return NetworkError(f"{error.args[0].partition(':')[0]} while reads of the source kept being "
                                f"interrupted ({export.resumes} times); the network, not the image, is at fault")
        return error
    if isinstance(export.error, Error):
        return export.error
    return NetworkError(f"reading the source failed: {export.error}")


def _copy(reader: Reader, writer: SparseWriter, *, on_interval: Callable[[], None] | None = None,
          interval: int = checkpoint.INTERVAL) -> None:
    """Copy until the end of ``reader``; ``on_interval`` runs every ``interval`` bytes.

    One thread reads (decompressing) and writes; a writer thread was tried and gave no measurable gain
    on this 2-core machine, where the final fsync and the decompressor dominate."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    next_point = writer.offset + interval
    while True:
        have = 0
        while have < CHUNK:  # full chunks keep zero detection and digest blocks aligned
            n = reader.readinto(view[have:])
            if not n:
                break
            have += n
        if have:
            writer.write(buf, have)
            if on_interval is not None and writer.offset >= next_point:
                on_interval()
                next_point = writer.offset + interval
        if have < CHUNK:
            return


def _rehash(path: str, length: int, hasher: Any) -> None:
    """Feed the first ``length`` bytes already written (a resumed raw import) to the source checksum."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        left = length
        while left > 0:
            n = f.readinto(memoryview(buf)[: min(CHUNK, left)]) or 0
            if n == 0:  # past the end of a file truncated at the resume point: zeros
                hasher.update(bytes(min(CHUNK, left)))
                left -= min(CHUNK, left)
                continue
            hasher.update(memoryview(buf)[:n])
            left -= n


def _drain(reader: Reader) -> None:
    """Read the source to its end so the checksum covers every byte (e.g. after a tar member)."""
    buf = bytearray(CHUNK)
    while reader.readinto(buf):
        pass


def _allocated(target: Target) -> int:
    if target.kind == "dir":
        total = 0
        for root, _dirs, files in os.walk(target.path):
            for name in files:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total
    if target.kind == "file":
        return os.stat(target.path).st_blocks * 512
    return 0


def run_import(job: ImportJob, progress: Progress | None = None) -> ImportResult:
    """Run ``job``; raises ``importer.errors.Error`` with a user-facing message on failure."""
    try:
        return Importer(job, progress).run()
    except Error:
        raise
    except OSError as e:
        raise PermanentError(f"I/O error: {e}") from e


class _GivenSource(Importer):
    """An import from a source made by the caller (an upload body) rather than opened from a URL."""

    def __init__(self, job: ImportJob, source: Source, progress: Progress | None) -> None:
        super().__init__(job, progress)
        self._given = source

    def _new_source(self) -> Source:
        return self._given


def run_with_source(job: ImportJob, source: Source, progress: Progress | None = None) -> ImportResult:
    """Run ``job`` reading from ``source`` once (``job.source`` names it in messages and resume points:
    a source that is ``resumable`` continues the run whose resume point has its ``validator``)."""
    try:
        return _GivenSource(job, source, progress).run()
    except Error:
        raise
    except OSError as e:
        raise PermanentError(f"I/O error: {e}") from e
