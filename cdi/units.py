"""Sizes: Kubernetes resource quantities (``10Gi``, ``500M``, ``1e9``, ``1500m``) and their display.

The one quantity grammar of the project, used by admission, the controllers, the node, the VM runtime
and ``cdi import --size`` alike. It is k8s.io/apimachinery's resource.Quantity grammar: a signed
decimal number followed by a binary-SI suffix (Ki..Ei), a decimal-SI suffix (n, u, m, k, M..E) or a
decimal exponent (e3, E-2), parsed to an exact Decimal.

The kubernetes Python package has a parser too, but it accepts what the API server refuses (``1K``,
``Infinity``, ``1_0``) and importing it loads the whole client (about 0.6 s), which the importer
cannot afford at start.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_PATTERN = re.compile(r"^([+-]?[0-9]*\.?[0-9]+|[+-]?[0-9]+\.)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]?)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
}
# Bounds the work of a hostile "1e999999999": no storage size comes near 10^60 bytes.
_MAX_EXPONENT = 60

QUANTITY_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


class QuantityError(ValueError):
    """The text is not a valid Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The quantity as an exact Decimal (bytes for storage); raise QuantityError if invalid."""
    if isinstance(value, bool):
        raise QuantityError(QUANTITY_ERROR)
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(QUANTITY_ERROR)
        return Decimal(str(value))
    m = _PATTERN.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise QuantityError(QUANTITY_ERROR)
    number, suffix = m.group(1), m.group(2)
    try:
        base = Decimal(number)
        if suffix in _BINARY:
            result = base * _BINARY[suffix]
        elif suffix[:1] in ("e", "E"):
            exponent = int(suffix[1:])
            if abs(exponent) > _MAX_EXPONENT:
                raise QuantityError(f"{value!r}: the exponent is out of range")
            result = base * (Decimal(10) ** exponent)
        else:
            result = base * _DECIMAL[suffix]
    except InvalidOperation as e:
        raise QuantityError(QUANTITY_ERROR) from e
    return result


def quantity_bytes(value: str | int | float) -> int:
    """The quantity rounded up to a whole number of bytes (as the API server rounds storage)."""
    q = parse_quantity(value)
    whole = int(q)
    return whole + 1 if q > whole else whole


def parse_size(text: str | int) -> int:
    """Bytes in a size given by a person or a manifest: a quantity (``10Gi``, ``1e9``) or plain bytes.

    Raises QuantityError (a ValueError) with a message saying what is accepted.
    """
    try:
        size = quantity_bytes(text)
    except QuantityError as e:
        raise QuantityError(f"invalid size {text!r}: use bytes or a quantity such as 10Gi, 500Mi, 2G or 1e9 "
                            f"({e})") from e
    if size < 0:
        raise QuantityError(f"invalid size {text!r}: a size cannot be negative")
    return size


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
