"""Object lifecycle with Kubernetes semantics, on top of the store.

Create, update, status update, patch and delete as kube-apiserver does them: uid, generateName,
creationTimestamp, resourceVersion preconditions (409 on stale writes), generation bumped on spec
changes only, status preserved by main-resource writes of kinds with a status subresource,
finalizers and deletionTimestamp, ownerReferences with cascading deletion (Background by default,
Foreground and Orphan), namespace termination, defaulting and validation from the kind declaration
and of ObjectMeta (`metavalidation`), field validation (`fieldvalidation`), managedFields and
server-side apply (`managedfields`), and dry runs that compute the answer without writing.
"""

from __future__ import annotations

import copy
import logging
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cdi.api import admission
from cdi.api.registry import Registry, ResourceKind
from cdi.apiserver import fieldvalidation, managedfields, metavalidation
from cdi.apiserver.errors import AlreadyExists, BadRequest, Conflict, Forbidden, Invalid, NotFound
from cdi.apiserver.fieldvalidation import FieldCheck
from cdi.apiserver.patch import apply_patch
from cdi.apiserver.selectors import Matcher
from cdi.apiserver.store import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# An admission check run on every create and update of an object (after its own validation, dry
# runs included): raises an ApiServerError to refuse. Checks that depend on who is asking read
# `cdi.apiserver.rbac.CURRENT_USER`.
Admission = Callable[[ResourceKind, Obj, Obj | None], None]

