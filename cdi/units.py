"""Sizes as people and Kubernetes write them: ``10Gi``, ``500M``, ``1.5Gi``, plain bytes."""

from __future__ import annotations

import re

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")


def parse_size(text: str | int) -> int:
    """Return the number of bytes in a Kubernetes quantity such as ``10Gi`` or ``500M``.

    Raises ValueError with a message saying what is accepted.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return text
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use bytes or a quantity such as 10Gi, 500Mi or 2G")
    number, suffix = m.groups()
    factor = _BINARY.get(suffix) or _DECIMAL.get(suffix)
    if factor is None:
        raise ValueError(f"invalid size suffix {suffix!r} in {text!r}: use Ki, Mi, Gi, Ti or k, M, G, T")
    value = float(number) * factor if "." in number else int(number) * factor
    return int(value)


def format_quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity: ``1Gi``, ``1090Mi``, or plain bytes when not a whole KiB."""
    for suffix, factor in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def format_size(n: int | float) -> str:
    """Human-readable binary size: ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
