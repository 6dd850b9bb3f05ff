"""SQLite object store with one global resourceVersion counter and a bounded watch history.

Objects live in one table keyed by (resource, namespace, name) with their JSON body; every write
takes the next resourceVersion and appends a watch event (ADDED, MODIFIED, DELETED) to the event
table (with the object's previous state, which selector watches need), which keeps the last
`history` events. An object larger than etcd would store is refused before it takes a
resourceVersion. Watchers are told about new events in-process
(`Hub`), so delivery does not wait for anyone to poll SQLite; the event table is only read to
replay history to a watch that starts from an older resourceVersion.

All methods are thread-safe; `lock` is public so callers can make a read-check-write atomic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from cdi.apiserver.errors import Expired
from cdi.apiserver.limits import MAX_OBJECT_BYTES, object_too_large

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name));
CREATE TABLE IF NOT EXISTS events (
    rv INTEGER PRIMARY KEY, resource TEXT NOT NULL, namespace TEXT NOT NULL,
    type TEXT NOT NULL, body TEXT NOT NULL, prev TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS uids (
    uid TEXT PRIMARY KEY, resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT NOT NULL, resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (owner, resource, namespace, name));
CREATE INDEX IF NOT EXISTS owners_by_child ON owners (resource, namespace, name);
"""


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    resource: str
    namespace: str
    type: str
    obj: Obj
    # The object before this event (None for ADDED): a watch with a selector needs it to tell an
    # object that stopped matching (DELETED) from one that started to (ADDED).
    prev: Obj | None = None


class Subscription:
    """One watcher's queue of events, fed from any thread, read on the watcher's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resource: str) -> None:
        self.loop = loop
        self.resource = resource
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

    def deliver(self, event: WatchEvent | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the watcher's loop is closed: nobody is listening any more
            pass

    async def get(self, timeout: float) -> WatchEvent | None:
        """The next event; None when the hub closed; raises TimeoutError after `timeout` seconds."""
        return await asyncio.wait_for(self.queue.get(), timeout)


class Hub:
    """In-process fan-out of watch events to subscriptions, by resource."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self.closed = False

    def subscribe(self, resource: str) -> Subscription:
        sub = Subscription(asyncio.get_running_loop(), resource)
        with self._lock:
            self._subs.setdefault(resource, set()).add(sub)
        if self.closed:
            sub.deliver(None)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.get(sub.resource, set()).discard(sub)

    def publish(self, event: WatchEvent) -> None:
        with self._lock:
            subs = list(self._subs.get(event.resource, ()))
        for sub in subs:
            sub.deliver(event)

    def close(self) -> None:
        """End every watch (server shutdown)."""
        self.closed = True
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            sub.deliver(None)


