"""Fixed binary records declared once, by field name, and read and written from that.

A `Layout` is an ordered list of fields in one byte order, starting at byte
`base` of the sector, slot or header that holds it.  A field is either a
`(name, struct code)` pair or a `Field` whose specification name (`BPB_BytsPerSec`)
differs from the attribute that holds it (`bytes_per_sector`).  The same
declaration gives the record's size, each field's byte offset (for rewriting
one field in place, and for the docs and tests), `unpack` to a dict and `pack`
from a mapping, keywords or an object's attributes, so a structure's field
names and widths appear in exactly one place and a writer and its reader
cannot disagree on an offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from imagebuild.util.record import Record


class Field(Record):
    """One field: the specification's name, our attribute, its struct code (`H`, `11s`, ...)."""

    FIELDS = ("spec", "attr", "code")
    __slots__ = FIELDS

    spec: str
    attr: str
    code: str

    def __init__(self, spec: str, attr: str, code: str) -> None:
        self.spec = spec
        self.attr = attr
        self.code = code


class Layout:
    """One fixed-size record: `Layout("qcow2 header", ">", [("magic", "4s"), ...])`.

    Field codes are `struct` codes without a byte-order prefix ("I", "Q", "4s",
    "46s", ...); `order` is the `struct` byte-order character for all of them.
    `fields` are in on-disk order with no gaps (a gap is a field too, named
    after what the specification calls it); `base` is the record's byte offset
    within the sector or slot that holds it (0 for a record read on its own).
    """

    def __init__(self, name: str, order: str, fields: Iterable[tuple[str, str] | Field],
                 base: int = 0) -> None:
        self.name = name
        self.base = base
        self.fields = tuple(f if isinstance(f, Field) else Field(f[0], f[0], f[1]) for f in fields)
        self.names = tuple(f.attr for f in self.fields)
        self.struct = struct.Struct(order + "".join(f.code for f in self.fields))
        self.size = self.struct.size
        self._fields: dict[str, tuple[int, struct.Struct]] = {}
        offset = base
        for f in self.fields:
            one = struct.Struct(order + f.code)
            self._fields[f.attr] = (offset, one)
            offset += one.size

    @property
    def end(self) -> int:
        """The offset after the record (`base + size`)."""
        return self.base + self.size

    def offset(self, field_name: str) -> int:
        """Byte offset of attribute `field_name` from `base`'s origin (KeyError if unknown)."""
        return self._fields[field_name][0]

    def offsets(self) -> Mapping[str, int]:
        """{specification name: byte offset} of every field (offsets count from `base`'s origin)."""
        return {f.spec: self._fields[f.attr][0] for f in self.fields}

    def field(self, field_name: str) -> struct.Struct:
        """The `struct.Struct` of one field alone (for rewriting it in place)."""
        return self._fields[field_name][1]

    def pack_field(self, field_name: str, value: Any) -> bytes:
        """One field's bytes, to be written at `offset(field_name)`."""
        return self._fields[field_name][1].pack(value)

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """The record at `offset + base` of `data` as {attribute: value}.

        Raises `struct.error` when `data` holds fewer than `size` bytes there;
        callers check lengths first and raise their own format errors.
        """
        values = self.struct.unpack_from(data, offset + self.base)
        return dict(zip(self.names, values, strict=True))

    def _values(self, source: object, fields: Mapping[str, Any]) -> list[Any]:
        if isinstance(source, Mapping) or source is None:
            merged = {**(source or {}), **fields}
            return [merged[n] for n in self.names]
        return [fields[n] if n in fields else getattr(source, n) for n in self.names]

    def pack(self, source: object = None, **fields: Any) -> bytes:
        """The record's bytes from a mapping or an object's attributes, and/or keywords.

        Every field is required (KeyError or AttributeError when one is missing);
        struct.error for a value out of range.
        """
        return self.struct.pack(*self._values(source, fields))

    def pack_into(self, buffer: bytearray, source: object = None, **fields: Any) -> None:
        """Write the record into `buffer` at `base` (values as for `pack`)."""
        self.struct.pack_into(buffer, self.base, *self._values(source, fields))
