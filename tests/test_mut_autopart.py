"""`disk/fdisk -aw` without -b on a disk that already has partitions.

The existing tables are written by sfdisk (an independent writer) and the result is read
back with `sfdisk -d`.  The expectations follow autopart() in 9front's
sys/src/cmd/disk/prep/fdisk.c: the Plan 9 partition goes in the biggest gap between
cylinder-rounded partitions (the first of equal gaps wins, `>` not `>=`), a gap at
cylinder 0 loses its first track to the boot code, it is active only when no primary
partition is, a run of logical partitions takes one primary slot (haveroom()), and an
existing Plan 9 partition anywhere leaves the disk alone.  With no free slot 9front only
prints "couldn't find space or partition slot"; here that is an error and nothing is
written.

sfdisk gives a 64 MiB image 64 heads of 32 sectors, so one cylinder is 2048 sectors and
the disk has 64 of them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mbr_helpers import MiB, sfdisk_dump

from imagebuild.disk.device import BlockDevice, PartFS, RawFile
from imagebuild.errors import LayoutError
from imagebuild.partition import fdisk

CYL = 2048  # sectors per cylinder (64 heads x 32 sectors)
TRACK = 32


def _disk(tmp_path: Path, script: str) -> Path:
    image = tmp_path / "disk.img"
    with RawFile.create(image, 64 * MiB):
        pass
    subprocess.run(
        ["sfdisk", "-q", str(image)], input="label: dos\n" + script, text=True, check=True
    )
    return image


def _auto(image: Path, *, blank: bool = False) -> None:
    with RawFile(image, writable=True) as raw:
        fdisk.fdisk_auto(PartFS(BlockDevice(raw)), blank=blank)


def _rows(image: Path) -> list[tuple[int, int, str, bool]]:
    return sorted(
        (int(r["start"]), int(r["size"]), r["type"], "bootable" in r) for r in sfdisk_dump(image)
    )


def _line(cyl: int, ncyl: int, type_: str, boot: str = "") -> str:
    return f"start={cyl * CYL},size={ncyl * CYL},type={type_}{boot}\n"


def test_the_plan9_partition_takes_the_biggest_gap_in_the_middle(tmp_path: Path) -> None:
    # gaps: [0,1) 1, [11,40) 29, [50,64) 14 cylinders
    image = _disk(tmp_path, _line(1, 10, "c", ",bootable") + _line(40, 10, "83"))
    _auto(image)
    assert _rows(image) == [
        (1 * CYL, 10 * CYL, "c", True),
        (11 * CYL, 29 * CYL, "39", False),  # another primary is active
        (40 * CYL, 10 * CYL, "83", False),
    ]


def test_the_plan9_partition_takes_the_biggest_gap_at_the_end(tmp_path: Path) -> None:
    # gaps: [0,1) 1, [11,30) 19, [35,64) 29 cylinders
    image = _disk(tmp_path, _line(1, 10, "c") + _line(30, 5, "83"))
    _auto(image)
    assert _rows(image) == [
        (1 * CYL, 10 * CYL, "c", False),
        (30 * CYL, 5 * CYL, "83", False),
        (35 * CYL, 29 * CYL, "39", True),  # active: no other primary is
    ]


def test_a_gap_at_cylinder_zero_keeps_the_first_track(tmp_path: Path) -> None:
    # gaps: [0,40) 40, [50,55) 5, [60,64) 4 cylinders
    image = _disk(tmp_path, _line(40, 10, "83") + _line(55, 5, "83"))
    _auto(image)
    assert _rows(image) == [
        (TRACK, 40 * CYL - TRACK, "39", True),
        (40 * CYL, 10 * CYL, "83", False),
        (55 * CYL, 5 * CYL, "83", False),
    ]


def test_equal_gaps_go_to_the_first(tmp_path: Path) -> None:
    # gaps: [0,5) 5, [20,30) 10, [54,64) 10 cylinders: the middle one, not the end
    image = _disk(tmp_path, _line(5, 15, "83") + _line(30, 24, "83"))
    _auto(image)
    assert (20 * CYL, 10 * CYL, "39", True) in _rows(image)


def test_equal_gaps_at_zero_and_later_take_cylinder_zero(tmp_path: Path) -> None:
    # gaps: [0,10) 10, [20,30) 10, [54,64) 10 cylinders
    image = _disk(tmp_path, _line(10, 10, "83") + _line(30, 24, "83"))
    _auto(image)
    assert (TRACK, 10 * CYL - TRACK, "39", True) in _rows(image)


def test_a_partition_ending_inside_a_cylinder_rounds_the_gap_up(tmp_path: Path) -> None:
    # p1 ends one sector into cylinder 10: the gap after it starts at cylinder 11
    image = _disk(tmp_path, f"start={CYL},size={9 * CYL + 1},type=83\n" + _line(40, 24, "83"))
    _auto(image)
    assert (11 * CYL, 29 * CYL, "39", True) in _rows(image)


def test_four_primaries_leave_no_slot_and_nothing_is_written(tmp_path: Path) -> None:
    image = _disk(
        tmp_path, _line(1, 5, "83") + _line(10, 5, "83") + _line(20, 5, "83") + _line(30, 5, "83")
    )
    before = image.read_bytes()
    with pytest.raises(LayoutError, match="couldn't find space or partition slot"):
        _auto(image)
    assert image.read_bytes() == before


def test_a_full_disk_has_no_gap(tmp_path: Path) -> None:
    image = _disk(tmp_path, f"start={TRACK},size={64 * CYL - TRACK},type=83\n")
    before = image.read_bytes()
    with pytest.raises(LayoutError, match=r"^data: couldn't find space .* \(disk has \d+ cyl"):
        _auto(image)
    assert image.read_bytes() == before


def _extended(first: int = 10, count: int = 2) -> str:
    """An extended partition over [first, first + 5 * count): `count` logicals of 4 cylinders."""
    text = _line(first, 5 * count, "5")
    for i in range(count):
        text += f"start={(first + 5 * i) * CYL + TRACK},size={4 * CYL},type=83\n"
    return text


def test_logical_partitions_take_one_primary_slot(tmp_path: Path) -> None:
    # p1, p2, and an extended partition holding two logicals: three slots, room for a fourth
    image = _disk(tmp_path, _line(1, 4, "c") + _line(5, 5, "83") + _extended(10, 2))
    _auto(image)
    rows = _rows(image)
    assert (20 * CYL, 44 * CYL, "39", True) in rows
    # the logicals are still there, read back through the chain
    assert [r[:3] for r in rows if r[2] == "83"] == [
        (5 * CYL, 5 * CYL, "83"),
        (10 * CYL + TRACK, 4 * CYL, "83"),
        (15 * CYL + TRACK, 4 * CYL, "83"),
    ]


def test_the_gap_between_logicals_and_the_next_primary_is_measured(tmp_path: Path) -> None:
    # extended [10,20) with two logicals, p at [50,60): gaps [0,10) 10, [20,50) 30, [60,64) 4
    image = _disk(tmp_path, _extended(10, 2) + _line(50, 10, "83", ",bootable"))
    _auto(image)
    assert (20 * CYL, 30 * CYL, "39", False) in _rows(image)


def test_three_primaries_and_an_extended_partition_leave_no_slot(tmp_path: Path) -> None:
    image = _disk(
        tmp_path, _line(1, 4, "83") + _line(5, 5, "83") + _extended(10, 2) + _line(40, 5, "83")
    )
    before = image.read_bytes()
    with pytest.raises(LayoutError, match="couldn't find space or partition slot"):
        _auto(image)
    assert image.read_bytes() == before


def test_an_active_logical_does_not_stop_the_plan9_partition_being_active(
    tmp_path: Path,
) -> None:
    # only primaries count in autopart()'s active test
    script = _line(10, 5, "5") + f"start={10 * CYL + TRACK},size={4 * CYL},type=83,bootable\n"
    image = _disk(tmp_path, _line(1, 9, "83") + script)
    _auto(image)
    assert (15 * CYL, 49 * CYL, "39", True) in _rows(image)


def test_a_plan9_logical_partition_leaves_the_disk_alone(tmp_path: Path) -> None:
    script = _line(10, 10, "5") + f"start={10 * CYL + TRACK},size={4 * CYL},type=39\n"
    image = _disk(tmp_path, _line(1, 9, "83") + script)
    before = _rows(image)
    _auto(image)  # "w" still rewrites the tables (wrpart), with no new partition
    after = _rows(image)
    assert [r for r in after if r[2] != "5"] == [r for r in before if r[2] != "5"]
    # wrextend(): an extended partition that is last on the disk now runs to its end
    assert (10 * CYL, 54 * CYL, "5", False) in after


def test_without_blank_false_the_old_table_is_replaced(tmp_path: Path) -> None:
    image = _disk(tmp_path, _line(1, 10, "c", ",bootable") + _line(40, 10, "83"))
    with RawFile(image, writable=True) as raw:
        fdisk.fdisk_auto(PartFS(BlockDevice(raw)))  # -b is the default
    assert _rows(image) == [(TRACK, 64 * CYL - TRACK, "39", True)]


def test_a_one_cylinder_gap_is_enough(tmp_path: Path) -> None:
    # autopart() gives up only when bigsize < 1 cylinder; gaps [0,1) and [63,64)
    image = _disk(tmp_path, _line(1, 29, "83") + _line(30, 33, "83"))
    _auto(image)
    assert (TRACK, CYL - TRACK, "39", True) in _rows(image)


def test_an_inactive_plan9_partition_has_status_zero(tmp_path: Path) -> None:
    image = _disk(tmp_path, _line(1, 10, "c", ",bootable"))
    _auto(image)
    with image.open("rb") as f:
        sector0 = f.read(512)
    status = [sector0[446 + 16 * i] for i in range(4)]
    types = [sector0[446 + 16 * i + 4] for i in range(4)]
    assert sorted(zip(types, status, strict=True)) == [(0, 0), (0, 0), (0x0C, 0x80), (0x39, 0)]


def _logicals(count: int) -> str:
    """An extended partition from cylinder 1 with `count` one-cylinder logicals."""
    text = f"start={CYL},size={63 * CYL},type=5\n"
    return text + "".join(
        f"start={(1 + i) * CYL + TRACK},size={CYL - TRACK},type=83\n" for i in range(count)
    )


def test_no_room_in_the_partition_list_for_the_plan9_partition(tmp_path: Path) -> None:
    # edit.h Maxpart: 32 logicals fill the list; autopart()'s addpart fails
    image = _disk(tmp_path, _logicals(32))
    before = image.read_bytes()
    with pytest.raises(LayoutError) as err:
        _auto(image)
    assert str(err.value) == "data: error adding plan9 partition: too many partitions"
    assert image.read_bytes() == before


def test_a_chain_longer_than_the_partition_list_is_refused(tmp_path: Path) -> None:
    image = _disk(tmp_path, _logicals(33))
    before = image.read_bytes()
    with pytest.raises(LayoutError) as err:
        _auto(image)
    assert str(err.value) == "data: adding partition: too many partitions"
    assert image.read_bytes() == before
