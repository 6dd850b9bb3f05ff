"""Chunked lists (`limit` and `continue`) the way kube-apiserver pages through etcd.

Lists are ordered by key (namespace, then name). A continue token carries the resourceVersion of
the first page and the key of the last object returned; the next page starts strictly after that
key, so an object that lives through the whole listing is returned exactly once whatever is
created or deleted between pages (an offset would skip or repeat objects). Every page reports the
first page's resourceVersion, so a client that watches from it (client-go's reflector) catches up
on whatever changed while it paged. The token format is kube's own: base64url of
`{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\\u0000"}`.

A token from before the kept watch history is answered 410 Expired with kube's words: the client
cannot catch up from its resourceVersion any more and must list again.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cdi.apiserver.errors import BadRequest, Expired

Obj = dict[str, Any]

TOKEN_VERSION = "meta.k8s.io/v1"
TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start "
    "a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the first "
    "chunk was returned and now may show up in the list."
)


@dataclass(frozen=True)
class Token:
    rv: int
    after: tuple[str, str]  # (namespace, name) of the last object already returned


def key_of(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def encode(rv: int, last: tuple[str, str]) -> str:
    ns, name = last
    start = (f"{ns}/{name}" if ns else name) + "\x00"
    raw = json.dumps({"v": TOKEN_VERSION, "rv": rv, "start": start}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> Token:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if data.get("v") != TOKEN_VERSION:
            raise ValueError(f"continue key version {data.get('v')!r} is not supported")
        rv = int(data["rv"])
        start = str(data["start"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise BadRequest(f"continue key is not valid: {e}") from e
    if not start.endswith("\x00") or rv <= 0:
        raise BadRequest("continue key is not valid: incorrect encoded start resourceVersion")
    ns, sep, name = start[:-1].partition("/")
    return Token(rv, (ns, name) if sep else ("", ns))


def page(
    items: list[Obj],
    *,
    rv: int,
    limit: int | None,
    token: str | None,
    compacted: int,
    exact_count: bool,
) -> tuple[list[Obj], Obj]:
    """One page of `items` (the whole current list) and its ListMeta.

    `rv` is the store's current resourceVersion, `compacted` the oldest one the watch history still
    reaches; `exact_count` says whether remainingItemCount may be reported (kube leaves it out
    when a selector filters the list).
    """
    list_rv = rv
    if token:
        t = decode(token)
        if t.rv < compacted:
            raise Expired(TOO_OLD)
        list_rv = t.rv
        items = [o for o in items if key_of(o) > t.after]
    meta: Obj = {"resourceVersion": str(list_rv)}
    if limit and limit > 0 and len(items) > limit:
        rest = len(items) - limit
        items = items[:limit]
        meta["continue"] = encode(list_rv, key_of(items[-1]))
        if exact_count:
            meta["remainingItemCount"] = rest
    return items, meta
