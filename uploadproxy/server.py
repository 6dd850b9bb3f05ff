"""``python -m uploadproxy.server``: the upload server pod's program (CDI's cdi-uploadserver).

It serves HTTPS on its container port (8443; on the local node the port the node gave it, from
``CDI_PORT_8443``), accepts only clients whose certificate is signed by ``CLIENT_CERT`` and names
``CLIENT_NAME`` (the upload proxy), and streams one upload at a time into the volume through the
importer's pipeline: the body is never held whole, raw and compressed images go straight into the
volume, sparse, qcow2 is converted as it streams in (``importer/qcow2_stream``), and the digest is
taken as it is written. Its JSON progress lines on stdout are what the DataVolume's progress shows.

Paths as CDI's: ``/v1beta1/upload`` (sync: answers once the volume is complete and verified),
``/v1beta1/upload-async`` (answers once every byte is in and the image passed every check the sync
path makes: format, hostile features, virtual size; only the conversion goes on), the form
variants (multipart part ``file``), ``/v1beta1/upload-archive`` and the v1alpha1 aliases, ``/healthz``.
An upload of known size keeps durable resume points, raw or qcow2 (``importer/checkpoint``; for a qcow2
the converter's saved state, ``importer/qcow2_resume``): ``HEAD`` answers ``Upload-Offset`` (and
``Upload-Format``), and a ranged ``PUT`` continues there; a qcow2 one only with the
``Upload-Prefix-Digest`` of the bytes held, so the rest of another file is refused with 416.
A second upload while one runs gets 503 saying since when and Retry-After (an upload whose client
sends nothing for ``CDI_UPLOAD_IDLE_TIMEOUT`` seconds, 30, is cut: its durable bytes stay for a
resume), one after success 409; an image larger than the volume 400
with CDI's message. A refused upload is logged as a JSON line ``{"uploadFailed": ...}`` (the controller
shows it on the DataVolume) and the server waits for another try; after a success it writes its
termination message and exits 0. A failure after an async answer (the client was told the image was
accepted) ends the server with a permanent failure message and exit 1: the DataVolume fails.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cdi.podenv import MountsError, PathMap, write_termination
from importer import checkpoint
from importer.digest import volume_digest
from importer.errors import CapacityExceeded, Error
from importer.pipeline import ImportJob, ImportResult, run_with_source
from importer.progress import Progress
from importer.sources.upload import UploadSource, upload_validator
from importer.target import resolve_target
from uploadproxy.body import (
    EXTENTS_TYPE,
    BodyError,
    ChunkedBody,
    DeclaredLength,
    ExtentsBody,
    LengthBody,
    MultipartFile,
    boundary_of,
    close_lingering,
)

log = logging.getLogger("uploadproxy.server")

SYNC = ("/v1beta1/upload", "/v1alpha1/upload")
ASYNC = ("/v1beta1/upload-async", "/v1alpha1/upload-async")
ARCHIVE = ("/v1beta1/upload-archive", "/v1alpha1/upload-archive")
FORM = ("/v1beta1/upload-form", "/v1alpha1/upload-form")
FORM_ASYNC = ("/v1beta1/upload-form-async", "/v1alpha1/upload-form-async")
CONTENT_TYPE_HEADER = "x-cdi-content-type"
OFFSET_HEADER = "Upload-Offset"  # bytes of the image the server holds, durable (HEAD answers it)
LENGTH_HEADER = "Upload-Length"
# a qcow2 resume proves it continues the same file: the volume digest (importer.digest) of its bytes before the range
PREFIX_HEADER = "Upload-Prefix-Digest"
FORMAT_HEADER = "Upload-Format"  # what HEAD says the held part is: raw, or qcow2 (then a resume needs PREFIX_HEADER)
IDLE_TIMEOUT = 30.0
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class Settings:
    def __init__(self, env: dict[str, str]) -> None:
        paths = PathMap(env)
        self.destination = paths(env.get("DESTINATION", "/data/disk.img"))
        self.size = int(env["UPLOAD_IMAGE_SIZE"]) if env.get("UPLOAD_IMAGE_SIZE") else None
        self.content_type = env.get("UPLOAD_CONTENT_TYPE", "kubevirt") or "kubevirt"
        self.client_name = env.get("CLIENT_NAME", "")
        self.port = int(env.get("CDI_PORT_8443") or 8443)
        self.cert, self.key = env.get("TLS_CERT", ""), env.get("TLS_KEY", "")
        self.client_ca = env.get("CLIENT_CERT", "")
        scratch = env.get("UPLOAD_SCRATCH_DIR")
        self.scratch = paths(scratch) if scratch else os.getcwd() if paths.confined else None
        # an upload whose client sends nothing this long is cut (a half-open connection must not hold
        # the volume: the durable bytes stay and a resume may continue them)
        self.idle_timeout = float(env.get("CDI_UPLOAD_IDLE_TIMEOUT") or IDLE_TIMEOUT)


class State:
    """One upload at a time: uploading/processing/done, as CDI's upload server keeps them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = False
        self.since = 0.0  # when the running upload began (wall clock), for the 503 of another
        self.done = False
        self.finished = threading.Event()
        self.result: ImportResult | None = None
        self.failure: tuple[str, str] | None = None  # an upload that failed after its async answer


