"""Content-addressed image cache: a registry import of a digest already imported is a clone instead.

A registry image is named by the digest of its manifest, and an import of a pinned digest is verified
against it, so two DataVolumes importing the same digest get the same disk. When a new DataVolume with
a registry source knows its digest (pinned with ``@sha256:`` in the URL, or the tag's digest asked from
the registry now), and a volume in the same namespace already holds that digest, the DataVolume is
served by cloning that volume (the clone machinery, with its digest verification) instead of
downloading again; its event says so: ``served from cache of PVC ns/name, digest sha256:...``.

Conservative on purpose. A cached volume must be: the claim of a Succeeded DataVolume whose own
(immutable) spec pins that digest or whose importer verified and recorded it
(``cdi.kubevirt.io/storage.import.sourceDigest``), with its success and volume digest recorded on the claim, not being
deleted, of content type kubevirt, and of the new volume's size: the clone's volume digest must then
equal the one recorded when the cached volume was imported, so a cached volume changed since (written by
a pod) is never passed off as the image: the clone's claim is dropped, the volume is marked
``cdi.kubevirt.io/storage.import.cacheStale`` (never offered again) and the DataVolume imports from the
registry (event ``ImportFromCacheSkipped``). Only the DataVolume's own
namespace is searched, so the cache never lets anyone read what they could not clone anyway. The
decision is made once, before the target claim exists; afterwards the claim (made by the clone
reconciler, naming its source) says whether this DataVolume is a cache clone.

The key is the digest *and* the platform: a multi-arch tag's digest names its index, and the importer
picks one image of it (this machine's architecture, or ``source.registry.platform.architecture``), so
a volume imported for amd64 never serves a DataVolume asking for arm64 of the same index.
"""

from __future__ import annotations

import logging

from cdi.controller.clone import ANN_CLONE_OF, claim_size
from cdi.controller.registry_access import pinned_digest, tag_digest
from cdi.controller.resources import (
    ANN_CACHE_STALE,
    ANN_CACHED_FROM,
    ANN_DIGEST,
    ANN_POD_PHASE,
    ANN_SOURCE_DIGEST,
    ControllerSettings,
    build_pvc,
    requested_size,
)
from cdi.kube import DATAVOLUME, PVC, ApiError, Client, Obj, TemporaryError
from cdi.units import parse_size
from importer.errors import Error as RegistryFailure
from importer.oci_ref import host_platform

log = logging.getLogger(__name__)

REASON = "ImportFromCache"


def registry_source(dv: Obj) -> Obj | None:
    reg = ((dv.get("spec") or {}).get("source") or {}).get("registry")
    return reg if isinstance(reg, dict) and reg.get("url") else None


def platform_of(registry: Obj) -> str:
    """The architecture the importer picks from an index for this source (this machine's by default)."""
    return str((registry.get("platform") or {}).get("architecture") or host_platform()[1])


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


class ImageCache:
    def __init__(self, client: Client, settings: ControllerSettings) -> None:
        self.client = client
        self.settings = settings

    def source_for(self, dv: Obj) -> tuple[str, str] | None:
        """The PVC (namespace, name) to clone instead of importing ``dv``, or None: import it."""
        meta = dv["metadata"]
        registry = registry_source(dv)
        if registry is None or (dv["spec"].get("contentType") or "kubevirt") != "kubevirt":
            return None
        claim = self.client.find(PVC, meta["namespace"], meta["name"])
        if claim is not None and claim["metadata"].get("deletionTimestamp") and \
                ANN_CLONE_OF in (claim["metadata"].get("annotations") or {}):
            raise TemporaryError("the clone of a cache volume that changed since its import is being removed "
                                 "before importing from the registry")
        if claim is not None:
            made_from = (claim["metadata"].get("annotations") or {}).get(ANN_CLONE_OF, "")
            if _owned_by(claim, meta["uid"]) and made_from.startswith(meta["namespace"] + "/"):
                return meta["namespace"], made_from.split("/", 1)[1]
            return None
        try:
            digest = tag_digest(self.client, meta["namespace"], registry, quick=True)
        except (RegistryFailure, ApiError) as e:
            log.info("[%s/%s] no cache lookup: digest unknown: %s", meta["namespace"], meta["name"], e)
            return None  # the import itself will meet the problem and report it
        found = self._find(dv, digest)
        if found is None:
            return None
        message = f"served from cache of PVC {meta['namespace']}/{found}, digest {digest}"
        log.info("[%s/%s] %s", meta["namespace"], meta["name"], message)
        self.client.event(dv, reason=REASON, message=message)
        self.client.patch(DATAVOLUME, meta["namespace"], meta["name"], {"metadata": {"annotations": {
            ANN_CACHED_FROM: f"{meta['namespace']}/{found}"}}})
        return meta["namespace"], found

    def _target_size(self, dv: Obj) -> int | None:
        try:
            if requested_size(dv) is None:
                return None  # no size asked: the clone takes the source's
            return parse_size(str(build_pvc(dv, self.settings)["spec"]["resources"]["requests"]["storage"]))
        except ValueError:
            return 0  # an unusable spec: nothing fits, and the import path reports it

    def _find(self, dv: Obj, digest: str) -> str | None:
        meta = dv["metadata"]
        target = self._target_size(dv)
        arch = platform_of(registry_source(dv) or {})
        candidates, _ = self.client.list(DATAVOLUME, meta["namespace"])
        for cand in sorted(candidates, key=lambda d: str(d["metadata"]["name"])):
            cmeta = cand["metadata"]
            reg = registry_source(cand)
            if (cmeta["uid"] == meta["uid"] or reg is None
                    or (cand.get("status") or {}).get("phase") != "Succeeded" or cmeta.get("deletionTimestamp")
                    or (cand["spec"].get("contentType") or "kubevirt") != "kubevirt"):
                continue
            pvc = self.client.find(PVC, meta["namespace"], cmeta["name"])
            if pvc is None or pvc["metadata"].get("deletionTimestamp") or not _owned_by(pvc, cmeta["uid"]):
                continue
            ann = pvc["metadata"].get("annotations") or {}
            if ann.get(ANN_POD_PHASE) != "Succeeded" or not ann.get(ANN_DIGEST) or ann.get(ANN_CACHE_STALE):
                continue
            # What was imported: the digest its (immutable) URL pins, or the one its importer verified.
            if digest not in (pinned_digest(str(reg["url"])), ann.get(ANN_SOURCE_DIGEST)):
                continue
            if platform_of(reg) != arch:
                continue  # the same index, another of its images
            if target is not None and claim_size(pvc) != target:
                continue  # same size only: then the clone's digest must equal the one recorded at import
            return str(cmeta["name"])
        return None
