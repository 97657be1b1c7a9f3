"""The Plan 9 system-use field mk9660 -9 puts after each directory record's identifier.

Source: sys/src/cmd/disk/9660/write.c (Cputplan9) and cdrdwr.c (parsedir), read
by 9front's 9660srv.  Only records of named entries (not `.` or `..`) carry it:

    name_len name   (0 and no name when the identifier is the real name)
    uid_len uid  gid_len gid
    [a zero byte if the field so far is odd]
    mode (both-endian 32 bits: Plan 9 Dir.mode, DMDIR included)
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuild.fs.iso9660.voldesc import IsoFormatError, both32, read_both32

MAX_STRING = 255  # each length is one byte


@dataclass(frozen=True)
class Plan9Info:
    """`name` is None when the record's identifier is the file's real name."""

    name: bytes | None
    uid: bytes
    gid: bytes
    mode: int

    def pack(self) -> bytes:
        out = bytearray()
        for field in (self.name or b"", self.uid, self.gid):
            if len(field) > MAX_STRING:
                raise IsoFormatError(f"Plan 9 system use: {field[:40]!r}... longer than 255 bytes")
            out += bytes([len(field)]) + field
        if len(out) & 1:
            out += b"\0"
        return bytes(out) + both32(self.mode)

    @classmethod
    def unpack(cls, data: bytes, where: str) -> Plan9Info:
        fields: list[bytes] = []
        pos = 0
        for _ in range(3):
            if pos >= len(data) or pos + 1 + data[pos] > len(data):
                raise IsoFormatError(f"{where}: Plan 9 system use field is truncated")
            fields.append(bytes(data[pos + 1 : pos + 1 + data[pos]]))
            pos += 1 + data[pos]
        pos += pos & 1
        if pos + 8 > len(data):
            raise IsoFormatError(f"{where}: Plan 9 system use field has no mode")
        mode = read_both32(data[pos : pos + 8], f"{where} Plan 9 mode")
        return cls(name=fields[0] or None, uid=fields[1], gid=fields[2], mode=mode)


def plan9_size(name_len: int | None, uid_len: int, gid_len: int) -> int:
    """The bytes Cputplan9() writes (its dowrite=0 pass)."""
    length = 1 + (name_len or 0) + 1 + uid_len + 1 + gid_len
    return length + (length & 1) + 8


__all__ = ["MAX_STRING", "Plan9Info", "plan9_size"]
