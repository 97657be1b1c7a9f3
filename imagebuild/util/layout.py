"""Fixed binary records declared once, by field name, and read and written from that.

A `Layout` is an ordered list of (field name, `struct` format code) pairs in
one byte order.  The same declaration gives the record's size, each field's
byte offset (for rewriting one field in place), `unpack` to a dict and `pack`
from keyword values, so a structure's field names and widths appear in exactly
one place.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any


class Layout:
    """One fixed-size record: `Layout("qcow2 header", ">", [("magic", "4s"), ...])`.

    Field codes are `struct` codes without a byte-order prefix ("I", "Q", "4s",
    "46s", ...); `order` is the `struct` byte-order character for all of them.
    """

    def __init__(self, name: str, order: str, fields: list[tuple[str, str]]) -> None:
        self.name = name
        self.names = tuple(n for n, _ in fields)
        self.struct = struct.Struct(order + "".join(code for _, code in fields))
        self.size = self.struct.size
        self._fields: dict[str, tuple[int, struct.Struct]] = {}
        offset = 0
        for field_name, code in fields:
            one = struct.Struct(order + code)
            self._fields[field_name] = (offset, one)
            offset += one.size

    def offset(self, field_name: str) -> int:
        """Byte offset of `field_name` from the start of the record (KeyError if unknown)."""
        return self._fields[field_name][0]

    def field(self, field_name: str) -> struct.Struct:
        """The `struct.Struct` of one field alone (for rewriting it in place)."""
        return self._fields[field_name][1]

    def pack_field(self, field_name: str, value: Any) -> bytes:
        """One field's bytes, to be written at `offset(field_name)`."""
        return self._fields[field_name][1].pack(value)

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """The record at `offset` of `data` as {field name: value}.

        Raises `struct.error` when `data` holds fewer than `size` bytes there;
        callers check lengths first and raise their own format errors.
        """
        return dict(zip(self.names, self.struct.unpack_from(data, offset), strict=True))

    def pack(self, values: Mapping[str, Any] | None = None, **fields: Any) -> bytes:
        """The record's bytes from a mapping and/or keywords; every field is required."""
        merged = {**(values or {}), **fields}
        return self.struct.pack(*(merged[n] for n in self.names))
