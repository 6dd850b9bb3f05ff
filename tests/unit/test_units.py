from __future__ import annotations

import pytest

from cdi.units import QuantityError, format_size, parse_quantity, parse_size, quantity_bytes


@pytest.mark.parametrize("text, expected", [
    ("10Gi", 10 << 30), ("500M", 500_000_000), ("1.5Gi", 3 << 29), ("4096", 4096), ("1k", 1000), ("2Ti", 2 << 40),
    (7, 7),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10Qi", "-5", "1.2.3G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 << 29) == "1.5 GiB"


@pytest.mark.parametrize("text, expected", [
    ("1e9", 10**9), ("1E3", 1000), ("2.5e3", 2500), ("1500m", 2), ("500Mi", 500 << 20), ("+1Ki", 1024),
    ("1.", 1), (".5Ki", 512), (10**12, 10**12),
])
def test_one_grammar_for_every_size(text: str | int, expected: int) -> None:
    # The same text gives the same bytes to admission, the controller, the node and `cdi import`.
    assert parse_size(text) == expected
    assert quantity_bytes(text) == expected


@pytest.mark.parametrize("text", ["1K", "1kb", "Infinity", "nan", "1_0", "1e", "1e99999999", "0x10", "1 Gi", "Gi"])
def test_what_kubernetes_refuses_is_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)
