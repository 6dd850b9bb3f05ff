"""Embedded Kubernetes-compatible API server: FastAPI app over a SQLite store.

Public entry points:
- `create_app(settings, registry=None) -> FastAPI` builds the app;
- `ApiServer(settings)` runs it with uvicorn in a background thread (`.start()`, `.url`, `.stop()`);
- `write_kubeconfig(path, url, token)` writes a kubeconfig kubectl and the kubernetes client accept;
- `set_log_provider(app, provider)` / `ApiServer.set_log_provider(provider)` plug in pods/log.
"""

from cdi.apiserver.app import Settings, create_app, set_log_provider
from cdi.apiserver.hooks import LogProvider, LogRequest

__all__ = ["LogProvider", "LogRequest", "Settings", "create_app", "set_log_provider"]