def _owner_only(path: str) -> None:
    """The database holds Secrets and tokens: create it readable by its owner only (and fix an old one)."""
    if path == ":memory:" or path.startswith("file:"):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Store:
    """Objects and watch history in one SQLite database (WAL mode)."""

    def __init__(self, path: str, *, history: int = 1000, max_object_bytes: int = MAX_OBJECT_BYTES) -> None:
        if history < 1:
            raise ValueError("watch history must keep at least one event")
        self.history = history
        # etcd's default request limit: a larger object is refused, as etcd would refuse it.
        self.max_object_bytes = max_object_bytes
        self.lock = threading.RLock()
        self.hub = Hub()
        _owner_only(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode; older files may differ
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = [r[1] for r in self._db.execute("PRAGMA table_info(events)").fetchall()]
        if "prev" not in columns:  # a database written before events kept the previous object
            self._db.execute("ALTER TABLE events ADD COLUMN prev TEXT")
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        self._rv = int(row[0]) if row else 1
        row = self._db.execute("SELECT value FROM meta WHERE key='compacted'").fetchone()
        self._compacted = int(row[0]) if row else 0
        self._index_existing()
        log.info("store opened path=%s rv=%d history=%d", path, self._rv, history)

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out."""
        return self._rv

    @property
    def compacted(self) -> int:
        """Watches from a resourceVersion older than this get 410 Gone."""
        return self._compacted

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            row = self._db.execute(
                "SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?",
                (resource, namespace, name),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def items(self, resource: str, namespace: str | None = None) -> list[Obj]:
        with self.lock:
            if namespace:
                rows = self._db.execute(
                    "SELECT body FROM objects WHERE resource=? AND namespace=? ORDER BY namespace, name",
                    (resource, namespace),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT body FROM objects WHERE resource=? ORDER BY namespace, name", (resource,)
                ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def by_uid(self, uid: str) -> tuple[str, Obj] | None:
        """(resource, object) of the object with ``uid``: an index lookup, not a scan."""
        with self.lock:
            row = self._db.execute(
                "SELECT o.resource, o.body FROM uids u JOIN objects o ON o.resource=u.resource "
                "AND o.namespace=u.namespace AND o.name=u.name WHERE u.uid=?", (uid,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def dependents(self, owner_uid: str) -> list[tuple[str, Obj]]:
        """(resource, object) of every object with an ownerReference to ``owner_uid``."""
        with self.lock:
            rows = self._db.execute(
                "SELECT o.resource, o.body FROM owners w JOIN objects o ON o.resource=w.resource "
                "AND o.namespace=w.namespace AND o.name=w.name WHERE w.owner=? ORDER BY o.resource, o.name",
                (owner_uid,)).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def _index(self, resource: str, namespace: str, name: str, obj: Obj | None) -> None:
        """Keep the uid and owner indexes in step with the objects table (inside a transaction)."""
        self._db.execute("DELETE FROM owners WHERE resource=? AND namespace=? AND name=?", (resource, namespace, name))
        self._db.execute("DELETE FROM uids WHERE resource=? AND namespace=? AND name=?", (resource, namespace, name))
        if obj is None:
            return
        meta = obj.get("metadata") or {}
        if meta.get("uid"):
            self._db.execute("INSERT OR REPLACE INTO uids (uid, resource, namespace, name) VALUES (?,?,?,?)",
                             (meta["uid"], resource, namespace, name))
        for ref in meta.get("ownerReferences") or []:
            if ref.get("uid"):
                self._db.execute("INSERT OR IGNORE INTO owners (owner, resource, namespace, name) VALUES (?,?,?,?)",
                                 (ref["uid"], resource, namespace, name))

    def _index_existing(self) -> None:
        """Build the indexes for a database written before they existed."""
        with self.lock:
            if self._db.execute("SELECT COUNT(*) FROM uids").fetchone()[0]:
                return
            rows = self._db.execute("SELECT resource, namespace, name, body FROM objects").fetchall()
            if not rows:
                return
            self._db.execute("BEGIN")
            for resource, namespace, name, body in rows:
                self._index(resource, namespace, name, json.loads(body))
            self._db.execute("COMMIT")

    def count_namespace(self, namespace: str) -> int:
        with self.lock:
            row = self._db.execute("SELECT COUNT(*) FROM objects WHERE namespace=?", (namespace,)).fetchone()
        return int(row[0])

    def put(self, resource: str, namespace: str, name: str, obj: Obj, event_type: str) -> Obj:
        """Store `obj` with the next resourceVersion and record an ADDED or MODIFIED event."""
        return self._commit(resource, namespace, name, obj, event_type)

    def remove(self, resource: str, namespace: str, name: str, obj: Obj) -> Obj:
        """Delete the object and record a DELETED event carrying its last state."""
        return self._commit(resource, namespace, name, obj, "DELETED")

    def _commit(self, resource: str, namespace: str, name: str, obj: Obj, event_type: str) -> Obj:
        """One transaction: the object written (or deleted), its indexes, the event; then the watchers."""
        with self.lock:
            rv = self._rv + 1
            obj["metadata"]["resourceVersion"] = str(rv)
            body = json.dumps(obj, separators=(",", ":"))
            if event_type != "DELETED" and len(body) > self.max_object_bytes:
                raise object_too_large()
            self._rv = rv
            row = self._db.execute(
                "SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?", (resource, namespace, name)
            ).fetchone()
            prev_body = row[0] if row else None
            self._db.execute("BEGIN")
            try:
                if event_type == "DELETED":
                    self._db.execute("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                                     (resource, namespace, name))
                    self._index(resource, namespace, name, None)
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO objects (resource, namespace, name, rv, body) VALUES (?,?,?,?,?)",
                        (resource, namespace, name, rv, body),
                    )
                    self._index(resource, namespace, name, obj)
                self._record(rv, resource, namespace, event_type, body, prev_body)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        prev = json.loads(prev_body) if prev_body else None
        self.hub.publish(WatchEvent(rv, resource, namespace, event_type, obj, prev))
        return obj

    def events_since(self, resource: str, rv: int) -> list[WatchEvent]:
        """Recorded events of `resource` newer than `rv`; Expired if history no longer reaches back."""
        with self.lock:
            if rv < self._compacted:
                raise Expired.too_old(rv, self._compacted + 1)
            rows = self._db.execute(
                "SELECT rv, namespace, type, body, prev FROM events WHERE resource=? AND rv>? ORDER BY rv",
                (resource, rv),
            ).fetchall()
        return [
            WatchEvent(r[0], resource, r[1], r[2], json.loads(r[3]), json.loads(r[4]) if r[4] else None)
            for r in rows
        ]

    def close(self) -> None:
        self.hub.close()
        with self.lock:
            self._db.close()

    def _record(
        self, rv: int, resource: str, namespace: str, event_type: str, body: str, prev: str | None
    ) -> None:
        self._db.execute(
            "INSERT INTO events (rv, resource, namespace, type, body, prev) VALUES (?,?,?,?,?,?)",
            (rv, resource, namespace, event_type, body, prev),
        )
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (rv,))
        cutoff = rv - self.history
        if cutoff > self._compacted:
            self._db.execute("DELETE FROM events WHERE rv<=?", (cutoff,))
            self._compacted = cutoff
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted', ?)", (cutoff,))