FOREGROUND = "foregroundDeletion"
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
_GEN_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(kind: ResourceKind, obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", *kind.non_spec_fields)}


def _without_rv(obj: Obj) -> Obj:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return out


class Objects:
    """The API's verbs on stored objects; every method is atomic under the store lock."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.admission: list[Admission] = []
        self.namespaces = registry.lookup("", "v1", "namespaces")
        if self.namespaces is None:
            raise ValueError("the registry must hold the core namespaces kind")

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: ResourceKind, ns: str, name: str) -> Obj:
        obj = self.store.get(kind.key, ns if kind.namespaced else "", name)
        if obj is None:
            raise NotFound.of(kind, name)
        return obj

    def select(self, kind: ResourceKind, ns: str | None, *matchers: Matcher) -> tuple[list[Obj], int]:
        with self.store.lock:
            rv = self.store.resource_version
            items = self.store.items(kind.key, ns if kind.namespaced else None)
        return [o for o in items if all(m(o) for m in matchers)], rv

    # -- writes ------------------------------------------------------------------------------

    def create(
        self,
        kind: ResourceKind,
        ns: str,
        body: Obj,
        *,
        dry_run: bool = False,
        fields: FieldCheck | None = None,
        manager: str | None = None,
    ) -> Obj:
        """POST; `manager` (the request's field manager) takes ownership of every field it set."""
        obj = copy.deepcopy(body)
        if fields is not None:
            fields.body(kind, obj)  # types first: the checks below read metadata
        obj = self._check_body(kind, ns, obj)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise BadRequest("resourceVersion should not be set on objects to be created")
        with self.store.lock:
            if kind.namespaced:
                self._check_namespace_open(ns)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise Invalid.of(
                        kind, "", ["metadata.name: Required value: name or generateName is required"]
                    )
                prefix = metavalidation.generated_prefix(str(meta["generateName"]))
                meta["name"] = prefix + "".join(random.choices(_GEN_CHARS, k=5))
                problems = metavalidation.check_name(kind, meta["name"])
                if problems:  # the random part is valid: the prefix is to blame, as kube says
                    bad = metavalidation.check_name(kind, prefix + "a", field="metadata.generateName")
                    raise Invalid.of(kind, "", bad or problems)
            name = meta["name"]
            self._check_name(kind, name)
            if self.store.get(kind.key, meta.get("namespace", ""), name) is not None:
                raise AlreadyExists.of(kind, name)
            for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(k, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            if kind.status_subresource:
                obj.pop("status", None)
            admission.apply_defaults(kind, obj)
            self._validate(kind, obj, None)
            if manager is not None:
                managedfields.record_update(kind, None, obj, manager)
            if dry_run:
                return obj
            log.info("create resource=%s ns=%s name=%s", kind.key, ns, name)
            created = self.store.put(kind.key, meta.get("namespace", ""), name, obj, "ADDED")
            self._collect_if_orphaned(kind, created)
            return created

    def update(
        self,
        kind: ResourceKind,
        ns: str,
        name: str,
        body: Obj,
        *,
        status: bool = False,
        dry_run: bool = False,
        fields: FieldCheck | None = None,
        manager: str | None = None,
    ) -> Obj:
        """PUT of the object (or of its status subresource when `status`)."""
        new = copy.deepcopy(body)
        if fields is not None:
            fields.body(kind, new)
        new = self._check_body(kind, ns, new)
        if new["metadata"].get("name", name) != name:
            raise BadRequest(
                f"the name of the object ({new['metadata']['name']}) "
                f"does not match the name on the URL ({name})"
            )
        new["metadata"]["name"] = name
        with self.store.lock:
            old = self.get(kind, ns, name)
            old_meta = old["metadata"]
            rv = new["metadata"].get("resourceVersion")
            if rv and str(rv) != old_meta["resourceVersion"]:
                raise Conflict.modified(kind, name)
            uid = new["metadata"].get("uid")
            if uid and uid != old_meta["uid"]:
                raise Conflict.precondition(
                    kind,
                    name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old_meta['uid']}",
                )
            if status:
                merged = copy.deepcopy(old)
                if "status" in new:
                    merged["status"] = new["status"]
                else:
                    merged.pop("status", None)
                new = merged
            else:
                self._carry_over(kind, old, new)
                admission.apply_defaults(kind, new)
                self._validate(kind, new, old)
                if _spec_part(kind, new) != _spec_part(kind, old):
                    new["metadata"]["generation"] = int(old_meta.get("generation") or 1) + 1
            if _without_rv(new) == _without_rv(old):
                return old
            if manager is not None:
                managedfields.record_update(kind, old, new, manager, subresource="status" if status else "")
            if dry_run:
                return new
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                return self._finalize(kind, new)
            return self.store.put(kind.key, old_meta.get("namespace", ""), name, new, "MODIFIED")

    def patch(
        self,
        kind: ResourceKind,
        ns: str,
        name: str,
        content_type: str,
        body: bytes,
        *,
        status: bool = False,
        dry_run: bool = False,
        fields: FieldCheck | None = None,
        manager: str | None = None,
    ) -> Obj:
        """PATCH with a JSON, merge or strategic merge patch (server-side apply is `apply`)."""
        with self.store.lock:
            old = self.get(kind, ns, name)
            patched = apply_patch(content_type, old, body, custom=kind.custom)
            if not isinstance(patched, dict):
                raise BadRequest("the patched object is not a JSON object")
            if fields is not None:
                fields.patched(kind, patched)
            return self.update(kind, ns, name, patched, status=status, dry_run=dry_run, manager=manager)

    def apply(
        self,
        kind: ResourceKind,
        ns: str,
        name: str,
        config: Any,
        *,
        manager: str,
        force: bool = False,
        status: bool = False,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Server-side apply of a decoded YAML (or JSON) configuration by `manager` (see managedfields).

        Returns the object and whether the apply created it.
        """
        if not isinstance(config, dict):
            raise BadRequest("the applied configuration must be an object")
        fieldvalidation.applied(kind, config)
        config = self._check_body(kind, ns, config)
        if config["metadata"].get("name", name) != name:
            raise BadRequest(
                f"the name of the object ({config['metadata']['name']}) does not match the name on the URL ({name})"
            )
        config["metadata"]["name"] = name
        with self.store.lock:
            current = self.store.get(kind.key, ns if kind.namespaced else "", name)
            if current is None and status:
                raise NotFound.of(kind, name)
            new = managedfields.apply(
                kind, current, config, manager, force=force, subresource="status" if status else ""
            )
            if current is None:
                return self.create(kind, ns, new, dry_run=dry_run), True
            return self.update(kind, ns, name, new, status=status, dry_run=dry_run), False

    def delete(
        self, kind: ResourceKind, ns: str, name: str, options: Obj | None = None, *, dry_run: bool = False
    ) -> tuple[Obj, bool]:
        """Delete; returns (object, finished). Not finished while finalizers hold the object."""
        options = options or {}
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        with self.store.lock:
            obj = self.get(kind, ns, name)
            meta = obj["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise Conflict.precondition(
                    kind,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise Conflict.modified(kind, name)
            if kind is self.namespaces and name in PROTECTED_NAMESPACES:
                raise Forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted')
            if dry_run:
                return self._dry_run_delete(kind, obj, policy)
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            if kind is self.namespaces:
                return self._delete_namespace(obj)
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Foreground" and FOREGROUND not in finalizers and self._dependents(meta["uid"]):
                finalizers.append(FOREGROUND)
            if not finalizers:
                return self._finalize(kind, obj), True
            if not meta.get("deletionTimestamp") or finalizers != meta.get("finalizers"):
                meta["finalizers"] = finalizers
                meta.setdefault("deletionTimestamp", now_rfc3339())
                meta["deletionGracePeriodSeconds"] = 0
                obj = self.store.put(kind.key, meta.get("namespace", ""), name, obj, "MODIFIED")
            if FOREGROUND in finalizers:
                self._delete_dependents(meta["uid"])
                obj = self._maybe_finish_foreground(kind, obj)
            return obj, False

    def _dry_run_delete(self, kind: ResourceKind, obj: Obj, policy: str) -> tuple[Obj, bool]:
        """What a delete would answer, computed without writing, cascading or touching finalizers."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and FOREGROUND not in finalizers and self._dependents(meta["uid"]):
            finalizers.append(FOREGROUND)
        if kind is not self.namespaces and not finalizers:
            return obj, True
        held = copy.deepcopy(obj)
        held["metadata"].setdefault("deletionTimestamp", now_rfc3339())
        held["metadata"]["deletionGracePeriodSeconds"] = 0
        if finalizers:
            held["metadata"]["finalizers"] = finalizers
        if kind is self.namespaces:
            held.setdefault("status", {})["phase"] = "Terminating"
        return held, False

    # -- helpers -----------------------------------------------------------------------------

    def _check_body(self, kind: ResourceKind, ns: str, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise BadRequest("the body of the request is not a JSON object")
        if (
            obj.get("apiVersion", kind.api_version) != kind.api_version
            or obj.get("kind", kind.kind) != kind.kind
        ):
            raise BadRequest(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                f"API version ({kind.api_version}) or kind ({obj.get('kind')}) is not {kind.kind}"
            )
        # apiVersion and kind lead, as in kube's answers, also when the body left them out.
        obj = {"apiVersion": kind.api_version, "kind": kind.kind,
               **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}}
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise BadRequest("metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        return obj

    def _check_name(self, kind: ResourceKind, name: str) -> None:
        problems = metavalidation.check_name(kind, name)
        if problems:
            raise Invalid.of(kind, name, problems)

    def _check_namespace_open(self, ns: str) -> None:
        assert self.namespaces is not None
        nso = self.store.get(self.namespaces.key, "", ns)
        if nso is None:
            raise NotFound.of(self.namespaces, ns)
        if nso["metadata"].get("deletionTimestamp"):
            raise Forbidden(f"unable to create new content in namespace {ns} because it is being terminated")

    def _validate(self, kind: ResourceKind, obj: Obj, old: Obj | None) -> None:
        errors = metavalidation.check_metadata(obj["metadata"])
        errors += admission.validation_errors(kind, obj, old)
        if errors:
            raise Invalid.of(kind, obj["metadata"].get("name", ""), errors)
        for admit in self.admission:
            admit(kind, obj, old)

    def _carry_over(self, kind: ResourceKind, old: Obj, new: Obj) -> None:
        meta, old_meta = new["metadata"], old["metadata"]
        for k in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if "managedFields" not in meta and "managedFields" in old_meta:
            meta["managedFields"] = old_meta["managedFields"]  # omitted means unchanged, as in kube
        if kind.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                msg = "no new finalizers can be added if the object is being deleted"
                errors = [f"metadata.finalizers: Forbidden: {msg}, found new finalizers {sorted(added)}"]
                raise Invalid.of(kind, meta["name"], errors)

    def _finalize(self, kind: ResourceKind, obj: Obj) -> Obj:
        """Remove the object for good, then collect its dependents and wake waiting owners."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        if self.store.get(kind.key, ns, meta["name"]) is None:
            return obj
        log.info("delete resource=%s ns=%s name=%s", kind.key, ns, meta["name"])
        gone = self.store.remove(kind.key, ns, meta["name"], obj)
        self._delete_dependents(meta["uid"])
        for ref in meta.get("ownerReferences") or []:
            owner = self._find_by_uid(ref.get("uid"), ns)
            if owner is not None:
                self._maybe_finish_foreground(*owner)
        if ns:
            self._maybe_finish_namespace(ns)
        return gone

    def _all_objects(self, ns: str | None = None) -> list[tuple[ResourceKind, Obj]]:
        out: list[tuple[ResourceKind, Obj]] = []
        for kind in self.registry:
            if ns is not None and not kind.namespaced:
                continue
            out.extend((kind, o) for o in self.store.items(kind.key, ns))
        return out

    def _dependents(self, uid: str) -> list[tuple[ResourceKind, Obj]]:
        out: list[tuple[ResourceKind, Obj]] = []
        for key, obj in self.store.dependents(uid):
            kind = self.registry.by_key(key)
            if kind is not None:
                out.append((kind, obj))
        return out

    def _find_by_uid(self, uid: str | None, ns: str) -> tuple[ResourceKind, Obj] | None:
        found = self.store.by_uid(uid) if uid else None
        if found is None:
            return None
        kind = self.registry.by_key(found[0])
        obj = found[1]
        if kind is None or (kind.namespaced and obj["metadata"].get("namespace") != ns):
            return None
        return kind, obj

    def _drop_owner(self, kind: ResourceKind, dep: Obj, uid: str) -> None:
        dep = copy.deepcopy(dep)
        refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        if refs:
            dep["metadata"]["ownerReferences"] = refs
        else:
            dep["metadata"].pop("ownerReferences", None)
        self.store.put(
            kind.key, dep["metadata"].get("namespace", ""), dep["metadata"]["name"], dep, "MODIFIED"
        )

    def _orphan_dependents(self, uid: str) -> None:
        for kind, dep in self._dependents(uid):
            self._drop_owner(kind, dep, uid)

    def _delete_dependents(self, uid: str) -> None:
        """Garbage-collect dependents of a deleted (or foreground-deleting) owner."""
        for kind, dep in self._dependents(uid):
            dmeta = dep["metadata"]
            others = [r for r in dmeta.get("ownerReferences") or [] if r.get("uid") != uid]
            if any(self._find_by_uid(r.get("uid"), dmeta.get("namespace", "")) for r in others):
                self._drop_owner(kind, dep, uid)
            elif not dmeta.get("deletionTimestamp"):
                self.delete(
                    kind, dmeta.get("namespace", ""), dmeta["name"], {"propagationPolicy": "Background"}
                )

    def _collect_if_orphaned(self, kind: ResourceKind, obj: Obj) -> None:
        """Kubernetes' garbage collector for an object created with owners that no longer exist.

        A controller that read its owner just before the owner was deleted may create a dependent
        after the owner's dependents were collected. As kube's garbage collector does, such a
        dependent is deleted when none of its owners exists (dangling references to absent owners
        beside a live one are dropped), so nothing outlives its owner.
        """
        meta = obj["metadata"]
        refs = meta.get("ownerReferences") or []
        if not refs:
            return
        ns = meta.get("namespace", "")
        # An owner of a kind this server does not serve cannot be looked up: kube's collector leaves
        # such a dependent alone rather than guess.
        dangling = [r.get("uid") for r in refs if self.registry.by_kind(str(r.get("apiVersion") or ""),
                                                                        str(r.get("kind") or "")) is not None
                    and self._find_by_uid(r.get("uid"), ns) is None]
        if not dangling:
            return
        if len(dangling) == len(refs):
            log.info("collect orphan resource=%s ns=%s name=%s owners=%s", kind.key, ns, meta["name"], dangling)
            self.delete(kind, ns, meta["name"], {"propagationPolicy": "Background"})
            return
        for uid in dangling:
            current = self.store.get(kind.key, ns, meta["name"])
            if current is not None:
                self._drop_owner(kind, current, uid)

    def _maybe_finish_foreground(self, kind: ResourceKind, owner: Obj) -> Obj:
        meta = owner["metadata"]
        if not meta.get("deletionTimestamp") or FOREGROUND not in (meta.get("finalizers") or []):
            return owner
        if self._dependents(meta["uid"]):
            return owner
        updated = copy.deepcopy(owner)
        updated["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != FOREGROUND]
        return self.update(kind, meta.get("namespace", ""), meta["name"], updated)

    def _delete_namespace(self, ns_obj: Obj) -> tuple[Obj, bool]:
        assert self.namespaces is not None
        name = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            ns_obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            ns_obj.setdefault("status", {})["phase"] = "Terminating"
            ns_obj = self.store.put(self.namespaces.key, "", name, ns_obj, "MODIFIED")
        for kind, o in self._all_objects(name):
            if not o["metadata"].get("deletionTimestamp"):
                self.delete(kind, name, o["metadata"]["name"])
        if self.store.count_namespace(name) == 0:
            return self.store.remove(self.namespaces.key, "", name, ns_obj), True
        return ns_obj, False

    def _maybe_finish_namespace(self, ns: str) -> None:
        assert self.namespaces is not None
        nso = self.store.get(self.namespaces.key, "", ns)
        if nso and nso["metadata"].get("deletionTimestamp") and self.store.count_namespace(ns) == 0:
            self.store.remove(self.namespaces.key, "", ns, nso)

    def ensure_namespace(self, name: str) -> None:
        """Create a namespace if it does not exist (used at start for default and kube-system)."""
        assert self.namespaces is not None
        if self.store.get(self.namespaces.key, "", name) is None:
            self.create(self.namespaces, "", {"metadata": {"name": name}})
