"""An ASGI app under uvicorn over TLS on its own socket: in a background thread (tests) or in the foreground.

The webhook server and the upload token API are both small HTTPS servers kube-apiserver calls; this
is their one way of running. `client_ca_file` makes the server demand a client certificate of that CA
(the aggregation layer's front proxy), so no other client gets past the handshake.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class TlsServer:
    def __init__(self, app: Any, *, cert_file: str, key_file: str, host: str = "127.0.0.1", port: int = 0,
                 client_ca_file: str | None = None, name: str = "server") -> None:
        self.host = host
        self.name = name
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                   socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        tls: dict[str, Any] = {"ssl_certfile": cert_file, "ssl_keyfile": key_file}
        if client_ca_file:
            tls.update(ssl_ca_certs=client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, **tls)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the calling thread until SIGTERM/SIGINT (uvicorn's handlers)."""
        log.info("%s listening url=%s", self.name, self.url)
        self._server.run(sockets=[self._sock])

    def start(self) -> TlsServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
