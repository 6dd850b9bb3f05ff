"""REST handlers of resource paths: /api/v1/... and /apis/{group}/{version}/....

One catch-all route per prefix parses the rest of the path itself, because kube's URL space is
ambiguous for path templates (`/api/v1/namespaces/x/pods` versus `/api/v1/namespaces/x/status`).
Verbs map to `Objects`, writes in worker threads (the store is thread-safe and each verb atomic
under its lock) so that a large or deeply nested object does not hold up other requests; the
response shape (object, list, Table, PartialObjectMetadata, watch stream) is chosen from the query
and the Accept header as kube-apiserver does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from cdi.api.registry import Registry, ResourceKind
from cdi.apiserver import fieldvalidation, limits, managedfields, options, pagination, protobuf
from cdi.apiserver.errors import BadRequest, Expired, Invalid, MethodNotAllowed, NotFound, Timeout
from cdi.apiserver.fieldvalidation import FieldCheck
from cdi.apiserver.hooks import Hooks, LogRequest
from cdi.apiserver.objects import Objects
from cdi.apiserver.patch import APPLY_PATCH
from cdi.apiserver.selectors import field_matcher, label_matcher
from cdi.apiserver.tables import partial_metadata, table, wants
from cdi.apiserver.watch import WatchRequest, watch_stream

log = logging.getLogger(__name__)

Obj = dict[str, Any]
JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"


@dataclass(frozen=True)
class Target:
    kind: ResourceKind
    namespace: str | None  # None: all namespaces (or a cluster-scoped kind)
    name: str | None
    subresource: str | None


def json_response(
    obj: Any, status: int = 200, media_type: str = JSON, *, headers: list[tuple[str, str]] | None = None
) -> Response:
    response = Response(
        json.dumps(obj, separators=(",", ":")).encode(), status_code=status, media_type=media_type
    )
    for name, value in headers or []:
        response.headers.append(name, value)
    return response


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as e:
        raise BadRequest(f"invalid value for {name}: {value!r}") from e


def check_resource_version(value: str | None) -> int | None:
    """A resourceVersion from the query as kube's storage parses it: an unsigned integer or 400."""
    if value in (None, ""):
        return None
    assert value is not None
    if not value.isdigit():
        raise BadRequest(
            f'resourceVersion: Invalid value: "{value}": strconv.ParseUint: parsing "{value}": invalid syntax'
        )
    return int(value)


# kube's watch cache waits this long for a resourceVersion it has not reached before answering 504.
FRESHNESS_WAIT_SECONDS = 3.0


async def wait_fresh(store: Any, rv: int | None) -> None:
    """Wait until the store reaches `rv`; past FRESHNESS_WAIT_SECONDS, kube's 504 `Too large resource
    version` with its ResourceVersionTooLarge cause (clients retry after a second)."""
    if not rv:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FRESHNESS_WAIT_SECONDS
    while store.resource_version < rv:
        if loop.time() >= deadline:
            raise Timeout(
                f"Too large resource version: {rv}, current: {store.resource_version}",
                details={
                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": 1,
                },
            )
        await asyncio.sleep(0.05)


# The kind verbs an HTTP method needs (kinds declare theirs; the CRDs served here are read-only).
_WRITE_VERBS = {"POST": ("create",), "PUT": ("update",), "PATCH": ("patch",), "DELETE": ("delete", "deletecollection")}