def cdi_failure(error: BaseException) -> tuple[int, str, str]:
    """The answer's code, the reason and the message (CDI's words) for a failed upload."""
    message = str(error)
    if isinstance(error, CapacityExceeded):
        code, message = 400, f"effective image size is larger than the reported available storage: {message}"
    else:
        code = 500
    return code, getattr(error, "reason", type(error).__name__), message


QCOW2_MAGIC = b"QFI\xfb"


class _Qcow2SizeCheck:
    """The body as it arrives, refusing a qcow2 whose header (its first 32 bytes) gives a virtual size
    larger than the volume: the answer comes at once, not after the whole image was sent."""

    def __init__(self, body: Any, capacity: int | None) -> None:
        self.body = body
        self.capacity = capacity
        self.head = bytearray()

    @property
    def complete(self) -> bool:
        return bool(self.body.complete)

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = int(self.body.readinto(buf))
        if self.capacity is not None and len(self.head) < 32 and n:
            self.head += memoryview(buf)[: min(n, 32 - len(self.head))]
            if len(self.head) == 32 and self.head.startswith(QCOW2_MAGIC):
                virtual = int.from_bytes(self.head[24:32], "big")
                if virtual > self.capacity:
                    raise CapacityExceeded(
                        f"image virtual size {virtual} is larger than the volume capacity {self.capacity}")
        return n


