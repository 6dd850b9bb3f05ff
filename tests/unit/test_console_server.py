"""The web console server's small parts: one-time sign-in codes, the websocket token, close reasons."""

from __future__ import annotations

import base64

from cdi.console.server import TOKEN_PROTOCOL, SignIn, close_reason, token_from_protocols


def test_a_sign_in_code_gives_the_admin_token_once() -> None:
    sign_in = SignIn("admin-token")
    code = sign_in.new_code()
    assert sign_in.exchange("wrong") is None
    assert sign_in.exchange(code[:-1]) is None
    assert sign_in.exchange(code) == "admin-token"
    assert sign_in.exchange(code) is None, "a spent code must not work again"


def test_an_expired_sign_in_code_is_refused() -> None:
    sign_in = SignIn("admin-token", lifetime=-1)
    assert sign_in.exchange(sign_in.new_code()) is None


def test_each_link_has_its_own_code() -> None:
    sign_in = SignIn("t")
    a, b = sign_in.new_code(), sign_in.new_code()
    assert a != b and len(a) >= 40
    assert sign_in.exchange(b) == "t"
    assert sign_in.exchange(a) == "t"


def test_the_token_rides_in_the_websocket_subprotocol() -> None:
    token = "abc.def-ghi_jkl+/="
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    assert token_from_protocols(["plain.kubevirt.io", TOKEN_PROTOCOL + encoded]) == token
    assert token_from_protocols(["plain.kubevirt.io"]) is None
    assert token_from_protocols([TOKEN_PROTOCOL + "!!!"]) is None


def test_close_reasons_keep_who_may_not_do_what_within_123_bytes() -> None:
    message = ('virtualmachineinstances.subresources.kubevirt.io "vm" is forbidden: User "bob" cannot get resource '
               '"virtualmachineinstances/console" in API group "subresources.kubevirt.io" in the namespace "default"')
    reason = close_reason(message)
    assert len(reason.encode()) <= 123
    assert 'User "bob" cannot get resource "virtualmachineinstances/console"' in reason
    assert close_reason("short") == "short"
    assert len(close_reason("é" * 200).encode()) <= 123
