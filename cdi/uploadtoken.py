"""Upload tokens: short-lived signed permissions to upload into one PVC, as CDI issues them.

CDI's API server signs a JWT with PS256 (RSA-PSS, SHA-256), issuer ``cdi-apiserver``, a lifetime of
five minutes, and the claims ``operation`` (``Upload``), ``name`` and ``namespace`` of the PVC and
``resource`` (``{"group": "", "version": "v1", "resource": "persistentvolumeclaims"}``). The upload
proxy checks the signature with the public key, allowing 10 seconds of clock skew.

The signing key is an RSA key kept in the data directory, readable by its owner only. Low level on
purpose: the API server issues tokens and the upload proxy checks them, and neither imports the other.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "cdi-apiserver"
ALGORITHM = "PS256"
LIFETIME = datetime.timedelta(minutes=5)
LEEWAY = datetime.timedelta(seconds=10)
OPERATION_UPLOAD = "Upload"
PVC_RESOURCE = {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}


class TokenError(Exception):
    """The token is malformed, badly signed or expired (the proxy answers 401)."""


@dataclass(frozen=True)
class TokenData:
    operation: str
    name: str
    namespace: str
    resource: dict[str, str]


def ensure_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """The signing key at ``path``, created (owner-only, 0600) when missing."""
    p = Path(path)
    if p.exists():
        os.chmod(p, 0o600)
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{p} does not hold an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(data: bytes) -> bytes:
    """The public key PEM of a PEM private key (as a Helm chart's Secret holds it) or of a public key.

    Raises ValueError when `data` is neither."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        serialization.load_pem_public_key(data)  # ValueError when it is not a key either
        return data
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Signer:
    """Issues upload tokens with the private key."""

    def __init__(self, key: rsa.RSAPrivateKey, *, lifetime: datetime.timedelta = LIFETIME) -> None:
        self.key = key
        self.lifetime = lifetime

    def upload_token(self, namespace: str, name: str, *, now: datetime.datetime | None = None) -> str:
        t = now or datetime.datetime.now(datetime.UTC)
        claims: dict[str, Any] = {
            "iss": ISSUER, "iat": t, "nbf": t, "exp": t + self.lifetime,
            "operation": OPERATION_UPLOAD, "name": name, "namespace": namespace, "resource": PVC_RESOURCE,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)


class Validator:
    """Checks upload tokens with the public key."""

    def __init__(self, public_key_pem: bytes) -> None:
        self.public_key = serialization.load_pem_public_key(public_key_pem)

    def validate(self, token: str) -> TokenData:
        try:
            claims = jwt.decode(token, self.public_key, algorithms=[ALGORITHM],  # type: ignore[arg-type]
                                issuer=ISSUER, leeway=LEEWAY, options={"require": ["exp", "iss"]})
        except jwt.PyJWTError as e:
            raise TokenError(str(e)) from e
        resource = claims.get("resource") if isinstance(claims.get("resource"), dict) else {}
        return TokenData(operation=str(claims.get("operation") or ""), name=str(claims.get("name") or ""),
                         namespace=str(claims.get("namespace") or ""),
                         resource={str(k): str(v) for k, v in (resource or {}).items()})
