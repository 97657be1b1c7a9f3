"""El Torito boot record and boot catalog (El Torito 1.0, 2.0 - 2.4) as mk9660 writes them.

Source: sys/src/cmd/disk/9660/boot.c (Cputbootvol, Cputbootcat,
Caddbootentry, Cupdatebootcat).  mk9660 -B FILE -E FILE writes:

    block 17: boot record volume descriptor, catalog block at byte 0x47
    catalog:  validation entry (platform 0, no ID, checksum 0x55AA, key 55 AA)
              initial/default entry: bootable, no emulation, load segment 0,
                  512-byte sector count min(ceil(size/512), 4), the image's block
              final section header 0x91 for platform 0xEF (EFI), one entry
              section entry: bootable, no emulation, count ceil(size/512), block
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imagebuild.fs.iso9660.voldesc import (
    BLOCK_SIZE,
    STANDARD_ID,
    VD_BOOT,
    IsoFormatError,
)

BOOT_SYSTEM_ID = b"EL TORITO SPECIFICATION"
CATALOG_POINTER_OFFSET = 0x47
ENTRY_SIZE = 32
VIRTUAL_SECTOR = 512  # boot.c Emusectsz

PLATFORM_X86 = 0x00
PLATFORM_EFI = 0xEF
HEADER_MORE = 0x90
HEADER_FINAL = 0x91
BOOTABLE = 0x88
NOT_BOOTABLE = 0x00
MEDIA_NO_EMULATION = 0
BIOS_MAX_SECTORS = 4  # boot.c: "will only load the first 2K"
KEY = b"\x55\xaa"


def boot_record(catalog_block: int) -> bytes:
    """Cputbootvol() + Cupdatebootvol(): type 0, CD001, version 1, the system id, the pointer."""
    head = bytes([VD_BOOT]) + STANDARD_ID + b"\x01" + BOOT_SYSTEM_ID
    head = head.ljust(CATALOG_POINTER_OFFSET, b"\0") + struct.pack("<I", catalog_block)
    return head.ljust(BLOCK_SIZE, b"\0")


def parse_boot_record(block: bytes, where: str) -> int | None:
    """The boot catalog's block if `block` is an El Torito boot record, else None."""
    if block[0] != VD_BOOT or block[1:6] != STANDARD_ID:
        return None
    if block[7:30] != BOOT_SYSTEM_ID:
        return None
    return int(struct.unpack("<I", block[0x47:0x4B])[0])


def checksum(entry: bytes) -> int:
    """The word that makes the validation entry's 16 little-endian words sum to 0."""
    total = sum(struct.unpack("<16H", entry[:28] + b"\0\0" + entry[30:32]))
    return int(-total & 0xFFFF)


@dataclass(frozen=True)
class ValidationEntry:
    """El Torito 1.0 section 2.1 Validation Entry: 32 bytes, header ID 1, `platform` ID,
    `id_string` (at most 24 bytes), checksum, key 55 AA (9front 9660 boot.c).
    """

    platform: int = PLATFORM_X86
    id_string: bytes = b""

    def pack(self) -> bytes:
        entry = bytearray(bytes([1, self.platform, 0, 0]) + self.id_string.ljust(24, b"\0"))
        entry += b"\0\0" + KEY
        struct.pack_into("<H", entry, 28, checksum(bytes(entry)))
        return bytes(entry)

    @classmethod
    def unpack(cls, data: bytes, where: str) -> ValidationEntry:
        if data[0] != 1 or data[30:32] != KEY:
            raise IsoFormatError(f"{where}: no boot catalog validation entry (header 1, key 55 AA)")
        if sum(struct.unpack("<16H", data[:32])) & 0xFFFF:
            raise IsoFormatError(f"{where}: boot catalog validation entry checksum is wrong")
        return cls(platform=data[1], id_string=bytes(data[4:28]).rstrip(b"\0"))


@dataclass(frozen=True)
class BootEntry:
    """An initial/default or section entry (they share their first 12 bytes)."""

    load_rba: int
    sector_count: int
    bootable: bool = True
    media: int = MEDIA_NO_EMULATION
    load_segment: int = 0
    system_type: int = 0

    def pack(self) -> bytes:
        head = struct.pack(
            "<BBHBBHI",
            BOOTABLE if self.bootable else NOT_BOOTABLE,
            self.media,
            self.load_segment,
            self.system_type,
            0,
            self.sector_count,
            self.load_rba,
        )
        return head.ljust(ENTRY_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes, where: str) -> BootEntry:
        indicator, media, segment, system, _, count, rba = struct.unpack("<BBHBBHI", data[:12])
        if indicator not in (BOOTABLE, NOT_BOOTABLE):
            raise IsoFormatError(f"{where}: boot indicator {indicator:#x} is neither 88 nor 00")
        return cls(rba, count, indicator == BOOTABLE, media, segment, system)


@dataclass(frozen=True)
class SectionHeader:
    """El Torito 1.0 section 2.4 Section Header Entry: 32 bytes, 90h (91h when `final`),
    `platform` ID, `entries` that follow, `id_string` of at most 28 bytes (9front 9660 boot.c).
    """

    platform: int
    entries: int
    final: bool = True
    id_string: bytes = b""

    def pack(self) -> bytes:
        head = struct.pack(
            "<BBH", HEADER_FINAL if self.final else HEADER_MORE, self.platform, self.entries
        )
        return (head + self.id_string.ljust(28, b"\0"))[:ENTRY_SIZE]

    @classmethod
    def unpack(cls, data: bytes) -> SectionHeader | None:
        if data[0] not in (HEADER_MORE, HEADER_FINAL):
            return None
        _, platform, entries = struct.unpack("<BBH", data[:4])
        return cls(platform, entries, data[0] == HEADER_FINAL, bytes(data[4:32]).rstrip(b"\0"))


@dataclass(frozen=True)
class BootCatalog:
    """The validation entry, the default entry, and (platform, entry) pairs of sections."""

    validation: ValidationEntry
    default: BootEntry
    sections: tuple[tuple[int, BootEntry], ...] = ()

    def pack(self) -> bytes:
        out = self.validation.pack() + self.default.pack()
        for i, (platform, entry) in enumerate(self.sections):
            final = i == len(self.sections) - 1
            out += SectionHeader(platform, 1, final).pack() + entry.pack()
        return out.ljust(BLOCK_SIZE, b"\0")

    @classmethod
    def unpack(cls, block: bytes, where: str) -> BootCatalog:
        validation = ValidationEntry.unpack(block[:32], where)
        default = BootEntry.unpack(block[32:64], f"{where} default entry")
        sections: list[tuple[int, BootEntry]] = []
        pos = 64
        while pos + ENTRY_SIZE <= len(block):
            header = SectionHeader.unpack(block[pos : pos + ENTRY_SIZE])
            if header is None:
                break
            pos += ENTRY_SIZE
            for _ in range(header.entries):
                if pos + ENTRY_SIZE > len(block):
                    raise IsoFormatError(f"{where}: section entries run past the catalog block")
                sections.append(
                    (header.platform, BootEntry.unpack(block[pos : pos + ENTRY_SIZE], where))
                )
                pos += ENTRY_SIZE
            if header.final:
                break
        return cls(validation, default, tuple(sections))
