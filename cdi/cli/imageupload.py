"""``cdi image-upload``: upload a local disk image into a DataVolume or PVC, as ``virtctl image-upload``.

``cdi image-upload dv NAME --size 10Gi --image-path disk.qcow2`` creates the DataVolume (source
upload), waits for its upload server, asks for a token (UploadTokenRequest), finds the proxy in
CDIConfig ``config`` (``status.uploadProxyURL``) unless ``--uploadproxy-url`` names it, and sends the
image with a progress bar (bytes, rate, ETA), then waits until the volume is processed. ``pvc NAME``
does the same with a bare PVC. Flags as virtctl's: ``--no-create``, ``--storage-class``,
``--access-mode``, ``--volume-mode``, ``--force-bind``, ``--archive-path``, ``--insecure``,
``--async`` (return once the data is sent).

Beyond virtctl: a dropped connection does not start the upload over. The client asks the proxy how
many bytes the server holds (HEAD, ``Upload-Offset``) and sends the rest with a ranged PUT
(``Content-Range``), with a fresh token when the old one expired. The server keeps durable resume
points for raw and qcow2 images; a qcow2 resume also sends the digest of the file's bytes the server
holds (``Upload-Prefix-Digest``), proving it continues the same file. Compressed images (gz, xz, zst,
bz2) and --sparse uploads start again from byte 0, and the client says so.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from cdi.cli import sparse as sparse_mod
from cdi.cli.vm import CliError, kubeconfig_path, load_endpoint
from importer.digest import volume_digest
from importer.formats import detect_compression
from importer.stream import ReadAhead
from uploadproxy.body import EXTENTS_TYPE

ANN_TARGET = "cdi.kubevirt.io/storage.upload.target"
ANN_READY = "cdi.kubevirt.io/storage.pod.ready"
ANN_PHASE = "cdi.kubevirt.io/storage.pod.phase"
ANN_MESSAGE = "cdi.kubevirt.io/storage.condition.running.message"
CHUNK = 1 << 20
RETRIES = 20
MAX_RETRY_AFTER = 300  # seconds: a Retry-After longer than this is not waited out


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image-upload", help="upload a local disk image into a DataVolume or PVC",
                       description="Upload a local image, as virtctl image-upload does; resumes after a drop.")
    p.add_argument("kind", choices=["dv", "pvc"], help="what to upload into")
    p.add_argument("name", help="name of the DataVolume or PVC")
    p.add_argument("--image-path", help="the image to upload")
    p.add_argument("--archive-path", help="a tar archive to extract into the volume (contentType archive)")
    p.add_argument("--size", help="size of the volume to create, e.g. 10Gi")
    p.add_argument("--uploadproxy-url", help="URL of the upload proxy (default: CDIConfig status.uploadProxyURL)")
    p.add_argument("--insecure", action="store_true", help="do not verify the upload proxy's certificate")
    p.add_argument("--no-create", action="store_true", help="upload into an existing DataVolume or PVC")
    p.add_argument("--storage-class", help="storage class of the volume to create")
    p.add_argument("--access-mode", help="access mode of the volume to create (e.g. ReadWriteOnce)")
    p.add_argument("--volume-mode", choices=["block", "filesystem"], help="volume mode of the volume to create")
    p.add_argument("--force-bind", action="store_true", help="bind the claim at once (WaitForFirstConsumer classes)")
    p.add_argument("--sparse", action="store_true",
                   help="send only the data extents of a raw or qcow2 image (zeros never cross the wire)")
    p.add_argument("--async", dest="async_", action="store_true", help="return once the data is sent")
    p.add_argument("--wait-secs", type=float, default=300, help="seconds to wait for the upload server (300)")
    p.add_argument("--processing-timeout", type=float, default=86400,
                   help="seconds to wait for the volume to be processed after the upload (86400)")
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--kubeconfig", help="kubeconfig (default $KUBECONFIG, ~/.kube/config, cdi-data/kubeconfig)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as e:
        print(f"cdi image-upload: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cdi image-upload: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from cdi.kube import ApiError, Client

    path = args.image_path or args.archive_path
    if not path or (args.image_path and args.archive_path):
        raise CliError("give exactly one of --image-path and --archive-path")
    image = Path(path)
    if not image.is_file():
        raise CliError(f"{image} is not a readable file")
    extents = _extents(image) if args.sparse else None  # refuse an image --sparse cannot send before creating anything
    kubeconfig = kubeconfig_path(args.kubeconfig)
    endpoint = load_endpoint(kubeconfig, args.namespace)
    ns = endpoint.namespace
    try:
        client = Client.from_kubeconfig(str(kubeconfig))
        _ensure_target(client, args, ns)
        _wait_ready(client, args, ns)
        url = args.uploadproxy_url or _proxy_url(client)
        ctx = _context(args, endpoint.ssl_context)
        uploader = Uploader(url, ctx, lambda: _token(client, ns, args.name), image,
                            archive=bool(args.archive_path), extents=extents)
        print(f"Uploading data to {url}", file=sys.stderr)
        uploader.upload()
        if args.async_:
            print(f"Uploading {image} completed successfully; processing goes on in the background", file=sys.stderr)
            return 0
        print("Uploading data completed successfully, waiting for processing to complete, you can hit ctrl-c "
              "without interrupting the progress", file=sys.stderr)
        _wait_processed(client, args, ns)
    except ApiError as e:
        raise CliError(str(e)) from e
    print("Processing completed successfully", file=sys.stderr)
    print(f"Uploading {image} completed successfully", file=sys.stderr)
    return 0


def _ensure_target(client: Any, args: argparse.Namespace, ns: str) -> None:
    from cdi.kube import DATAVOLUME, PVC

    kind = DATAVOLUME if args.kind == "dv" else PVC
    existing = client.find(kind, ns, args.name)
    if existing is not None:
        if args.kind == "pvc" and ANN_TARGET not in (existing["metadata"].get("annotations") or {}):
            raise CliError(f"PVC {ns}/{args.name} is not an upload target (no {ANN_TARGET} annotation)")
        print(f"Using existing {'DataVolume' if args.kind == 'dv' else 'PVC'} {ns}/{args.name}", file=sys.stderr)
        return
    if args.no_create:
        raise CliError(f"{'DataVolume' if args.kind == 'dv' else 'PVC'} {ns}/{args.name} not found")
    if not args.size:
        raise CliError("--size is required to create the volume")
    claim: dict[str, Any] = {"resources": {"requests": {"storage": args.size}}}
    if args.access_mode:
        claim["accessModes"] = [args.access_mode]
    if args.volume_mode:
        claim["volumeMode"] = "Block" if args.volume_mode == "block" else "Filesystem"
    if args.storage_class:
        claim["storageClassName"] = args.storage_class
    annotations = {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"} if args.force_bind else {}
    content = "archive" if args.archive_path else "kubevirt"
    if args.kind == "dv":
        spec: dict[str, Any] = {"source": {"upload": {}}, "storage": claim}
        if args.archive_path:
            spec["contentType"] = "archive"
        client.create(DATAVOLUME, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                   "metadata": {"name": args.name, "namespace": ns, "annotations": annotations},
                                   "spec": spec})
        print(f"DataVolume {ns}/{args.name} created", file=sys.stderr)
    else:
        claim.setdefault("accessModes", ["ReadWriteOnce"])
        annotations.update({ANN_TARGET: "", "cdi.kubevirt.io/storage.contentType": content})
        client.create(PVC, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": args.name, "namespace": ns, "annotations": annotations},
                            "spec": claim})
        print(f"PVC {ns}/{args.name} created", file=sys.stderr)


def _wait_ready(client: Any, args: argparse.Namespace, ns: str) -> None:
    from cdi.kube import PVC

    print(f"Waiting for PVC {args.name} upload pod to be ready...", file=sys.stderr)
    deadline = time.monotonic() + args.wait_secs
    while True:
        pvc = client.find(PVC, ns, args.name)
        ann = (pvc or {}).get("metadata", {}).get("annotations") or {}
        if ann.get(ANN_PHASE) == "Succeeded":
            raise CliError(f"PVC {ns}/{args.name} already successfully imported/cloned/updated")
        if ann.get(ANN_READY) == "true":
            print("Pod now ready", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            raise CliError(f"timed out after {args.wait_secs:.0f}s waiting for the upload pod of {args.name}")
        time.sleep(0.2)


def _failure_message(client: Any, args: argparse.Namespace, ns: str) -> str | None:
    """Why the upload failed, when the DataVolume, the PVC or the upload pod says it did: a failed
    DataVolume, a PVC marked failed, a failed upload pod. (A refusal message alone is not a failure:
    ours was answered 200, and a message may be an earlier, cut attempt's, recorded late.)"""
    import json

    from cdi.controller.upload_pod import upload_name as upload_pod_name
    from cdi.kube import DATAVOLUME, POD, PVC

    if args.kind == "dv":
        status = client.get(DATAVOLUME, ns, args.name).get("status") or {}
        if status.get("phase") == "Failed":
            running = [c for c in status.get("conditions") or [] if c.get("type") == "Running"]
            return str((running or [{}])[0].get("message") or "the DataVolume failed")
    pvc = client.find(PVC, ns, args.name)
    ann = (pvc or {}).get("metadata", {}).get("annotations") or {}
    message = ann.get(ANN_MESSAGE) or ""
    if ann.get(ANN_PHASE) == "Failed":
        return message or "the upload pod failed"
    pod = client.find(POD, ns, upload_pod_name(args.name))
    if ((pod or {}).get("status") or {}).get("phase") == "Failed":
        for cs in pod["status"].get("containerStatuses") or []:
            text = ((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
            try:
                text = str(json.loads(text).get("message") or text)
            except (ValueError, AttributeError):
                pass
            return text or "the upload pod failed"
        return "the upload pod failed"
    return None


def _wait_processed(client: Any, args: argparse.Namespace, ns: str, interval: float = 0.2) -> None:
    from cdi.kube import DATAVOLUME, PVC

    deadline = time.monotonic() + args.processing_timeout
    while True:
        if args.kind == "dv":
            status = (client.get(DATAVOLUME, ns, args.name).get("status") or {})
            if status.get("phase") == "Succeeded":
                return
        else:
            ann = client.get(PVC, ns, args.name)["metadata"].get("annotations") or {}
            if ann.get(ANN_PHASE) == "Succeeded":
                return
        failure = _failure_message(client, args, ns)
        if failure is not None:
            raise CliError(f"processing failed: {failure}")
        if time.monotonic() > deadline:
            raise CliError(f"timed out after {args.processing_timeout:.0f}s waiting for {args.name} to be processed")
        time.sleep(interval)


def _proxy_url(client: Any) -> str:
    from cdi.kube.kinds import CDICONFIG

    config = client.find(CDICONFIG, None, "config")
    url = ((config or {}).get("status") or {}).get("uploadProxyURL")
    if not url:
        raise CliError("uploadproxy URL not found: CDIConfig 'config' has no status.uploadProxyURL "
                       "(pass --uploadproxy-url)")
    return str(url) if "://" in str(url) else f"https://{url}"


def _token(client: Any, ns: str, pvc: str) -> str:
    from cdi.kube.kinds import UPLOADTOKENREQUEST

    out = client.create(UPLOADTOKENREQUEST, {
        "apiVersion": UPLOADTOKENREQUEST.api_version, "kind": "UploadTokenRequest",
        "metadata": {"name": f"token-for-{pvc}", "namespace": ns}, "spec": {"pvcName": pvc}})
    token = (out.get("status") or {}).get("token")
    if not token:
        raise CliError("the API server returned no upload token")
    return str(token)


def _context(args: argparse.Namespace, kube_ctx: ssl.SSLContext | None) -> ssl.SSLContext:
    if args.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx
    return kube_ctx or ssl.create_default_context()  # trusts the API server's CA as well (one machine)


def _extents(image: Path) -> tuple[int, list[sparse_mod.Extent]]:
    """The image's size and data extents for --sparse, or why it cannot be sent so."""
    try:
        return sparse_mod.data_extents(image)
    except sparse_mod.SparseError as e:
        raise CliError(str(e)) from e


def retry_after(headers: dict[str, str], failures: int) -> float:
    """How long to wait before trying again: the server's Retry-After (a busy volume says how long its
    stalled upload may hold it), else a short backoff."""
    value = (headers.get("retry-after") or "").strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER))
    return min(0.5 * failures, 5)


class Uploader:
    """Sends one image, continuing after a dropped connection from what the server holds."""

    def __init__(self, url: str, ctx: ssl.SSLContext, new_token: Any, image: Path, *, archive: bool,
                 sparse: bool = False,
                 extents: tuple[int, list[sparse_mod.Extent]] | None = None) -> None:
        self.url = urllib.parse.urlsplit(url)
        self.ctx = ctx
        self.new_token = new_token
        self.image = image
        self.size = image.stat().st_size
        self.extents: list[sparse_mod.Extent] | None = None
        if sparse and extents is None:
            extents = _extents(image)
        if extents is not None:
            self.size, self.extents = extents
        self.token = new_token()
        self.path = "/v1beta1/upload-async" if not archive else "/v1beta1/upload"
        self.resumes = 0
        self.sent = 0  # bytes of the image sent, over every attempt (a resume sends only the rest)
        self.prefix: str | None = None  # the digest of the bytes the server holds, for a qcow2 resume
        with open(image, "rb") as f:
            self.compression = detect_compression(f.read(16))

    def restart_reason(self) -> str | None:
        """Why a dropped upload of this image can only start again from byte 0 (None: it resumes)."""
        if self.extents is not None:
            return "a --sparse upload is sent again whole (it sends only data: little to send again)"
        if self.compression is not None:
            return (f"the image is {self.compression}-compressed: the server decompresses it as it arrives and "
                    "cannot continue a compressed stream, so it is sent again from byte 0 (upload it "
                    "uncompressed, raw or qcow2, for uploads that resume)")
        return None

    def _conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.url.hostname or "127.0.0.1", self.url.port or 443,
                                           context=self.ctx, timeout=120)

    def held(self) -> int:
        """Bytes of this image the server already holds (0 when it cannot continue). For a qcow2 the
        server converted as it came, the digest of those bytes goes with the rest (``prefix``)."""
        self.prefix = None
        if self.restart_reason() is not None:
            return 0
        conn = self._conn()
        try:
            conn.request("HEAD", self.path, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 401:
                self.token = self.new_token()
                return self.held()
            if resp.status != 200 or resp.getheader("Upload-Length") != str(self.size):
                return 0
            offset = int(resp.getheader("Upload-Offset") or 0)
        finally:
            conn.close()
        if offset and resp.getheader("Upload-Format") == "qcow2":
            self.prefix = volume_digest(str(self.image), offset)
        return offset

    def _continuing(self, offset: int) -> str:
        reason = self.restart_reason()
        if reason is not None:
            return f"starting again from byte 0: {reason}"
        if not offset:
            return "starting again from byte 0: the server holds no durable part of the image yet"
        return f"continuing at byte {offset} of {self.size}"

    def upload(self) -> None:
        from tqdm import tqdm

        offset, failures = self._interrupted_qcow2(), 0
        with tqdm(total=self.size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  dynamic_ncols=True, disable=None) as bar:
            while True:
                try:
                    status, body, headers = self._send(offset, bar)
                except (OSError, http.client.HTTPException) as e:
                    failures += 1
                    if failures > RETRIES:
                        raise CliError(f"upload failed after {RETRIES} retries: {e}") from e
                    time.sleep(min(0.5 * failures, 5))
                    offset = self._held_or_zero()
                    print(f"\nconnection lost ({e}); {self._continuing(offset)}", file=sys.stderr)
                    self.resumes += 1
                    continue
                if status == 200:
                    return
                if status == 401:
                    self.token = self.new_token()
                elif status == 416 and failures < RETRIES:  # the server holds another part: ask what it holds
                    failures += 1
                    refused_at, offset = offset, self._held_or_zero()
                    if offset and offset == refused_at:  # it holds that part, of another file (or changed)
                        offset = 0
                        print(f"\nresume refused ({body.strip()[:300]}); sending the image whole from byte 0",
                              file=sys.stderr)
                    else:
                        print(f"\nresume refused ({body.strip()[:300]}); {self._continuing(offset)}",
                              file=sys.stderr)
                elif status in (502, 503) and failures < RETRIES:  # the server went away, or is busy
                    failures += 1
                    wait = retry_after(headers, failures)
                    print(f"\nupload interrupted ({status}: {body.strip()[:300] or 'no reason given'}); "
                          f"trying again in {wait:.0f} s", file=sys.stderr)
                    time.sleep(wait)
                    offset = self._held_or_zero()
                    print(self._continuing(offset), file=sys.stderr)
                    self.resumes += 1
                elif status in (416, 502, 503):
                    raise CliError(f"upload failed after {RETRIES} retries: {status} {body.strip()}")
                else:
                    raise CliError(f"unexpected return value {status}, {body.strip()}")

    def _interrupted_qcow2(self) -> int:
        """Where an earlier run's qcow2 upload of this volume stopped, when the server holds one (a new
        invocation continues it; the digest sent with it proves the file is the same). A raw part is
        not continued by a new invocation: nothing would tell another file of the same size from it."""
        if self.restart_reason() is not None:
            return 0
        offset = self._held_or_zero()
        if offset and self.prefix is not None:
            print(f"the server holds the first {offset} bytes of an interrupted qcow2 upload: continuing at byte "
                  f"{offset} of {self.size}", file=sys.stderr)
            self.resumes += 1
            return offset
        return 0

    def _held_or_zero(self) -> int:
        try:
            return self.held()
        except (OSError, http.client.HTTPException):
            return 0

    def _send(self, offset: int, bar: Any) -> tuple[int, str, dict[str, str]]:
        if self.extents is not None:
            return self._send_extents(self.extents, bar)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Length": str(self.size - offset),
                   "Content-Type": "application/octet-stream"}
        if offset:
            headers["Content-Range"] = f"bytes {offset}-{self.size - 1}/{self.size}"
            if self.prefix is not None:
                headers["Upload-Prefix-Digest"] = self.prefix
        bar.n = offset
        bar.refresh()
        conn = self._conn()
        try:
            conn.putrequest("PUT" if offset else "POST", self.path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            buf = bytearray(CHUNK)
            with open(self.image, "rb", buffering=0) as f:
                f.seek(offset)
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                ahead = ReadAhead(f, chunk=CHUNK, depth=8)  # the disk is read while the network sends
                ahead.start()
                try:
                    while n := ahead.readinto(buf):
                        conn.send(memoryview(buf)[:n])
                        self.sent += n
                        bar.update(n)
                finally:
                    ahead.close()
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace"), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def _send_extents(self, extents: list[sparse_mod.Extent], bar: Any) -> tuple[int, str, dict[str, str]]:
        bar.n = 0
        bar.refresh()
        conn = self._conn()
        try:
            conn.putrequest("POST", self.path)
            length = sparse_mod.body_length(extents)
            for k, v in {"Authorization": f"Bearer {self.token}", "Content-Type": EXTENTS_TYPE,
                         "Upload-Length": str(self.size), "Content-Length": str(length)}.items():
                conn.putheader(k, v)
            conn.endheaders()
            sparse_mod.send_extents(self.image, extents, conn.send, bar.update)
            bar.update(self.size - bar.n)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace"), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
