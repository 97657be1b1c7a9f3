"""format.c's rules one at a time: names, boot program, sanity checks, time stamps, bad input."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.fat.dirent import (
    ATTR_SYSTEM,
    dos_time_date,
    is_long_name,
    make_alias,
    short_name_field,
)
from imagebuild.fs.fat.format import FatError, FatFile, FatParams, FatVolume, format_fat
from imagebuild.fs.fat.pbs import DEFAULT_PBS, MESSAGE, MESSAGE_OFFSET
from tests.conftest import needs

MiB = 1 << 20


def partition(secs: int = 8000, start: int = 63, fill: int = 0) -> BlockDevice:
    disk = BlockDevice(BytesStorage((start + secs) * 512), name="data")
    if fill:
        disk.pwrite(bytes([fill]) * disk.size, 0)
    return disk.slice(start, start + secs, "dos")


def whole_bytes(part: BlockDevice) -> bytes:
    return part.whole.pread(part.whole.size, 0)


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "long"),
    [
        ("plan9.ini", False), ("9bootfat", False), ("9pc64", False), ("x.y", False),
        ("fixup_cd.dat", False),  # '_' is fine in 8.3
        ("abcdefgh.ijk", False), ("abcdefghi", True),  # 9 characters
        ("LICENCE.broadcom", True),  # extension > 3
        ("a.b.c", True),  # two dots
        ("a b", True), ("a+b", True), ("a,b", True), ("a;b", True), ("a=b", True),
        ("a[b]", True),  # strchr("+,:;=[] ", c)
        ("é.txt", True),  # c & 0x80: UTF-8
    ],
)
def test_fat_islongname(name: str, long: bool) -> None:
    assert is_long_name(name) is long


@pytest.mark.parametrize(
    ("name", "field"),
    [("plan9.ini", b"PLAN9   INI"), ("9pc64", b"9PC64      "), ("a.b", b"A       B  "),
     ("fixup_cd.dat", b"FIXUP_CDDAT"), ("foo.", b"FOO        ")],
)
def test_fat_putname(name: str, field: bytes) -> None:
    assert short_name_field(name) == field


@pytest.mark.parametrize(
    ("name", "alias_id", "alias"),
    [
        ("LICENCE.broadcom", 1, "LICENC~1.bro"),  # six doschars, ~id, three of the extension
        ("bcm2711-rpi-4-b.dtb", 4, "bcm271~4.dtb"),
        ("a b c d e f g.txt", 12, "abcde~12.txt"),  # i+1+v > 8: base cut to 8-1-v
        ("+++", 0, "~0"),  # nothing kept, no extension: no dot
        ("Ünïcode name.txt", 5, "ncoden~5.txt"),  # runes that are not doschars skipped
        ("x.tar.gz", 0, "xtar~0.gz"),  # base: up to the last dot, other dots skipped
    ],
)
def test_fat_mkalias(name: str, alias_id: int, alias: str) -> None:
    assert make_alias(name, alias_id) == alias


def test_fat_system_attribute_for_9load_and_9boot() -> None:
    # addrname(): cistrcmp(s, "9load") == 0 || cistrncmp(s, "9boot", 5) == 0 -> DSYSTEM
    part = partition()
    names = ["9load", "9bootfat", "9BOOTPXE", "9loader", "plan9.ini", "9bootx64.efi"]
    format_fat(part, [FatFile(n, b"x") for n in names])
    attrs = {e.name: e.attributes for e in FatVolume(part).listdir()}
    assert attrs == {"9LOAD": ATTR_SYSTEM, "9BOOTFAT": ATTR_SYSTEM, "9BOOTPXE": ATTR_SYSTEM,
                     "9LOADER": 0, "PLAN9.INI": 0, "9BOOTX64.EFI": ATTR_SYSTEM}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a/b"], "only the root"),
        ([""], "not a usable"),
        (["a*b"], "cannot hold"),
        (["x\x01"], "cannot hold"),
        (["a:b"], "cannot hold"),
        (["\U0001f600.txt"], "U\\+FFFF"),
        (["a" * 256], "longer than 255"),
        ([".ab"], "before its dot"),
        (["1."], "cannot end in a dot"),
        (["plan9.ini", "PLAN9.INI"], "clashes"),
        (["Long Name.txt", "long name.TXT"], "clashes"),
        # the one long name gets alias id 1 (the check pass used 0): LICENC~1.BRO
        (["LICENCE.broadcom", "licenc~1.bro"], "clashes"),
    ],
)
def test_fat_bad_names_leave_device_untouched(names: list[str], message: str) -> None:
    part = partition(fill=0x5A)
    before = whole_bytes(part)
    with pytest.raises(FatError, match=message):
        format_fat(part, [FatFile(n, b"data") for n in names])
    assert whole_bytes(part) == before


def test_fat_files_that_do_not_fit() -> None:
    part = partition(secs=2000)
    before = whole_bytes(part)
    with pytest.raises(FatError, match="does not fit"):
        format_fat(part, [FatFile("big", bytes(2000 * 512))])
    assert whole_bytes(part) == before


def test_fat_partition_too_small() -> None:
    with pytest.raises(FatError, match="too small"):
        format_fat(partition(secs=150), [])


def test_fat_long_names_overflowing_root() -> None:
    # 2000 sectors: 10 root sectors, 160 entries; 40 names of 3 slots + entry = 160 fit
    part = partition(secs=2000)
    names = [f"a long file name number {i:03}" for i in range(40)]
    format_fat(part, [FatFile(n, b"") for n in names])
    assert [e.name for e in FatVolume(part).listdir()] == names
    with pytest.raises(FatError, match="too many files in root"):
        format_fat(part, [FatFile(n, b"") for n in [*names, "x"]])


# -- boot program -------------------------------------------------------------------------------
@needs("objdump")
def test_fat_default_program_disassembles_as_documented(tmp_path: Path) -> None:
    objdump = "objdump"
    def disassemble(path: Path, start: int, stop: int) -> list[str]:
        out = subprocess.run(
            [objdump, "-D", "-b", "binary", "-m", "i8086", "--adjust-vma=0x7c00",
             f"--start-address={0x7C00 + start:#x}", f"--stop-address={0x7C00 + stop:#x}",
             str(path)],
            capture_output=True, text=True, check=True,
        ).stdout
        return [re.sub(r"\s+", " ", line.split("\t")[2]).strip()
                for line in out.splitlines() if line.count("\t") >= 2]

    path = tmp_path / "pbs.bin"
    path.write_bytes(DEFAULT_PBS)
    assert disassemble(path, 0, 3) == ["jmp 0x7c5a", "nop"]
    assert disassemble(path, 0x5A, MESSAGE_OFFSET) == [
        "cli", "xor %ax,%ax", "mov %ax,%ds", "mov %ax,%ss", "mov $0x7c00,%sp", "sti",
        "ljmp $0x0,$0x7c6a", "cld", f"mov ${0x7C00 + MESSAGE_OFFSET:#x},%si",
        "lods %ds:(%si),%al", "test %al,%al", "je 0x7c7c", "mov $0xe,%ah", "mov $0x7,%bx",
        "int $0x10", "jmp 0x7c6e", "xor %ax,%ax", "int $0x16", "ljmp $0xffff,$0x0",
    ]
    assert DEFAULT_PBS[MESSAGE_OFFSET:] == MESSAGE and MESSAGE.endswith(b"\0")
    assert all(b == 0 for b in DEFAULT_PBS[3:0x5A])  # the BPB's room


def test_fat_default_program_installed_like_formats() -> None:
    # -d without -b: jump and bytes from 0x3E of the built-in program
    part = partition(fill=0xCC)
    format_fat(part, [])
    boot = part.read_sectors(0)
    assert boot[:3] == DEFAULT_PBS[:3]
    assert boot[0x3E : len(DEFAULT_PBS)] == DEFAULT_PBS[0x3E:]
    assert boot[len(DEFAULT_PBS) : 510] == b"\xcc" * (510 - len(DEFAULT_PBS))  # old bytes
    assert boot[510:] == b"\x55\xaa"


@pytest.mark.parametrize(
    ("pbs", "message"),
    [
        (b"\xeb\x58\x90" + bytes(508), "too large"),  # npbs > secsize-2
        (b"\xeb\x58\x90" + bytes(600), "too large"),
        (b"\xeb\x3c\x90" + bytes(40), "too small"),  # format only warns
        (b"\xe9\x58\x00" + bytes(200), "short jump"),
        (b"\xeb\x20\x90" + bytes(200), "inside the BPB"),
    ],
)
def test_fat_bad_boot_program(pbs: bytes, message: str) -> None:
    part = partition(fill=0x11)
    before = whole_bytes(part)
    with pytest.raises(FatError, match=message):
        format_fat(part, [FatFile("a", b"x")], pbs=pbs, pbs_source="/386/pbs")
    assert whole_bytes(part) == before


def test_fat_boot_program_of_510_bytes_fits() -> None:
    part = partition()
    pbs = b"\xeb\x58\x90" + bytes(range(256)) * 2
    pbs = pbs[:510]
    format_fat(part, [], pbs=pbs)
    assert part.read_sectors(0)[0x3E:510] == pbs[0x3E:]


def test_fat32_rejects_program_jumping_into_its_bpb() -> None:
    pbs = b"\xeb\x3c\x90" + bytes(200)  # fine for FAT16 (code at 0x3E) ...
    format_fat(partition(secs=20000), [], pbs=pbs)
    with pytest.raises(FatError, match="inside the BPB that ends at 0x5a"):  # ... not FAT32
        format_fat(partition(secs=81920), [], pbs=pbs, cluster_sectors=1)


def test_fat32_volume_id_comes_from_the_boot_program() -> None:
    # format clears only 0x3E bytes; Dosboot32's volid (0x43) is the pbs's bytes there
    pbs = bytearray(b"\xeb\x58\x90" + bytes(200))
    pbs[0x43:0x47] = b"\x78\x56\x34\x12"
    pbs[0x41] = 0x99
    part = partition(secs=81920)
    params = format_fat(part, [], pbs=bytes(pbs), cluster_sectors=1)
    assert params.fat_bits == 32
    assert (params.volume_id, params.reserved1) == (0x12345678, 0x99)
    assert FatParams.unpack(part.read_sectors(0)) == params


def test_fat_pbs_only_keeps_the_bpb() -> None:
    # disk/format -b pbs (no -d): jump, OEM name and code replaced, BPB kept
    part = partition()
    first = format_fat(part, [FatFile("plan9.ini", b"x")], label="OLD")
    pbs = b"\xeb\x58\x90" + bytes(0x57) + b"\xf4" * 100
    second = format_fat(part, pbs=pbs, dos=False)
    assert second == first
    assert part.read_sectors(0)[0x5A:0xBE] == b"\xf4" * 100
    assert FatVolume(part).read("plan9.ini") == b"x"


def test_fat_neither_dos_nor_pbs_writes_nothing() -> None:
    part = partition(fill=0x33)
    before = whole_bytes(part)
    format_fat(part, [FatFile("a", b"x")], dos=False)
    assert whole_bytes(part) == before


# -- sanity checks ------------------------------------------------------------------------------
def test_fat_refuses_to_overwrite_plan9_table_without_r2() -> None:
    part = partition()
    part.pwrite(b"part 9fat 0 8000\n".ljust(512, b"\0"), 512)
    with pytest.raises(FatError, match="reserved=2"):
        format_fat(part, [])
    format_fat(part, [], reserved=2)
    assert part.read_sectors(1).startswith(b"part 9fat")
    format_fat(part, [], xflag=True)  # -x: no check (and the table is gone)
    assert not part.read_sectors(1).startswith(b"part ")


def test_fat_refuses_whole_disk_without_x() -> None:
    disk = BlockDevice(BytesStorage(8 * MiB))
    with pytest.raises(FatError, match="whole disk"):
        format_fat(disk, [])
    params = format_fat(disk, [], xflag=True)
    assert params.hidden_sectors == 0


# -- time stamps and other bytes ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("timestamp", "time", "date"),
    [
        (1700000000, (22 << 11) | (13 << 5) | 10, (43 << 9) | (11 << 5) | 14),
        (1700000001, (22 << 11) | (13 << 5) | 10, (43 << 9) | (11 << 5) | 14),  # 2 s steps
        (0, 0, (1 << 5) | 1),  # before 1980: clamped to 1980-01-01 00:00:00
        (2**40, (23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31),  # 2107-12-31
    ],
)
def test_fat_dos_time(timestamp: int, time: int, date: int) -> None:
    assert dos_time_date(timestamp) == (time, date)


def test_fat_entry_bytes() -> None:
    part = partition()
    format_fat(part, [FatFile("plan9.ini", b"hello")], timestamp=1700000000)
    params = FatVolume(part).params
    raw = part.pread(32, params.first_root_sector * 512)
    assert raw[:11] == b"PLAN9   INI"
    assert raw[11:22] == bytes(11)  # attr 0, reserved (NT case, creation, access, high) 0
    assert raw[22:26] == bytes.fromhex("aab16e57")  # 22:13:20, 2023-11-14
    assert raw[26:28] == b"\x02\x00" and raw[28:32] == (5).to_bytes(4, "little")


def test_fat_rewrites_metadata_over_old_data() -> None:
    part = partition(secs=8000, fill=0xE5)
    files = [FatFile("plan9.ini", b"a" * 700), FatFile("a long name.txt", b"b" * 3)]
    format_fat(part, files, cluster_sectors=4)
    volume = FatVolume(part)
    assert [e.name for e in volume.listdir()] == ["PLAN9.INI", "a long name.txt"]
    assert [volume.read(f.name) for f in files] == [f.data for f in files]
    params = volume.params
    region = part.pread((params.first_data_sector - 1) * 512, 512)  # FATs and root
    assert b"\xe5" * 64 not in region
    # file padding up to the cluster end is written as zeros; beyond the files: old data
    data = params.first_data_sector * 512
    assert part.pread(2048 - 700, data + 700) == bytes(2048 - 700)
    assert part.pread(512, data + 2 * 2048) == b"\xe5" * 512


def test_fat_progress_reports_every_write() -> None:
    part = partition()
    seen: list[int] = []
    files = [FatFile("a", b"x" * 5000), FatFile("b", b"y")]
    params = format_fat(part, files, progress=lambda step, done, total: seen.append(done),
                        cluster_sectors=2)
    # boot sector, files (5 clusters + 1 cluster, one run), 2 FATs + root: bytes so far
    tables = (2 * params.fat_sectors + params.root_dir_sectors) * 512
    assert seen == [512, 512 + 6 * 1024, 512 + 6 * 1024 + tables]


def test_recipe_with_no_fat_files_builds_prints_and_inspects(
    root: Path, tmp_path: Path, sde: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """9.14: `fat.files = []` is a valid recipe: the plain layout printout and inspect list
    an empty FAT, and fsck.fat and mtools read it."""
    from imagebuild.cli import main

    recipe = tmp_path / "empty.toml"
    recipe.write_text('extends = "amd64.qcow2"\ndescription = "no FAT files"\n'
                      "[fat]\nfiles = []\n")
    image = tmp_path / "empty.img"
    assert main(["build", str(recipe), "--root", str(root), "--no-fs", "--format", "raw",
                 "--plain", "-o", str(image)]) == 0
    out = capsys.readouterr().out
    assert "9fat: FAT16, 4096 B clusters:\n  file  bytes  modified\n" in out
    assert main(["inspect", str(image)]) == 0
    assert "9fat: FAT16" in capsys.readouterr().out
    offset = 63 * 512  # fdisk -baw: the plan9 partition one track in; 9fat at its sector 0
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    listing = subprocess.run(["mdir", "-b", "-i", f"{image}@@{offset}", "::/"], env=env,
                             capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stdout.strip() == "", listing
    with open(image, "rb") as f:
        f.seek(offset)
        fat = f.read(204800 * 512)
    part = tmp_path / "9fat.img"
    part.write_bytes(fat)
    from tests.test_fat_format import LABEL_MESSAGE, fsck

    assert fsck(part) == LABEL_MESSAGE  # format's label quirk only (docs/fat.md)


@pytest.mark.parametrize(("sectors", "count"), [(272629751, 268435445), (272629782, 268435474)])
def test_fat32_count_a_reader_sees_is_held_to_format_limit(sectors: int, count: int) -> None:
    """format.c tests its FAT32 count before the FAT is grown to cover the data area (and
    without the root directory's clusters); the count a reader sees may then pass format's
    own limit (clusters + 2 < 0xffffff7) with 1-sector clusters near 130 GiB: refused."""
    from imagebuild.fs.fat.bpb import FAT32_MAX_CLUSTERS
    from imagebuild.fs.fat.format import plan_layout

    fits = plan_layout(272629700, 512, sectors_per_track=63, heads=16, hidden_sectors=63,
                       files=[], cluster_sectors=1).params
    assert fits.cluster_count <= FAT32_MAX_CLUSTERS == 0xFFFFFF7 - 3
    with pytest.raises(FatError, match=rf"^filesystem too big \({count} clusters; FAT32 holds "
                                       rf"at most {FAT32_MAX_CLUSTERS}\)$"):
        plan_layout(sectors, 512, sectors_per_track=63, heads=16, hidden_sectors=63,
                    files=[], cluster_sectors=1)
