"""The informer's loop survives what its watch may throw (our client is the seam)."""

from __future__ import annotations

import threading
from typing import Any

from cdi.kube import PVC, Informer


class _Client:
    """Lists one object; the first watch breaks with an error no API client raises on purpose (a
    garbled event), the second one delivers an update and then waits."""

    def __init__(self) -> None:
        self.lists = 0
        self.watches = 0
        self.release = threading.Event()

    def list(self, kind: Any, namespace: Any = None, **_: Any) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [{"metadata": {"name": "a", "resourceVersion": "1"}}], "1"

    def watch(self, kind: Any, namespace: Any = None, **_: Any) -> Any:
        self.watches += 1
        if self.watches == 1:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        yield "MODIFIED", {"metadata": {"name": "a", "resourceVersion": "2"}}
        self.release.wait(5)


def test_a_watch_that_breaks_unexpectedly_is_followed_by_a_relist_not_a_dead_thread() -> None:
    client = _Client()
    seen: list[tuple[str, str]] = []
    got_update = threading.Event()

    def handler(etype: str, obj: dict[str, Any]) -> None:
        seen.append((etype, obj["metadata"]["resourceVersion"]))
        if etype == "MODIFIED":
            got_update.set()

    informer = Informer(client, PVC)  # type: ignore[arg-type]
    informer.add_handler(handler)
    informer.start()
    try:
        assert got_update.wait(5), seen
    finally:
        informer.stop()
        client.release.set()
    assert client.lists == 2 and seen == [("ADDED", "1"), ("ADDED", "1"), ("MODIFIED", "2")]
