from __future__ import annotations

import pytest

from cdi.units import format_size, parse_size


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
