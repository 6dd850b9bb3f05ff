"""Upload tokens as CDI's: PS256, issuer cdi-apiserver, five minutes, 10 s leeway, claims for one PVC."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import jwt
import pytest

from cdi.uploadtoken import ALGORITHM, Signer, TokenError, Validator, ensure_key, public_pem


def test_token_round_trip_and_claims(tmp_path: Path) -> None:
    key = ensure_key(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert ensure_key(tmp_path / "k").private_numbers() == key.private_numbers()  # reused, not replaced
    token = Signer(key).upload_token("ns", "disk")
    assert jwt.get_unverified_header(token)["alg"] == ALGORITHM == "PS256"
    data = Validator(public_pem(key)).validate(token)
    assert (data.operation, data.name, data.namespace) == ("Upload", "disk", "ns")
    assert data.resource == {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}


def test_expiry_with_ten_seconds_of_leeway(tmp_path: Path) -> None:
    key = ensure_key(tmp_path / "k")
    validator = Validator(public_pem(key))
    now = datetime.datetime.now(datetime.UTC)
    validator.validate(Signer(key).upload_token("ns", "d", now=now - datetime.timedelta(minutes=5, seconds=5)))
    with pytest.raises(TokenError):
        validator.validate(Signer(key).upload_token("ns", "d", now=now - datetime.timedelta(minutes=5, seconds=15)))


def test_other_key_tampering_and_garbage_are_refused(tmp_path: Path) -> None:
    key, other = ensure_key(tmp_path / "k"), ensure_key(tmp_path / "o")
    validator = Validator(public_pem(key))
    with pytest.raises(TokenError):
        validator.validate(Signer(other).upload_token("ns", "d"))
    head, body, sig = Signer(key).upload_token("ns", "d").split(".")
    secret = "a-shared-secret-of-at-least-32-bytes"
    forged = jwt.encode({"name": "other", "iss": "cdi-apiserver"}, secret, algorithm="HS256").split(".")[1]
    with pytest.raises(TokenError):
        validator.validate(f"{head}.{forged}.{sig}")
    with pytest.raises(TokenError):
        validator.validate("not-a-token")
    with pytest.raises(TokenError):  # "none" and HMAC with the public key are not accepted
        validator.validate(jwt.encode({"iss": "cdi-apiserver", "exp": 2**40}, None, algorithm="none"))
