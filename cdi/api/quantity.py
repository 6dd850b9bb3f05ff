"""Kubernetes resource quantities (`10Gi`, `500M`, `1.5e3`) parsed to numbers of bytes.

Follows k8s.io/apimachinery's resource.Quantity grammar: a signed decimal number followed by a
binary-SI suffix (Ki..Ei), a decimal-SI suffix (n, u, m, k, M..E) or a decimal exponent (e3).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_PATTERN = re.compile(r"^([+-]?[0-9]*\.?[0-9]+|[+-]?[0-9]+\.)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]?)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}

QUANTITY_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


class QuantityError(ValueError):
    """The text is not a valid Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity as an exact Decimal (bytes for storage); raise QuantityError if invalid."""
    if isinstance(value, bool):
        raise QuantityError(QUANTITY_ERROR)
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _PATTERN.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise QuantityError(QUANTITY_ERROR)
    number, suffix = m.group(1), m.group(2)
    try:
        base = Decimal(number)
    except InvalidOperation as e:
        raise QuantityError(QUANTITY_ERROR) from e
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return base * (Decimal(10) ** int(suffix[1:]))
    return base * _DECIMAL[suffix]


def quantity_bytes(value: str | int | float) -> int:
    """The quantity rounded up to a whole number of bytes."""
    q = parse_quantity(value)
    whole = int(q)
    return whole + 1 if q > whole else whole
