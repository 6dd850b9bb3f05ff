"""Clone tokens: issued for one source and target, checked for signature, match and lifetime."""

from __future__ import annotations

import datetime

from cryptography.hazmat.primitives.asymmetric import rsa

from cdi.clonetoken import TokenCheck, issue
from cdi.uploadtoken import Signer, public_pem

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
T0 = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def test_a_token_allows_exactly_its_clone_while_it_lives() -> None:
    token = issue(Signer(KEY), "alice", "golden", "bobs", "copy", now=T0)
    check = TokenCheck(public_pem(KEY))
    assert check.check(token, "alice", "golden", "bobs", "copy", at=T0 + datetime.timedelta(minutes=4)) is None
    assert check.check(token, "alice", "golden", "bobs", "copy2", at=T0) == \
        "clone token does not match the source and target"
    assert check.check(token, "alice", "other", "bobs", "copy", at=T0) == \
        "clone token does not match the source and target"
    assert check.check(token, "alice", "golden", "bobs", "copy", at=T0 + datetime.timedelta(minutes=6)) == \
        "clone token expired"
    assert check.check(None, "alice", "golden", "bobs", "copy") == "clone token missing"


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = issue(Signer(OTHER), "alice", "golden", "bobs", "copy", now=T0)
    why = TokenCheck(public_pem(KEY)).check(token, "alice", "golden", "bobs", "copy", at=T0)
    assert why is not None and why.startswith("invalid clone token")
