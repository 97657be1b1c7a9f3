"""mk9660's name rules: 8.3 conformance, Joliet names, the conform map and the sort orders.

Sources: sys/src/cmd/disk/9660/ichar.c (isbadiso9660, isocmp), jchar.c
(isbadjoliet, jolietcmp), conform.c (conform, wrconform), direc.c
(checknames, convertnames, dsort) and libc's port/qsort.c, whose order for
equal keys we reproduce because dsort() hands it ties (`x` and `x.` both
compare as base X, no extension).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

CONFORM_MAP_NAME = "_conform.map"
JOLIET_MAX_RUNES = 64
_ISO_GOOD = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_")
_JOLIET_FROGS = frozenset("*/:;?\\")


def _iso_good(text: str) -> bool:
    return all(c in _ISO_GOOD for c in text)


def is_bad_iso9660(name: str) -> bool:
    """isbadiso9660(): not lower-case 8.3 of digits, letters and `_` (or shaped like D123456)."""
    if "." in name:
        base, ext = name.split(".", 1)
        return len(base) > 8 or not _iso_good(base) or len(ext) > 3 or not _iso_good(ext)
    if len(name) > 8 or not _iso_good(name):
        return True
    return len(name) == 7 and name[0] in "DF" and name[1:].isdigit()


def is_bad_joliet(name: str) -> bool:
    """isbadjoliet(): more than 64 runes, or one of * / : ; ? \\."""
    return len(name) > JOLIET_MAX_RUNES or any(c in _JOLIET_FROGS for c in name)


def _strcmp(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


def iso_compare(a: str, b: str) -> int:
    """isocmp(): base names, then extensions, split at the first dot; strcmp each.

    `a` and `b` are conformed (upper-case) names; isocmp copies them into
    32-byte buffers, so only their first 31 bytes count.
    """
    ab, bb = a.encode("utf-8")[:31], b.encode("utf-8")[:31]
    a_base, _, a_ext = ab.partition(b".")
    b_base, _, b_ext = bb.partition(b".")
    return _strcmp(a_base, b_base) or _strcmp(a_ext, b_ext)


def joliet_compare(a: str, b: str) -> int:
    """jolietcmp(): as isocmp, on runes."""
    a_base, _, a_ext = a.partition(".")
    b_base, _, b_ext = b.partition(".")
    return _runecmp(a_base, b_base) or _runecmp(a_ext, b_ext)


def _runecmp(a: str, b: str) -> int:
    return (a > b) - (a < b)  # Python compares str by code point, as runecmp does


def plan9_qsort(items: list[T], compare: Callable[[T, T], int]) -> None:
    """Sort `items` in place exactly as 9front's libc qsort() (port/qsort.c) orders them.

    A quicksort with a median-of-three pivot at 1/6, 1/2, 5/6 for more than
    ten elements, the middle element otherwise; equal keys end up where its
    partitioning leaves them, so the result matches mk9660's for ties too.
    """

    def pivot(lo: int, n: int) -> int:
        j = n // 6
        pi = lo + j
        pj = pi + 2 * j
        pk = pj + 2 * j
        if compare(items[pi], items[pj]) < 0:
            if compare(items[pi], items[pk]) < 0:
                return pj if compare(items[pj], items[pk]) < 0 else pk
            return pi
        if compare(items[pj], items[pk]) < 0:
            return pi if compare(items[pi], items[pk]) < 0 else pk
        return pj

    def sort(lo: int, n: int) -> None:
        while n > 1:
            p = pivot(lo, n) if n > 10 else lo + (n >> 1)
            items[lo], items[p] = items[p], items[lo]
            i = lo
            end = lo + n
            j = end
            while True:
                i += 1
                while i < end and compare(items[i], items[lo]) < 0:
                    i += 1
                j -= 1
                while j > lo and compare(items[j], items[lo]) > 0:
                    j -= 1
                if j < i:
                    break
                items[i], items[j] = items[j], items[i]
            items[lo], items[j] = items[j], items[lo]
            left = j - lo
            right = n - left - 1
            if left < right:
                sort(lo, left)
                lo += left + 1
                n = right
            else:
                sort(lo + left + 1, right)
                n = left

    sort(0, len(items))


class ConformMap:
    """conform(): each distinct bad name gets `D%.6d` (first met as a directory) or `F%.6d`,
    numbered in the order names are first met; the same name always maps the same way."""

    def __init__(self) -> None:
        self.good_of: dict[str, str] = {}

    def conform(self, name: str, is_dir: bool) -> str:
        good = self.good_of.get(name)
        if good is None:
            good = f"{'D' if is_dir else 'F'}{len(self.good_of):06d}"
            self.good_of[name] = good
        return good

    def __len__(self) -> int:
        return len(self.good_of)

    def text(self) -> bytes:
        """wrconform(): `good bad\\n` lines sorted by the good name."""
        pairs = sorted(self.good_of.items(), key=lambda kv: kv[1].encode())
        return b"".join(f"{good} {bad}\n".encode() for bad, good in pairs)


def sorted_names(names: Sequence[str]) -> list[str]:
    """adddirec()'s order: strcmp on the UTF-8 bytes."""
    return sorted(names, key=lambda n: n.encode("utf-8"))
