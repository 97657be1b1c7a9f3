"""fdisk and prep script errors and printouts that a mutation run found untested.

Each message is the `?message` 9front's editor prints (sys/src/cmd/disk/prep/edit.c,
prep.c, fdisk.c), here as "SOURCE:LINE: message" with nothing written; each printout is
the editor's cmdsum/dumplist format.
"""

from __future__ import annotations

import pytest
from mbr_helpers import MiB, SparseStorage

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import ImageFormatError, LayoutError
from imagebuild.partition import fdisk, mbr, prep
from imagebuild.partition.dostable import read_mbr
from imagebuild.partition.edit import cmdsum_size
from imagebuild.partition.prep import Plan9Partition, read_table, unpack_table
from imagebuild.partition.sector0 import TYPES

P = Plan9Partition


def _blank_disk(size: int = 300 * MiB) -> PartFS:
    parts = PartFS(BlockDevice(SparseStorage(size)))
    mbr.install_bootcode(parts["data"])
    return parts


def _plan9_disk(size: int = 300 * MiB) -> PartFS:
    parts = _blank_disk(size)
    fdisk.fdisk_auto(parts)
    return parts


def _table_text(parts: PartFS, name: str = "plan9") -> str:
    return parts[name].read_sectors(1).rstrip(b"\0").decode()


# -- the editor's argument checks (edit.c: return "args") -------------------------------------
@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("d\n", "pi.fdisk:1: args"),
        ("a p1 0 10\nw\nd p1 p2\n", "pi.fdisk:3: args"),
        ("P x\n", "pi.fdisk:1: args"),
        ("p x\n", "pi.fdisk:1: args"),
        ("w x\n", "pi.fdisk:1: args"),
        ("q x\n", "pi.fdisk:1: args"),
        (". 1 2\n", "pi.fdisk:1: args"),
        ("a\n", "pi.fdisk:1: args"),
        ("A\n", "pi.fdisk:1: args"),
        ("t\n", "pi.fdisk:1: args"),
        ("t p9 FAT32\n", "pi.fdisk:1: unknown partition"),
        ("x\n", "pi.fdisk:1: unknown command 'x'"),
        ("a p1 0 10\nR\n", "pi.fdisk:2: R: partition tables restored to their initial state"),
        # four slots: p1, p2, p3 and the extended partition that holds s1
        ("a p1 0 10\na p2 10 20\na p3 20 30\na s1 30 40\na p4 50 60\n",
         "pi.fdisk:5: no room for partition"),
        ("", "pi.fdisk:0: changes not written (the script has no 'w')"),
    ],
)
def test_fdisk_wrong_argument_counts_are_refused_with_edit_c_words(script: str,
                                                                  message: str) -> None:
    parts = _blank_disk(1885 * MiB)
    before = parts["data"].pread(512, 0)
    with pytest.raises(LayoutError) as err:
        fdisk.fdisk_script(parts, script, source="pi.fdisk")
    assert str(err.value) == message
    assert parts["data"].pread(512, 0) == before and list(parts) == []


def test_deleting_a_partition_is_a_change_that_needs_a_write() -> None:
    parts = _blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, "a p1 0 10\nw\n")
    with pytest.raises(LayoutError, match=r"^<fdisk script>:1: changes not written"):
        fdisk.fdisk_script(PartFS(parts.disk), "d p1\n", blank=False)
    with pytest.raises(LayoutError, match=r"^<fdisk script>:2: changes unwritten$"):
        fdisk.fdisk_script(PartFS(parts.disk), "d p1\nq\n", blank=False)
    assert read_mbr(parts["data"])[0].used  # nothing was written


