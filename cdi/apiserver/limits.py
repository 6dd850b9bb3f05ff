"""Size and shape limits of requests and stored objects, as kube-apiserver and etcd enforce them.

- A request body over 3 MiB is refused before it is read in full: 413 `Request entity too large:
  limit is 3145728` (kube-apiserver's `limitedReadBody`).
- A stored object over 1.5 MiB is refused the way etcd refuses it (`etcdserver: request is too
  large`), but as a 413 Status rather than an opaque 500.
- JSON or YAML nested deeper than `MAX_DEPTH` (kube's 10000) is a 400 `exceeded max depth`. The
  depth is measured before parsing (`check_raw_depth`), so no parser recurses deeper, and the
  server raises Python's recursion limit to cover the copies and merges of such documents
  (`allow_deep_documents`).
- YAML aliases may stand for at most `MAX_ALIASED_NODES` nodes in all: a few hundred bytes of
  nested aliases otherwise expand to millions of values (go-yaml refuses such documents with
  `document contains excessive aliasing`).
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any

import yaml
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdi.apiserver.errors import BadRequest, RequestEntityTooLarge, to_status

MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_OBJECT_BYTES = 1536 * 1024
MAX_DEPTH = 10000
# Python frames per level of nesting in the deepest walk of a document (copy, merge, encode), plus room.
_FRAMES_PER_LEVEL = 4
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
MAX_ALIASED_NODES = 10000


class _BudgetLoader(yaml.SafeLoader):
    """A safe loader that counts the nodes every alias stands for and stops past the budget."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliased = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: yaml.Node) -> int:
        """Nodes under `node`, aliases included (iterative; sizes memoised per node)."""
        total = 0
        stack = [node]
        while stack:
            n = stack.pop()
            known = self._sizes.get(id(n))
            if known is not None:
                total += known
                continue
            total += 1
            if isinstance(n, yaml.SequenceNode):
                stack.extend(n.value)
            elif isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack.extend((k, v))
            if total > MAX_ALIASED_NODES:
                break
        return total

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchored = self.anchors.get(event.anchor)
            if anchored is not None:
                size = self._size(anchored)
                self._sizes[id(anchored)] = size
                self._aliased += size
                if self._aliased > MAX_ALIASED_NODES:
                    raise yaml.YAMLError("yaml: document contains excessive aliasing")
        return super().compose_node(parent, index)


def body_too_large() -> RequestEntityTooLarge:
    return RequestEntityTooLarge(f"Request entity too large: limit is {MAX_REQUEST_BYTES}")


def object_too_large() -> RequestEntityTooLarge:
    return RequestEntityTooLarge("etcdserver: request is too large")


def allow_deep_documents() -> None:
    """Raise Python's recursion limit so documents MAX_DEPTH deep can be copied and merged."""
    needed = MAX_DEPTH * _FRAMES_PER_LEVEL + 1000
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def check_raw_depth(raw: bytes, what: str) -> None:
    """BadRequest when JSON (or flow-style YAML) text opens more than MAX_DEPTH brackets at once.

    Counted on the text, strings left out, so the parser never recurses that deep; a document with
    fewer brackets in all than the limit is let through at once.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    brackets = re.sub(rb"[^\[\]{}]", b"", _STRING.sub(b"", raw))
    steps = (1 if c in b"[{" else -1 for c in brackets)
    if max(accumulate(steps), default=0) > MAX_DEPTH:
        raise BadRequest(f"{what}: exceeded max depth of {MAX_DEPTH}")


def check_depth(doc: Any, what: str) -> None:
    """BadRequest when `doc` nests maps and lists deeper than MAX_DEPTH (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"{what}: exceeded max depth of {MAX_DEPTH}")
        stack.extend((c, depth + 1) for c in children)


def decode(raw: bytes, what: str, *, as_yaml: bool = False) -> Any:
    """Parse JSON (or YAML) from a request, mapping malformed or too deep input to a 400."""
    check_raw_depth(raw, what)
    try:
        doc = yaml.load(raw, Loader=_BudgetLoader) if as_yaml else json.loads(raw or b"null")  # noqa: S506
    except RecursionError as e:
        raise BadRequest(f"{what}: exceeded max depth of {MAX_DEPTH}") from e
    except (ValueError, yaml.YAMLError) as e:
        raise BadRequest(f"{what}: {e}") from e
    check_depth(doc, what)
    return doc


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit`, from Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _reply(body_too_large(), scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise body_too_large()
            return message

        await self.app(scope, limited, send)


async def _reply(err: RequestEntityTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    code, body = to_status(err)
    response = Response(json.dumps(body).encode(), status_code=code, media_type="application/json")
    await response(scope, receive, send)
