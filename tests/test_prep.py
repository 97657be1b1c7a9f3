"""disk/prep: golden Plan 9 tables derived by hand from prep.c's autoxpart().

The rules (sys/src/cmd/disk/prep/prep.c), sizes in 512-byte sectors:

* autox[] in layout order with (min, max, weight): 9fat (20480, 204800, 10),
  nvram (1, 1, 1), fs (409600, none, 10), ...
* each round offers every unsized partition (secs*weight)/totw of what is
  left (rounded down); the first under its minimum gets the minimum and the
  round restarts; else the first over its maximum gets the maximum; else all
  take their shares in order, each taking its weight out of totw, so the last
  one gets the rounding leftovers.
* layout: from sector 0 with 9fat, else from 2; partfs gives no alignment
  (stride 1); a partition ending past the end stops at secs - 1.

The plan9 partition comes from `fdisk -baw` (see test_fdisk.py): secs is the
disk's cylinders times h*s minus the first track.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from mbr_helpers import GiB, MiB, SparseStorage, make_layout, open_disk

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import ImageFormatError, LayoutError
from imagebuild.partition import fdisk, mbr, prep
from imagebuild.partition.prep import Plan9Partition, autopartition, read_table, unpack_table

P = Plan9Partition


def _plan9_disk(size: int) -> PartFS:
    parts = PartFS(BlockDevice(SparseStorage(size)))
    mbr.install_bootcode(parts["data"])
    fdisk.fdisk_auto(parts)
    return parts


def _table_text(parts: PartFS) -> str:
    return parts["plan9"].read_sectors(1).rstrip(b"\0").decode()


# ---------------------------------------------------------------------------------------------
# Golden tables of the mkfile's targets
# ---------------------------------------------------------------------------------------------
def test_prep_autopartition_amd64_qcow2_3770mb() -> None:
    parts = _plan9_disk(3770 * MiB)  # plan9 = 63..7717248: secs 7717185
    table = prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    # round 1: totw 21, 9fat share 7717185*10/21 = 3674850 > max 204800 -> 204800
    # round 2: totw 11 over 7512385: nvram share 682944 > max 1 -> 1
    # round 3: fs takes all 7512384
    assert table == [P("9fat", 0, 204800), P("nvram", 204800, 204801), P("fs", 204801, 7717185)]
    assert _table_text(parts) == (
        "part 9fat 0 204800\npart nvram 204800 204801\npart fs 204801 7717185\n"
    )
    # registered with the plan9 partition's offset 63 added
    assert list(parts) == [
        ("plan9", 63, 7717248),
        ("9fat", 63, 204863),
        ("nvram", 204863, 204864),
        ("fs", 204864, 7717248),
    ]


def test_prep_autopartition_generic_1885mb() -> None:
    parts = _plan9_disk(1885 * MiB)  # plan9 = 63..3858624: secs 3858561
    table = prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    # 9fat share 1837410 > 204800 -> 204800; nvram -> 1; fs = 3858561 - 204801 = 3653760
    assert table == [P("9fat", 0, 204800), P("nvram", 204800, 204801), P("fs", 204801, 3858561)]
    assert list(parts)[1:] == [
        ("9fat", 63, 204863), ("nvram", 204863, 204864), ("fs", 204864, 3858624)
    ]


def test_prep_autopartition_generic_300mb() -> None:
    parts = _plan9_disk(300 * MiB)  # plan9 = 32..614400: secs 614368
    table = prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    # round 1: fs share 614368*10/21 = 292556 < min 409600 -> 409600, left 204768
    # round 2: totw 11: 9fat 186152 within 20480..204800; nvram 18615 > 1 -> 1, left 204767
    # round 3: 9fat takes 204767 (< its max 204800)
    assert table == [P("9fat", 0, 204767), P("nvram", 204767, 204768), P("fs", 204768, 614368)]
    assert list(parts)[1:] == [
        ("9fat", 32, 204799), ("nvram", 204799, 204800), ("fs", 204800, 614400)
    ]


def test_prep_autopartition_pi_img_1885mb() -> None:
    parts = PartFS(BlockDevice(SparseStorage(1885 * MiB)))
    mbr.install_bootcode(parts["data"])
    fdisk.fdisk_script(parts, "a p1 . .+100M\nt p1 FAT32\na p2 . $\nt p2 PLAN9\nA p1\nw\nq\n")
    table = prep.prep_auto(parts, ["nvram", "fs"])  # plan9 = 201600..3858624: secs 3657024
    # nvram -> 1 (over max); fs takes 3657023. No 9fat: start at 2; fs would end at
    # 3 + 3657023 = 3657026 > 3657024, so it stops at secs - stride = 3657023.
    assert table == [P("nvram", 2, 3), P("fs", 3, 3657023)]
    assert _table_text(parts) == "part nvram 2 3\npart fs 3 3657023\n"
    assert list(parts) == [
        ("dos", 63, 201600),
        ("plan9", 201600, 3858624),
        ("nvram", 201602, 201603),
        ("fs", 201603, 3858623),
    ]


def test_prep_autopartition_reform_1885mb(tmp_path: Path) -> None:
    with open_disk("raw", 1885 * MiB, tmp_path) as parts:
        _, table = make_layout(parts, "reform")
    # the same plan9 partition as pi (201600..3858624), so the same table
    assert table == [P("nvram", 2, 3), P("fs", 3, 3657023)]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 250 MiB: 64/32 -> plan9 32..512000, secs 511968. fs share 243794 < 409600 -> 409600;
        # left 102368: nvram -> 1; 9fat takes 102367
        (250 * MiB, [P("9fat", 0, 102367), P("nvram", 102367, 102368), P("fs", 102368, 511968)]),
        # 1 GiB: 64/32, 1024 cylinders -> plan9 32..2097152, secs 2097120.
        # 9fat 998628 > max -> 204800; nvram -> 1; fs 1892319
        (1 * GiB, [P("9fat", 0, 204800), P("nvram", 204800, 204801), P("fs", 204801, 2097120)]),
        # 20 GiB: 255/63, 2610 cylinders of 16065 -> plan9 63..41929650, secs 41929587
        (20 * GiB, [P("9fat", 0, 204800), P("nvram", 204800, 204801),
                    P("fs", 204801, 41929587)]),
        # 500 GiB: 65270 cylinders -> plan9 63..1048562550, secs 1048562487
        (500 * GiB, [P("9fat", 0, 204800), P("nvram", 204800, 204801),
                     P("fs", 204801, 1048562487)]),
    ],
)
def test_prep_autopartition_sizes(size: int, expected: list[Plan9Partition]) -> None:
    parts = _plan9_disk(size)
    assert prep.prep_auto(parts, ["9fat", "nvram", "fs"]) == expected
    assert read_table(parts["plan9"]) == expected


def test_autopartition_every_automatic_partition() -> None:
    """All of autox[] on a 20 GiB plan9 partition (41943040 sectors), round by round."""
    table = autopartition(prep.AUTO_NAMES, 41943040)
    sizes = {p.name: p.size for p in table}
    # round 1: totw 79, no share under its minimum; 9fat 5309245 > max -> 204800
    # round 2: totw 69: nvram 604902 > max -> 1;  round 3: totw 68: fscfg -> 1
    # round 4: totw 67 over 41738238: no minimum or maximum hit (bloom and swap
    #   622958 <= 1048576, cache 1245917 <= 2097152), so shares in order:
    #   fs 41738238*10/67 = 6229587          left 35508651, totw 57
    #   fossil 35508651*4/57 = 2491835       left 33016816, totw 53
    #   arenas 33016816*20/53 = 12459175     left 20557641, totw 33
    #   isect 20557641/33 = 622958           left 19934683, totw 32
    #   bloom 19934683/32 = 622958           left 19311725, totw 31
    #   other 19311725*4/31 = 2491835        left 16819890, totw 27
    #   swap 16819890/27 = 622958            left 16196932, totw 26
    #   cache 16196932*2/26 = 1245917        left 14951015, totw 24
    #   fscache 14951015*4/24 = 2491835      left 12459180, totw 20
    #   fsworm 12459180*20/20 = 12459180     left 0
    assert sizes == {
        "9fat": 204800, "nvram": 1, "fscfg": 1, "fs": 6229587, "fossil": 2491835,
        "arenas": 12459175, "isect": 622958, "bloom": 622958, "other": 2491835,
        "swap": 622958, "cache": 1245917, "fscache": 2491835, "fsworm": 12459180,
    }
    assert [p.name for p in table] == list(prep.AUTO_NAMES)  # autox[] order, not ours
    assert table[0].start == 0 and table[-1].end == 41943040
    assert all(a.end == b.start for a, b in itertools.pairwise(table))


def test_autopartition_order_follows_autox_not_arguments() -> None:
    assert [p.name for p in autopartition(["fs", "nvram", "9fat"], 4_000_000)] == [
        "9fat", "nvram", "fs"
    ]


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error and an untouched image
# ---------------------------------------------------------------------------------------------
def test_prep_autopartition_50mb_is_too_small() -> None:
    parts = _plan9_disk(50 * MiB)  # plan9 32..102400: 102368 sectors < fs's 409600 alone
    before = parts["plan9"].read_sectors(0, 2)
    with pytest.raises(LayoutError, match="too small for automatic partitions 9fat nvram fs"):
        prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    assert parts["plan9"].read_sectors(0, 2) == before
    assert [name for name, _, _ in parts] == ["plan9"]


def test_prep_autopartition_fs_alone_below_its_minimum_is_refused() -> None:
    """9front clips fs to the partition (below its 200 MB minimum); we refuse."""
    parts = _plan9_disk(150 * MiB)
    with pytest.raises(LayoutError, match="too small"):
        prep.prep_auto(parts, ["fs"])


def test_prep_unknown_and_repeated_names() -> None:
    parts = _plan9_disk(300 * MiB)
    with pytest.raises(LayoutError, match="don't know how to create automatic partition 'root'"):
        prep.prep_auto(parts, ["9fat", "root"])
    with pytest.raises(LayoutError, match="more than once"):
        prep.prep_auto(parts, ["fs", "fs"])
    assert _table_text(parts) == ""


def test_prep_refuses_a_fat_boot_sector_in_sector_1() -> None:
    parts = _plan9_disk(300 * MiB)
    parts["plan9"].write_sectors(1, b"\xeb\x3c\x90" + bytes(509))
    with pytest.raises(LayoutError, match="fat partition"):
        prep.prep_auto(parts, ["9fat", "nvram", "fs"])


def test_prep_existing_table_is_kept_without_b() -> None:
    parts = _plan9_disk(300 * MiB)
    prep.write_table(parts, [P("fs", 2, 1000)])
    out: list[str] = []
    table = prep.prep_auto(parts, ["9fat", "fs"], blank=False, output=out.append)
    assert table == [P("fs", 2, 1000)]
    assert out == ["partitions already exist; not repartitioning\n"]


# ---------------------------------------------------------------------------------------------
# Explicit tables and the editor
# ---------------------------------------------------------------------------------------------
def test_write_table_explicit_parts_and_registration() -> None:
    parts = _plan9_disk(300 * MiB)
    table = prep.write_table(parts, [P("9fat", 0, 2048), P("fs", 4096, 614368)])
    assert table == [P("9fat", 0, 2048), P("fs", 4096, 614368)]
    assert _table_text(parts) == "part 9fat 0 2048\npart fs 4096 614368\n"
    assert ("fs", 32 + 4096, 32 + 614368) in list(parts)


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ([P("fs", 0, 100)], "overlaps with the pbs and/or the partition table"),
        ([P("fs", 1, 100)], "overlaps with the pbs"),
        ([P("a", 2, 100), P("b", 50, 200)], 'start sector in partition "a"'),
        ([P("a", 100, 200), P("b", 50, 150)], "end out of range"),
        ([P("a", 2, 614369)], "end out of range"),  # past the partition's 614368 sectors
        ([P("a", 614368, 614369)], "start out of range"),
        ([P("a", 5, 5)], "size zero partition"),
        ([P("a b", 2, 5)], "bad character in name"),
        ([P("a/b", 2, 5)], "bad character in name"),
        ([P("", 2, 5)], "partition has no name"),
        ([P("a", 2, 5), P("a", 6, 9)], 'already have partition with name "a"'),
    ],
)
def test_write_table_validation(partitions: list[Plan9Partition], message: str) -> None:
    parts = _plan9_disk(300 * MiB)
    with pytest.raises(LayoutError, match=message):
        prep.write_table(parts, partitions)
    assert _table_text(parts) == ""
    assert [name for name, _, _ in parts] == ["plan9"]


def test_write_table_longer_than_a_sector_is_refused() -> None:
    parts = _plan9_disk(300 * MiB)
    many = [P(f"p{i:02d}", 2 + i * 1000, 2 + (i + 1) * 1000) for i in range(30)]
    with pytest.raises(LayoutError, match="do not fit in one 512-byte sector"):
        prep.write_table(parts, many)


def test_prep_script_sectors_and_suffixes() -> None:
    parts = _plan9_disk(300 * MiB)
    out: list[str] = []
    table = prep.prep_script(
        parts, "a 9fat 0 10M\na nvram . .+1\na fs . $\np\nw\nq\n", output=out.append
    )
    # 10M = 10485760/512 = 20480 sectors; `.` follows each add; `$` = end of the gap
    assert table == [P("9fat", 0, 20480), P("nvram", 20480, 20481), P("fs", 20481, 614368)]
    # cmdsum: width 9 = digits of 314556416 bytes (614368 sectors)
    assert "' 9fat                 0 20480     (20480 sectors, 10.00 MB)\n" in "".join(out)


def test_prep_script_errors_carry_the_line() -> None:
    parts = _plan9_disk(300 * MiB)
    with pytest.raises(LayoutError, match=r"^plan9\.prep:2: overlaps with the pbs"):
        prep.prep_script(parts, "a nvram 2 3\na fs 1 2\nw\n", source="plan9.prep")


# ---------------------------------------------------------------------------------------------
# Reading tables
# ---------------------------------------------------------------------------------------------
def test_unpack_table_as_prep_reads_it() -> None:
    sector = b"part 9fat 0 0x10\n\npart  fs\t16 100\r\n".ljust(512, b"\0")
    assert unpack_table(sector) == [P("9fat", 0, 16), P("fs", 16, 100)]  # base 0 numbers
    assert unpack_table(b"no table here".ljust(512, b"\0")) == []


def test_unpack_table_strict_and_lenient() -> None:
    bad = b"part fs 10 5\npart other 20 30\n".ljust(512, b"\0")
    with pytest.raises(ImageFormatError, match="start 10 is not below end 5"):
        unpack_table(bad)
    assert unpack_table(bad, strict=False) == [P("other", 20, 30)]  # prep skips the line
    junk = b"part fs 1x 30\n".ljust(512, b"\0")
    with pytest.raises(ImageFormatError, match="numbers"):
        unpack_table(junk)
    assert unpack_table(junk, strict=False) == [P("fs", 1, 30)]  # strtoll's prefix
    dup = b"part fs 2 3\npart fs 4 5\n".ljust(512, b"\0")
    with pytest.raises(ImageFormatError, match="already have"):
        unpack_table(dup, strict=False)
    overlap = b"part a 2 10\npart b 5 20\n".ljust(512, b"\0")
    with pytest.raises(ImageFormatError, match="overlaps"):
        unpack_table(overlap)
    with pytest.raises(ImageFormatError, match="outside"):
        unpack_table(b"part a 2 10\n".ljust(512, b"\0"), secs=8)


def test_table_round_trips_through_pack() -> None:
    table = [P("9fat", 0, 204800), P("nvram", 204800, 204801), P("fs", 204801, 7717185)]
    assert unpack_table(prep.pack_table(table)) == table


def test_prep_autopartition_arm64_qcow2_3770mb(tmp_path: Path) -> None:
    with open_disk("raw", 3770 * MiB, tmp_path) as parts:
        _, table = make_layout(parts, "reform")  # the reform script at 3770 MiB
        registered = list(parts)
    # plan9 = 201600..7717248 (25..957 cylinders of 8064): secs 7515648; nvram 1;
    # fs would end at 3 + 7515647 = 7515650 > secs, so it stops at 7515647
    assert table == [P("nvram", 2, 3), P("fs", 3, 7515647)]
    assert registered[2:] == [("nvram", 201602, 201603), ("fs", 201603, 7717247)]


# ---------------------------------------------------------------------------------------------
# The editor's expression language (calc.y) and command lines (tokenize)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("0x10", 16),  # strtoull base 0: hex
        ("010", 8),  # ... and a leading 0 is octal
        (".", 100),  # dot
        ("$", 1000),  # dollar
        ("$-1", 999),
        ("10%", 200),  # FRAC: size*10/100 with size 2000
        ("-5%", -100),  # unary minus binds before '%': (-5)%
        ("2*3%", 120),  # '%' binds tighter than '*': 2*(3%)
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("7/2", 3),
        ("-7/2", -3),  # C division truncates toward zero
        ("7/-2", -3),
        ("- -7", 7),
        ("8-2-1", 5),  # left associative
        ("64/4/2", 8),
        ("1k", 2),  # K suffix: 1024 bytes / unit 512
        ("1K", 2),
        ("3m", 6144),
        ("1g", 2097152),
        ("1t", 2147483648),
        ("1000", 1000),
        ("  4 +\t4 ", 8),
        ("1023k", 2046),  # 1047552/512
        ("1025", 1025),
        ("01777", 1023),
        ("1b", None),  # no 'b' suffix: NUMBER then 'b' is a syntax error
        ("", None),
        ("1 2", None),
        ("(1", None),
        ("0x", None),
        ("+1", None),
        ("1/0", "division by zero"),
        ("1/(2-2)", "division by zero"),
    ],
)
def test_parse_expr(text: str, value: int | str | None) -> None:
    from imagebuild.partition.calc import CalcError, parse_expr

    if isinstance(value, int):
        assert parse_expr(text, 100, 1000, 2000, 512) == value
    else:
        with pytest.raises(CalcError, match=value or "syntax error"):
            parse_expr(text, 100, 1000, 2000, 512)


def test_parse_expr_fdisk_units_round_down() -> None:
    """In fdisk the unit is a cylinder: 100M over 4032*512 bytes is 50, not 50.79."""
    from imagebuild.partition.calc import parse_expr

    assert parse_expr(".+100M", 0, 957, 957, 4032 * 512) == 50
    assert parse_expr("4M", 0, 957, 957, 4032 * 512) == 2
    assert parse_expr("4M", 0, 957, 957, 8064 * 512) == 1


def _trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _s64(x: int) -> int:
    """Two's-complement wrap to 64 bits, as calc.y's vlong arithmetic does in C."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def _c_eval(tree: object, size: int) -> int:
    """A reference evaluator over explicit trees, with C's truncating division and every
    step of the arithmetic wrapped to 64 bits (vlong)."""
    if isinstance(tree, int):
        return tree
    assert isinstance(tree, tuple)
    op, *args = tree
    if op == "neg":
        return _s64(-_c_eval(args[0], size))
    if op == "pct":
        return _s64(_trunc(_s64(size * _c_eval(args[0], size)), 100))
    a, b = (_c_eval(x, size) for x in args)
    if op == "/":
        return _s64(_trunc(a, b))
    return _s64({"+": a + b, "-": a - b, "*": a * b}[str(op)])


