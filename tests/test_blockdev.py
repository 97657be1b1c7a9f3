"""Block views: slicing, bounds, and libdisk's geometry rules (sys/src/libdisk/disk.c)."""

import pytest

from imagebuild.disk.device import BlockDevice, BytesStorage, PartFS, guess_geometry
from imagebuild.errors import LayoutError, OutOfRangeError

MiB = 1 << 20


def test_guess_geometry_3770mb_is_128_heads() -> None:
    # guessgeometry(): 1024*64*63 < 7720960 sectors <= 1024*128*63
    g = guess_geometry(3770 * MiB // 512)
    assert (g.heads, g.sectors, g.cylinders) == (128, 63, 7720960 // (128 * 63))


def test_guess_geometry_1885mb_is_64_heads_63_sectors() -> None:
    g = guess_geometry(1885 * MiB // 512)
    assert (g.heads, g.sectors) == (64, 63)


def test_guess_geometry_huge_disk_is_255_63() -> None:
    g = guess_geometry(20 * 1024 * MiB // 512)
    assert (g.heads, g.sectors) == (255, 63)


def test_geometry_from_consistent_mbr_entries() -> None:
    disk = BlockDevice(BytesStorage(8 * MiB))
    sector0 = bytearray(512)
    sector0[510:512] = b"\x55\xaa"
    entry = 446
    sector0[entry + 4] = 0x39  # type
    sector0[entry + 5] = 15  # end head
    sector0[entry + 6] = 0xC0 | 32  # end sector, cylinder bits above
    disk.pwrite(sector0, 0)
    part = disk.slice(63, 1000, "plan9")
    g = part.geometry()
    assert (g.heads, g.sectors, g.cylinders) == (16, 32, 937 // (16 * 32))
    assert part.offset == 63


def test_slice_refuses_io_past_end() -> None:
    disk = BlockDevice(BytesStorage(MiB))
    part = disk.slice(10, 20, "p")
    part.pwrite(b"x" * 512, 9 * 512)
    assert disk.pread(1, 19 * 512) == b"x"
    with pytest.raises(OutOfRangeError):
        part.pwrite(b"x", 10 * 512)
    with pytest.raises(OutOfRangeError):
        disk.slice(0, disk.secs + 1, "big")


def test_file_like_read_write_seek() -> None:
    disk = BlockDevice(BytesStorage(4096))
    disk.seek(100)
    assert disk.write(b"hello") == 5
    disk.seek(-5, 1)
    assert disk.read(5) == b"hello"
    disk.seek(0, 2)
    assert disk.read(10) == b""


def test_partfs_addpart_rules() -> None:
    parts = PartFS(BlockDevice(BytesStorage(MiB)))
    parts.add("plan9", 63, 2048)
    parts.add("plan9", 63, 2048)  # identical: no-op
    with pytest.raises(LayoutError, match="already in use"):
        parts.add("plan9", 64, 2048)
    with pytest.raises(LayoutError, match="already in use"):
        parts.add("data", 0, 1)
    with pytest.raises(LayoutError, match="boundaries"):
        parts.add("fs", 100, 99999)
    assert parts["plan9"].offset == 63
    assert [p[0] for p in parts] == ["plan9"]