class _ValidationWatch:
    """Passes the pipeline's progress on and notes when conversion starts: by then every check of the
    image (format, hostile features, virtual size against the volume) has passed."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.validated = threading.Event()

    def start_phase(self, name: str, total: int | None) -> None:
        if name == "convert":
            self.validated.set()
        self.inner.start_phase(name, total)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _failure_line(reason: str, message: str) -> None:
    print(json.dumps({"uploadFailed": {"reason": reason, "message": message}}), flush=True)


class Handler(BaseHTTPRequestHandler):
    server: UploadHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if code >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject: Any = (cert or {}).get("subject", ())
        names = [v for rdn in subject for k, v in rdn if k == "commonName"]
        return bool(cert) and self.server.settings.client_name in names

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] == "/healthz":
            self._reply(200, "OK")
        else:
            self._reply(404, "not found")

    def do_HEAD(self) -> None:  # noqa: N802
        """200 on the upload paths (CDI's async check), with how much of an interrupted upload is held."""
        path = self.path.split("?")[0]
        known = path in (*SYNC, *ASYNC, *ARCHIVE, *FORM, *FORM_ASYNC, "/healthz")
        if known and path != "/healthz" and not self._authorized():
            self.send_response(401)
        else:
            self.send_response(200 if known else 404)
            point = self.server.resume_point()
            if known and point is not None:
                self.send_header(OFFSET_HEADER, str(point.offset))
                self.send_header(LENGTH_HEADER, str(point.size))
                self.send_header(FORMAT_HEADER, point.format)
            elif known:
                self.send_header(OFFSET_HEADER, "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        self.do_POST()

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path not in (*SYNC, *ASYNC, *ARCHIVE, *FORM, *FORM_ASYNC):
            self._reply(404, "not found")
            return
        if not self._authorized():
            self._reply(401, "")
            return
        state = self.server.state
        with state.lock:
            if state.busy:
                log.warning("concurrent upload refused")
                idle = self.server.settings.idle_timeout
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.since))
                self._reply(503, f"another upload to this volume is in progress since {since}; it is cancelled "
                                 f"after {idle:.0f} s without data: try again then (a ranged PUT continues from "
                                 f"the Upload-Offset that HEAD shows)", {"Retry-After": str(max(1, round(idle)))})
                return
            if state.done:
                log.warning("upload after success refused")
                self._reply(409, "")
                return
            state.busy = True
            state.since = time.time()
        self.connection.settimeout(self.server.settings.idle_timeout)  # a stalled body is cut, not waited on
        if not self._upload(path):
            with state.lock:
                state.busy = False

    def _body(self, form: bool) -> tuple[Any, int | None, int]:
        """The body reader, the size of the whole image when known, and where in it the body starts."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body: Any = ChunkedBody(self.rfile)
            size = None
        else:
            size = int(self.headers.get("Content-Length") or 0)
            body = LengthBody(self.rfile, size)
        text = self.headers.get(LENGTH_HEADER)  # the image's size, when the client declares it
        if text is not None and not text.strip().isdigit():
            raise BodyError(f"{LENGTH_HEADER} {text!r} is not a byte count")
        declared = int(text) if text is not None else None
        ranged = self.headers.get("Content-Range")
        if form:
            part = MultipartFile(body, boundary_of(self.headers.get("Content-Type") or ""))
            # a declared size makes the form resumable: a drop continues with a ranged PUT of the rest
            return (part, None, 0) if declared is None else (DeclaredLength(part, declared), declared, 0)
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() == EXTENTS_TYPE:
            if declared is None or ranged:
                raise BodyError(f"an extents body needs {LENGTH_HEADER} (the image size) and no Content-Range")
            return ExtentsBody(body, declared), declared, -1
        if not ranged:
            if declared is None:
                return body, size, 0
            if size is not None and size != declared:
                raise BodyError(f"the body's Content-Length {size} differs from its {LENGTH_HEADER} {declared}")
            # a body that ends before the declared size is cut, never a complete image
            return DeclaredLength(body, declared, "the body", f"its {LENGTH_HEADER}"), declared, 0
        m = CONTENT_RANGE.match(ranged.strip())
        if not m or int(m.group(1)) > int(m.group(2)) or int(m.group(2)) >= int(m.group(3)):
            raise BodyError(f"invalid Content-Range {ranged!r}: write it as bytes FIRST-LAST/TOTAL")
        first, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if size is None:  # chunked: the range says how long the body must be
            body = DeclaredLength(body, last - first + 1, "the ranged body", f"its Content-Range {ranged!r}")
        elif last - first + 1 != size:
            raise BodyError(f"Content-Range {ranged!r} covers {last - first + 1} bytes, the body has {size} "
                            f"(Content-Length)")
        if last != total - 1:  # a part in the middle would end the upload with the rest of the image missing
            raise BodyError(f"Content-Range {ranged!r} stops before the end of the image: a ranged upload sends "
                            f"the rest of the file, bytes {first}-{total - 1}/{total}")
        return body, total, first

    def _upload(self, path: str) -> bool:
        """Run one upload; True when it goes on in the background (async) and frees the server itself."""
        settings = self.server.settings
        content_type = self.headers.get(CONTENT_TYPE_HEADER) or settings.content_type
        if path in ARCHIVE:
            content_type = "archive"
        ranged = bool(self.headers.get("Content-Range"))
        if ranged and (self.headers.get("Content-Type") or "").lower().startswith("multipart/"):
            self._reply(400, "Saving stream failed: a resume (a PUT with Content-Range) sends the rest of the file as "
                             "a raw body (Content-Type: application/octet-stream), not as a form")
            return False
        try:
            # a resume of a form upload is a raw body, on the form path as on the others
            body, size, offset = self._body((path in FORM or path in FORM_ASYNC) and not ranged)
        except (BodyError, ValueError) as e:
            self._reply(400, f"Saving stream failed: {e}")
            return False
        if offset > 0:
            point = self.server.resume_point()
            if point is None or point.offset != offset or point.validator != upload_validator(size):
                self._refuse_range(point, offset, size)
                return False
            if point.format == "qcow2" and self.headers.get(PREFIX_HEADER) != point.prefix:
                self._refuse_other_image(point, self.headers.get(PREFIX_HEADER))
                return False
            declared = self.headers.get(PREFIX_HEADER)
            if point.format != "qcow2" and declared and declared != volume_digest(point.target, offset):
                # a raw volume holds the file's first bytes as they are: a sender that says which they were
                # is held to it (without the header a raw resume is taken on its size, as before)
                self._refuse_other_image(point, declared)
                return False
            log.info("continuing an interrupted %s upload at byte %d of %d", point.format, offset, size)
        if offset == 0 and content_type != "archive":
            body = _Qcow2SizeCheck(body, self._capacity())
        source = UploadSource(body, size=size, offset=max(offset, 0), resumable=offset >= 0,
                              prefix=self.headers.get(PREFIX_HEADER))
        job = ImportJob(source="upload", target=settings.destination, content_type=content_type,
                        size=settings.size, scratch_dir=settings.scratch)
        if path not in ASYNC and path not in FORM_ASYNC:
            return self._answer_then_finish(self._run(job, source), source)
        outcome: dict[str, Any] = {}
        replied = threading.Event()
        finished = threading.Event()
        decided = threading.Lock()
        watch = _ValidationWatch(self.server.progress)

        def background() -> None:
            result = self._run(job, source, watch)
            with decided:
                outcome.update(result)
                finished.set()
                handed_off = replied.is_set()
            if handed_off:  # the client has its answer: the outcome goes to the log and the controller
                self.server.finish(outcome)
                with self.server.state.lock:
                    self.server.state.busy = False

        threading.Thread(target=background, name="upload-async", daemon=True).start()
        # CDI's async answer comes once the bytes are in and the image is validated: only the
        # conversion may go on after it, never a check that could still refuse the image
        while not finished.wait(0.1) and not watch.validated.is_set():
            pass
        with decided:
            if not finished.is_set() and watch.validated.is_set() and source.ended.is_set():
                replied.set()
        if replied.is_set():
            log.info("async upload received bytes=%d; processing continues", source.position)
            self._reply(200, "")
            return True
        finished.wait()
        return self._answer_then_finish(outcome, source)

    def _refuse_range(self, point: checkpoint.Checkpoint | None, offset: int, size: int | None) -> None:
        """416 for a ranged PUT that does not continue what the server holds: the true Upload-Offset, and
        in words what is held and what to send."""
        held = point.offset if point is not None else 0
        total = point.size if point is not None and point.size is not None else 0
        if point is None:
            text = ("this volume holds no interrupted upload to continue: send the whole image from byte 0 "
                    "(a POST without Content-Range)")
        elif point.validator != upload_validator(size):
            text = (f"the interrupted upload here is {total} bytes long, not {size}: continue it with "
                    f"Content-Range: bytes {held}-{total - 1}/{total}, or send another image whole "
                    f"from byte 0 (a POST without Content-Range)")
        else:
            text = (f"this volume holds bytes 0-{held - 1} of {total}, the range starts at {offset}: send "
                    f"Content-Range: bytes {held}-{total - 1}/{total}")
        log.info("ranged upload refused: %s", text)
        self._reply(416, text, {OFFSET_HEADER: str(held), LENGTH_HEADER: str(total)})

    def _refuse_other_image(self, point: checkpoint.Checkpoint, declared: str | None) -> None:
        """416 for a ranged PUT that does not prove it continues the interrupted qcow2 (its prefix digest
        is missing or another): continuing would mix two images' tables and data."""
        total = point.size or 0
        if declared is None:
            text = (f"the interrupted upload here is a qcow2 image converted as it arrived: a resume must send "
                    f"{PREFIX_HEADER}, the volume digest of the file's first {point.offset} bytes (cdi "
                    f"image-upload sends it), so that the rest of another file is never added to it; or send "
                    f"the image whole from byte 0 (a POST without Content-Range)")
        else:
            text = (f"the file sent is not the one whose upload was interrupted: its first {point.offset} bytes have "
                    f"the digest {declared}, the bytes received had another; send that file's bytes "
                    f"{point.offset}-{total - 1}, or send this file whole from byte 0 (a POST without Content-Range)")
        log.info("ranged upload refused: %s", text)
        self._reply(416, text, {OFFSET_HEADER: str(point.offset), LENGTH_HEADER: str(total)})

    def _capacity(self) -> int | None:
        settings = self.server.settings
        try:
            return resolve_target(settings.destination, size=settings.size, archive=False).capacity
        except Error:
            return None  # the pipeline says why

    def _answer_then_finish(self, outcome: dict[str, Any], source: UploadSource) -> bool:
        """Record a success before answering (a request after it gets 409; a server started again after a
        kill finishes with it), stop serving after."""
        if "result" in outcome:
            self.server.record_done(outcome["result"].to_dict())
            with self.server.state.lock:
                self.server.state.done = True
                self.server.state.result = outcome["result"]
        self._answer(outcome, source)
        if "result" in outcome:
            self.server.state.finished.set()
        return False

    def _run(self, job: ImportJob, source: UploadSource, progress: Any = None) -> dict[str, Any]:
        try:
            return {"result": run_with_source(job, source, progress or self.server.progress)}
        except BaseException as e:  # noqa: BLE001 - reported to the client and the log
            return {"error": e}

    def _answer(self, outcome: dict[str, Any], source: UploadSource) -> None:
        error = outcome.get("error")
        if error is None:
            log.info("upload done bytes=%d digest=%s", source.position, outcome["result"].digest)
            self._reply(200, "")
            return
        if not isinstance(error, (Error, BodyError)):
            log.exception("upload failed", exc_info=error)
        code, reason, message = cdi_failure(error)
        log.warning("upload failed reason=%s message=%s", reason, message)
        self.server.progress.discard()  # the refused or cut-off bytes are not held: N/A until the next try
        _failure_line(reason, message)
        try:
            self._reply(code, f"Saving stream failed: {message}")
        except OSError:
            pass  # the client is gone (a cut upload): the log and the DataVolume say why


class UploadHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, settings: Settings, context: ssl.SSLContext | None, progress: Progress) -> None:
        self.settings = settings
        self.context = context
        self.state = State()
        self.progress = progress
        super().__init__(("127.0.0.1" if os.environ.get("CDI_PORTS") else "0.0.0.0", settings.port), Handler)

    def resume_point(self) -> checkpoint.Checkpoint | None:
        """The durable part of an interrupted raw or qcow2 upload into this volume, if there is one."""
        settings = self.settings
        if settings.content_type == "archive":
            return None
        try:
            target = resolve_target(settings.destination, size=settings.size, archive=False)
        except Error:
            return None
        point = checkpoint.load(checkpoint.path_for(target.path, target.kind, settings.scratch))
        if point is None or point.target != target.path or point.capacity != target.capacity:
            return None
        return point

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.context is not None:  # the handshake runs in the connection's thread, not the accept loop
            request.settimeout(60)
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.info("TLS handshake failed peer=%s error=%s", client_address, e)
                request.close()
                return
            request.settimeout(None)
        try:
            super().finish_request(request, client_address)
        finally:
            close_lingering(request)

    def finish(self, outcome: dict[str, Any]) -> None:
        """After an async answer: record the outcome and stop serving. The client was told the image was
        accepted, so a failure now (in the conversion) ends the server with it: the DataVolume fails."""
        if "error" in outcome:
            _, reason, message = cdi_failure(outcome["error"])
            log.warning("upload failed after its answer reason=%s message=%s", reason, message)
            _failure_line(reason, message)
            with self.state.lock:
                self.state.failure = (reason, message)
            self.state.finished.set()
            return
        self.record_done(outcome["result"].to_dict())
        with self.state.lock:
            self.state.done = True
            self.state.result = outcome["result"]
        self.state.finished.set()

    def record_done(self, result: dict[str, Any]) -> None:
        """Keep the outcome of the finished upload durably before it is answered: a server killed after its
        200 (before it could end its pod) finishes with it when started again, instead of taking another
        upload over the acknowledged one."""
        path = done_path(self.settings)
        if path is None:
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