def _render(tree: object) -> str:
    if isinstance(tree, int):
        return str(tree)
    assert isinstance(tree, tuple)
    op, *args = tree
    if op == "neg":
        return f"-({_render(args[0])})"
    if op == "pct":
        return f"({_render(args[0])})%"
    return f"({_render(args[0])}{op}{_render(args[1])})"


def test_parse_expr_matches_a_reference_on_random_trees() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from imagebuild.partition.calc import parse_expr

    leaves = st.integers(min_value=1, max_value=10**6)

    def extend(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
        return st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*"]), children, children),
            st.tuples(st.just("/"), children, leaves),
            st.tuples(st.just("neg"), children),
            st.tuples(st.just("pct"), children),
        )

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(leaves, extend, max_leaves=8))
    def check(tree: object) -> None:
        assert parse_expr(_render(tree), 0, 0, 1000, 512) == _c_eval(tree, 1000)

    check()


def test_parse_expr_wraps_at_64_bits_like_calc_y() -> None:
    """The case a reference with unbounded integers got wrong: the product overflows."""
    from imagebuild.partition.edit import parse_expr

    tree = ("/", ("*", ("*", 15801, 24879), ("*", 79242, 296086)), 3)
    assert _render(tree) == "(((15801*24879)*(79242*296086))/3)"
    assert parse_expr(_render(tree), 0, 0, 1000, 512) == _c_eval(tree, 1000)
    assert _c_eval(tree, 1000) != (15801 * 24879 * 79242 * 296086) // 3


