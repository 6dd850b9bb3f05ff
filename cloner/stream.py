"""The host-assisted clone stream: the source volume, zstd-compressed, over mutual TLS to an upload server.

As CDI's cloner pod does, the source side reads the volume and sends it in one chunked POST to the
target's upload server (``/v1beta1/upload``, which answers once the volume is complete and verified),
presenting a client certificate from the upload client signer and trusting only the upload server
signer. Holes are read as zeros without touching the disk (SEEK_DATA/SEEK_HOLE) and compress to almost
nothing; the server detects zstd by its magic bytes and writes the volume sparse.
"""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator

import zstandard

from cloner.copy import BLOCK, data_extents

_ZERO = bytes(BLOCK)


class StreamError(Exception):
    """The upload server refused the stream or the connection failed."""


def read_volume(path: str, size: int, progress: Callable[[int], None]) -> Iterator[bytes | memoryview]:
    """The first ``size`` bytes of ``path``, in blocks; holes come from a zero buffer, never from disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        found = None if stat.S_ISBLK(os.fstat(fd).st_mode) else data_extents(fd, size)
        extents = [(0, size)] if found is None else found
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        pos = 0
        for start, end in [*extents, (size, size)]:
            while pos < start:
                n = min(BLOCK, start - pos)
                yield _ZERO[:n]
                pos += n
                progress(n)
            while pos < end:
                n = os.preadv(fd, [view[:min(BLOCK, end - pos)]], pos)
                if n <= 0:
                    raise OSError(f"{path} ended at {pos}, before {size}")
                yield view[:n]
                pos += n
                progress(n)
    finally:
        os.close(fd)


def _context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the server's certificate names its Service; the signer is what is trusted
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(os.open(cert_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(cert)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(key)
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def send(path: str, size: int, url: str, *, cert: str, key: str, ca: str, level: int = 1,
         progress: Callable[[int], None] = lambda n: None) -> str:
    """Stream the volume to ``url``; returns the server's answer. Raises StreamError on refusal."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port or 443,
                                       context=_context(cert, key, ca), timeout=300)
    compressor = zstandard.ZstdCompressor(level=level)  # zstd worker threads cost more than they gained here
    try:
        conn.putrequest("POST", parts.path or "/v1beta1/upload")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.endheaders()
        writer = compressor.chunker(chunk_size=1 << 20)
        for block in read_volume(path, size, progress):
            for chunk in writer.compress(block):
                _chunk(conn, chunk)
        for chunk in writer.finish():
            _chunk(conn, chunk)
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        if response.status != 200:
            raise StreamError(f"the upload server answered {response.status}: {text.strip()}")
        return text
    except (OSError, http.client.HTTPException) as e:
        raise StreamError(f"streaming to {url} failed: {e}") from e
    finally:
        conn.close()


def _chunk(conn: http.client.HTTPSConnection, data: bytes) -> None:
    if data:
        conn.send(b"%x\r\n" % len(data) + data + b"\r\n")
