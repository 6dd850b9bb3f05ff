"""Wires ``cdi serve`` together: API server, local node and controllers over one data directory."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cdi.apiserver import Settings
from cdi.apiserver.app import set_metrics_registry
from cdi.apiserver.kubevirt_subresources import set_console_provider
from cdi.apiserver.server import ApiServer
from cdi.cli.serve import ServeConfig, _token
from cdi.cli.user import refresh_user_kubeconfigs, users_file
from cdi.clonetoken import TokenCheck
from cdi.console.server import ConsoleServer
from cdi.controller.account import controller_client, ensure_account
from cdi.controller.resources import ControllerSettings
from cdi.controller.run import Controllers, RunOptions
from cdi.fileserver import FileServer
from cdi.kube import DATAVOLUME, AlreadyExists, ApiError, Client
from cdi.metrics import new_registry
from cdi.node import LocalNode, NodeSettings
from cdi.node.vm_console import LauncherConsoles
from cdi.upload_runtime import KEY_FILE, PUBLIC_KEY_FILE, publish_proxy_url, start_upload_proxy
from cdi.uploadtoken import ensure_key, public_pem
from uploadproxy.proxy import UploadProxy

log = logging.getLogger(__name__)


class ListenerFailed(OSError):
    """One of serve's listeners could not take its address: which one, where, and the flag that moves it."""

    def __init__(self, listener: str, address: str, port: int, flag: str, cause: OSError) -> None:
        super().__init__(cause.errno, f"the {listener} could not listen on {address}:{port}: {cause.strerror or cause}")
        self.listener, self.address, self.port, self.flag = listener, address, port, flag

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def _listening(listener: str, address: str, port: int, flag: str) -> Iterator[None]:
    try:
        yield
    except ListenerFailed:
        raise
    except OSError as e:
        raise ListenerFailed(listener, address, port, flag, e) from e


class Runtime:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)  # token, kubeconfig, TLS key, Secrets in state.db, volumes: owner only
        self.kubeconfig = self.data_dir / "kubeconfig"
        settings = Settings(token=_token(self.data_dir), db_path=str(self.data_dir / "state.db"),
                            watch_history=cfg.api.watch_history, users_file=str(users_file(self.data_dir)),
                            service_account_key_file=str(self.data_dir / "serviceaccount.key"))
        with _listening("API server", cfg.api.address, cfg.api.port, "--port"):
            self.api = ApiServer(settings, host=cfg.api.address, port=cfg.api.port, tls_dir=self.data_dir / "tls")
        self.node: LocalNode | None = None
        self.controllers: Controllers | None = None
        self.fileserver: FileServer | None = None
        self.upload_proxy: UploadProxy | None = None
        self.console: ConsoleServer | None = None

    def start(self) -> Runtime:
        cfg = self.cfg
        with _listening("API server", cfg.api.address, cfg.api.port, "--port"):
            self.api.start()
        self.api.write_kubeconfig(self.kubeconfig)
        refresh_user_kubeconfigs(self.data_dir)
        self.client = Client.from_kubeconfig(str(self.kubeconfig))
        # The controllers' ServiceAccount and role, also for a separate `cdi controller` (--no-controllers).
        ensure_account(self.client)
        self.node = LocalNode(self.client, NodeSettings(
            data_dir=self.data_dir, max_running_pods=self.cfg.node.max_running_pods,
            restart_backoff=self.cfg.node.restart_backoff,
            block_pool=[Path(p) for p in self.cfg.node.block_devices]))
        self.api.set_log_provider(self.node.log_provider)
        self.node.start()
        c = self.cfg.controller
        # clone tokens are signed with the upload-token key by the API server's admission
        public_key = public_pem(ensure_key(self.data_dir / KEY_FILE))
        (self.data_dir / PUBLIC_KEY_FILE).write_bytes(public_key)  # for `cdi controller --clone-token-key`
        if c.enabled:
            # The node keeps the admin credentials (it is the kubelet); the controllers get only their role.
            self.controllers = Controllers(controller_client(self.client), ControllerSettings(
                importer_image=c.importer_image, filesystem_overhead=c.filesystem_overhead,
                progress_interval=c.progress_interval, importer_speed_limit=c.speed_limit,
                importer_speed_time=c.speed_time, importer_max_stalled_retries=c.max_stalled_retries,
                upload_resume_interval=c.upload_resume_interval, clone_host_assisted=c.clone_host_assisted),
                RunOptions(workers=c.workers, vm=c.vm), clone_tokens=TokenCheck(public_key)).start()
            set_metrics_registry(self.api.app, new_registry(self.controllers.metrics))
        set_console_provider(self.api.app, LauncherConsoles(self.client, self.node.pods))
        with _listening("upload proxy", cfg.upload_proxy.address, cfg.upload_proxy.port, "--uploadproxy-port"):
            self.upload_proxy = start_upload_proxy(self.api, self.client, self.data_dir,
                                                   cfg.upload_proxy.address, cfg.upload_proxy.port)
        publish_proxy_url(self.client, self.upload_proxy.url)
        with _listening("web console", cfg.console.address, cfg.console.port, "--console-port"):
            self.console = ConsoleServer(
                api_url=self.api.url, upload_url=self.upload_proxy.url, ca_pem=self.api.ca_pem,
                cert_file=str(self.api.tls.cert_file), key_file=str(self.api.tls.key_file),
                admin_token=self.api.settings.token, host=cfg.console.address, port=cfg.console.port).start()
        return self

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        if self.upload_proxy is not None:
            self.upload_proxy.stop()
        if self.controllers is not None:
            self.controllers.stop()
        if self.node is not None:
            self.node.stop()
        if self.fileserver is not None:
            self.fileserver.stop()
        self.api.stop()

    def start_demo(self) -> None:
        """Serve the sample image and apply DataVolume ``demo`` importing it; report its phases."""
        from cdi.cli.demo import sample_dir

        self.fileserver = FileServer(sample_dir()).start()
        url = self.fileserver.url("demo.qcow2")
        manifest = {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {"source": {"http": {"url": url}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}},
        }
        try:
            self.client.create(DATAVOLUME, manifest)
            print(f"demo: created DataVolume default/demo importing {url}", file=sys.stderr)
        except AlreadyExists:
            print("demo: DataVolume default/demo already exists (delete it to run the demo again)", file=sys.stderr)
        threading.Thread(target=self._follow_demo, name="demo", daemon=True).start()

    def _follow_demo(self) -> None:
        last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                dv = self.client.get(DATAVOLUME, "default", "demo")
            except ApiError:
                return
            status = dv.get("status") or {}
            now = (status.get("phase"), status.get("progress"))
            if now != last:
                print(f"demo: dv/demo phase={now[0]} progress={now[1]}", file=sys.stderr, flush=True)
                last = now
            if now[0] in ("Succeeded", "Failed"):
                digest = (dv["metadata"].get("annotations") or {}).get("cdi.kubevirt.io/storage.import.volumeDigest")
                print(f"demo: done; volume digest {digest}\ndemo: try  kubectl --kubeconfig {self.kubeconfig} "
                      "get dv,pvc  and  kubectl describe dv demo", file=sys.stderr, flush=True)
                return
            time.sleep(0.5)