DONE_FILE = ".cdi-upload-done.json"


def done_path(settings: Settings) -> str | None:
    """Where the outcome of a finished upload is kept: the server's scratch (in a pod its emptyDir, which
    outlives a restart of the container), else beside a file target; None for an archive without scratch
    (its target directory is the user's)."""
    if settings.scratch:
        return os.path.join(settings.scratch, DONE_FILE)
    if settings.content_type == "archive":
        return None
    return os.path.join(os.path.dirname(os.path.abspath(settings.destination)), DONE_FILE)


def finished_before(settings: Settings) -> dict[str, Any] | None:
    """The outcome a killed server recorded before its answer, if any."""
    path = done_path(settings)
    if path is None:
        return None
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring an unreadable record of a finished upload path=%s error=%s", path, e)
        return None
    return result if isinstance(result, dict) else None


def _write_private(directory: str, name: str, data: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    return path


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0  # nothing arrives unasked after the handshake: readable means an (early) answer
    # ssl loads a key pair only from files: they live in a private directory just long enough to be read.
    with tempfile.TemporaryDirectory(prefix="cdi-upload-tls-") as private:
        ctx.load_cert_chain(_write_private(private, "tls.crt", settings.cert),
                            _write_private(private, "tls.key", settings.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=settings.client_ca)
    return ctx



def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        settings = Settings(dict(os.environ))
        if not settings.cert and os.environ.get("INSECURE_TLS", "").lower() != "true":
            raise ValueError("TLS_CERT is empty: the upload server serves only over TLS (set INSECURE_TLS=true "
                             "to serve plain HTTP in tests)")
        context = tls_context(settings)
    except (MountsError, ValueError, ssl.SSLError, OSError) as e:
        log.error("cannot start: %s", e)
        write_termination({"ok": False, "reason": "InvalidJob", "message": str(e), "permanent": True})
        return 1
    done = finished_before(settings)
    if done is not None:  # killed after its answer: the upload was acknowledged, it stays the result
        log.info("the upload was finished and answered before a restart: ending with it result=%s", json.dumps(done))
        write_termination({"ok": True, "result": done})
        return 0
    with Progress(mode="json", stream=sys.stdout, interval=1.0) as progress:
        server = UploadHTTPServer(settings, context, progress)
        server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        log.info("upload server listening port=%d destination=%s size=%s", settings.port, settings.destination,
                 settings.size)
        print(json.dumps({"ready": True}), flush=True)
        server.state.finished.wait()
        result, failure = server.state.result, server.state.failure
        server.shutdown()
    if failure is not None:
        write_termination({"ok": False, "reason": failure[0], "message": failure[1], "permanent": True})
        return 1
    assert result is not None
    log.info("upload done result=%s", json.dumps(result.to_dict()))
    write_termination({"ok": True, "result": result.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
