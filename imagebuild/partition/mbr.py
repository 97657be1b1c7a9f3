"""disk/mbr: install master boot code in sector 0, keeping the partition table.

What 9front's mbr.c writes:

* no -m file: its built-in program over bytes 0..445 (ndefmbr = Toffset);
  bytes 446..509 (the partition table) stay as they were.  We install our own
  program there instead (imagebuild.partition.bootcode).
* -m FILE: the whole file from sector 0 on, at most one track (`disk->s`
  sectors of libdisk's geometry, the space before the first partition) —
  a longer file is refused.  A file shorter than a sector counts as one
  sector.  Bytes 446..511 of sector 0 are taken from the disk, not the file,
  so the table survives; the tail is written whole up to its last sector
  (zero-filled).
* Either way bytes 510..511 become the boot signature 0x55 0xAA.

Everything is read and checked first; then one write.

References: sys/src/cmd/disk/mbr.c, sys/src/libdisk/disk.c.
"""

from __future__ import annotations

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import LayoutError
from imagebuild.partition.bootcode import DEFAULT_MBR
from imagebuild.partition.sector0 import BOOT_AREA, MAGIC, MAGIC_OFFSET, SECTOR, TABLE_OFFSET


def plan_bootcode(
    disk: BlockDevice, code: bytes | None = None, *, source: str = "<default>"
) -> bytes:
    """The bytes disk/mbr would write from sector 0 on (a whole number of 512-byte sectors).

    code=None: the default program (imagebuild.partition.bootcode) over the
    boot area; else `code` itself, at most one track of the disk's geometry.
    Raises LayoutError (naming `source`) for a disk without a sector 0, code
    longer than a track, or code longer than the disk.
    """
    if disk.size < SECTOR:
        raise LayoutError(f"{disk.name}: disk of {disk.size} bytes has no boot sector")
    sector0 = disk.pread(SECTOR, 0)
    if code is None:
        image = bytearray(sector0)
        image[:BOOT_AREA] = DEFAULT_MBR
    else:
        track = SECTOR * disk.geometry().sectors
        if len(code) > track:
            raise LayoutError(
                f"{source}: master boot record too large {len(code)} > {track} "
                f"(one track of {track // SECTOR} sectors)"
            )
        length = -(-max(len(code), SECTOR) // SECTOR) * SECTOR
        image = bytearray(code.ljust(length, b"\0"))
        image[TABLE_OFFSET:SECTOR] = sector0[TABLE_OFFSET:SECTOR]
    image[MAGIC_OFFSET:SECTOR] = MAGIC
    if len(image) > disk.size:
        raise LayoutError(
            f"{source}: {len(image)} bytes of boot code do not fit on {disk.name} "
            f"({disk.size} bytes)"
        )
    return bytes(image)


def install_bootcode(
    disk: BlockDevice, code: bytes | None = None, *, source: str = "<default>"
) -> None:
    """`disk/mbr [-m file] sdXX/data`: code=None installs imagebuild's default program.

    Writes plan_bootcode()'s bytes at offset 0 in one write; raises as it does.
    """
    disk.pwrite(plan_bootcode(disk, code, source=source), 0)
