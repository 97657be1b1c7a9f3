"""disk/fdisk edges a mutation run found untested: haveroom's slot counting, the names of
partitions read from disk, partfs names for types without one, and the active byte.

Expectations follow 9front's sys/src/cmd/disk/prep/fdisk.c: haveroom (primary slots are
primaries plus runs of secondaries; a secondary needs a secondary neighbour or a free slot),
mkpart's "%c%d" names in reading order, plan9print (types[] without a name are not given to
partfs), cmdactive (`active |= Active` keeps the byte's other bits) and findmbr.
"""

from __future__ import annotations

import pytest
from mbr_helpers import MiB, SparseStorage

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import LayoutError
from imagebuild.partition import fdisk
from imagebuild.partition.dostable import read_mbr
from imagebuild.partition.sector0 import TABLE_OFFSET, TYPE_PLAN9, Tentry, pack_table
from tests.test_mut_partition import _blank_disk


def _refusal(script: str) -> str:
    with pytest.raises(LayoutError) as err:
        fdisk.fdisk_script(_blank_disk(), script, source="x.fdisk")
    return str(err.value)


# -- haveroom ------------------------------------------------------------------------------------
def test_a_secondary_between_primaries_needs_a_free_slot() -> None:
    # four primaries take the four slots; s1 between p1 and p2 has no secondary neighbour
    script = "a p1 0 10\na p2 20 30\na p3 30 40\na p4 40 50\na s1 10 15\n"
    assert _refusal(script) == "x.fdisk:5: no room for partition"


def test_a_run_of_secondaries_at_the_start_takes_a_slot() -> None:
    script = "a s1 0 10\na p1 10 20\na p2 20 30\na p3 30 40\na p4 50 60\n"
    assert _refusal(script) == "x.fdisk:5: no room for partition"


def test_haveroom_lets_a_fifth_slot_through_and_the_writer_refuses_it() -> None:
    # 9front's haveroom counts only primaries for a secondary: s2 between p1 and p2 passes
    # with three primaries although the run after p3 already holds the fourth slot.
    script = "a p1 0 10\na p2 20 30\na p3 30 40\na s1 40 50\na s2 10 15\nw\n"
    assert _refusal(script) == "x.fdisk:6: data: more than four primary slots needed"


# -- reading partitions: mkpart's names ----------------------------------------------------------
def test_partitions_read_from_disk_are_named_in_reading_order() -> None:
    parts = _blank_disk()
    fdisk.fdisk_script(parts, "a p1 0 10\na s1 10 20\na s2 20 30\nw\n")
    out: list[str] = []
    fdisk.fdisk_script(PartFS(parts.disk), "p\nq\n", blank=False, output=out.append)
    names = [line.split()[0] for line in "".join(out).splitlines()
             if line.split()[0] != "empty"]
    assert names == ["p1", "s2", "s3", "p1", "s2", "s3"]  # fdisk's own p, then ours


# -- plan9print: partfs names ---------------------------------------------------------------------
def test_types_without_a_partfs_name_are_skipped() -> None:
    parts = _blank_disk()
    data = parts["data"]
    data.pwrite(pack_table([Tentry(type=0x42, lba=63, size=100),  # not in types[]
                            Tentry(type=0x16, lba=2048, size=100),  # UNFORMATTED: no name
                            Tentry(type=TYPE_PLAN9, lba=4096, size=1000)]), TABLE_OFFSET)
    assert fdisk.partfs_names(data) == [("plan9", 4096, 5096)]


# -- cmdactive -------------------------------------------------------------------------------------
def test_setting_active_keeps_the_other_bits_of_the_byte() -> None:
    parts = _blank_disk()
    data = parts["data"]
    data.pwrite(pack_table([Tentry(active=0x01, type=TYPE_PLAN9, lba=2048, size=4096)]),
                TABLE_OFFSET)
    fdisk.fdisk_script(parts, "A p1\nw\n", blank=False)
    assert read_mbr(data)[0].active == 0x81


# -- findmbr ---------------------------------------------------------------------------------------
def test_a_disk_without_an_mbr_is_refused_in_full() -> None:
    parts = PartFS(BlockDevice(SparseStorage(300 * MiB)))
    with pytest.raises(LayoutError) as err:
        fdisk.fdisk_auto(parts)
    assert str(err.value) == (
        "data: did not find master boot record (install boot code with disk/mbr first)")
