"""disk/prep edges a mutation run found untested: the table's size limit and line limit,
autoxpart's size rules at their boundaries, and the exact refusal messages.

Expectations follow 9front's sys/src/cmd/disk/prep/prep.c (wrpart's snprint into one
sector, rdpart's getfields into 128 lines, autoxpart's `s < min` / `s > max` tests on the
truncated share, `secs <= 0`) and libc getfields (the last field keeps the rest).
"""

from __future__ import annotations

import pytest
from mbr_helpers import MiB, SparseStorage

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import LayoutError
from imagebuild.partition import fdisk, mbr, prep
from imagebuild.partition.prep import Plan9Partition, autopartition, pack_table, unpack_table
from tests.test_mut_partition import _plan9_disk, _table_text

P = Plan9Partition


# -- wrpart: snprint into one sector keeps a NUL, so 511 bytes of text fit --------------------
def test_a_table_of_511_bytes_fits_and_512_do_not() -> None:
    fits = [P("n" * 501, 2, 3)]  # "part " + 501 + " 2 3\n" = 511 bytes
    sector = pack_table(fits)
    assert len(sector) == 512 and sector[:511] == fits[0].line().encode() and sector[511] == 0
    with pytest.raises(LayoutError) as err:
        pack_table([P("n" * 502, 2, 3)])
    assert str(err.value) == (
        "partition table: 512 bytes of text do not fit in one 512-byte sector")


def test_a_write_touches_only_the_table_sector() -> None:
    parts = _plan9_disk()
    dev = parts["plan9"]
    dev.pwrite(b"\xaa" * 1024, 2 * 512)
    prep.prep_script(parts, "a fs 4 100\nw\n")
    assert dev.pread(1024, 2 * 512) == b"\xaa" * 1024
    assert _table_text(parts) == "part fs 4 100\n"


# -- rdpart: getfields(secbuf, line, 128, 1, "\n") -------------------------------------------
def test_the_129th_line_runs_into_the_128th_and_neither_is_read() -> None:
    text = "part a 2 3\n" + "x\n" * 126 + "part b 4 5\npart c 6 7\n"
    sector = text.encode() + bytes(512 - len(text))
    assert unpack_table(sector, strict=False) == [P("a", 2, 3)]
    exactly_128 = ("part a 2 3\n" + "x\n" * 126 + "part b 4 5\n").encode()
    assert unpack_table(exactly_128 + bytes(512 - len(exactly_128)), strict=False) == [
        P("a", 2, 3), P("b", 4, 5)]


# -- autoxpart's size rules ------------------------------------------------------------------
def test_the_exact_minimum_fits() -> None:
    # 9fat's share is under its minimum, so it takes 20480 sectors and 1 is left: secs is
    # not <= 0, and nvram's share of 1 is its minimum.
    assert autopartition(["9fat", "nvram"], 20481) == [
        P("9fat", 0, 20480), P("nvram", 20480, 20481)]


def test_a_share_equal_to_the_minimum_is_not_raised_to_it() -> None:
    # swap's share of 409600 is 204800, its minimum, so it is not fixed there (s < min
    # only); nvram is held to its maximum and swap takes the rest, cut one short of the end.
    assert autopartition(["nvram", "swap"], 409600) == [P("nvram", 2, 3), P("swap", 3, 409599)]


def test_the_maximum_is_checked_on_the_truncated_share() -> None:
    # fs takes its minimum, leaving 3 sectors: shares of 3*1/2 = 1 are not over the
    # maximum of 1, so nvram takes 1 and fscfg the other 2 (the rounding goes to the last).
    assert autopartition(["nvram", "fscfg", "fs"], 409603) == [
        P("nvram", 2, 3), P("fscfg", 3, 5), P("fs", 5, 409602)]


def test_too_small_names_the_sizes() -> None:
    with pytest.raises(LayoutError) as err:
        autopartition(["9fat", "fs"], 300000)
    assert str(err.value) == (
        "plan9: 300000 sectors (146.48 MB) are too small for automatic partitions 9fat fs, "
        "whose minimum sizes add up to 430080 sectors "
        "(ran out of disk space during autopartition)")


def test_an_unknown_automatic_partition_lists_the_known_ones() -> None:
    with pytest.raises(LayoutError) as err:
        autopartition(["9fat", "root"], 1 << 30)
    assert str(err.value) == (
        "don't know how to create automatic partition 'root' (known: 9fat nvram fscfg fs "
        "fossil arenas isect bloom other swap cache fscache fsworm)")


# -- prep_auto -------------------------------------------------------------------------------
def test_prep_auto_prints_each_partition_and_its_size() -> None:
    parts = _plan9_disk()
    out: list[str] = []
    table = prep.prep_auto(parts, ["9fat", "nvram", "fs"], output=out.append)
    assert "".join(out) == "".join(f"{p.name} {p.size}\n" for p in table)
    assert [p.name for p in table] == ["9fat", "nvram", "fs"]


def test_prep_auto_replaces_an_old_table_by_default() -> None:
    parts = _plan9_disk()
    prep.prep_auto(parts, ["fs"])
    table = prep.prep_auto(parts, ["9fat", "nvram", "fs"])  # -b: the old table is forgotten
    assert [p.name for p in table] == ["9fat", "nvram", "fs"]
    assert _table_text(parts).startswith("part 9fat 0 ")


def test_prep_auto_names_the_partition_it_was_given() -> None:
    parts = PartFS(BlockDevice(SparseStorage(300 * MiB)))
    mbr.install_bootcode(parts["data"])
    fdisk.fdisk_script(parts, "a p1 0 100\na p2 100 110\nw\n")
    assert [name for name, _, _ in parts] == ["plan9", "plan9.1"]
    secs = parts["plan9.1"].secs
    with pytest.raises(LayoutError) as err:
        prep.prep_auto(parts, ["fs"], partition="plan9.1")
    assert str(err.value).startswith(f"plan9.1: {secs} sectors (")


def test_a_fat_boot_sector_where_the_table_goes_is_refused() -> None:
    parts = _plan9_disk()
    parts["plan9"].pwrite(b"\xeb\x3c\x90" + bytes(509), 512)
    with pytest.raises(LayoutError) as err:
        prep.prep_auto(parts, ["fs"])
    assert str(err.value) == (
        "plan9: there's a fat partition where the plan9 partition table would go "
        "(zero its second sector to overwrite it)")


def test_a_one_sector_partition_has_no_room_for_the_table() -> None:
    parts = _plan9_disk()
    start, _ = next((s, e) for name, s, e in parts if name == "plan9")
    parts.add("tiny", start + 10, start + 11)
    before = parts["data"].pread(4096, (start + 10) * 512)
    with pytest.raises(LayoutError) as err:
        prep.prep_script(parts, "w\n", partition="tiny")
    assert str(err.value) == "<prep script>:1: tiny: no sector 1 for the partition table"
    assert parts["data"].pread(4096, (start + 10) * 512) == before


# -- write_table checks the name before the range, as editadd does ----------------------------
def test_write_table_reports_a_taken_name_before_an_overlap() -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.write_table(parts, [P("a", 2, 10), P("a", 5, 20)])
    assert str(err.value) == 'plan9: part a 5 20: already have partition with name "a"'
