"""ISO 9660 path tables (ECMA-119 9.4) as mk9660's writepathtable() writes them.

Source: sys/src/cmd/disk/9660/path.c.  One record per directory, breadth
first from the root (number 1), each naming its parent by number:

    name_len xattr_len extent(4) parent(2) name [pad to even]

The L table holds little-endian numbers, the M table big-endian.  Records
are not padded to block boundaries (path.c says so, deliberately).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imagebuild.fs.iso9660.voldesc import IsoFormatError


@dataclass(frozen=True)
class PathTableRecord:
    """ECMA-119 9.4 path table record: directory `identifier`, `extent` (logical block number)
    and 1-based `parent` record number; packed 8 + len + pad bytes (9front 9660 path.c).
    """

    identifier: bytes  # b"\0" for the root
    extent: int
    parent: int  # 1-based number of the parent's record; the root names itself

    def pack(self, big_endian: bool) -> bytes:
        order = ">" if big_endian else "<"
        out = struct.pack(f"{order}BBIH", len(self.identifier), 0, self.extent, self.parent)
        out += self.identifier
        if len(self.identifier) & 1:
            out += b"\0"
        return out


def pack_table(records: list[PathTableRecord], big_endian: bool) -> bytes:
    """A whole L (little-endian) or M (`big_endian`) path table: the packed records in order
    (ECMA-119 9.4, 9front 9660 path.c writepathtable()); its length in bytes is len(result).
    """
    return b"".join(r.pack(big_endian) for r in records)


def unpack_table(data: bytes, big_endian: bool, where: str) -> list[PathTableRecord]:
    """The records of an L or M (`big_endian`) path table in `data` (ECMA-119 9.4).

    Raises IsoFormatError naming `where` on a record with no name or one cut short.
    """
    order = ">" if big_endian else "<"
    out: list[PathTableRecord] = []
    pos = 0
    while pos + 8 <= len(data):
        name_len, xattr, extent, parent = struct.unpack(f"{order}BBIH", data[pos : pos + 8])
        if name_len == 0:
            raise IsoFormatError(f"{where}: path table record {len(out) + 1} has no name")
        identifier = data[pos + 8 : pos + 8 + name_len]
        if len(identifier) != name_len:
            raise IsoFormatError(f"{where}: path table record {len(out) + 1} is truncated")
        out.append(PathTableRecord(bytes(identifier), extent, parent))
        pos += 8 + name_len + (name_len & 1) + xattr
    return out