def test_tokenize_quotes_like_rc() -> None:
    from imagebuild.plan9.libc import tokenize

    assert tokenize("t p1 'XENIX USR'") == ["t", "p1", "XENIX USR"]
    assert tokenize("  a\tp1  . $ ") == ["a", "p1", ".", "$"]
    assert tokenize("a 'it''s'") == ["a", "it's"]
    assert len(tokenize(" ".join("x" * 12), 10)) == 10  # edit.c runcmd: char *f[10]


def test_fdisk_type_name_with_a_space_needs_quotes() -> None:
    parts = _plan9_disk(300 * MiB)
    entries = fdisk.fdisk_script(
        PartFS(parts.disk), "t p1 'xenix usr'\nw\n", blank=False
    )
    assert entries[0].type == 0x03  # XENIX USR


def test_non_utf8_table_is_a_format_error_for_every_reader(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """9.9: one byte that is not UTF-8 in sector 1 of the plan9 partition: one line, exit 1."""
    import shutil

    from imagebuild.cli import main
    from imagebuild.container.qcow2.image import Qcow2Image
    from imagebuild.disk.device import BlockDevice
    from imagebuild.partition.dostable import read_mbr
    from imagebuild.partition.sector0 import TYPE_PLAN9

    image = tmp_path / "bad.qcow2"
    shutil.copyfile(built["amd64.qcow2"], image)
    with Qcow2Image.open(image, writable=True) as qcow:
        disk = BlockDevice(qcow.data, name=image.name)
        plan9 = next(e for e in read_mbr(disk) if e.type == TYPE_PLAN9)
        table = (plan9.lba + 1) * 512
        assert disk.pread(9, table) == b"part 9fat"
        disk.pwrite(b"\xff", table + 5)
    for argv in (["inspect", str(image)], ["ls", str(image), "9fat:/"],
                 ["cat", str(image), "9fat:plan9.ini"], ["fsck", str(image)],
                 ["customize", str(image), "-o", str(tmp_path / "c.qcow2")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err == ("imagebuild: bad.qcow2 plan9: partition table: byte 0xff at offset 5 "
                       "of sector 1 is not UTF-8\n"), argv
    assert not (tmp_path / "c.qcow2").exists()
    # prep's own reading (strict=False) keeps going, as prep does
    with Qcow2Image.open(image) as qcow:
        sector = BlockDevice(qcow.data).pread(512, table)
    assert [p.name for p in unpack_table(sector, strict=False)] == ["\ufffdfat", "nvram", "fs"]


def test_parse_expr_nesting_limit_and_suffix_end() -> None:
    """calc.py: parentheses nest at most MAX_NESTING deep (one line, no RecursionError);
    a k/m/g/t suffix ends its number and nothing after it is skipped."""
    from imagebuild.partition.calc import MAX_NESTING, CalcError, parse_expr

    deep = "(" * MAX_NESTING + "1" + ")" * MAX_NESTING
    assert parse_expr(deep, 0, 0, 0, 512) == 1
    assert parse_expr(f"{deep}+{deep}", 0, 0, 0, 512) == 2  # depth is nesting, not count
    with pytest.raises(CalcError, match=f"^syntax error: parentheses nested more than "
                                        f"{MAX_NESTING} deep$"):
        parse_expr("(" + deep + ")", 0, 0, 0, 512)
    with pytest.raises(CalcError, match=r"^syntax error: parentheses nested"):
        parse_expr("(" * 3000 + "1" + ")" * 3000, 0, 0, 0, 512)  # 9.13's 3000 parentheses
    assert parse_expr("1k+1", 0, 0, 0, 512) == 3
    with pytest.raises(CalcError, match=r"^syntax error$"):
        parse_expr("1+", 0, 0, 0, 512)
    with pytest.raises(CalcError, match=r"^division by zero$"):
        parse_expr("1/0", 0, 0, 0, 512)


def test_parse_expr_refusals_as_calc_y_words_them() -> None:
    """calc.y: yyparse() reads the whole text before eval() divides, so a syntax error anywhere
    wins over a zero divisor; each refusal is yyerror's exact string; the nesting bound counts
    open parentheses only (a closed group gives back exactly its one level)."""
    from imagebuild.partition.calc import MAX_NESTING, CalcError, parse_expr

    for text in ("1/0+", "1/0A", "1/0)", "(1/0", "1/0 2", "0x", "1 2", "1)", "1/0b"):
        with pytest.raises(CalcError, match=r"^syntax error$"):
            parse_expr(text, 0, 0, 1000, 512)
    for text in ("1/0", "2/(1-1)+3", "1/0%", "(1/0)*5", "8/2/0", "-1/0"):
        with pytest.raises(CalcError, match=r"^division by zero$"):
            parse_expr(text, 0, 0, 1000, 512)
    deep = "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1)
    for before in ("(1)+", "(1)+(2)+", "((1))*"):
        with pytest.raises(CalcError, match=r"^syntax error: parentheses nested more than"):
            parse_expr(before + deep, 0, 0, 1000, 512)
