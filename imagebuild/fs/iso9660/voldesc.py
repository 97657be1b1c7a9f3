"""ISO 9660 volume descriptors (ECMA-119 8.4, 8.5, 8.3) as mk9660 writes them.

Sources: sys/src/cmd/disk/9660/iso9660.h (struct Cvoldesc), ichar.c
(Cputisopvd), jchar.c (Cputjolietsvd), write.c (Cputendvd), cdrdwr.c
(Cputdate1, setroot, setvolsize, setpathtable).  A descriptor is one
2048-byte block; numbers are "both-endian" (little-endian then big-endian
copies) as ECMA-119 7.2.3 / 7.3.3 require.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from imagebuild.errors import ImageBuildError

BLOCK_SIZE = 2048  # iso9660.h Blocksize: the logical block (and sector) size
SYSTEM_AREA_BLOCKS = 16  # blocks 0-15: the system area mk9660 leaves zero
STANDARD_ID = b"CD001"

VD_BOOT = 0
VD_PRIMARY = 1
VD_SUPPLEMENTARY = 2
VD_TERMINATOR = 255

JOLIET_UCS2_LEVEL3 = b"\x25\x2f\x45"
JOLIET_ESCAPES = (b"\x25\x2f\x40", b"\x25\x2f\x43", JOLIET_UCS2_LEVEL3)
JOLIET_UCS2_LEVEL2 = b"\x25\x2f\x43"  # what Cputjolietsvd writes

ROOT_RECORD_OFFSET = 156  # offsetof(Cvoldesc, rootdir)
ROOT_RECORD_SIZE = 34


class IsoFormatError(ImageBuildError):
    """An ISO 9660 structure is malformed (reader) or cannot be written (writer)."""


def both16(value: int) -> bytes:
    """`value` (masked to 16 bits) as ECMA-119 7.2.3 both-byte-order: 2 bytes LE then 2 bytes BE."""
    return struct.pack("<H", value & 0xFFFF) + struct.pack(">H", value & 0xFFFF)


def both32(value: int) -> bytes:
    """`value` (masked to 32 bits) as ECMA-119 7.3.3 both-byte-order: 4 bytes LE then 4 bytes BE."""
    return struct.pack("<I", value & 0xFFFFFFFF) + struct.pack(">I", value & 0xFFFFFFFF)


def read_both32(data: bytes, what: str) -> int:
    """The value of an ECMA-119 7.3.3 field in the first 8 bytes of `data`.

    Raises IsoFormatError naming `what` when the LE and BE copies differ.
    """
    little, big = struct.unpack("<I", data[:4])[0], struct.unpack(">I", data[4:8])[0]
    if little != big:
        raise IsoFormatError(f"{what}: little-endian {little} and big-endian {big} copies differ")
    return int(little)


def read_both16(data: bytes, what: str) -> int:
    """The value of an ECMA-119 7.2.3 field in the first 4 bytes of `data`.

    Raises IsoFormatError naming `what` when the LE and BE copies differ.
    """
    little, big = struct.unpack("<H", data[:2])[0], struct.unpack(">H", data[2:4])[0]
    if little != big:
        raise IsoFormatError(f"{what}: little-endian {little} and big-endian {big} copies differ")
    return int(little)


def dec_datetime(unix: int) -> bytes:
    """Cputdate1(): 17 bytes `YYYYMMDDHHMMSShh` + GMT offset 0; 0 gives sixteen '0's.

    mk9660 prints the seconds as `%.4d` of sec*100, which is seconds and
    hundredths (always 00) side by side.
    """
    if unix == 0:
        return b"0" * 16 + b"\0"
    tm = time.gmtime(unix)
    text = (f"{tm.tm_year:04d}{tm.tm_mon:02d}{tm.tm_mday:02d}{tm.tm_hour:02d}"
            f"{tm.tm_min:02d}{tm.tm_sec * 100:04d}")
    return text.encode("ascii")[:16].ljust(16, b" ") + b"\0"


def parse_dec_datetime(data: bytes) -> int | None:
    """A 17-byte volume date as Unix time (UTC, offset applied); None when unset."""
    digits = data[:16]
    if digits in (b"0" * 16, bytes(16)) or not digits.isdigit():
        return None
    offset = int(struct.unpack("b", data[16:17])[0]) * 15 * 60
    try:
        tm = time.strptime(digits[:14].decode(), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    import calendar

    return int(calendar.timegm(tm)) - offset


def a_string(text: str, size: int) -> bytes:
    """mkisostring() then Cputs(): a-z upper-cased, bytes kept, cut or space-padded to `size`."""
    out = bytes(c - 32 if 0x61 <= c <= 0x7A else c for c in text.encode("utf-8"))
    return out[:size].ljust(size, b" ")


def ucs2_string(text: str, size: int) -> bytes:
    """Cputrscvt(): big-endian 16-bit runes, space runes up to size/2, a 0 byte if size is odd."""
    runes = [ord(c) & 0xFFFF for c in text][: size // 2]
    runes += [0x20] * (size // 2 - len(runes))
    out = b"".join(struct.pack(">H", r) for r in runes)
    return out + (b"\0" if size & 1 else b"")


@dataclass
class VolumeDescriptor:
    """A primary (type 1) or supplementary (type 2) volume descriptor (struct Cvoldesc).

    Text fields are the raw on-disk bytes; `root_record` is the 34-byte
    directory record of the root (see dirrec.DirectoryRecord).
    """

    type: int
    system_id: bytes
    volume_id: bytes
    escape_sequences: bytes  # "charset": 32 bytes, Joliet's 25 2F 4x
    volume_space_size: int
    path_table_size: int
    l_path_table: int
    m_path_table: int
    root_record: bytes
    volume_set_id: bytes
    publisher_id: bytes
    preparer_id: bytes
    application_id: bytes
    copyright_file: bytes
    abstract_file: bytes
    bibliographic_file: bytes
    creation: bytes
    modification: bytes
    expiration: bytes
    effective: bytes
    flags: int = 0
    file_structure_version: int = 1
    volume_set_size: int = 1
    volume_sequence_number: int = 1
    logical_block_size: int = BLOCK_SIZE

    def pack(self) -> bytes:
        out = bytearray()
        out += bytes([self.type]) + STANDARD_ID + b"\x01" + bytes([self.flags])
        out += self.system_id.ljust(32, b" ")[:32]
        out += self.volume_id.ljust(32, b" ")[:32]
        out += bytes(8)
        out += both32(self.volume_space_size)
        out += self.escape_sequences.ljust(32, b"\0")[:32]
        out += both16(self.volume_set_size)
        out += both16(self.volume_sequence_number)
        out += both16(self.logical_block_size)
        out += both32(self.path_table_size)
        out += struct.pack("<I", self.l_path_table) + struct.pack("<I", 0)
        out += struct.pack(">I", self.m_path_table) + struct.pack(">I", 0)
        assert len(out) == ROOT_RECORD_OFFSET
        out += self.root_record
        for field, size in (
            (self.volume_set_id, 128), (self.publisher_id, 128), (self.preparer_id, 128),
            (self.application_id, 128), (self.copyright_file, 37), (self.abstract_file, 37),
            (self.bibliographic_file, 37), (self.creation, 17), (self.modification, 17),
            (self.expiration, 17), (self.effective, 17),
        ):
            if len(field) != size:
                raise IsoFormatError(f"volume descriptor field of {len(field)} bytes, not {size}")
            out += field
        out += bytes([self.file_structure_version])
        return bytes(out).ljust(BLOCK_SIZE, b"\0")

    @classmethod
    def unpack(cls, block: bytes, where: str) -> VolumeDescriptor:
        if len(block) < BLOCK_SIZE or block[1:6] != STANDARD_ID:
            raise IsoFormatError(f"{where}: not a volume descriptor (no CD001)")
        if block[0] not in (VD_PRIMARY, VD_SUPPLEMENTARY):
            raise IsoFormatError(f"{where}: descriptor type {block[0]} has no volume fields")
        rest = block[ROOT_RECORD_OFFSET + ROOT_RECORD_SIZE :]
        fields = []
        pos = 0
        for size in (128, 128, 128, 128, 37, 37, 37, 17, 17, 17, 17):
            fields.append(rest[pos : pos + size])
            pos += size
        return cls(
            type=block[0],
            flags=block[7],
            system_id=block[8:40],
            volume_id=block[40:72],
            volume_space_size=read_both32(block[80:88], f"{where} volume space size"),
            escape_sequences=block[88:120],
            volume_set_size=read_both16(block[120:124], f"{where} volume set size"),
            volume_sequence_number=read_both16(block[124:128], f"{where} volume sequence"),
            logical_block_size=read_both16(block[128:132], f"{where} logical block size"),
            path_table_size=read_both32(block[132:140], f"{where} path table size"),
            l_path_table=struct.unpack("<I", block[140:144])[0],
            m_path_table=struct.unpack(">I", block[148:152])[0],
            root_record=block[ROOT_RECORD_OFFSET : ROOT_RECORD_OFFSET + ROOT_RECORD_SIZE],
            volume_set_id=fields[0],
            publisher_id=fields[1],
            preparer_id=fields[2],
            application_id=fields[3],
            copyright_file=fields[4],
            abstract_file=fields[5],
            bibliographic_file=fields[6],
            creation=fields[7],
            modification=fields[8],
            expiration=fields[9],
            effective=fields[10],
            file_structure_version=rest[pos],
        )

    @property
    def is_joliet(self) -> bool:
        return self.type == VD_SUPPLEMENTARY and self.escape_sequences[:3] in JOLIET_ESCAPES


def terminator() -> bytes:
    """Cputendvd(): type 255, CD001, version 1, then zeros."""
    return (bytes([VD_TERMINATOR]) + STANDARD_ID + b"\x01").ljust(BLOCK_SIZE, b"\0")
