"""An independent reading of the DOS partition tables: libparted (pyparted) must agree with ours.

Used by `inspect` and by the tests: every used primary slot and every
logical partition is compared for start, length, boot flag, extended-ness
and type byte (or, with libparted older than 3.6, the flags it derives from
the byte).  pyparted is imported only when a check runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from imagebuild.disk.device import SECTOR_SIZE, BlockDevice
from imagebuild.errors import LayoutError
from imagebuild.partition.dostable import ebr_sectors, read_partitions
from imagebuild.partition.sector0 import EXTENDED_TYPES, Tentry


def verify_with_libparted(disk: BlockDevice, entries: Sequence[Tentry]) -> None:
    """Read the table back with libparted and raise LayoutError where it disagrees.

    `entries` are the MBR's four slots as read_mbr() returns them.

    libparted wants a file, so sector 0 and every EBR go into a sparse scratch
    file of the disk's size.
    """
    import parted  # heavy; only when asked

    used = [(slot, e) for slot, e in enumerate(entries) if e.used]
    logical = [p for p in read_partitions(disk) if not p.primary]
    with tempfile.TemporaryDirectory(prefix="imagebuild-parted-") as tmp:
        path = os.path.join(tmp, "disk.img")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, disk.size)
            os.pwrite(fd, disk.pread(SECTOR_SIZE, 0), 0)
            for ebr in ebr_sectors(disk):
                os.pwrite(fd, disk.pread(SECTOR_SIZE, ebr * SECTOR_SIZE), ebr * SECTOR_SIZE)
        finally:
            os.close(fd)
        try:
            pdisk = parted.newDisk(parted.getDevice(path))
        except Exception as err:  # pyparted raises its own exception zoo
            raise LayoutError(f"{disk.name}: libparted cannot read the table: {err}") from None
        if pdisk.type != "msdos":
            raise LayoutError(f"{disk.name}: libparted reads a {pdisk.type!r} label, not msdos")
        theirs = {p.number: p for p in pdisk.partitions}
        want_numbers = {slot + 1 for slot, _ in used} | set(range(5, 5 + len(logical)))
        if set(theirs) != want_numbers:
            raise LayoutError(
                f"{disk.name}: libparted sees partitions {sorted(theirs)}, "
                f"the table has {sorted(want_numbers)}"
            )
        checks: list[tuple[int, int, int, int, bool]] = [
            (slot + 1, e.lba, e.size, e.type, e.bootable) for slot, e in used
        ]
        checks += [
            (5 + i, p.start, p.size, p.entry.type, p.entry.bootable) for i, p in enumerate(logical)
        ]
        for number, start, size, type_, boot in checks:
            part = theirs[number]
            extended = bool(part.type & parted.PARTITION_EXTENDED)
            if extended != (type_ in EXTENDED_TYPES):
                raise LayoutError(
                    f"{disk.name}: partition {number}: libparted and the table disagree on "
                    f"whether it is an extended partition (type {type_:#04x})"
                )
            boot_flag = bool(part.getFlag(parted.PARTITION_BOOT))
            got = (part.geometry.start, part.geometry.length, boot_flag)
            if got != (start, size, boot):
                raise LayoutError(
                    f"{disk.name}: partition {number}: libparted reads start/size/boot "
                    f"{got}, the table says {(start, size, boot)}"
                )
            if not extended:
                _check_parted_type(disk.name, number, part, type_)


# Flags libparted 3.5 derives from an msdos entry's type byte (it cannot report the byte).
_PARTED_TYPE_FLAGS = {"lba": (0x0C, 0x0E), "esp": (0xEF,), "lvm": (0x8E,), "swap": (0x82,),
                      "raid": (0xFD,)}
_HIDDEN_TYPES = (0x11, 0x14, 0x16, 0x17, 0x1B, 0x1C, 0x1E)


def _check_parted_type(name: str, number: int, part: Any, type_: int) -> None:
    """The type byte when pyparted can read it (libparted >= 3.6), else the flags it implies."""
    try:
        theirs = part.type_id
    except NotImplementedError:
        theirs = None
    if theirs is not None:
        if theirs != type_:
            raise LayoutError(
                f"{name}: partition {number}: libparted reads type {theirs:#04x}, "
                f"the table says {type_:#04x}"
            )
        return
    if type_ in _HIDDEN_TYPES:
        return
    import parted

    flags = {v: k for k, v in parted.partitionFlag.items()}
    for flag, types in _PARTED_TYPE_FLAGS.items():
        if flag not in flags or not part.isFlagAvailable(flags[flag]):
            continue
        if bool(part.getFlag(flags[flag])) != (type_ in types):
            raise LayoutError(
                f"{name}: partition {number}: libparted's {flag} flag does not match "
                f"type {type_:#04x}"
            )
