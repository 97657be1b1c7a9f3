"""Golden boot sectors for the FATs of the dist mkfile, each value derived from format.c.

The partitions (derived from fdisk.c autopart, prep.c autoxpart and edit.c's
parseexpr, and confirmed by test_fat_partitions_of_the_mkfile_pipeline):

  amd64.qcow2, 3770 MiB = 7720960 sectors: libdisk guesses 128 heads x 63 sectors
    (1024*64*63 < 7720960); fdisk -baw makes plan9 = [63, 957*8064); prep's 9fat
    (weight 10 of 21, max 100 MB) = 204800 sectors at plan9 sector 0: disk sectors
    63..204863.  The MBR entry's end CHS then gives format 128 heads, 63 sectors.
  generic 1885 MiB = 3860480 sectors: guessed 64x63; plan9 = [63, 957*4032);
    9fat = 204800 sectors at 63; geometry 64 heads, 63 sectors.
  generic 300 MiB = 614400 sectors: guessed 64x32; plan9 = [32, 614400) (614368
    sectors); prep gives fs its 200 MB minimum, nvram its 1-sector maximum, and
    9fat the rest: 204767 sectors at 32; geometry 64 heads, 32 sectors.
  pi.img, 1885 MiB: fdisk 'a p1 . .+100M' in 4032-sector cylinders: 100M = 50
    cylinders, start 0 -> 63: dos = [63, 201600), 201537 sectors; 64x63.
  reform.img, 1885 MiB: fdisk 'a p1 4M 100M': 4M = 4194304/2064384 = 2 cylinders,
    100M = 50 cylinders; a start past cylinder 0 is not moved: dos = [8064, 201600),
    193536 sectors; both entries end on head 63, sector 63: 64x63.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.fat.bpb import FsInfo
from imagebuild.fs.fat.dirent import lfn_checksum
from imagebuild.fs.fat.format import (
    DISK_TYPES,
    FatError,
    FatFile,
    FatParams,
    FatVolume,
    default_cluster_sectors,
    format_fat,
    plan_layout,
)

MiB = 1 << 20
TIMESTAMP = 1700000000
# A stand-in for 9front's /386/pbs: its jump (EB 58 90: code at 0x5A, after the
# FAT32 BPB), zeros where the BPB goes, then "code".
PBS = b"\xeb\x58\x90" + bytes(0x5A - 3) + bytes(range(1, 200))


def disk_with_partition(
    total: int, start: int, end: int, heads: int, sectors: int
) -> BlockDevice:
    """A disk whose MBR has one partition ending at (heads-1, sectors): libdisk's
    partitiongeometry() reads heads and sectors from there."""
    disk = BlockDevice(BytesStorage(total * 512), name="data")
    sector0 = bytearray(512)
    entry = bytes([0x80, 0, 0, 0, 0x39, heads - 1, 0xC0 | sectors, 0xFF])
    sector0[446 : 446 + 16] = entry + start.to_bytes(4, "little") + (end - start).to_bytes(
        4, "little"
    )
    sector0[510:512] = b"\x55\xaa"
    disk.pwrite(sector0, 0)
    return disk


def golden(**fields: object) -> FatParams:
    """FatParams of a FAT16 format writes with -d on a hard disk partition."""
    base: dict[str, object] = dict(
        jump=b"\xeb\x58\x90",  # the boot program's (ours and 9front's pbs)
        oem_name=b"Plan9.00",  # memmove(b->version, "Plan9.00", ...)
        bytes_per_sector=512,  # disk->secsize through partfs
        sectors_per_cluster=8,  # defcluster(~200000): secs/32768 = 6 -> next power of 2
        fat_count=2,  # b->nfats = 2
        root_entries=512,  # secs/200 sectors * 16 > 512: capped at 512 (32 sectors)
        total_sectors16=0,  # volsecs >= 1<<16
        media=0xF8,  # floppytype "hard"
        drive_number=0x80,  # getdriveno(): partfs path names no sdC0..sdD1
        reserved1=0,  # inside the 0x3E bytes format clears
        boot_signature=0x29,
        volume_id=0,  # FAT12/16: in the cleared area, never set
        label=b"CYLINDRICAL",  # format's default -l
        fs_type=b"FAT16   ",  # sprint(r, "FAT%d    ", fatbits)
    )
    base.update(fields)
    return FatParams(**base)  # type: ignore[arg-type]


CASES = {
    # name: (disk sectors, partition start, secs, heads, sectors/track, -r, golden params)
    "amd64.qcow2 9fat": (
        3770 * MiB // 512, 63, 204800, 128, 63, 2,
        golden(
            reserved_sectors=2,  # -r 2: sector 1 is prep's partition table
            fat_sectors16=100,  # (16*25572 + 4095)/4096, clusters converged at 25572
            sectors_per_track=63, heads=128, hidden_sectors=63, total_sectors32=204800,
        ),
    ),
    "generic 1885 MiB 9fat": (
        1885 * MiB // 512, 63, 204800, 64, 63, 2,
        golden(
            reserved_sectors=2, fat_sectors16=100,
            sectors_per_track=63, heads=64, hidden_sectors=63, total_sectors32=204800,
        ),
    ),
    "generic 300 MiB 9fat": (
        300 * MiB // 512, 32, 204767, 64, 32, 2,
        golden(
            reserved_sectors=2,
            fat_sectors16=100,  # clusters 2 + (204767-2-200-32)/8 = 25568 -> 100 sectors
            sectors_per_track=32, heads=64, hidden_sectors=32, total_sectors32=204767,
        ),
    ),
    "pi.img dos": (
        1885 * MiB // 512, 63, 201537, 64, 63, 1,
        golden(
            reserved_sectors=1,  # no -r
            fat_sectors16=99,  # clusters 2 + (201537-1-198-32)/8 = 25165 -> 99 sectors
            sectors_per_track=63, heads=64, hidden_sectors=63, total_sectors32=201537,
        ),
    ),
    "reform.img dos": (
        1885 * MiB // 512, 8064, 193536, 64, 63, 1,
        golden(
            reserved_sectors=1,  # no -r
            # defcluster(193536): 193536/32768 = 5 -> 8 sectors per cluster
            fat_sectors16=95,  # clusters 2 + (193536-1-190-32)/8 = 24166 -> (16*24166+4095)/4096
            sectors_per_track=63, heads=64,
            hidden_sectors=8064,  # disk->offset: the partition starts at cylinder 2
            total_sectors32=193536,
        ),
    ),
}

# (first FAT, root directory, cluster 2, cluster count) for each case:
# FAT at nresrv, root after 2 FATs, data after the 32 root sectors.
LAYOUTS = {
    "amd64.qcow2 9fat": (2, 202, 234, 25570),
    "generic 1885 MiB 9fat": (2, 202, 234, 25570),
    "generic 300 MiB 9fat": (2, 202, 234, 25566),
    "pi.img dos": (1, 199, 231, 25163),
    "reform.img dos": (1, 191, 223, 24164),
}


@pytest.mark.parametrize("case", CASES)
def test_fat_golden_boot_sector(case: str) -> None:
    _total, start, secs, heads, spt, reserved, expected = CASES[case]
    disk = disk_with_partition(start + secs + 8, start, start + secs, heads, spt)
    part = disk.slice(start, start + secs, "9fat")
    if reserved == 2:  # prep's table in sector 1 (format's sanity check wants -r 2)
        part.pwrite(b"part 9fat 0 204800\n".ljust(512, b"\0"), 512)
    params = format_fat(part, [FatFile("plan9.ini", b"x")], pbs=PBS, reserved=reserved,
                        timestamp=TIMESTAMP)
    assert params == expected
    boot = part.read_sectors(0)
    assert FatParams.unpack(boot) == expected
    assert boot[: 0x3E] == expected.pack()
    assert boot[0x3E:0x5A] == bytes(0x5A - 0x3E)  # the pbs's bytes there: zero
    assert boot[0x5A : len(PBS)] == PBS[0x5A:]  # the pbs's code, copied from 0x3E on
    assert boot[len(PBS) : 510] == bytes(510 - len(PBS))  # the old sector: zero
    assert boot[510:] == b"\x55\xaa"
    if reserved == 2:
        assert part.read_sectors(1).startswith(b"part 9fat")  # not touched
    fat, root, data, clusters = LAYOUTS[case]
    assert (params.first_fat_sector, params.first_root_sector, params.first_data_sector,
            params.cluster_count) == (fat, root, data, clusters)
    assert params.fat_bits == 16
    # FAT[0] = media, FAT[1] = 0xffff; plan9.ini in cluster 2, one cluster: EOF
    assert part.pread(6, fat * 512) == b"\xf8\xff\xff\xff\xff\xff"
    assert part.pread(6, (fat + params.fat_sectors) * 512) == b"\xf8\xff\xff\xff\xff\xff"
    assert part.pread(32, root * 512)[:11] == b"PLAN9   INI"
    assert part.pread(1, data * 512) == b"x"


def test_fat_golden_pi_files_and_alias() -> None:
    """pi.img's $fatfiles: one long name (LICENCE.broadcom); the check pass used alias id 0,
    so the commit pass writes LICENC~1.BRO; files placed in argument order."""
    _total, start, secs, heads, spt, _, _ = CASES["pi.img dos"]
    disk = disk_with_partition(start + secs, start, start + secs, heads, spt)
    part = disk.slice(start, start + secs, "dos")
    sizes = {"config.txt": 200, "cmdline.txt": 10, "bootcode.bin": 52456,
             "fixup_cd.dat": 3170, "start_cd.elf": 685412, "LICENCE.broadcom": 1494,
             "9pi": 4096 * 3, "9pi2": 1}
    files = [FatFile(n, bytes([i + 1]) * s) for i, (n, s) in enumerate(sizes.items())]
    format_fat(part, files, timestamp=TIMESTAMP)
    root = part.pread(12 * 32, 199 * 512)
    entries = [root[i : i + 32] for i in range(0, len(root), 32)]
    # "LICENCE.broadcom" is 16 UTF-16 units: two slots, 0x42 ("com") then 0x01
    assert [e[0] for e in entries[5:7]] == [0x42, 0x01]
    assert [e[11] for e in entries[5:7]] == [0x0F, 0x0F]
    assert entries[5][1:11] == "com".encode("utf-16-le") + b"\0\0\xff\xff"
    assert entries[6][1:11] == "LICEN".encode("utf-16-le")
    shorts = [e for e in entries if e[11] != 0x0F]
    assert [e[:11] for e in shorts] == [
        b"CONFIG  TXT", b"CMDLINE TXT", b"BOOTCODEBIN", b"FIXUP_CDDAT", b"START_CDELF",
        b"LICENC~1BRO", b"9PI        ", b"9PI2       ", bytes(11), bytes(11)]
    # the slots carry the alias's checksum
    assert entries[5][13] == entries[6][13] == lfn_checksum(b"LICENC~1BRO")
    # clusters: each file takes ceil(size/4096) clusters right after the previous one:
    # 1, 1, 13, 1, 168, 1, 3, 1
    starts = [int.from_bytes(e[26:28], "little") for e in shorts[:8]]
    assert starts == [2, 3, 4, 17, 18, 186, 187, 190]
    assert [int.from_bytes(e[28:32], "little") for e in shorts[:8]] == list(sizes.values())
    volume = FatVolume(part)
    assert [e.name for e in volume.listdir()] == ["CONFIG.TXT", "CMDLINE.TXT", "BOOTCODE.BIN",
                                                  "FIXUP_CD.DAT", "START_CD.ELF",
                                                  "LICENCE.broadcom", "9PI", "9PI2"]


def test_fat_partitions_of_the_mkfile_pipeline(tmp_path: Path) -> None:
    """The partition ranges above are what our disk/mbr, fdisk and prep make."""
    from imagebuild.disk.device import PartFS, RawFile
    from imagebuild.partition import fdisk, mbr, prep

    for mb, script, want in (
        (3770, None, ("9fat", 63, 204800, 128, 63)),
        (1885, None, ("9fat", 63, 204800, 64, 63)),
        (300, None, ("9fat", 32, 204767, 64, 32)),
        (1885, "a p1 . .+100M\nt p1 FAT32\na p2 . $\nt p2 PLAN9\nA p1\nw\nq\n",
         ("dos", 63, 201537, 64, 63)),
        (1885, "a p1 4M 100M\nt p1 FAT32\na p2 . $\nt p2 PLAN9\nA p1\nw\nq\n",
         ("dos", 8064, 193536, 64, 63)),
    ):
        with RawFile.create(tmp_path / f"{mb}.img", mb * MiB) as storage:
            disk = BlockDevice(storage)
            parts = PartFS(disk)
            mbr.install_bootcode(disk, None)
            if script is None:
                fdisk.fdisk_auto(parts)
                prep.prep_auto(parts, ["9fat", "nvram", "fs"])
            else:
                fdisk.fdisk_script(parts, script, source="pi")
                prep.prep_auto(parts, ["nvram", "fs"])
            part = parts[want[0]]
            g = part.geometry()
            assert (want[0], part.offset, part.secs, g.heads, g.sectors) == want


# -- the rules one by one ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("secs", "cluster"),
    [(0, 1), (65535, 1), (65536, 2), (98304, 4), (131072, 4), (163840, 8), (4194303, 128),
     (4194304, 128), (10**9, 128)],
)
def test_fat_defcluster(secs: int, cluster: int) -> None:
    # i = secs/32768; <=1 -> 1; >=128 -> 128; else round i up to a power of two
    assert default_cluster_sectors(secs) == cluster


def plan(secs: int, **kw: object) -> FatParams:
    return plan_layout(secs, 512, sectors_per_track=63, heads=16, hidden_sectors=63,
                       **kw).params  # type: ignore[arg-type]


def test_fat_floppy_type_3_5_hd() -> None:
    # -t 3½HD on a 2880-sector partition: the classic 1.44 MB floppy
    p = plan(2880, disk_type="3½HD")
    assert (p.media, p.sectors_per_track, p.heads, p.sectors_per_cluster) == (0xF0, 18, 2, 1)
    assert (p.root_entries, p.fat_sectors, p.fat_bits, p.total_sectors16) == (224, 9, 12, 2880)
    assert p.drive_number == 0  # getdriveno only for media 0xF8


def test_fat_fat32_reserved_grows_once_per_pass() -> None:
    # FAT32: nresrv++ at Tryagain in both dosfs() passes: -r 2 -> 4, FSInfo in sector 3
    result = plan_layout(81920, 512, sectors_per_track=63, heads=16, hidden_sectors=63,
                         reserved=2, cluster_sectors=1)
    p = result.params
    assert (p.fat_bits, p.reserved_sectors, p.fsinfo_sector, p.root_cluster) == (32, 4, 3, 2)
    assert (p.root_entries, p.fat_sectors16, p.total_sectors16) == (0, 0, 0)
    assert p.backup_boot_sector == 0 and p.fs_type == b"FAT32   "
    # root: secs/200 sectors capped at 32, whole clusters, allocated first (clusters 2..33)
    assert result.layout.root_sectors == 32
    assert result.fsinfo == FsInfo(free_clusters=result.layout.clusters - 33, next_free=33)


def test_fat_fat32_fat_grown_only_when_format_falls_short() -> None:
    # 81920 sectors, -c 1, -r 1 (3 reserved): format's 630 FAT sectors map 80640 entries,
    # but the data area has 80657 clusters: one more FAT sector (our deviation).
    short = plan(81920, cluster_sectors=1)
    assert short.fat_sectors == 631 and short.fat_entries >= short.cluster_count + 2
    # 2^21 sectors, -c 8: format converges on 2044 FAT sectors = 261632 entries for
    # 261632 data clusters (+2 reserved entries needed): grown by one sector.
    grown = plan(2**21, cluster_sectors=8)
    assert grown.fat_sectors == 2045 and grown.fat_entries >= grown.cluster_count + 2
    # 3000000 sectors, -c 8: format's 2924 sectors hold 374272 entries for 374268
    # clusters: format's value stands.
    kept = plan(3000000, cluster_sectors=8)
    assert kept.fat_sectors == 2924 and kept.cluster_count == 374268


def test_fat_width_selection_boundaries() -> None:
    # FAT12 while clusters+2 < 0xff7; FAT16 while < 0xfff7
    assert plan(4096 + 30, cluster_sectors=1).fat_bits == 12
    assert plan(4200, cluster_sectors=1).fat_bits == 16
    assert plan(66000, cluster_sectors=1).fat_bits == 16
    # format would make 66200 sectors FAT32 with 65176 clusters, which readers take for
    # FAT16: we keep FAT16, its volume shortened to 65524 clusters (docs/fat.md)
    twin = plan(66200, cluster_sectors=1)
    assert (twin.fat_bits, twin.cluster_count, twin.total_sectors) == (16, 65524, 66071)
    assert plan(66641, cluster_sectors=1).fat_bits == 32


def test_fat_label_and_cluster_options() -> None:
    p = plan(20000, label="9front", cluster_sectors=4)
    assert p.label == b"9front     " and p.sectors_per_cluster == 4
    assert plan(20000, label="A" * 20).label == b"A" * 11
    with pytest.raises(FatError, match="power of two"):
        plan(20000, cluster_sectors=3)
    with pytest.raises(FatError, match="unknown"):
        plan(20000, disk_type="8inch")
    with pytest.raises(FatError, match="FAT width 32"):
        plan(20000, fat_bits=32)
    assert set(DISK_TYPES) == {"3½HD", "3½DD", "3½QD", "5¼HD", "5¼DD", "hard"}


def test_fat_golden_hybrid_iso_esp() -> None:
    """disk/format -b /386/pbs -xd -t hard $d/esp: the last cylinder of the ISO (its size
    follows the ISO; here 2048 sectors at 800000, 64x32 geometry, documented explicitly)."""
    disk = disk_with_partition(802048, 800000, 802048, 64, 32)
    esp = disk.slice(800000, 802048, "esp")
    params = format_fat(esp, [], pbs=PBS, disk_type="hard", xflag=True)
    assert params == golden(
        sectors_per_cluster=1,  # defcluster(2048) = 1
        reserved_sectors=1,
        root_entries=160,  # 2048/200 = 10 sectors of 16 entries
        total_sectors16=2048, total_sectors32=2048,  # both: bigvolsize is always written
        fat_sectors16=6,  # clusters 2 + (2048-1-12-10)/1 = 2027; (12*2027+4095)/4096 = 6
        sectors_per_track=32, heads=64, hidden_sectors=800000,
        fs_type=b"FAT12   ",
    )
    assert (params.first_data_sector, params.cluster_count, params.fat_bits) == (23, 2025, 12)
    assert esp.pread(3, 512) == b"\xf8\xff\xff"  # FAT12: media, then 0xff 0xff


def test_fat_records_sit_at_the_spec_offsets() -> None:
    """Each field of the one declaration sits where the FAT specification puts it."""
    from imagebuild.fs.fat.bpb import BPB, BPB16_TAIL, BPB32_TAIL, FSINFO_BODY, FSINFO_LEAD
    from imagebuild.fs.fat.dirent import DIR_ENTRY, LFN_SLOT

    spec = {
        "BPB_BytsPerSec": 0x0B, "BPB_RsvdSecCnt": 0x0E, "BPB_RootEntCnt": 0x11,
        "BPB_Media": 0x15, "BPB_FATSz16": 0x16, "BPB_HiddSec": 0x1C, "BPB_TotSec32": 0x20,
    }
    assert {k: BPB.offsets()[k] for k in spec} == spec
    assert BPB16_TAIL.offsets()["BS_VolID"] == 0x27 and BPB16_TAIL.end == 0x3E
    fat32 = BPB32_TAIL.offsets()
    assert (fat32["BPB_RootClus"], fat32["BPB_FSInfo"], fat32["BS_DrvNum"]) == (0x2C, 0x30, 0x40)
    assert (fat32["BS_VolID"], fat32["BS_FilSysType"], BPB32_TAIL.end) == (0x43, 0x52, 0x5A)
    assert FSINFO_LEAD.offsets() == {"FSI_LeadSig": 0}
    assert FSINFO_BODY.offsets()["FSI_Free_Count"] == 488
    assert FSINFO_BODY.offsets()["FSI_Nxt_Free"] == 492
    d = DIR_ENTRY.offsets()
    assert (d["DIR_Attr"], d["DIR_FstClusHI"], d["DIR_WrtTime"], d["DIR_FstClusLO"]) == (
        0x0B, 0x14, 0x16, 0x1A)
    assert d["DIR_FileSize"] == 0x1C
    lfn = LFN_SLOT.offsets()
    assert (lfn["LDIR_Attr"], lfn["LDIR_Chksum"], lfn["LDIR_Name2"]) == (11, 13, 14)
    assert (lfn["LDIR_FstClusLO"], lfn["LDIR_Name3"]) == (26, 28)
