"""Embedded Kubernetes-compatible API server: FastAPI app over a SQLite store.

Public entry points:
- `create_app(settings, registry=None) -> FastAPI` builds the app;
- `ApiServer(settings)` runs it with uvicorn in a background thread (`.start()`, `.url`, `.stop()`);
- `write_kubeconfig(path, url, token)` writes a kubeconfig kubectl and the kubernetes client accept;
- `set_log_provider(app, provider)` / `ApiServer.set_log_provider(provider)` plug in pods/log.

The names are loaded on first use: a command that needs only a light part of the package (``cdi user``
reads the token file format of ``authn``) does not pay for FastAPI's import, about a second here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdi.apiserver.app import Settings, create_app, set_log_provider
    from cdi.apiserver.hooks import LogProvider, LogRequest

__all__ = ["LogProvider", "LogRequest", "Settings", "create_app", "set_log_provider"]
_HOME = {"Settings": "app", "create_app": "app", "set_log_provider": "app", "LogProvider": "hooks",
         "LogRequest": "hooks"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
