"""disk/mbr: what of sector 0 is replaced and what is kept (sys/src/cmd/disk/mbr.c)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mbr_helpers import MiB, SparseStorage

from imagebuild.disk.device import BlockDevice, BytesStorage, RawFile
from imagebuild.errors import LayoutError
from imagebuild.partition import mbr
from imagebuild.partition.bootcode import DEFAULT_MBR, MESSAGE, MESSAGE_OFFSET, PROGRAM
from imagebuild.partition.sector0 import Tentry
from tests.qemu_vga import BootedQemu, needs_qemu

TABLE = bytes(range(1, 65))  # stands for an existing partition table at 446..509
MARK = b"\xa5" * 512


def _disk(size: int = 300 * MiB) -> BlockDevice:
    """A disk with a recognisable table in sector 0 and marks in sectors 1..7."""
    disk = BlockDevice(SparseStorage(size))
    sector0 = bytearray(b"\x77" * 512)
    sector0[446:510] = TABLE
    disk.write_sectors(0, bytes(sector0) + MARK * 7)
    return disk


def test_default_program_replaces_bytes_0_to_445_only() -> None:
    disk = _disk()
    mbr.install_bootcode(disk)
    sector0 = disk.read_sectors(0)
    assert sector0[:446] == DEFAULT_MBR  # ndefmbr = Toffset bytes of the built-in program
    assert sector0[446:510] == TABLE  # the partition table stays
    assert sector0[510:] == b"\x55\xaa"  # boot signature
    assert disk.read_sectors(1, 7) == MARK * 7  # one sector written


def test_file_shorter_than_a_sector_is_zero_padded() -> None:
    disk = _disk()
    code = b"\xfa\xeb\xfe" + b"\x90" * 97
    mbr.install_bootcode(disk, code, source="386/mbr")
    sector0 = disk.read_sectors(0)
    assert sector0[:100] == code
    assert sector0[100:446] == bytes(346)  # buf was zeroed before the read
    assert sector0[446:510] == TABLE
    assert sector0[510:] == b"\x55\xaa"
    assert disk.read_sectors(1) == MARK


def test_file_bytes_over_the_table_are_ignored() -> None:
    disk = _disk()
    mbr.install_bootcode(disk, b"\xab" * 512, source="386/mbr")
    sector0 = disk.read_sectors(0)
    assert sector0[:446] == b"\xab" * 446
    assert sector0[446:510] == TABLE  # from the disk, not the file
    assert sector0[510:] == b"\x55\xaa"  # forced, whatever either had


def test_multi_sector_file_is_written_whole_to_its_last_sector() -> None:
    disk = _disk()
    code = bytes((i * 7) & 0xFF for i in range(3 * 512 + 10))
    mbr.install_bootcode(disk, code, source="big.mbr")
    head = disk.read_sectors(0, 5)
    assert head[:446] == code[:446]
    assert head[446:510] == TABLE
    assert head[512 : 3 * 512 + 10] == code[512:]  # sectors 1..3 from the file
    assert head[3 * 512 + 10 : 4 * 512] == bytes(512 - 10)  # rounded up to a sector
    assert head[4 * 512 :] == MARK  # sector 4 untouched


@pytest.mark.parametrize(
    ("size", "track"),
    [
        (300 * MiB, 32 * 512),  # guessgeometry: 614400 sectors <= 1024*64*32 -> 32 sectors
        (1885 * MiB, 63 * 512),  # 64 heads, 63 sectors
    ],
)
def test_file_of_up_to_one_track_fits(size: int, track: int) -> None:
    disk = _disk(size)
    mbr.install_bootcode(disk, b"\x01" * track, source="track.mbr")
    assert disk.read_sectors(track // 512 - 1) == b"\x01" * 512  # the track's last sector
    before = disk.read_sectors(0, track // 512 + 1)
    with pytest.raises(LayoutError, match=rf"track.mbr: master boot record too large "
                                          rf"{track + 1} > {track}"):
        mbr.install_bootcode(disk, b"\x01" * (track + 1), source="track.mbr")
    assert disk.read_sectors(0, track // 512 + 1) == before


def test_track_limit_follows_the_partition_table_geometry() -> None:
    """After fdisk, libdisk takes h/s from the entries' end CHS, not from a guess."""
    disk = BlockDevice(SparseStorage(300 * MiB))  # guess would be 64/32
    mbr.install_bootcode(disk)
    sector0 = bytearray(disk.read_sectors(0))
    entry = Tentry(0x80, bytes((1, 1, 0)), 0x39, bytes((15, 63, 0)), 63, 1000)
    sector0[446:462] = entry.pack()  # end head 15, end sector 63 -> 16 heads, 63 sectors
    disk.write_sectors(0, bytes(sector0))
    mbr.install_bootcode(disk, bytes(63 * 512), source="m")  # 63 sectors now fit
    with pytest.raises(LayoutError, match="32256"):
        mbr.install_bootcode(disk, bytes(63 * 512 + 1), source="m")


def test_disk_smaller_than_a_sector_is_an_error() -> None:
    with pytest.raises(LayoutError, match="no boot sector"):
        mbr.install_bootcode(BlockDevice(BytesStorage(0)))


def test_default_program_listing() -> None:
    """The program fits before the table, ends its code where the message starts, and
    uses BIOS teletype (int 10h), keyboard (int 16h) and bootstrap (int 19h)."""
    assert len(DEFAULT_MBR) == 446
    assert DEFAULT_MBR[:MESSAGE_OFFSET] == PROGRAM
    assert DEFAULT_MBR[MESSAGE_OFFSET : MESSAGE_OFFSET + len(MESSAGE)] == MESSAGE
    assert b"not a bootable disc" in MESSAGE.lower()
    for interrupt in (b"\xcd\x10", b"\xcd\x16", b"\xcd\x19"):
        assert interrupt in PROGRAM
    # mov si, imm16 points at the message as loaded at 0:7C00
    assert PROGRAM[0x0E] == 0xBE
    assert int.from_bytes(PROGRAM[0x0F:0x11], "little") == 0x7C00 + MESSAGE_OFFSET


@needs_qemu
def test_default_program_runs_under_a_bios(tmp_path: Path) -> None:
    """SeaBIOS boots sector 0: the message appears; a key press boots again (int 19h)."""
    image = tmp_path / "boot.img"
    with RawFile.create(image, 4 * MiB) as raw:
        mbr.install_bootcode(BlockDevice(raw))
    with BootedQemu(image, "raw", tmp_path / "vga.bin", system="qemu-system-i386") as qemu:
        first = qemu.wait_for(lambda text: "Not a bootable disc." in text, 20)
        assert "Not a bootable disc." in first and "Press a key to reboot." in first
        qemu.monitor("sendkey ret")
        again = qemu.wait_for(lambda text: text.count("Not a bootable disc.") >= 2, 20)
        assert again.count("Booting from Hard Disk") == 2
