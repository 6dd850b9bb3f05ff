"""Clone tokens: the admission's signed decision that a user may clone one PVC into one DataVolume.

As CDI's webhook does, once the clone authorization passes the API server puts a JWT on the DataVolume
(annotation ``cdi.kubevirt.io/storage.clone.token``), signed with the upload-token key (PS256, issuer
``cdi-apiserver``, five minutes), with ``operation`` Clone, the source PVC's ``name`` and ``namespace``,
``resource`` persistentvolumeclaims and ``params`` naming the target (``targetNamespace``,
``targetName``). The controller clones only with a valid token for exactly that source and target, so
what the admission decided travels with the DataVolume and a restarted controller grants nothing new.
The controller checks the expiry against the moment it acts, or, once the target claim exists, against
the claim's creation (a time the API server sets, which no user can forge). Low level: the API server
issues, the controller verifies, and neither imports the other.
"""

from __future__ import annotations

import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from cdi.uploadtoken import ALGORITHM, ISSUER, LEEWAY, LIFETIME, PVC_RESOURCE, Signer, public_key_pem

ANN_CLONE_TOKEN = "cdi.kubevirt.io/storage.clone.token"
OPERATION_CLONE = "Clone"


def issue(signer: Signer, source_ns: str, source_name: str, target_ns: str, target_name: str, *,
          now: datetime.datetime | None = None) -> str:
    t = now or datetime.datetime.now(datetime.UTC)
    claims: dict[str, Any] = {
        "iss": ISSUER, "iat": t, "nbf": t, "exp": t + LIFETIME,
        "operation": OPERATION_CLONE, "name": source_name, "namespace": source_ns, "resource": PVC_RESOURCE,
        "params": {"targetNamespace": target_ns, "targetName": target_name},
    }
    return jwt.encode(claims, signer.key, algorithm=ALGORITHM)


class TokenCheck:
    """Verifies clone tokens with the public half of the signing key."""

    def __init__(self, key_pem: bytes) -> None:
        """`key_pem`: the public key, or the private one (a chart's Secret holds only that)."""
        self.public_key = serialization.load_pem_public_key(public_key_pem(key_pem))

    def check(self, token: str | None, source_ns: str, source_name: str, target_ns: str, target_name: str, *,
              at: datetime.datetime | None = None) -> str | None:
        """Why the token does not allow this clone (at ``at``, default now), or None when it does."""
        if not token:
            return "clone token missing"
        try:
            claims = jwt.decode(token, self.public_key, algorithms=[ALGORITHM],  # type: ignore[arg-type]
                                issuer=ISSUER, options={"require": ["exp", "iss", "iat"], "verify_exp": False})
        except jwt.PyJWTError as e:
            return f"invalid clone token: {e}"
        when = (at or datetime.datetime.now(datetime.UTC)).timestamp()
        if not (float(claims["iat"]) - LEEWAY.total_seconds() <= when <= float(claims["exp"]) + LEEWAY.total_seconds()):
            return "clone token expired"
        params = claims.get("params") if isinstance(claims.get("params"), dict) else {}
        wanted = (OPERATION_CLONE, source_ns, source_name, PVC_RESOURCE, target_ns, target_name)
        got = (claims.get("operation"), claims.get("namespace"), claims.get("name"), claims.get("resource"),
               (params or {}).get("targetNamespace"), (params or {}).get("targetName"))
        if got != wanted:
            return "clone token does not match the source and target"
        return None
