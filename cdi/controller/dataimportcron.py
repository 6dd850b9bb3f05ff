"""The DataImportCron reconciler: poll a registry tag on a cron schedule, import each new digest into a
DataVolume, point the managed DataSource at the newest, and collect old imports.

It follows CDI's dataimportcron-controller: the cron's annotations keep the schedule's state
(`cdi.kubevirt.io/storage.import.nextCronTime`, `.lastCronTime`) and the digest wanted
(`.sourceDesiredDigest`); a new digest makes DataVolume `<managedDataSource>-<12 hex of the digest>`
(label `cdi.kubevirt.io/dataImportCron`, the URL pinned to the digest); once it succeeded the cron's
`status.lastImportedPVC` and the DataSource's `spec.source.pvc` name it, and beyond `importsToKeep`
(3) the least recently used imports are deleted (`garbageCollect: Outdated`). Conditions `UpToDate`
and `Progressing` carry CDI's reasons. A new cron polls at once. CDI polls from a CronJob's pod; here
the controller asks the registry itself (``registry_access``). Time comes from the ``now`` callable,
so the schedule can be driven by a test clock.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from croniter import croniter

from cdi.controller import conditions as c
from cdi.controller.registry_access import tag_digest, untagged
from cdi.kube import DATAIMPORTCRON, DATASOURCE, DATAVOLUME, PVC, AlreadyExists, Client, NotFound, Obj
from importer.errors import Error as RegistryFailure

log = logging.getLogger(__name__)

LABEL_CRON = "cdi.kubevirt.io/dataImportCron"
LABEL_CLEANUP = LABEL_CRON + ".cleanup"
ANN_DESIRED_DIGEST = "cdi.kubevirt.io/storage.import.sourceDesiredDigest"
ANN_NEXT_CRON = "cdi.kubevirt.io/storage.import.nextCronTime"
ANN_LAST_CRON = "cdi.kubevirt.io/storage.import.lastCronTime"
ANN_LAST_USE = "cdi.kubevirt.io/storage.import.lastUseTime"
ANN_IMMEDIATE = "cdi.kubevirt.io/storage.bind.immediate.requested"
UP_TO_DATE = "UpToDate"
PROGRESSING = "Progressing"
DEFAULT_KEEP = 3
DIGEST_NAME_LENGTH = 12
POLL_RETRY = 30.0  # a failed poll is tried again this soon, not only at the next scheduled time

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def next_run(schedule: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the cron schedule names (UTC)."""
    result: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return result


def import_name(managed: str, digest: str) -> str:
    """CDI's name of an import: `<managedDataSource>-<first 12 hex digits of the digest>`."""
    hexpart = digest.split(":", 1)[-1]
    if len(hexpart) < DIGEST_NAME_LENGTH:
        raise ValueError(f"digest {digest!r} is too short")
    return f"{managed}-{hexpart[:DIGEST_NAME_LENGTH]}"


def _set(conds: list[Obj], ctype: str, status: str, message: str, reason: str) -> None:
    c.set_condition(conds, ctype, status, reason, message)


