"""On-disk records as tables of fields: each FAT structure is declared once, as a `Record`.

A Record lists its fields in on-disk order with the FAT specification's name
(`BPB_BytsPerSec`, `DIR_FstClusLO`, `LDIR_Chksum`), the attribute that holds
it on our dataclass, and its little-endian struct code.  pack() and unpack()
both walk that one table, so the writer and the reader cannot disagree on
an offset; `offsets()` prints the layout for the docs and the tests.

Reference: Microsoft, "FAT: General Overview of On-Disk Format" (2000),
sections 3 (BPB), 5 (FSInfo), 6 (directory entry), 7 (long-name slots).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One field: the spec's name, our attribute, its struct code (`H`, `I`, `11s`, ...)."""

    spec: str
    attr: str
    code: str


class Record:
    """A fixed-size little-endian record starting at `offset` of its sector or slot.

    `fields` are in on-disk order with no gaps (a gap is a field too, named
    after what the spec calls it).
    """

    def __init__(self, offset: int, *fields: Field) -> None:
        self.offset = offset
        self.fields = fields
        self.struct = struct.Struct("<" + "".join(f.code for f in fields))

    @property
    def size(self) -> int:
        """Bytes."""
        return self.struct.size

    @property
    def end(self) -> int:
        """The offset after the record."""
        return self.offset + self.struct.size

    def pack(self, obj: Any) -> bytes:
        """The record's bytes from `obj`'s attributes (struct.error for a value out of range)."""
        return self.struct.pack(*(getattr(obj, f.attr) for f in self.fields))

    def pack_into(self, buffer: bytearray, obj: Any) -> None:
        """Write the record into `buffer` at its offset."""
        self.struct.pack_into(buffer, self.offset, *(getattr(obj, f.attr) for f in self.fields))

    def unpack(self, data: bytes | bytearray | memoryview, base: int = 0) -> dict[str, Any]:
        """{attribute: value} read at `base + offset` (struct.error if `data` is short)."""
        values = self.struct.unpack_from(data, base + self.offset)
        return {f.attr: v for f, v in zip(self.fields, values, strict=True)}

    def offsets(self) -> Mapping[str, int]:
        """{spec name: byte offset} of every field."""
        found: dict[str, int] = {}
        at = self.offset
        for f in self.fields:
            found[f.spec] = at
            at += struct.calcsize("<" + f.code)
        return found
