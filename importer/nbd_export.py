"""A read-only NBD export of a remote file, served from this process, so that qemu-img converts
straight from the network with random access and no scratch file.

Every read is a verified range read of one version of the file (``sources.http.RangeReader``): a
read cut by the network continues where it stopped instead of starting over, and a file that changes,
a server that stops honouring ranges or lies about its size ends the export with the real reason,
which the pipeline reports instead of qemu-img's "I/O error". The socket is in the abstract namespace,
so a killed importer leaves nothing behind on disk.

Only what qemu's NBD client needs is spoken: fixed newstyle negotiation with NBD_OPT_GO (and
NBD_OPT_EXPORT_NAME), simple replies, NBD_CMD_READ and NBD_CMD_DISC.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol

log = logging.getLogger(__name__)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO, REP_ERR_UNSUP, REP_ERR_INVALID = 1, 3, 0x80000001, 0x80000003
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
TX_HAS_FLAGS, TX_READ_ONLY, TX_CAN_MULTI_CONN = 1, 2, 256
CMD_READ, CMD_DISC = 0, 2
EIO, EINVAL, EPERM = 5, 22, 1
MAX_READ = 32 << 20
_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")


class Reader(Protocol):
    resumes: int
    received: int

    def pread(self, view: memoryview, offset: int) -> None: ...

    def close(self) -> None: ...


class _Disconnect(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise _Disconnect
        got += k
    return bytes(buf)


class NbdExport:
    """``with NbdExport(size, make_reader, head=first_bytes) as node:`` gives qemu's ``nbd`` block node.

    ``make_reader`` makes one reader per worker thread. After the ``with``, ``error`` holds the first
    failure of a read (None if all succeeded); ``resumes`` and ``received`` sum the readers'."""

    def __init__(self, size: int, make_reader: Callable[[], Reader], *, head: bytes = b"", workers: int = 4) -> None:
        self.size = size
        self._head = head  # the first bytes, already read: every qemu-img run reads the header again
        self._make_reader = make_reader
        self._readers: list[Reader] = []
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbd-read")
        self._name = f"cdi-nbd-{os.getpid()}-{secrets.token_hex(6)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._listener.bind("\0" + self._name)  # abstract: nothing on disk to clean up after a kill
        self._listener.listen(4)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._accept, name="nbd-accept", daemon=True)

    @property
    def resumes(self) -> int:
        return sum(r.resumes for r in self._readers)

    @property
    def received(self) -> int:
        return sum(r.received for r in self._readers)

    def node(self) -> dict[str, Any]:
        return {"driver": "nbd", "server": {"type": "unix", "path": self._name, "abstract": True}}

    def __enter__(self) -> dict[str, Any]:
        self._thread.start()
        return self.node()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for reader in self._readers:
            reader.close()

    # -- connections ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="nbd-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        send_lock = threading.Lock()
        try:
            if self._negotiate(conn):
                self._transmit(conn, send_lock)
        except (_Disconnect, OSError):
            pass
        except Exception as e:  # a protocol error from the client: log it, drop the connection
            log.warning("nbd connection failed error=%s", e)
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def _negotiate(self, conn: socket.socket) -> bool:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv_exact(conn, 4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        tx_flags = TX_HAS_FLAGS | TX_READ_ONLY | TX_CAN_MULTI_CONN
        while True:
            magic, option, length = struct.unpack(">QII", _recv_exact(conn, 16))
            if magic != IHAVEOPT:
                raise ValueError("bad option magic")
            if length:  # export name and info requests: there is one export, nothing to choose
                _recv_exact(conn, length)
            if option == OPT_EXPORT_NAME:
                conn.sendall(struct.pack(">QH", self.size, tx_flags) + (b"" if no_zeroes else bytes(124)))
                return True
            if option in (OPT_GO, OPT_INFO):
                info = struct.pack(">HQH", INFO_EXPORT, self.size, tx_flags)
                conn.sendall(self._option_reply(option, REP_INFO, info))
                sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_READ)
                conn.sendall(self._option_reply(option, REP_INFO, sizes))
                conn.sendall(self._option_reply(option, REP_ACK, b""))
                if option == OPT_GO:
                    return True
                continue
            if option == OPT_ABORT:
                conn.sendall(self._option_reply(option, REP_ACK, b""))
                return False
            conn.sendall(self._option_reply(option, REP_ERR_UNSUP, b""))

    @staticmethod
    def _option_reply(option: int, reply: int, data: bytes) -> bytes:
        return struct.pack(">QIII", REPLY_MAGIC, option, reply, len(data)) + data

    def _transmit(self, conn: socket.socket, send_lock: threading.Lock) -> None:
        pending: list[Any] = []
        while True:
            magic, _flags, cmd, handle, offset, length = _REQUEST.unpack(_recv_exact(conn, _REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise ValueError("bad request magic")
            if cmd == CMD_DISC:
                for future in pending:
                    future.result()
                return
            if cmd != CMD_READ:
                self._reply(conn, send_lock, handle, EPERM, None)
                continue
            if length > MAX_READ or offset + length > self.size:
                self._reply(conn, send_lock, handle, EINVAL, None)
                continue
            pending = [f for f in pending if not f.done()]
            pending.append(self._pool.submit(self._read, conn, send_lock, handle, offset, length))

    def _read(self, conn: socket.socket, send_lock: threading.Lock, handle: int, offset: int, length: int) -> None:
        buf = bytearray(length)
        try:
            if self.error is not None:  # the file changed, or worse: no read after that counts
                raise self.error
            if offset + length <= len(self._head):
                buf[:] = self._head[offset:offset + length]
            else:
                self._reader().pread(memoryview(buf), offset)
        except Exception as e:
            if self.error is None:
                self.error = e
                log.warning("reading the source failed offset=%d length=%d error=%s", offset, length, e)
            self._reply(conn, send_lock, handle, EIO, None)
            return
        self._reply(conn, send_lock, handle, 0, buf)

    def _reader(self) -> Reader:
        reader: Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._make_reader()
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    @staticmethod
    def _reply(conn: socket.socket, send_lock: threading.Lock, handle: int, error: int,
               data: bytearray | None) -> None:
        header = _REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)
        with send_lock:
            try:
                conn.sendall(header)
                if data is not None:
                    conn.sendall(data)
            except OSError:
                return
