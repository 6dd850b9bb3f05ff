"""Run the API server in a background thread, and write kubeconfigs pointing at it.

`ApiServer(settings).start()` binds 127.0.0.1 (an ephemeral port unless one is given), serves the
app over HTTPS with uvicorn in a daemon thread and returns once requests are accepted; `.url` is
the base URL, `.ca_pem` the CA that signed the serving certificate (kubectl sends bearer tokens
only over TLS, so the server always speaks HTTPS) and `.stop()` ends open watches and the server.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI

from cdi.api.registry import Registry
from cdi.apiserver.app import Settings, create_app, set_log_provider
from cdi.apiserver.hooks import LogProvider
from cdi.apiserver.store import Store
from cdi.apiserver.tls import ServingCert, ensure_serving_cert

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class ApiServer:
    """The embedded API server on 127.0.0.1, run by uvicorn in a background thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: Registry | None = None,
        tls_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`tls_dir` keeps the CA and serving certificate (created if missing; default: a temp dir)."""
        self.settings = settings
        self.host = host
        self._tmp = None if tls_dir else tempfile.TemporaryDirectory(prefix="cdi-apiserver-tls-")
        self.tls: ServingCert = ensure_serving_cert(tls_dir or self._tmp.name)  # type: ignore[union-attr]
        self.app: FastAPI = create_app(settings, registry=registry)
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when their
        # proto says TCP, and without it every response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            ssl_certfile=str(self.tls.cert_file),
            ssl_keyfile=str(self.tls.key_file),
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.tls.ca_pem

    def write_kubeconfig(self, path: str | os.PathLike[str], *, namespace: str = "default") -> Path:
        """A kubeconfig for this server: its URL, its CA and the settings' token."""
        return write_kubeconfig(path, self.url, self.settings.token, ca_pem=self.ca_pem, namespace=namespace)

    def set_log_provider(self, provider: LogProvider | None) -> None:
        """Register the function serving `pods/log` (see `cdi.apiserver.hooks`)."""
        set_log_provider(self.app, provider)

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"apiserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"API server did not start on {self.url}")
            time.sleep(0.01)
        log.info("api server started url=%s", self.url)
        return self

    def stop(self) -> None:
        store: Store = self.app.state.store
        store.hub.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        store.close()
        self._sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()
        log.info("api server stopped url=%s", self.url)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(
    path: str | os.PathLike[str],
    url: str,
    token: str,
    *,
    ca_pem: bytes | None = None,
    namespace: str = "default",
    name: str = "cdi",
) -> Path:
    """Write a kubeconfig with one cluster, user and current context for `url` and `token` (mode 0600).

    With `ca_pem` the server certificate is verified against it; without, an https server's
    certificate is not verified (insecure-skip-tls-verify).
    """
    cluster: dict[str, object] = {"server": url}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    elif url.startswith("https:"):
        cluster["insecure-skip-tls-verify"] = True
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, target)  # readers never see a half-written kubeconfig
    return target