def test_fdisk_type_list_is_dumplist_four_to_a_line() -> None:
    """fdisk.c dumplist(): each description as %-16s, a newline after every fourth and
    after a short last line."""
    expected = ""
    n = 0
    for code in range(256):
        if code in TYPES:
            expected += f"{TYPES[code][0]:<16}"
            if n % 4 == 3:
                expected += "\n"
            n += 1
    if n % 4:
        expected += "\n"
    parts = _blank_disk(1885 * MiB)
    out: list[str] = []
    # prompts read the next lines, leading blanks skipped (edit.c getline)
    fdisk.fdisk_script(parts, "a p1 0 10\nt p1\n   ?\nFAT32\nw\n", output=out.append)
    assert expected in out
    assert n > 4 and expected.count("\n") == -(-n // 4)


# -- prep: names, defaults, printouts ---------------------------------------------------------
def test_prep_bad_name_and_default_source_are_prep_c_words() -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.prep_script(parts, "a a/b 2 10\nw\n")
    assert str(err.value) == "<prep script>:1: bad character in name"
    with pytest.raises(LayoutError) as err2:
        prep.prep_script(parts, "a fs 1 10\nw\n")
    assert str(err2.value) == "<prep script>:1: overlaps with the pbs and/or the partition table"
    assert _table_text(parts) == ""


def test_prep_prints_the_table_first_and_marks_changed_parts() -> None:
    """prep.c cmdsum: "%c %-12s %*lld %-*lld (%lld sectors, SIZE)", ' for a changed part,
    `empty` for a gap; prep runs `p` before reading commands."""
    parts = _plan9_disk()
    prep.write_table(parts, [P("fs", 2, 1000)])
    out: list[str] = []
    prep.prep_script(parts, "a other 1000 3048\np\nw\n", blank=False, output=out.append)
    w = len(str(parts["plan9"].size))  # libdisk mkwidth(): digits of the size in bytes
    end = parts["plan9"].secs
    first = [
        f"  {'empty':<12} {0:>{w}} {2:<{w}} (2 sectors, 1.00 KB)\n",
        f"  {'fs':<12} {2:>{w}} {1000:<{w}} (998 sectors, 499.00 KB)\n",
        f"  {'empty':<12} {1000:>{w}} {end:<{w}} ({end - 1000} sectors, "
        f"{cmdsum_size((end - 1000) * 512)})\n",
    ]
    assert out[:3] == first
    assert f"' {'other':<12} {1000:>{w}} {3048:<{w}} (2048 sectors, 1.00 MB)\n" in out[3:]


# -- prep without -b: the table on disk is read, kept and stays registered ---------------------
def test_prep_without_b_keeps_the_parts_partfs_knows() -> None:
    parts = _plan9_disk()
    off = parts["plan9"].offset
    prep.write_table(parts, [P("fs", 2, 1000)])
    prep.prep_script(parts, "a other 1000 2000\nw\n", blank=False)
    assert _table_text(parts) == "part fs 2 1000\npart other 1000 2000\n"
    assert [(n, a, b) for n, a, b in parts if n != "plan9"] == [
        ("fs", off + 2, off + 1000), ("other", off + 1000, off + 2000)]


def test_write_table_starts_blank_by_default() -> None:
    parts = _plan9_disk()
    prep.write_table(parts, [P("fs", 2, 1000)])
    assert prep.write_table(parts, [P("x", 500, 600)]) == [P("x", 500, 600)]
    assert _table_text(parts) == "part x 500 600\n"
    with pytest.raises(LayoutError) as err:
        prep.write_table(parts, [P("y", 550, 700)], blank=False)
    assert str(err.value) == 'plan9: part y 550 700: start sector in partition "x"'


# -- reading sector 1 -------------------------------------------------------------------------
def test_read_table_names_the_disk_and_partition_and_checks_the_end() -> None:
    parts = _plan9_disk()
    plan9 = parts["plan9"]
    plan9.pwrite(f"part fs 2 {plan9.secs + 1}\n".encode().ljust(512, b"\0"), 512)
    with pytest.raises(ImageFormatError) as err:
        read_table(plan9)
    assert str(err.value).startswith("data plan9: partition table line ")
    assert str(err.value).endswith(f"lie outside the partition ({plan9.secs} sectors)")
    plan9.pwrite(b"part fs 2 1x\npart b 10 20\n".ljust(512, b"\0"), 512)
    assert read_table(plan9, strict=False) == [P("fs", 2, 1), P("b", 10, 20)][1:]
    whole = BlockDevice(SparseStorage(4 * 512), name="disk")
    whole.pwrite(b"part a 1 2x\n".ljust(512, b"\0"), 512)
    with pytest.raises(ImageFormatError, match=r"^disk: partition table line "):
        read_table(whole)


def test_a_one_sector_partition_has_no_table() -> None:
    disk = BlockDevice(SparseStorage(4 * 512), name="disk")
    assert read_table(disk.slice(2, 3, "tiny")) == []


def test_a_plus_sign_is_not_a_number_prep_writes() -> None:
    with pytest.raises(ImageFormatError) as err:
        unpack_table(b"part fs +2 10\n".ljust(512, b"\0"))
    assert str(err.value) == ("plan9: partition table line 'part fs +2 10': start and end "
                              "must be numbers")
    assert unpack_table(b"part fs +2 10\n".ljust(512, b"\0"), strict=False) == [P("fs", 2, 10)]


def test_a_secondary_partition_at_cylinder_0_keeps_the_first_track() -> None:
    """fdisk.c cmdadd(): start 0 moves a track in, past the MBR, for pN and sN (whose EBR
    then sits a track in and its data another track on)."""
    parts = _blank_disk(1885 * MiB)
    entries = fdisk.fdisk_script(parts, "a s1 0 10\nw\n")
    sectors = 63
    ext = [e for e in entries if e.used]
    assert len(ext) == 1 and ext[0].lba == sectors
    assert parts["data"].read_sectors(0)[510:] == b"\x55\xaa"
    assert list(parts) == [("plan9", 2 * sectors, 10 * 64 * 63)]  # data a track past the EBR


def test_active_moves_to_one_partition_and_counts_as_a_change() -> None:
    parts = _blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, "a p1 0 10\na p2 10 20\na p3 20 30\nA p1\nw\n")
    assert [e.active for e in read_mbr(parts["data"])[:3]] == [0x80, 0, 0]
    with pytest.raises(LayoutError, match=r"^<fdisk script>:1: changes not written"):
        fdisk.fdisk_script(PartFS(parts.disk), "A p2\n", blank=False)
    out: list[str] = []
    fdisk.fdisk_script(PartFS(parts.disk), "A p2\np\nw\n", blank=False, output=out.append)
    # the table before the script (p1, p2, p3, the gap), then `p`: ' marks what changed
    assert [line[:5] for line in out[:3]] == [" * p1", "   p2", "   p3"]
    assert [line[:5] for line in out[4:7]] == ["'  p1", "'* p2", "   p3"]
    assert [e.active for e in read_mbr(parts["data"])[:3]] == [0, 0x80, 0]


