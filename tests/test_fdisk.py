"""disk/fdisk: golden MBR layouts of the dist mkfile's targets, derived by hand from fdisk.c.

Every expected number below comes from these rules (sys/src/cmd/disk/prep/fdisk.c,
sys/src/libdisk/disk.c), with the disk opened through partfs:

* geometry: partfs's ctl says only `geometry NSECT 512`, sector 0 has the
  boot signature but no used entry yet, so libdisk guesses: the first (h, s)
  of (64,32) (64,63) (128,63) (255,63) with 1024*h*s >= secs, else 255/63.
* sec2cyl = h*s; the editor's unit is a cylinder; end = secs / sec2cyl.
* -a (autopart): the whole gap 0..end; a partition starting at cylinder 0
  starts at sector s (the first track is the boot code's); active 0x80.
* scripts: `N M` suffix = N MiB / cylinder bytes, rounded down; `.` = dot
  (end of the last added partition); `$` = the end of the free gap.
* CHS (writechs): s = lba%s+1, h = lba/s%h, c = lba/(h*s); c >= 1024 gives
  1023/h-1/s; bytes are h, s|(c>>2 & 0xC0), c & 0xFF.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mbr_helpers import (
    PI_SCRIPT,
    STORAGE_KINDS,
    GiB,
    MiB,
    SparseStorage,
    make_layout,
    open_disk,
    parted_print,
    sfdisk_dump,
)

from imagebuild.disk.device import BlockDevice, BytesStorage, PartFS, RawFile
from imagebuild.errors import ImageBuildError, ImageFormatError, LayoutError
from imagebuild.partition import fdisk, mbr
from imagebuild.partition.dostable import read_mbr, read_partitions
from imagebuild.partition.parted_check import verify_with_libparted
from imagebuild.partition.sector0 import Tentry, encode_chs

EMPTY = Tentry()


def blank_disk(size: int) -> PartFS:
    parts = PartFS(BlockDevice(SparseStorage(size)))
    mbr.install_bootcode(parts["data"])
    return parts


# ---------------------------------------------------------------------------------------------
# Golden layouts
# ---------------------------------------------------------------------------------------------
def test_fdisk_auto_amd64_qcow2_3770mb() -> None:
    parts = blank_disk(3770 * MiB)  # 7720960 sectors
    entries = fdisk.fdisk_auto(parts)
    assert entries[0] == Tentry(
        active=0x80,  # autopart: active, no other partition is
        start_chs=bytes((1, 1, 0)),  # lba 63: c 0, h 63/63%128 = 1, s 63%63+1 = 1
        type=0x39,  # Type9
        # lba 7717247: c 7717247/8064 = 956, h 122495%128 = 127, s 62+1 = 63;
        # byte 2 = 63 | (956>>2 & 0xC0) = 0xFF, byte 3 = 956 & 0xFF = 0xBC
        end_chs=bytes((127, 0xFF, 0xBC)),
        lba=63,  # cylinder 0 -> skip the first track: s = 63 (guess: 128 heads, 63 sectors)
        size=7717185,  # end = 7720960/8064 = 957 cylinders; 957*8064 - 63
    )
    assert entries[1:] == [EMPTY, EMPTY, EMPTY]
    # fdisk's ctldiff: `part plan9 63 7717248` (types[0x39].name = "plan9")
    assert list(parts) == [("plan9", 63, 7717248)]


def test_fdisk_auto_generic_1885mb() -> None:
    parts = blank_disk(1885 * MiB)  # 3860480 sectors
    entries = fdisk.fdisk_auto(parts)
    # guess: 1024*64*32 < 3860480 <= 1024*64*63 -> h 64, s 63, sec2cyl 4032; end = 957
    assert entries[0] == Tentry(
        active=0x80,
        start_chs=bytes((1, 1, 0)),  # lba 63 -> c 0, h 1, s 1
        type=0x39,
        end_chs=bytes((63, 0xFF, 0xBC)),  # lba 3858623 -> c 956, h 61247%64 = 63, s 63
        lba=63,
        size=3858561,  # 957*4032 - 63
    )
    assert list(parts) == [("plan9", 63, 3858624)]


def test_fdisk_auto_generic_300mb() -> None:
    parts = blank_disk(300 * MiB)  # 614400 sectors
    entries = fdisk.fdisk_auto(parts)
    # guess: 614400 <= 1024*64*32 -> h 64, s 32, sec2cyl 2048; end = 300
    assert entries[0] == Tentry(
        active=0x80,
        start_chs=bytes((1, 1, 0)),  # lba 32 -> c 0, h 1, s 1
        type=0x39,
        # lba 614399 -> c 299, h 19199%64 = 63, s 31+1 = 32; 32 | (299>>2 & 0xC0 = 0x40) = 0x60
        end_chs=bytes((63, 0x60, 0x2B)),  # 299 & 0xFF = 0x2B
        lba=32,  # one track of 32 sectors
        size=614368,  # 300*2048 - 32
    )
    assert list(parts) == [("plan9", 32, 614400)]


def test_fdisk_script_pi_img_1885mb() -> None:
    parts = blank_disk(1885 * MiB)
    entries = fdisk.fdisk_script(parts, PI_SCRIPT)
    # h 64, s 63: one cylinder = 4032 sectors = 2064384 bytes
    assert entries[0] == Tentry(
        active=0x80,  # `A p1`
        start_chs=bytes((1, 1, 0)),  # lba 63
        type=0x0B,  # `t p1 FAT32`
        end_chs=bytes((63, 0x3F, 49)),  # lba 201599 -> c 49, h 3199%64 = 63, s 63
        lba=63,  # `.` = 0 -> cylinder 0 -> sector s = 63
        size=201537,  # `.+100M` = 104857600/2064384 = 50 cylinders -> 201600 - 63
    )
    assert entries[1] == Tentry(
        active=0,
        start_chs=bytes((0, 1, 50)),  # lba 201600 -> c 50, h 0, s 1
        type=0x39,  # `t p2 PLAN9` (cmdadd makes Type9 already)
        end_chs=bytes((63, 0xFF, 0xBC)),  # lba 3858623 -> c 956
        lba=201600,  # `.` = 50 (dot after `a p1`) * 4032
        size=3657024,  # `$` = 957 (end of the gap) -> 3858624 - 201600
    )
    assert entries[2:] == [EMPTY, EMPTY]
    # FAT32 registers as "dos", PLAN9 as "plan9"
    assert list(parts) == [("dos", 63, 201600), ("plan9", 201600, 3858624)]


def test_partfs_names_reads_back_what_fdisk_w_registered() -> None:
    parts = blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, PI_SCRIPT)
    assert fdisk.partfs_names(parts["data"]) == [("dos", 63, 201600), ("plan9", 201600, 3858624)]
    parts = blank_disk(3770 * MiB)
    fdisk.fdisk_auto(parts)
    assert fdisk.partfs_names(parts["data"]) == [("plan9", 63, 7717248)]


def test_fdisk_script_reform_img_1885mb() -> None:
    parts = blank_disk(1885 * MiB)
    entries = fdisk.fdisk_script(parts, PI_SCRIPT.replace(". .+100M", "4M 100M"))
    assert entries[0] == Tentry(
        active=0x80,
        start_chs=bytes((0, 1, 2)),  # lba 8064 -> c 2, h 128%64 = 0, s 1
        type=0x0B,
        end_chs=bytes((63, 0x3F, 49)),  # lba 201599
        lba=8064,  # 4M = 4194304/2064384 = 2 cylinders (not 0: no track skipped) -> 2*4032
        size=193536,  # 100M = 50 cylinders -> 201600 - 8064
    )
    assert (entries[1].lba, entries[1].size, entries[1].type) == (201600, 3657024, 0x39)
    assert list(parts) == [("dos", 8064, 201600), ("plan9", 201600, 3858624)]


def test_fdisk_script_arm64_qcow2_3770mb() -> None:
    """The reform script at 3770 MiB (arm64.qcow2): 128 heads, cylinder = 8064 sectors."""
    parts = blank_disk(3770 * MiB)
    entries = fdisk.fdisk_script(parts, PI_SCRIPT.replace(". .+100M", "4M 100M"))
    # 4M = 4194304/4128768 = 1 cylinder; 100M = 104857600/4128768 = 25 cylinders
    assert entries[0] == Tentry(
        active=0x80,
        start_chs=bytes((0, 1, 1)),  # lba 8064 -> c 1, h 128%128 = 0, s 1
        type=0x0B,
        end_chs=bytes((127, 0x3F, 24)),  # lba 201599 -> c 24, h 3199%128 = 127, s 63
        lba=8064,
        size=193536,  # 25*8064 - 8064
    )
    assert entries[1] == Tentry(
        active=0,
        start_chs=bytes((0, 1, 25)),  # lba 201600 -> c 25, h 3200%128 = 0, s 1
        type=0x39,
        end_chs=bytes((127, 0xFF, 0xBC)),  # lba 7717247 -> c 956
        lba=201600,
        size=7515648,  # 957*8064 - 201600
    )
    assert list(parts) == [("dos", 8064, 201600), ("plan9", 201600, 7717248)]


def test_fdisk_script_iso_esp_last_cylinder() -> None:
    """The %.pc.iso rule: `a p1 $-1 $`, `t p1 ESP`, `A p1` -> partfs name "esp"."""
    parts = blank_disk(100 * MiB)  # 204800 sectors: h 64, s 32, 100 cylinders of 2048
    entries = fdisk.fdisk_script(parts, "a p1 $-1 $\nt p1 ESP\nA p1\nw\nq\n")
    assert (entries[0].lba, entries[0].size) == (99 * 2048, 2048)  # cylinder 99..100
    assert (entries[0].type, entries[0].active) == (0xEF, 0x80)
    assert list(parts) == [("esp", 202752, 204800)]


@pytest.mark.parametrize(
    ("size", "lba", "length", "end_chs"),
    [
        # 1 GiB: 2097152 <= 1024*64*32 -> 64/32; end 1024; lba 2097151 -> c 1023 (still < 1024)
        (1 * GiB, 32, 2097120, bytes((63, 0x20 | 0xC0, 0xFF))),
        # 20 GiB: beyond 1024*255*63 -> 255/63, cylinder 16065; end = 41943040/16065 = 2610;
        # c >= 1024 -> 1023/254/63 -> bytes 254, 63|0xC0, 0xFF
        (20 * GiB, 63, 2610 * 16065 - 63, bytes((254, 0xFF, 0xFF))),
        # 500 GiB: end = 1048576000/16065 = 65270 cylinders
        (500 * GiB, 63, 65270 * 16065 - 63, bytes((254, 0xFF, 0xFF))),
    ],
)
def test_fdisk_auto_large_disks_chs_saturates(
    size: int, lba: int, length: int, end_chs: bytes
) -> None:
    parts = blank_disk(size)
    entries = fdisk.fdisk_auto(parts)
    assert (entries[0].lba, entries[0].size, entries[0].end_chs) == (lba, length, end_chs)
    assert entries[0].start_chs == bytes((1, 1, 0))


def test_encode_chs_saturates_past_cylinder_1023() -> None:
    assert encode_chs(1023 * 16065, 255, 63) == bytes((0, 0xC1, 0xFF))  # c 1023 exactly
    assert encode_chs(1024 * 16065, 255, 63) == bytes((254, 0xFF, 0xFF))  # 1023/254/63


# ---------------------------------------------------------------------------------------------
# Independent readers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["amd64", "pi"])
def test_sfdisk_and_parted_read_our_table(target: str, tmp_path: Path) -> None:
    size = 3770 * MiB if target == "amd64" else 1885 * MiB
    with open_disk("raw", size, tmp_path) as parts:
        entries, _ = make_layout(parts, target)
        verify_with_libparted(parts["data"], entries)
    image = tmp_path / "disk.img"
    dump = sfdisk_dump(image)
    rows = parted_print(image)
    used = [e for e in entries if e.used]
    assert len(dump) == len(rows) == len(used)
    for entry, row, prow in zip(used, dump, rows, strict=True):
        assert int(row["start"]) == entry.lba
        assert int(row["size"]) == entry.size
        assert int(row["type"], 16) == entry.type
        assert ("bootable" in row) == entry.bootable
        # parted: Number Start End Size Type [File system] [Flags]
        assert prow[1] == f"{entry.lba}s"
        assert prow[2] == f"{entry.lba + entry.size - 1}s"
        assert prow[3] == f"{entry.size}s"
        assert prow[4] == "primary"
        assert ("boot" in prow[5:]) == entry.bootable


def test_verify_with_libparted_catches_a_lie() -> None:
    parts = blank_disk(300 * MiB)
    entries = fdisk.fdisk_auto(parts)
    wrong = [Tentry(e.active, e.start_chs, e.type, e.end_chs, e.lba, e.size + 1)
             for e in entries[:1]] + entries[1:]
    with pytest.raises(LayoutError, match="libparted"):
        verify_with_libparted(parts["data"], wrong)
    unbooted = [Tentry(0, e.start_chs, e.type, e.end_chs, e.lba, e.size) for e in entries]
    with pytest.raises(LayoutError, match="boot"):
        verify_with_libparted(parts["data"], unbooted)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("target", ["amd64", "generic", "pi", "reform"])
def test_layout_identical_on_every_storage(kind: str, target: str, tmp_path: Path) -> None:
    size = 3770 * MiB if target == "amd64" else 1885 * MiB
    with open_disk(kind, size, tmp_path) as parts:
        entries, table = make_layout(parts, target)
        head = parts["data"].pread(2 * 512, 0)
        plan9 = parts["plan9"]
        table_sector = plan9.read_sectors(1)
        registered = list(parts)
    with open_disk("sparse", size, tmp_path) as reference:
        ref_entries, ref_table = make_layout(reference, target)
        assert (entries, table) == (ref_entries, ref_table)
        assert head == reference["data"].pread(2 * 512, 0)
        assert table_sector == reference["plan9"].read_sectors(1)
        assert registered == list(reference)


# ---------------------------------------------------------------------------------------------
# Reading tables back
# ---------------------------------------------------------------------------------------------
def test_read_mbr_round_trips_pack() -> None:
    parts = blank_disk(1885 * MiB)
    written = fdisk.fdisk_script(parts, PI_SCRIPT)
    again = read_mbr(parts["data"])
    assert again == written
    assert Tentry.unpack(written[0].pack()) == written[0]
    assert written[0].start_chs_values == (0, 1, 1)  # fdisk -v prints c/h/s 0/1/1
    assert written[1].end_chs_values == (956, 63, 63)
    assert written[0].type_name == "FAT32"


def test_read_mbr_without_signature_is_an_error() -> None:
    with pytest.raises(ImageFormatError, match="no master boot record"):
        read_mbr(BlockDevice(BytesStorage(1 << 20)))


def test_fdisk_needs_a_master_boot_record_first() -> None:
    parts = PartFS(BlockDevice(BytesStorage(4 * MiB)))
    with pytest.raises(LayoutError, match="did not find master boot record"):
        fdisk.fdisk_auto(parts)
    assert parts["data"].pread(512, 0) == bytes(512)


# ---------------------------------------------------------------------------------------------
# The script language
# ---------------------------------------------------------------------------------------------
def _script_error(script: str, size: int = 1885 * MiB) -> tuple[str, PartFS, bytes]:
    parts = blank_disk(size)
    before = parts["data"].pread(512, 0)
    with pytest.raises(LayoutError) as err:
        fdisk.fdisk_script(parts, script, source="pi.fdisk")
    return str(err.value), parts, before


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("a p1 0 10\na p2 5 20\nw\n", "pi.fdisk:2: start cylinder in partition \"p1\""),
        ("a p1 0 10\na p2 12 $+1\nw\n", "pi.fdisk:2: end out of range"),
        ("a p1 958 959\n", "pi.fdisk:1: start out of range"),  # end = 957 cylinders
        ("a p1 0 0\n", "pi.fdisk:1: size zero partition"),
        ("a p1 0 10\nt p1 NOSUCH\nw\n", "pi.fdisk:2: unknown partition type 'NOSUCH'"),
        ("a p1 0 (10\n", "pi.fdisk:1: syntax error"),
        ("a p1 0 10/0\n", "pi.fdisk:1: division by zero"),
        ("a x1 0 10\n", "pi.fdisk:1: name must be pN or sN"),
        ("a p1 0 10\na p1 10 20\n", 'pi.fdisk:2: already have partition with name "p1"'),
        ("a p1 0 10\nA s1\n", "pi.fdisk:2: cannot set secondary partition active"),
        ("A p9\n", "pi.fdisk:1: unknown partition"),
        ("d p1\n", "pi.fdisk:1: no such partition"),
        ("zz\n", "pi.fdisk:1: unknown command 'zz'"),
        ("a p1 0 10\nq\n", "pi.fdisk:2: changes unwritten"),
        ("a p1 0 10\n", "pi.fdisk:1: changes not written"),
        ("a p1 0 10 20\n", "pi.fdisk:1: args"),
        ("a p1 1 2\na p2 3 4\na p3 5 6\na p4 7 8\na p5 9 10\n", "pi.fdisk:5: no room"),
    ],
)
def test_fdisk_script_errors_name_line_and_write_nothing(script: str, message: str) -> None:
    text, parts, before = _script_error(script)
    assert text.startswith(message), text
    assert parts["data"].pread(512, 0) == before
    assert list(parts) == []


def test_fdisk_script_error_after_w_still_writes_nothing() -> None:
    text, parts, before = _script_error("a p1 0 10\nw\nt p1 BOGUS\nw\nq\n")
    assert text.startswith("pi.fdisk:3:")
    assert parts["data"].pread(512, 0) == before
    assert list(parts) == []


def test_fdisk_script_prompts_read_the_next_lines() -> None:
    """`a p1` with no start/end reads them from the following lines, as from stdin."""
    parts = blank_disk(1885 * MiB)
    entries = fdisk.fdisk_script(parts, "a p1\n0\n50\nt p1\n?\nfat32\nw\n")
    assert (entries[0].lba, entries[0].size, entries[0].type) == (63, 201537, 0x0B)


def test_fdisk_script_last_line_without_newline_runs() -> None:
    parts = blank_disk(1885 * MiB)
    entries = fdisk.fdisk_script(parts, "a p1 0 $\nw")
    assert entries[0].used


def test_fdisk_print_matches_cmdsum_format() -> None:
    parts = blank_disk(1885 * MiB)
    out: list[str] = []
    fdisk.fdisk_script(parts, PI_SCRIPT, output=out.append)
    text = "".join(out)
    # width = digits of the disk size in bytes (1976565760 -> 10)
    assert "'* p1                    0 50         (50 cylinders, 98.43 MB) FAT32\n" in text
    assert "'  p2                   50 957        (907 cylinders, 1.74 GB) PLAN9\n" in text
    # the table before the script: one empty gap of 957 cylinders
    assert text.startswith("   empty                 0 957        (957 cylinders, 1.83 GB) \n")


def test_fdisk_ctl_print_lists_partfs_lines() -> None:
    parts = blank_disk(1885 * MiB)
    out: list[str] = []
    fdisk.fdisk_script(parts, PI_SCRIPT.replace("p\nw", "P\nw"), output=out.append)
    assert "part dos 63 201600\npart plan9 201600 3858624\n" in "".join(out)


def test_fdisk_names_are_made_unique() -> None:
    """plan9print(): plan9, plan9.1 (a name ending in a digit gets a dot), dos, dos1."""
    parts = blank_disk(1885 * MiB)
    fdisk.fdisk_script(
        parts, "a p1 0 10\nt p1 FAT16\na p2 . 20\nt p2 FAT32\na p3 . 30\na p4 . 40\nw\n"
    )
    assert [name for name, _, _ in parts] == ["dos", "dos1", "plan9", "plan9.1"]


def test_fdisk_logical_partitions_chain(tmp_path: Path) -> None:
    """`sN` partitions: an extended partition and a chain of EBRs that sfdisk follows."""
    with open_disk("raw", 300 * MiB, tmp_path) as parts:  # 64/32, cylinder 2048
        mbr.install_bootcode(parts["data"])
        entries = fdisk.fdisk_script(parts, "a p1 0 10\na s2 10 20\na s3 20 30\nw\n")
        # p1: 32..20480; s2: EBR at 20480, data 20512..40960; s3: EBR 40960, data 40992..61440;
        # then wrextend closes the chain with an empty EBR at 61440 and the extended
        # partition runs to the disk's end (614400), EXTENDED since 614400 < 1024 cylinders
        assert [(e.type, e.lba, e.size) for e in entries if e.used] == [
            (0x39, 32, 20448),
            (0x05, 20480, 614400 - 20480),
        ]
        logical = [p for p in read_partitions(parts["data"]) if not p.primary]
        assert [(p.start, p.end) for p in logical] == [(20512, 40960), (40992, 61440)]
        verify_with_libparted(parts["data"], entries)
        assert list(parts) == [
            ("plan9", 32, 20480), ("plan9.1", 20512, 40960), ("plan9.2", 40992, 61440)
        ]
    dump = sfdisk_dump(tmp_path / "disk.img")
    assert [(int(r["start"]), int(r["size"]), r["type"]) for r in dump] == [
        (32, 20448, "39"),
        (20480, 593920, "5"),
        (20512, 20448, "39"),
        (40992, 20448, "39"),
    ]


def test_fdisk_keeps_existing_partitions_without_b() -> None:
    parts = blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, PI_SCRIPT)
    fresh = PartFS(parts.disk)
    entries = fdisk.fdisk_script(fresh, "d p2\na p2 50 $\nt p2 LINUX\nw\n", blank=False)
    # read back as p1, p2; geometry now from the entries' end CHS (64 heads, 63 sectors)
    assert entries[0].type == 0x0B and entries[0].active == 0x80
    assert (entries[1].lba, entries[1].type) == (201600, 0x83)
    assert list(fresh) == [("dos", 63, 201600), ("linux", 201600, 3858624)]


def test_fdisk_auto_without_b_leaves_an_existing_plan9_partition() -> None:
    parts = blank_disk(1885 * MiB)
    fdisk.fdisk_script(parts, PI_SCRIPT)
    before = parts["data"].pread(512, 0)
    entries = fdisk.fdisk_auto(PartFS(parts.disk), blank=False)
    assert parts["data"].pread(512, 0) == before
    assert [e.type for e in entries if e.used] == [0x0B, 0x39]


def test_fdisk_refuses_gpt_protective_mbr(tmp_path: Path) -> None:
    image = tmp_path / "gpt.img"
    with RawFile.create(image, 8 * MiB):
        pass
    subprocess.run(["sfdisk", "-q", str(image)], input="label: gpt\n,,\n", text=True, check=True)
    with RawFile(image, writable=True) as raw, pytest.raises(ImageBuildError, match="GPT"):
        fdisk.fdisk_script(PartFS(BlockDevice(raw)), "p\n", blank=False)


def test_fdisk_refuses_a_looping_extended_chain() -> None:
    parts = blank_disk(300 * MiB)
    fdisk.fdisk_script(parts, "a s1 0 10\nw\n")
    data = parts["data"]
    # make the EBR at sector 32 link back to itself (xlba relative to the extended start)
    ebr = bytearray(data.read_sectors(32))
    link = Tentry(0, bytes(3), 0x05, bytes(3), 0, 100)
    ebr[446 + 16 : 446 + 32] = link.pack()
    data.write_sectors(32, bytes(ebr))
    with pytest.raises(ImageFormatError, match="loops"):
        read_partitions(data)


def test_fdisk_ctldiff_keeps_unchanged_partitions_and_their_subpartitions() -> None:
    """ctldiff(): a partfs part equal to one of ours stays, with everything inside it."""
    from imagebuild.partition import prep

    parts = blank_disk(1885 * MiB)
    fdisk.fdisk_auto(parts)
    prep.prep_auto(parts, ["9fat", "nvram", "fs"])
    registered = list(parts)
    fdisk.fdisk_auto(parts, blank=False)  # same plan9 partition: nothing to change
    assert list(parts) == registered
    # a different plan9 partition: the old one and the prep parts inside it go
    fdisk.fdisk_script(parts, "a p1 0 10\nt p1 FAT32\na p2 . $\nw\n")
    assert list(parts) == [("dos", 63, 40320), ("plan9", 40320, 3858624)]


def test_fdisk_script_ending_inside_a_prompt_still_needs_w() -> None:
    text, parts, before = _script_error("a p1 0 10\na p2\n10\n")  # the end prompt hits EOF
    assert text.startswith("pi.fdisk:3: changes not written"), text
    assert parts["data"].pread(512, 0) == before
