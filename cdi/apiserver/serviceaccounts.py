"""ServiceAccount tokens as kube-apiserver issues and checks them, and the `default` ServiceAccounts.

- `TokenIssuer` signs bound tokens (ES256 JWTs) with kube's claims: `iss`, `sub`
  (`system:serviceaccount:NS:NAME`), `aud`, `iat`, `nbf`, `exp`, `jti` and the `kubernetes.io`
  claim naming the namespace, the ServiceAccount (name and uid) and, for a token bound to a pod,
  the pod. The signing key is a PEM file (owner-only) or, without one, made for the process.
- `TokenIssuer.authenticate(token)` checks signature, issuer, audience and expiry, then that the
  ServiceAccount (and the bound pod) still exists with the uid of the claim: a token outlives
  neither. The user is `system:serviceaccount:NS:NAME` in `system:serviceaccounts` and
  `system:serviceaccounts:NS`.
- `token_request(...)` answers `POST .../serviceaccounts/NAME/token` (TokenRequest,
  `authentication.k8s.io/v1`), which `kubectl create token NAME --duration D` sends.
- `keep_default_service_accounts(objects)` is kube's serviceaccounts controller: every namespace
  that is not terminating has a ServiceAccount `default`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdi.api.rbac import SERVICEACCOUNT
from cdi.apiserver.errors import AlreadyExists, BadRequest, Conflict, Forbidden, Invalid, NotFound
from cdi.apiserver.objects import Objects
from cdi.apiserver.rbac import SA_PREFIX, User
from cdi.apiserver.store import Subscription, WatchEvent

log = logging.getLogger(__name__)

Obj = dict[str, Any]

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600
MAX_EXPIRATION = 2**32
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def _load_or_create_key(path: Path | None) -> ec.EllipticCurvePrivateKey:
    if path is not None and path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: the service account signing key must be an EC (P-256) key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    if path is not None:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        log.info("created service account signing key path=%s", path)
    return key


class TokenIssuer:
    """Issues and checks ServiceAccount tokens against the ServiceAccounts and Pods in the store."""

    def __init__(self, objects: Objects, *, key_file: str | None, issuer: str = DEFAULT_ISSUER) -> None:
        self.objects = objects
        self.issuer = issuer
        self.audiences = [issuer]
        self._key = _load_or_create_key(Path(key_file) if key_file else None)
        public = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        self._kid = hashlib.sha256(public).hexdigest()[:43]
        self.pod_kind = objects.registry.lookup("", "v1", "pods")

    def issue(self, sa: Obj, *, audiences: list[str], seconds: int, pod: Obj | None = None) -> tuple[str, int]:
        """A signed token for the ServiceAccount (bound to `pod` if given) and its expiry (epoch s)."""
        meta = sa["metadata"]
        now = int(time.time())
        claim: Obj = {"namespace": meta["namespace"], "serviceaccount": {"name": meta["name"], "uid": meta["uid"]}}
        if pod is not None:
            claim["pod"] = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        claims = {
            "aud": audiences, "exp": now + seconds, "iat": now, "nbf": now, "iss": self.issuer,
            "jti": str(uuid.uuid4()), "kubernetes.io": claim,
            "sub": f"{SA_PREFIX}{meta['namespace']}:{meta['name']}",
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid}), now + seconds

    def authenticate(self, token: str) -> User | None:
        """The ServiceAccount a token of ours names, or None (not ours, invalid, expired, stale)."""
        try:
            if jwt.decode(token, options={"verify_signature": False}).get("iss") != self.issuer:
                return None
            claims = jwt.decode(token, self._key.public_key(), algorithms=["ES256"], audience=self.audiences,
                                issuer=self.issuer, options={"require": ["exp", "sub"]})
        except jwt.PyJWTError as e:
            log.info("service account token refused: %s", e)
            return None
        kube = claims.get("kubernetes.io") or {}
        ns, ref = kube.get("namespace") or "", kube.get("serviceaccount") or {}
        sa = self.objects.store.get(SERVICEACCOUNT.key, ns, str(ref.get("name")))
        if sa is None or sa["metadata"]["uid"] != ref.get("uid"):
            log.info("service account token refused: %s/%s no longer exists (uid %s)", ns, ref.get("name"),
                     ref.get("uid"))
            return None
        if claims.get("sub") != f"{SA_PREFIX}{ns}:{sa['metadata']['name']}":
            return None
        extra = {CREDENTIAL_ID: [f"JTI={claims.get('jti')}"]}
        pod_ref = kube.get("pod")
        if pod_ref:
            pod = self.objects.store.get(self.pod_kind.key, ns, str(pod_ref.get("name"))) if self.pod_kind else None
            if pod is None or pod["metadata"]["uid"] != pod_ref.get("uid"):
                log.info("service account token refused: bound pod %s/%s is gone", ns, pod_ref.get("name"))
                return None
            extra["authentication.kubernetes.io/pod-name"] = [str(pod_ref.get("name"))]
            extra["authentication.kubernetes.io/pod-uid"] = [str(pod_ref.get("uid"))]
        return User(f"{SA_PREFIX}{ns}:{sa['metadata']['name']}", sa["metadata"]["uid"],
                    ("system:serviceaccounts", f"system:serviceaccounts:{ns}"), extra)


def token_request(issuer: TokenIssuer, ns: str, name: str, body: Obj) -> Obj:
    """Answer a TokenRequest for ServiceAccount `ns/name` (kube's TokenREST.Create)."""
    if not isinstance(body, dict) or body.get("kind", "TokenRequest") != "TokenRequest":
        raise BadRequest("the body of the request must be a TokenRequest")
    sa = issuer.objects.get(SERVICEACCOUNT, ns, name)
    spec = dict(body.get("spec") or {})
    seconds = spec.get("expirationSeconds") or DEFAULT_EXPIRATION
    errors = []
    if not isinstance(seconds, int) or seconds < MIN_EXPIRATION:
        errors.append(f"spec.expirationSeconds: Invalid value: {seconds}: "
                      "may not specify a duration less than 10 minutes")
    elif seconds > MAX_EXPIRATION:
        errors.append(f"spec.expirationSeconds: Invalid value: {seconds}: "
                      "may not specify a duration larger than 2^32 seconds")
    if errors:
        raise Invalid.named("TokenRequest.authentication.k8s.io", name, errors)
    audiences = list(spec.get("audiences") or issuer.audiences)
    pod = None
    bound = spec.get("boundObjectRef") or None
    if bound:
        if bound.get("kind") != "Pod" or issuer.pod_kind is None:
            raise BadRequest(f"cannot bind token to object of kind {bound.get('kind')}: only Pod is supported")
        pod = issuer.objects.get(issuer.pod_kind, ns, str(bound.get("name")))
        if bound.get("uid") and bound["uid"] != pod["metadata"]["uid"]:
            raise Conflict(f'Operation cannot be fulfilled on pods "{pod["metadata"]["name"]}": the UID in the '
                           f"bound object reference ({bound['uid']}) does not match the UID in record. The object "
                           f"might have been deleted and then recreated ({pod['metadata']['uid']})")
        bound = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    token, expiry = issuer.issue(sa, audiences=audiences, seconds=seconds, pod=pod)
    log.info("token issued serviceaccount=%s/%s seconds=%d", ns, name, seconds)
    return {
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns,
                     "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound},
        "status": {"token": token,
                   "expirationTimestamp": datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }


def ensure_default(objects: Objects, ns: str) -> None:
    """Create ServiceAccount `default` in `ns` unless it exists or the namespace is going away."""
    namespaces = objects.namespaces
    assert namespaces is not None
    nso = objects.store.get(namespaces.key, "", ns)
    if nso is None or nso["metadata"].get("deletionTimestamp"):
        return
    if objects.store.get(SERVICEACCOUNT.key, ns, "default") is not None:
        return
    with contextlib.suppress(AlreadyExists, Forbidden, NotFound):
        objects.create(SERVICEACCOUNT, ns, {"metadata": {"name": "default", "namespace": ns}})
        log.info("created serviceaccount ns=%s name=default", ns)


async def _follow(sub: Subscription, on_event: Callable[[WatchEvent], None]) -> None:
    while True:
        try:
            ev = await sub.get(1.0)
        except TimeoutError:
            continue
        if ev is None:  # the server is stopping
            return
        on_event(ev)


async def keep_default_service_accounts(objects: Objects) -> None:
    """Run until the store's hub closes: a `default` ServiceAccount in every live namespace."""
    namespaces = objects.namespaces
    assert namespaces is not None
    store = objects.store
    ns_sub = store.hub.subscribe(namespaces.key)
    sa_sub = store.hub.subscribe(SERVICEACCOUNT.key)

    def on_namespace(ev: WatchEvent) -> None:
        if ev.type == "ADDED":
            ensure_default(objects, ev.obj["metadata"]["name"])

    def on_service_account(ev: WatchEvent) -> None:
        if ev.type == "DELETED" and ev.obj["metadata"]["name"] == "default":
            ensure_default(objects, ev.namespace)

    try:
        for nso in store.items(namespaces.key):
            ensure_default(objects, nso["metadata"]["name"])
        await asyncio.gather(_follow(ns_sub, on_namespace), _follow(sa_sub, on_service_account))
    finally:
        store.hub.unsubscribe(ns_sub)
        store.hub.unsubscribe(sa_sub)
