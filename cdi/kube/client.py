"""The only client of an API server: thin typed wrappers over the official kubernetes client.

Objects are plain dicts (as the API sends them), addressed by ``Kind`` coordinates, so the same calls
serve core kinds and CRDs. Errors become ``cdi.kube.errors`` types. ``Client.from_kubeconfig`` works
against ``cdi serve`` and a real cluster alike; ``Client.in_cluster`` inside a pod.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.incluster_config import InClusterConfigLoader

from cdi.kube.errors import ApiError, NotFound, from_response
from cdi.kube.kinds import EVENT, POD, SERVICEACCOUNT, Kind

log = logging.getLogger(__name__)

Obj = dict[str, Any]


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
EVENT_WINDOW = 600.0  # seconds during which a repeated event is counted on the first one (kube: 10 min)
EVENT_CACHE = 4096


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _TokenFileLoader(InClusterConfigLoader):
    """The in-cluster loader, reading the token as client-go does: surrounding whitespace (a trailing
    newline of an editor or ``echo``) is not part of the token, on the first read and on re-reads of a
    rotated token alike."""

    refresh_period = timedelta(minutes=1)  # how long a read token is used before the file is read again

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._token_refresh_period = self.refresh_period

    def _read_token_file(self) -> None:
        super()._read_token_file()
        token = self.token.split(" ", 1)[1].strip()
        if not token:
            raise k8s_config.ConfigException("Token file exists but holds only whitespace.")
        self.token = "bearer " + token


def _kubeconfig_problem(path: str, context: str | None, error: Exception) -> str:
    """What is wrong with the kubeconfig at ``path`` that the kubernetes client refused, in one line."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return f"kubeconfig {path}: not a kubeconfig ({e})"
    contexts = cfg.get("contexts") if isinstance(cfg, dict) else None
    if not isinstance(contexts, list) or not contexts:
        return f"kubeconfig {path}: not a kubeconfig (no contexts in it)"
    names = [str(c.get("name")) for c in contexts if isinstance(c, dict)]
    if context is not None and context not in names:
        return f"kubeconfig {path}: no context {context!r} (contexts: {', '.join(map(repr, names))})"
    return f"kubeconfig {path}: {error}"


