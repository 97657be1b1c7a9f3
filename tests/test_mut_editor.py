"""The partition editor's command loop, list order and printouts, as a mutation run found them
untested.

Expectations come from 9front's sys/src/cmd/disk/prep/edit.c (runcmd, addpart, editdot,
editwrite), prep.c (no ext hook: "unknown command") and fdisk.c (plan9print's names).
"""

from __future__ import annotations

import pytest
from mbr_helpers import MiB

from imagebuild.disk.device import PartFS
from imagebuild.errors import LayoutError
from imagebuild.partition import fdisk, prep
from imagebuild.partition.edit import HELP_TEXT
from imagebuild.partition.prep import Plan9Partition
from imagebuild.partition.sector0 import TABLE_OFFSET, TYPE_PLAN9, Tentry, pack_table
from tests.test_mut_partition import _blank_disk, _plan9_disk, _table_text

P = Plan9Partition


def _prep_output(parts: PartFS, script: str, *, blank: bool = True) -> str:
    out: list[str] = []
    prep.prep_script(parts, script, source="x.prep", output=out.append, blank=blank)
    return "".join(out)


# -- addpart keeps the list sorted by start --------------------------------------------------
def test_prep_writes_its_lines_sorted_by_start_whatever_order_they_were_added() -> None:
    parts = _plan9_disk()
    prep.prep_script(parts, "a a1 10 20\na a2 30 40\na a3 20 25\na a0 2 5\nw\n")
    assert _table_text(parts) == (
        "part a0 2 5\npart a1 10 20\npart a3 20 25\npart a2 30 40\n"
    )


def test_partitions_in_one_cylinder_keep_their_table_order() -> None:
    # addpart moves a part down only past parts that start strictly later, so two plan9
    # partitions in cylinder 0 stay in slot order and plan9print names them in that order.
    parts = _blank_disk(300 * MiB)
    data = parts["data"]
    table = pack_table([Tentry(type=TYPE_PLAN9, lba=200, size=100),
                        Tentry(type=TYPE_PLAN9, lba=63, size=100)])
    data.pwrite(table, TABLE_OFFSET)
    assert fdisk.partfs_names(data) == [("plan9", 200, 300), ("plan9.1", 63, 163)]


# -- runcmd ----------------------------------------------------------------------------------
def test_a_line_of_ten_fields_is_refused_and_nine_are_taken() -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.prep_script(parts, "h 1 2 3 4 5 6 7 8 9\n", source="x.prep")
    assert str(err.value) == "x.prep:1: too many arguments (at most 9)"
    assert HELP_TEXT in _prep_output(parts, "h 1 2 3 4 5 6 7 8\n")


def test_question_mark_prints_the_help_text() -> None:
    parts = _plan9_disk()
    assert _prep_output(parts, "?\n").endswith(HELP_TEXT)
    out: list[str] = []
    fdisk.fdisk_script(parts, "?\nw\n", output=out.append)
    assert "".join(out).endswith(HELP_TEXT + fdisk.FDISK_HELP + "\n")


@pytest.mark.parametrize("line", ["x", "A p1", "t fs PLAN9", "R"])
def test_prep_has_no_extra_commands(line: str) -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.prep_script(parts, line + "\n", source="x.prep")
    assert str(err.value) == "x.prep:1: unknown command"


# -- editdot ---------------------------------------------------------------------------------
def test_dot_set_to_dollar_is_the_end_of_the_partition() -> None:
    parts = _plan9_disk()
    secs = parts["plan9"].secs
    out = _prep_output(parts, ". $\n.\n. $-10\n.\n")
    assert out.endswith(f"\t. {secs}\n\t. {secs - 10}\n")


# -- editwrite -------------------------------------------------------------------------------
def test_a_write_clears_every_changed_mark() -> None:
    parts = _plan9_disk()
    out = _prep_output(parts, "p\na fs 2 100\np\nw\np\n").splitlines()
    fs_lines = [line for line in out if " fs " in line]
    assert len(fs_lines) == 2
    assert fs_lines[0].startswith("' fs ") and fs_lines[1].startswith("  fs ")


# -- a script that changes nothing needs no write ---------------------------------------------
def test_reading_an_existing_table_is_not_a_change() -> None:
    parts = _plan9_disk()
    prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    before = _table_text(parts)
    assert [p.name for p in prep.prep_script(parts, "p\nq\n", blank=False)] == [
        "9fat", "nvram", "fs"]
    assert _table_text(parts) == before
    mbr_before = parts.disk.pread(512, 0)
    fdisk.fdisk_script(PartFS(parts.disk), "p\nq\n", blank=False)
    assert parts.disk.pread(512, 0) == mbr_before


def test_a_nameless_partition_is_refused_in_edit_c_words() -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.write_table(parts, [P("", 2, 5)])
    assert str(err.value) == "plan9: part  2 5: partition has no name"


def test_a_zero_size_partition_on_disk_does_not_bound_a_part_starting_there() -> None:
    # edit.c: neither the "start in partition" check (start < end) nor maxend's
    # `start < part->start` sees a part [k, k); fdisk reads one from a typed zero-size slot.
    parts = _blank_disk(300 * MiB)
    data = parts["data"]
    geometry = data.geometry()
    cyl = geometry.heads * geometry.sectors
    data.pwrite(pack_table([Tentry(type=TYPE_PLAN9, lba=10 * cyl, size=0)]), TABLE_OFFSET)
    table = fdisk.fdisk_script(parts, "a p2 10 12\nw\n", blank=False)
    assert [(e.lba, e.size) for e in table[:2]] == [(10 * cyl, 0), (10 * cyl, 2 * cyl)]