class ResourceHandlers:
    def __init__(
        self, objects: Objects, registry: Registry, hooks: Hooks, *, bookmark_interval: float
    ) -> None:
        self.objects = objects
        self.registry = registry
        self.hooks = hooks
        self.bookmark_interval = bookmark_interval

    def resolve(self, group: str, version: str, path: str) -> Target:
        segs = [s for s in path.split("/") if s]
        not_found = NotFound("the server could not find the requested resource")
        if not segs:
            raise not_found
        if segs[0] == "namespaces" and len(segs) >= 3:
            kind = self.registry.lookup(group, version, segs[2])
            if kind is not None and kind.namespaced and len(segs) <= 5:
                return Target(
                    kind, segs[1], segs[3] if len(segs) > 3 else None, segs[4] if len(segs) > 4 else None
                )
        kind = self.registry.lookup(group, version, segs[0])
        if kind is None or len(segs) > 3:
            raise not_found
        if kind.namespaced and len(segs) > 1:
            raise not_found
        return Target(kind, None, segs[1] if len(segs) > 1 else None, segs[2] if len(segs) > 2 else None)

    async def handle(self, request: Request, group: str, version: str, path: str) -> Response:
        t = self.resolve(group, version, path)
        sub = t.subresource
        if sub is not None and sub != "status" and sub not in t.kind.extra_subresources:
            raise NotFound("the server could not find the requested resource")
        method = request.method
        q = request.query_params
        ns = t.namespace or ""
        if method in _WRITE_VERBS and not set(_WRITE_VERBS[method]) & set(t.kind.verbs):
            raise MethodNotAllowed(
                f"the server does not allow this method on the requested resource "
                f"({method.lower()} {t.kind.group_resource})"
            )
        if method == "GET":
            await wait_fresh(self.objects.store, check_resource_version(q.get("resourceVersion")))
            if t.name is None:
                return await self._list_or_watch(request, t)
            if sub == "log":
                return await self._logs(request, t)
            return self._render_one(request, t.kind, self.objects.get(t.kind, ns, t.name))
        if method == "POST" and t.name is None:
            if t.kind.namespaced and t.namespace is None:
                raise MethodNotAllowed(
                    f"the server does not allow this method on the requested resource "
                    f"(post {t.kind.group_resource}): create needs a namespace"
                )
            opts = options.parse("CreateOptions", q)
            body, check = await self._body(request, opts)
            created = await run_in_threadpool(
                partial(self.objects.create, dry_run=opts.dry_run, fields=check, manager=self._manager(request, opts)),
                t.kind, ns, body,
            )
            return json_response(created, 201, headers=check.headers())
        if method == "PUT" and t.name is not None and sub in (None, "status"):
            opts = options.parse("UpdateOptions", q)
            body, check = await self._body(request, opts)
            updated = await run_in_threadpool(
                partial(
                    self.objects.update,
                    status=sub == "status",
                    dry_run=opts.dry_run,
                    fields=check,
                    manager=self._manager(request, opts),
                ),
                t.kind, ns, t.name, body,
            )
            return json_response(updated, headers=check.headers())
        if method == "PATCH" and t.name is not None and sub in (None, "status"):
            ctype = request.headers.get("content-type", "")
            is_apply = ctype.split(";")[0].strip().lower() == APPLY_PATCH
            opts = options.parse("PatchOptions", q, apply=is_apply)
            check = FieldCheck(opts.field_validation)
            raw = await request.body()
            manager = self._manager(request, opts)
            on_status = sub == "status"
            if is_apply:
                # Parsed in a thread: a hostile document must not hold up every other request.
                config = await run_in_threadpool(limits.decode, raw, "error decoding YAML", as_yaml=True)
                applied, made = await run_in_threadpool(
                    partial(
                        self.objects.apply, manager=manager, force=opts.force, status=on_status, dry_run=opts.dry_run
                    ),
                    t.kind, ns, t.name, config,
                )
                return json_response(applied, 201 if made else 200, headers=check.headers())
            patched = await run_in_threadpool(
                partial(self.objects.patch, status=on_status, dry_run=opts.dry_run, fields=check, manager=manager),
                t.kind, ns, t.name, ctype, raw,
            )
            return json_response(patched, headers=check.headers())
        if method == "DELETE" and sub is None:
            delete_opts, opts = options.delete_options(await request.body(), q)
            if t.name is None:
                return self._delete_collection(request, t, delete_opts, opts.dry_run)
            obj, finished = self.objects.delete(t.kind, ns, t.name, delete_opts, dry_run=opts.dry_run)
            if finished:
                details: Obj = {"name": t.name, "kind": t.kind.plural, "uid": obj["metadata"].get("uid")}
                if t.kind.group:
                    details["group"] = t.kind.group
                return json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": details,
                    }
                )
            return json_response(obj)
        raise MethodNotAllowed(
            f"the server does not allow this method on the requested resource "
            f"({method.lower()} {t.kind.group_resource})"
        )

    async def _body(self, request: Request, opts: options.WriteOptions) -> tuple[Obj, FieldCheck]:
        """The decoded body of a create or update and the field validation it is subject to."""
        raw = await request.body()
        ctype = request.headers.get("content-type", JSON).split(";")[0].strip()
        check = FieldCheck(opts.field_validation)
        if ctype == PROTOBUF:
            data = protobuf.decode(raw)
        elif ctype in ("application/yaml", "application/x-yaml"):
            data = await run_in_threadpool(limits.decode, raw, "error decoding request body", as_yaml=True)
        else:
            data, check.duplicates = await run_in_threadpool(fieldvalidation.decode, raw)
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data, check

    @staticmethod
    def _manager(request: Request, opts: options.WriteOptions) -> str:
        return managedfields.manager_of(opts.field_manager, request.headers.get("user-agent"))

    def _matchers(self, request: Request, kind: ResourceKind) -> tuple[Any, ...]:
        q = request.query_params
        return (label_matcher(q.get("labelSelector")), field_matcher(kind, q.get("fieldSelector")))

    def _render_one(self, request: Request, kind: ResourceKind, obj: Obj) -> Response:
        accept = request.headers.get("accept")
        if wants(accept, "Table"):
            include = request.query_params.get("includeObject", "Metadata")
            return json_response(table(kind, [obj], include_object=include))
        if wants(accept, "PartialObjectMetadata"):
            return json_response(partial_metadata(obj))
        return json_response(obj)

    async def _list_or_watch(self, request: Request, t: Target) -> Response:
        q = request.query_params
        kind = t.kind
        matchers = self._matchers(request, kind)
        accept = request.headers.get("accept")
        include = q.get("includeObject", "Metadata")
        if _flag(q.get("watch")):
            req = WatchRequest(
                kind=kind,
                namespace=t.namespace,
                matchers=matchers,
                resource_version=q.get("resourceVersion"),
                timeout_seconds=_int(q.get("timeoutSeconds"), "timeoutSeconds"),
                bookmarks=_flag(q.get("allowWatchBookmarks")),
                as_table=wants(accept, "Table"),
                include_object=include,
            )
            stream = watch_stream(
                self.objects.store,
                req,
                bookmark_interval=self.bookmark_interval,
                is_disconnected=request.is_disconnected,
            )
            return StreamingResponse(stream, media_type=JSON)
        if q.get("continue") and q.get("resourceVersion") not in (None, ""):
            raise BadRequest("specifying resource version is not allowed when using continue")
        self._check_match(q.get("resourceVersionMatch"), check_resource_version(q.get("resourceVersion")))
        items, rv = self.objects.select(kind, t.namespace, *matchers)
        items, list_meta = pagination.page(
            items,
            rv=rv,
            limit=_int(q.get("limit"), "limit"),
            token=q.get("continue"),
            compacted=self.objects.store.compacted,
            exact_count=not (q.get("labelSelector") or q.get("fieldSelector")),
        )
        if wants(accept, "Table"):
            return json_response(table(kind, items, include_object=include, list_meta=list_meta))
        if wants(accept, "PartialObjectMetadataList"):
            return json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": list_meta,
                    "items": [partial_metadata(o) for o in items],
                }
            )
        return json_response(
            {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": list_meta,
                "items": items,
            }
        )

    def _check_match(self, match: str | None, rv: int | None) -> None:
        """resourceVersionMatch as kube validates it; an Exact list from before the kept history is 410.

        Lists are served from the current state: an Exact list of an older, still kept version gets
        the current items (kube would read them at that revision).
        """
        if not match:
            return
        if match not in ("Exact", "NotOlderThan"):
            raise Invalid.named("ListOptions.meta.k8s.io", "", [
                f'resourceVersionMatch: Unsupported value: "{match}": supported values: "Exact", "NotOlderThan", ""'
            ])
        if rv is None:
            raise Invalid.named("ListOptions.meta.k8s.io", "", [
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
            ])
        if not rv and match == "Exact":
            raise Invalid.named("ListOptions.meta.k8s.io", "", [
                'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
            ])
        if match == "Exact" and rv is not None and rv < self.objects.store.compacted:
            raise Expired("The resourceVersion for the provided list is too old.")

    def _delete_collection(self, request: Request, t: Target, delete_opts: Obj, dry_run: bool) -> Response:
        items, _ = self.objects.select(t.kind, t.namespace, *self._matchers(request, t.kind))
        deleted = []
        for o in items:
            meta = o["metadata"]
            try:
                obj, _ = self.objects.delete(
                    t.kind, meta.get("namespace", ""), meta["name"], delete_opts, dry_run=dry_run
                )
            except NotFound:
                continue
            deleted.append(obj)
        return json_response(
            {
                "kind": f"{t.kind.kind}List",
                "apiVersion": t.kind.api_version,
                "metadata": {"resourceVersion": str(self.objects.store.resource_version)},
                "items": deleted,
            }
        )

    async def _logs(self, request: Request, t: Target) -> Response:
        pod = self.objects.get(t.kind, t.namespace or "", t.name or "")
        q = request.query_params
        container = q.get("container")
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if not container:
            if len(names) > 1:
                raise BadRequest(
                    f"a container name must be specified for pod {t.name}, "
                    f"choose one of: [{' '.join(map(str, names))}]"
                )
            container = names[0] if names else None
        elif container not in names:
            raise BadRequest(f"container {container} is not valid for pod {t.name}")
        lreq = LogRequest(
            namespace=t.namespace or "",
            pod=t.name or "",
            container=container,
            follow=_flag(q.get("follow")),
            tail_lines=_int(q.get("tailLines"), "tailLines"),
            timestamps=_flag(q.get("timestamps")),
            previous=_flag(q.get("previous")),
            since_seconds=_int(q.get("sinceSeconds"), "sinceSeconds"),
            limit_bytes=_int(q.get("limitBytes"), "limitBytes"),
        )
        provider = self.hooks.log_provider
        result = await run_in_threadpool(provider, lreq) if provider else None
        if result is None:
            raise NotFound(
                f'no logs: nothing is known about the logs of container "{container}" in pod "{t.name}"',
                details={"name": t.name, "kind": "pods"},
            )
        if isinstance(result, str | bytes):
            return Response(result, media_type="text/plain")
        return StreamingResponse(iterate_in_threadpool(iter(result)), media_type="text/plain")