class Client:
    """Dict-in, dict-out access to an API server. Thread-safe (one connection pool)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api = api_client
        self._lock = threading.Lock()
        self._events: dict[tuple[str, ...], tuple[str, float, int]] = {}  # key -> (name, first seen, count)

    @classmethod
    def from_kubeconfig(cls, path: str, *, context: str | None = None) -> Client:
        """A client as kubectl's ``--kubeconfig PATH --context CONTEXT`` would be; a missing file, one that
        is not a kubeconfig or a context it lacks is an ApiError of one line saying which."""
        configuration = k8s.Configuration()
        if not os.path.isfile(path):
            raise ApiError(f"kubeconfig {path}: no such file")
        try:
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        except (k8s_config.ConfigException, yaml.YAMLError, AttributeError, TypeError) as e:
            raise ApiError(_kubeconfig_problem(path, context, e)) from e
        configuration.connection_pool_maxsize = 32
        return cls(k8s.ApiClient(configuration))

    @classmethod
    def in_cluster(cls, account_dir: str = SERVICE_ACCOUNT_DIR, *, environ: Mapping[str, str] | None = None) -> Client:
        """The pod's own identity: the ServiceAccount token and CA under ``account_dir`` (re-read as the
        kubelet rotates the token) and the API server at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT."""
        configuration = k8s.Configuration()
        try:
            _TokenFileLoader(token_filename=os.path.join(account_dir, "token"),
                                  cert_filename=os.path.join(account_dir, "ca.crt"),
                                  environ=os.environ if environ is None else environ).load_and_set(configuration)
        except k8s_config.ConfigException as e:
            raise ApiError(f"no in-cluster configuration: {e} (in a pod, the ServiceAccount token and CA are "
                           f"mounted under {account_dir}; elsewhere pass --kubeconfig)") from e
        configuration.connection_pool_maxsize = 32
        return cls(k8s.ApiClient(configuration))

    def with_token(self, token: Callable[[], str]) -> Client:
        """A client of the same API server (same CA) that authenticates with the bearer token ``token()``
        returns, asked again before each request (so a token source can renew it)."""
        base = self.api.configuration
        configuration = k8s.Configuration(host=base.host)
        configuration.ssl_ca_cert = base.ssl_ca_cert
        configuration.verify_ssl = base.verify_ssl
        configuration.connection_pool_maxsize = base.connection_pool_maxsize

        def refresh(conf: k8s.Configuration) -> None:
            conf.api_key["BearerToken"] = f"Bearer {token().strip()}"

        refresh(configuration)
        configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
        return Client(k8s.ApiClient(configuration))

    # -- plumbing ----------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: float | tuple[float, float] | None = 30.0,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            method, url, headers, body, _ = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        except k8s.ApiException as e:
            raise from_response(e.status or 0, e.body, str(e.reason)) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(f"cannot reach the API server: {e}") from e
        except ValueError:  # http.client refuses a header; its message quotes the value, a credential
            raise ApiError("the request was refused before sending: a header (the bearer token of the kubeconfig "
                           "or ServiceAccount?) holds characters HTTP does not allow") from None
        raw = resp.response
        if resp.status >= 400:
            data = raw.data
            raw.release_conn()
            raise from_response(resp.status, data, str(resp.reason))
        if stream:
            return raw
        data = resp.read()
        return json.loads(data) if data else {}

    # -- identity ----------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The API server's base URL."""
        return str(self.api.configuration.host)

    def server_ca(self) -> bytes | None:
        """The CA the client verifies the API server with (None: the system's CAs or no verification)."""
        path = self.api.configuration.ssl_ca_cert
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    def request_token(self, namespace: str, service_account: str, *, seconds: int, pod: Obj | None = None) -> Obj:
        """A TokenRequest for the ServiceAccount (bound to `pod` when given); the answer's status has the token."""
        spec: Obj = {"expirationSeconds": seconds}
        if pod is not None:
            meta = pod["metadata"]
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result: Obj = self._call("POST", SERVICEACCOUNT.path(namespace, service_account, "token"), body=body)
        return result

    def whoami(self) -> str:
        """The user the API server sees (SelfSubjectReview, which every authenticated user may create)."""
        return str(self.user_info().get("username") or "")

    def user_info(self) -> Obj:
        """The userInfo (username, groups, ...) the API server sees, from a SelfSubjectReview."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        review = self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body)
        info: Obj = (review.get("status") or {}).get("userInfo") or {}
        return info

    # -- CRUD --------------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        result: Obj = self._call("GET", kind.path(namespace, name))
        return result

    def find(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when it does not exist; apiVersion and kind always set."""
        try:
            obj = self.get(kind, namespace, name)
        except NotFound:
            return None
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        return obj

    def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[builtins.list[Obj], str]:
        """Items and the list's resourceVersion (to start a watch from)."""
        query: list[tuple[str, Any]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        data = self._call("GET", kind.path(namespace), query=query)
        items = data.get("items") or []
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items, str(data.get("metadata", {}).get("resourceVersion", ""))

    def create(self, kind: Kind, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        namespace = obj.get("metadata", {}).get("namespace")
        result: Obj = self._call("POST", kind.path(namespace), body=obj)
        return result

    def replace(self, kind: Kind, obj: Obj, *, status: bool = False) -> Obj:
        meta = obj["metadata"]
        path = kind.path(meta.get("namespace"), meta["name"], "status" if status else None)
        result: Obj = self._call("PUT", path, body=obj)
        return result

    def patch(self, kind: Kind, namespace: str | None, name: str, patch: Obj | builtins.list[Any], *,
              status: bool = False, json_patch: bool = False) -> Obj:
        """A merge patch (or a JSON patch when ``json_patch``), of the object or its status."""
        ctype = "application/json-patch+json" if json_patch else "application/merge-patch+json"
        path = kind.path(namespace, name, "status" if status else None)
        result: Obj = self._call("PATCH", path, body=patch, content_type=ctype)
        return result

    def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str = "Background") -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        self._call("DELETE", kind.path(namespace, name), body=body)

    def pod_log(self, namespace: str, name: str, *, container: str | None = None,
                tail_lines: int | None = None) -> str:
        """The text of a pod's log (``kubectl logs``)."""
        query: builtins.list[tuple[str, Any]] = []
        if container:
            query.append(("container", container))
        if tail_lines is not None:
            query.append(("tailLines", tail_lines))
        resp = self._call("GET", POD.path(namespace, name, "log"), query=query, stream=True)
        try:
            return str(resp.data.decode(errors="replace"))
        finally:
            resp.release_conn()

    def get_raw(self, path: str, *, query: builtins.list[tuple[str, Any]] | None = None) -> Any:
        return self._call("GET", path, query=query)

    # -- watch -------------------------------------------------------------------------------------

    def watch(self, kind: Kind, namespace: str | None = None, *, resource_version: str = "",
              timeout_seconds: int = 300, label_selector: str | None = None) -> Iterator[tuple[str, Obj]]:
        """Yield (type, object) until the server ends the watch. Raises ``Gone`` on 410."""
        query: list[tuple[str, Any]] = [("watch", "true"), ("allowWatchBookmarks", "true"),
                                        ("timeoutSeconds", timeout_seconds)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        resp = self._call("GET", kind.path(namespace), query=query, stream=True,
                          timeout=(10.0, timeout_seconds + 30.0))
        try:
            pending = b""
            for chunk in resp.stream(65536, decode_content=False):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    etype, obj = event.get("type", ""), event.get("object") or {}
                    if etype == "ERROR":
                        raise from_response(int(obj.get("code") or 500), json.dumps(obj))
                    yield etype, obj
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(f"watch of {kind.plural} broken: {e}") from e
        finally:
            resp.release_conn()

    # -- events ------------------------------------------------------------------------------------

    def event(self, obj: Obj, *, reason: str, message: str, type: str = "Normal",
              component: str = "cdi-controller") -> None:
        """Record a core/v1 Event about ``obj`` (best effort: failures are logged, not raised)."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        stamp = now_iso()
        if not message.strip():  # a bug of the caller; a user must still read what happened
            log.warning("event without a message reason=%s object=%s", reason, meta.get("name"))
            message = f"{reason} ({obj.get('kind', 'object')} {meta.get('name', '')})"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name(str(meta.get("name") or "object")), "namespace": namespace},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                               "namespace": namespace, "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": type,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        # As kube's event correlator: the same event about the same object again within the window
        # bumps the count and lastTimestamp of the one recorded, instead of piling up copies.
        key = (namespace, str(meta.get("uid")), reason, message, type, component)
        with self._lock:
            seen = self._events.get(key)
            if seen is not None and time.monotonic() - seen[1] < EVENT_WINDOW:
                self._events[key] = (seen[0], seen[1], seen[2] + 1)
            else:
                seen = None
        try:
            if seen is not None:
                count = seen[2] + 1
                self.patch(EVENT, namespace, seen[0], {"count": count, "lastTimestamp": stamp})
                return
        except NotFound:
            pass  # deleted meanwhile: record it anew
        except ApiError as e:
            log.warning("cannot update event reason=%s error=%s", reason, e)
            return
        try:
            created = self.create(EVENT, event)
        except ApiError as e:
            log.warning("cannot record event reason=%s error=%s", reason, e)
            return
        with self._lock:
            if len(self._events) >= EVENT_CACHE:
                self._events.pop(next(iter(self._events)))
            self._events[key] = (created["metadata"]["name"], time.monotonic(), 1)


def event_name(name: str) -> str:
    """``<object name>.<16 hex>``, as kube's recorder names events, cut to fit a 253-character name."""
    return f"{name[:253 - 17].rstrip('-.')}.{uuid.uuid4().hex[:16]}"


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (used by tools and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