def test_a_new_type_counts_as_a_change() -> None:
    parts = _blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, "a p1 0 10\nw\n")
    with pytest.raises(LayoutError, match=r"^<fdisk script>:1: changes not written"):
        fdisk.fdisk_script(PartFS(parts.disk), "t p1 LINUX\n", blank=False)
    out: list[str] = []
    fdisk.fdisk_script(PartFS(parts.disk), "t p1 LINUX\np\nw\n", blank=False,
                       output=out.append)
    assert out[2].startswith("'  p1") and out[2].rstrip().endswith("LINUX")
    assert read_mbr(parts["data"])[0].type == 0x83


def test_prep_percent_is_of_the_partition_size() -> None:
    """calc.y FRAC: `50%` is half the size of what prep edits, in sectors."""
    parts = _plan9_disk()
    secs = parts["plan9"].secs
    assert prep.prep_script(parts, "a fs 2 50%\nw\n") == [P("fs", 2, secs * 50 // 100)]


@pytest.mark.parametrize(("line", "problem"), [
    ("part a 1", "expected 'part NAME START END'"),
    ("part a 1 2 3", "expected 'part NAME START END'"),
    ("parts a 1 2", "expected 'part NAME START END'"),
    ("part a 5 5", "start 5 is not below end 5"),
])
def test_a_malformed_table_line_is_named_with_its_problem(line: str, problem: str) -> None:
    sector = f"part ok 20 30\n{line}\n".encode().ljust(512, b"\0")
    with pytest.raises(ImageFormatError) as err:
        unpack_table(sector)
    assert str(err.value) == f"plan9: partition table line {line!r}: {problem}"
    assert unpack_table(sector, strict=False) == [P("ok", 20, 30)]  # prep skips the line


def test_adjacent_parts_in_any_order_and_any_name_are_read() -> None:
    sector = b"part XBOX 10 20\npart fs 2 10\npart nvram 20 21\n".ljust(512, b"\0")
    assert unpack_table(sector) == [P("XBOX", 10, 20), P("fs", 2, 10), P("nvram", 20, 21)]


def test_dot_is_printed_and_set_by_the_dot_command() -> None:
    """edit.c editdot(): `.` prints "\\t. N", `. expr` sets dot; `a` ends with dot = end."""
    parts = _plan9_disk()
    out: list[str] = []
    table = prep.prep_script(parts, ". 100\n.\na fs . 200\n.\nw\n", output=out.append)
    assert table == [P("fs", 100, 200)]
    assert [line for line in out if line.startswith("\t.")] == ["\t. 100\n", "\t. 200\n"]


def test_add_takes_what_its_line_gives_and_prompts_for_the_rest() -> None:
    parts = _plan9_disk()
    assert prep.prep_script(parts, "a fs 2\n1000\nw\n") == [P("fs", 2, 1000)]


def test_a_taken_name_is_refused_before_any_prompt_reads_a_line() -> None:
    parts = _blank_disk(1885 * MiB)
    with pytest.raises(LayoutError) as err:
        fdisk.fdisk_script(parts, "a p1 0 10\na p1\n10\n20\nw\n", source="s")
    assert str(err.value) == 's:2: already have partition with name "p1"'


def test_a_part_may_not_start_where_another_starts() -> None:
    parts = _plan9_disk()
    with pytest.raises(LayoutError) as err:
        prep.prep_script(parts, "a a 2 10\na b 2 5\nw\n", source="s")
    assert str(err.value) == 's:2: start sector in partition "a"'


def test_a_full_table_prints_no_empty_gap_after_it() -> None:
    parts = _plan9_disk()
    out: list[str] = []
    prep.prep_script(parts, "a fs 2 $\np\nw\n", output=out.append)
    listing = out[out.index(next(line for line in out if line.startswith("' fs"))) - 1:]
    assert [line.split()[0] for line in listing] == ["empty", "'"]


def test_fdisk_help_is_edit_c_help_then_fdisk_lines() -> None:
    from imagebuild.partition.edit import HELP_TEXT
    from imagebuild.partition.fdisk import FDISK_HELP

    parts = _blank_disk(1885 * MiB)
    out: list[str] = []
    fdisk.fdisk_script(parts, "h\na p1 0 10\nw\n", output=out.append)
    assert out[1:3] == [HELP_TEXT, FDISK_HELP + "\n"]
    assert FDISK_HELP.splitlines()[0] == "A name - set partition active"


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B "), (1023, "1023 B "), (1 << 10, "1.00 KB"), ((1 << 20) - 1, "1023.99 KB"),
    (1 << 20, "1.00 MB"), (3 << 30, "3.00 GB"), (1 << 40, "1.00 TB"),
    ((1 << 41) + (1 << 39), "2.50 TB"),
])
def test_cmdsum_size_is_prep_c_s(size: int, text: str) -> None:
    """prep.c cmdsum(): sz/div "." (sz%div)*100/div "%.2d", suffix KB..TB for powers of
    1024; "B " under 1 KB."""
    assert cmdsum_size(size) == text
