"""Strict parsing of byte sizes and durations from config values.

``parse_bytes("4 GiB")`` -> 4294967296. Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB)
units, an optional ``B``; a bare integer is bytes. Anything else ("4 GBB", "-1GiB", "lots") raises
``ValueError`` naming what was expected, so config errors read well.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: int | float | str, field: str = "size") -> int:
    """Bytes from an int or a string such as "64KiB", "8 GiB", "1.5GB"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a byte size such as 8GiB or 65536, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{field}: expected a non-negative byte size, got {value!r}")
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{field}: expected a byte size such as 8GiB, 512MiB, 64KiB or an integer, got {value!r}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int | float) -> str:
    """Human-readable binary size: 8589934592 -> '8 GiB', 1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} TiB"  # pragma: no cover