class DataImportCronReconciler:
    def __init__(self, client: Client, *, now: Clock = utcnow) -> None:
        self.client = client
        self.now = now

    def reconcile(self, namespace: str, name: str) -> float | None:
        cron = self.client.find(DATAIMPORTCRON, namespace, name)
        if cron is None or cron["metadata"].get("deletionTimestamp"):
            self._cleanup(namespace, name)
            return None
        if self._managed_by_other(cron):
            return None
        ann = dict(cron["metadata"].get("annotations") or {})
        status: Obj = copy.deepcopy(cron.get("status") or {})
        conds: list[Obj] = status.setdefault("conditions", [])
        spec = cron["spec"]
        if spec.get("schedule") and not ann.get(ANN_NEXT_CRON):
            ann[ANN_NEXT_CRON] = stamp(self.now())  # a new cron polls at once, as CDI's does
        imports: list[Obj] = list(status.get("currentImports") or [])
        dv = pvc = None
        if imports:
            dv = self.client.find(DATAVOLUME, namespace, imports[0]["DataVolumeName"])
            pvc = self.client.find(PVC, namespace, imports[0]["DataVolumeName"])
        succeeded = False
        phase = str(((dv or {}).get("status") or {}).get("phase") or "")
        if dv is not None:
            if phase == c.SUCCEEDED:
                succeeded = True
            elif phase == c.IMPORT_SCHEDULED:
                _set(conds, PROGRESSING, "False", "Import is scheduled", "ImportScheduled")
            elif phase in (c.IMPORT_IN_PROGRESS, "CloneScheduled", "CloneInProgress"):
                _set(conds, PROGRESSING, "True", "Import is progressing", "ImportProgressing")
            else:
                why = (c.find((dv.get("status") or {}).get("conditions") or [], c.RUNNING) or {}).get("message")
                _set(conds, PROGRESSING, "False", f"Import DataVolume phase {phase or c.PENDING}"
                     + (f": {why}" if why else ""), phase or c.PENDING)
        elif pvc is not None and (pvc.get("status") or {}).get("phase") == "Bound":
            succeeded = True
        else:
            imports = imports[1:]
            _set(conds, PROGRESSING, "False", "No current import", "NoImport")
        if succeeded and pvc is not None:
            last = {"namespace": namespace, "name": imports[0]["DataVolumeName"]}
            self._touch(cron, pvc, force=status.get("lastImportedPVC") != last)
            if status.get("lastImportedPVC") != last:
                status["lastImportedPVC"] = last
                status["lastImportTimestamp"] = stamp(self.now())
            _set(conds, PROGRESSING, "False", "No current import", "NoImport")
            self._collect(cron, status)
        self._update_datasource(cron, status)
        requeue = self._poll(cron, ann, conds) if spec.get("schedule") else None
        desired = ann.get(ANN_DESIRED_DIGEST, "")
        if desired and (not imports or imports[0].get("Digest") != desired):
            _set(conds, UP_TO_DATE, "False", "Source digest updated since last import", "Outdated")
            if dv is not None and phase == c.FAILED:
                self._delete_import(namespace, dv["metadata"]["name"])  # a new digest replaces a failed import
                imports = []
            if succeeded or not imports:
                imports = self._start_import(cron, desired, status)
        elif succeeded:
            status["sourceFormat"] = "pvc"
            _set(conds, UP_TO_DATE, "True", "Latest import is up to date", "UpToDate")
        elif imports:
            _set(conds, UP_TO_DATE, "False", "Import is progressing", "ImportProgressing")
        elif (c.find(conds, UP_TO_DATE) or {}).get("reason") != "PollFailed":
            _set(conds, UP_TO_DATE, "False", "No source digest", "NoDigest")
        status["currentImports"] = imports
        if ann.get(ANN_LAST_CRON):
            status["lastExecutionTimestamp"] = ann[ANN_LAST_CRON]
        self._write(cron, ann, status)
        return requeue

    # -- polling -----------------------------------------------------------------------------------

    def _poll(self, cron: Obj, ann: dict[str, str], conds: list[Obj]) -> float:
        """Ask the registry when the schedule says so; return seconds until the next scheduled poll."""
        schedule = str(cron["spec"]["schedule"])
        now = self.now()
        due = parse_stamp(ann[ANN_NEXT_CRON])
        if due > now:
            return max((due - now).total_seconds(), 0.5)
        meta = cron["metadata"]
        registry = ((cron["spec"].get("template") or {}).get("spec") or {}).get("source", {}).get("registry")
        if not isinstance(registry, dict) or not registry.get("url"):
            # A PVC source (CDI digests its uid) or an image stream: not polled here.
            message = "only a registry source with a url is polled here"
            self.client.event(cron, reason="PollFailed", type="Warning", message=message)
            ann[ANN_NEXT_CRON] = stamp(next_run(schedule, now))
            return (parse_stamp(ann[ANN_NEXT_CRON]) - now).total_seconds()
        try:
            digest = tag_digest(self.client, meta["namespace"], registry)
        except (RegistryFailure, NotFound) as e:
            message = f"Polling {registry['url']} failed: {e}"
            log.warning("[%s/%s] %s", meta["namespace"], meta["name"], message)
            self.client.event(cron, reason="PollFailed", type="Warning", message=message)
            _set(conds, UP_TO_DATE, "False", message, "PollFailed")
            # Next try after POLL_RETRY (not at every update of the cron), or at the schedule if sooner.
            ann[ANN_NEXT_CRON] = stamp(min(now + timedelta(seconds=POLL_RETRY), next_run(schedule, now)))
            return POLL_RETRY
        ann[ANN_LAST_CRON] = stamp(now)
        if ann.get(ANN_DESIRED_DIGEST) != digest:
            log.info("[%s/%s] source digest now %s", meta["namespace"], meta["name"], digest)
            ann[ANN_DESIRED_DIGEST] = digest
        ann[ANN_NEXT_CRON] = stamp(next_run(schedule, now))
        return max((parse_stamp(ann[ANN_NEXT_CRON]) - now).total_seconds(), 0.5)

    # -- imports -----------------------------------------------------------------------------------

    def _labels(self, cron: Obj) -> dict[str, str]:
        labels = {LABEL_CRON: cron["metadata"]["name"]}
        if cron["spec"].get("retentionPolicy") == "None":
            labels[LABEL_CLEANUP] = "true"
        return labels

    def _start_import(self, cron: Obj, digest: str, status: Obj) -> list[Obj]:
        meta = cron["metadata"]
        name = import_name(cron["spec"]["managedDataSource"], digest)
        existing = self.client.find(PVC, meta["namespace"], name)
        if existing is not None:  # imported before (or by a cron before this one): use it again
            self._touch(cron, existing, force=True)
            return [{"DataVolumeName": name, "Digest": digest}]
        template = copy.deepcopy(cron["spec"]["template"])
        tmeta = template.get("metadata") or {}
        spec = template["spec"]
        registry = spec["source"]["registry"]
        registry["url"] = f"{untagged(str(registry['url']))}@{digest}"
        dv = {
            "apiVersion": DATAVOLUME.api_version, "kind": "DataVolume",
            "metadata": {
                "name": name, "namespace": meta["namespace"],
                "labels": {**(tmeta.get("labels") or {}), **self._labels(cron)},
                "annotations": {**(tmeta.get("annotations") or {}), ANN_IMMEDIATE: "true",
                                ANN_LAST_USE: stamp(self.now()), ANN_DESIRED_DIGEST: digest},
            },
            "spec": spec,
        }
        try:
            self.client.create(DATAVOLUME, dv)
            log.info("[%s/%s] importing %s into %s", meta["namespace"], meta["name"], registry["url"], name)
            self.client.event(cron, reason="ImportScheduled", message=f"Importing {registry['url']} into "
                                                                      f"DataVolume {name}")
        except AlreadyExists:
            pass
        return [{"DataVolumeName": name, "Digest": digest}]

    def _touch(self, cron: Obj, obj: Obj, *, force: bool = False) -> None:
        """Label a source the cron's and, when it becomes (again) the one in use, mark it just used: the
        collector keeps the most recently used. No write when nothing changes."""
        meta = obj["metadata"]
        labels = self._labels(cron)
        have = meta.get("labels") or {}
        used = (meta.get("annotations") or {}).get(ANN_LAST_USE)
        if not force and used and all(have.get(k) == v for k, v in labels.items()):
            return
        self.client.patch(PVC, meta["namespace"], meta["name"],
                          {"metadata": {"annotations": {ANN_LAST_USE: stamp(self.now())}, "labels": labels}})

    def _collect(self, cron: Obj, status: Obj) -> None:
        """Delete the imports beyond importsToKeep, least recently used first; never the current one."""
        spec = cron["spec"]
        if spec.get("garbageCollect", "Outdated") != "Outdated":
            return
        keep = int(spec.get("importsToKeep", DEFAULT_KEEP))
        meta = cron["metadata"]
        pvcs, _ = self.client.list(PVC, meta["namespace"], label_selector=f"{LABEL_CRON}={meta['name']}")
        pvcs = [p for p in pvcs if not p["metadata"].get("deletionTimestamp")]
        if len(pvcs) <= keep:
            return
        current = (status.get("lastImportedPVC") or {}).get("name")
        pvcs.sort(key=lambda p: (p["metadata"]["name"] == current,
                                 (p["metadata"].get("annotations") or {}).get(ANN_LAST_USE, "")), reverse=True)
        for old in pvcs[max(keep, 1):]:
            log.info("[%s/%s] deleting old import %s", meta["namespace"], meta["name"], old["metadata"]["name"])
            self._delete_import(meta["namespace"], old["metadata"]["name"])
            self.client.event(cron, reason="ImportCollected", message=f"Deleted old import "
                                                                      f"{old['metadata']['name']}")

    def _delete_import(self, namespace: str, name: str) -> None:
        """The DataVolume (its claim goes with it), or the claim when the DataVolume is gone already."""
        try:
            self.client.delete(DATAVOLUME, namespace, name)
            return
        except NotFound:
            pass
        try:
            self.client.delete(PVC, namespace, name)
        except NotFound:
            pass

    # -- the managed DataSource --------------------------------------------------------------------

    def _managed_by_other(self, cron: Obj) -> bool:
        meta = cron["metadata"]
        ds = self.client.find(DATASOURCE, meta["namespace"], cron["spec"]["managedDataSource"])
        owner = ((ds or {}).get("metadata", {}).get("labels") or {}).get(LABEL_CRON, "")
        if not owner or owner == meta["name"]:
            return False
        other = self.client.find(DATAIMPORTCRON, meta["namespace"], owner)
        if other is None or other["spec"].get("managedDataSource") != cron["spec"]["managedDataSource"]:
            return False
        message = f"DataSource {cron['spec']['managedDataSource']} is already managed by DataImportCron {owner}"
        self.client.event(cron, reason="ErrDataSourceAlreadyManaged", type="Warning", message=message)
        return True

    def _update_datasource(self, cron: Obj, status: Obj) -> None:
        meta = cron["metadata"]
        name = cron["spec"]["managedDataSource"]
        last = status.get("lastImportedPVC")
        ds = self.client.find(DATASOURCE, meta["namespace"], name)
        if ds is None:
            self.client.create(DATASOURCE, {
                "apiVersion": DATASOURCE.api_version, "kind": "DataSource",
                "metadata": {"name": name, "namespace": meta["namespace"], "labels": self._labels(cron)},
                "spec": {"source": {"pvc": dict(last)} if last else {}}})
            log.info("[%s/%s] created DataSource %s", meta["namespace"], meta["name"], name)
            return
        if (ds["metadata"].get("labels") or {}).get(LABEL_CRON) != meta["name"]:
            return  # not this cron's (CDI: ErrNotManagedByCron): never touched
        if last and ((ds.get("spec") or {}).get("source") or {}) != {"pvc": last}:
            self.client.patch(DATASOURCE, meta["namespace"], name,
                              [{"op": "add", "path": "/spec/source", "value": {"pvc": dict(last)}}], json_patch=True)
            self.client.event(cron, reason="DataSourceUpdated", message=f"DataSource {name} now points to "
                                                                        f"PVC {last['namespace']}/{last['name']}")

    def _cleanup(self, namespace: str, name: str) -> None:
        """A deleted cron with retentionPolicy None takes its DataSource and imports with it."""
        selector = f"{LABEL_CRON}={name},{LABEL_CLEANUP}=true"
        for kind in (DATASOURCE, DATAVOLUME, PVC):
            items, _ = self.client.list(kind, namespace, label_selector=selector)
            for item in items:
                try:
                    self.client.delete(kind, namespace, item["metadata"]["name"])
                except NotFound:
                    pass

    def _write(self, cron: Obj, ann: dict[str, str], status: Obj) -> None:
        meta = cron["metadata"]
        have = meta.get("annotations") or {}
        changed = {k: v for k, v in ann.items() if have.get(k) != v}
        if changed:
            self.client.patch(DATAIMPORTCRON, meta["namespace"], meta["name"], {"metadata": {"annotations": changed}})
        status["conditions"] = sorted(status["conditions"], key=lambda x: str(x.get("type")))
        if status != (cron.get("status") or {}):
            self.client.patch(DATAIMPORTCRON, meta["namespace"], meta["name"],
                              [{"op": "add", "path": "/status", "value": status}], status=True, json_patch=True)
