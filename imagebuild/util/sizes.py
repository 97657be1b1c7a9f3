"""Size arguments as qemu-img reads them: bytes when bare, K/M/G/T/P/E in powers of 1024."""

from __future__ import annotations

import re

from imagebuild.errors import ImageBuildError

_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
             "P": 1 << 50, "E": 1 << 60}
_SIZE = r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]?)\s*$"  # compiled on first use (re caches it)


class SizeError(ImageBuildError):
    """A size argument that is not a number with an optional K/M/G/T/P/E suffix."""


def parse_size(text: str, what: str = "size") -> int:
    """'64K' -> 65536, '1.5G' -> 1610612736, '4096' -> 4096."""
    match = re.match(_SIZE, text)
    if not match or match.group(2).upper() not in _SUFFIXES:
        raise SizeError(
            f"{what} {text!r}: expected a number of bytes with an optional suffix K, M, G, T, P, E"
        )
    number, suffix = match.groups()
    scale = _SUFFIXES[suffix.upper()]
    if "." in number:
        whole, frac = number.split(".")
        value = int(whole) * scale + (int(frac) * scale) // (10 ** len(frac))
    else:
        value = int(number) * scale
    return int(value)


def format_size(n: int) -> str:
    """Human size as qemu-img info prints it: '3.68 GiB', '192 KiB', '512 B'."""
    for unit, scale in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40),
                        ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return f"{text} {unit}"
    return f"{n} B"
