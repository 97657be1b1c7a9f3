"""disk/format (fs.fat.format.format_fat) checked by independent readers: fsck.fat and mtools.

Each FAT is formatted into a partition of a sparse raw disk (so hidden
sectors and geometry are real), then the partition is copied to a file of
its own for fsck.fat and mtools.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, RawFile
from imagebuild.fs.fat.format import FatError, FatFile, FatParams, FatVolume, format_fat
from tests.conftest import needs

TIMESTAMP = 1700000000  # 2023-11-14T22:13:20Z
PART_START = 63

needs_fsck = needs("fsck.fat")
needs_mtools = needs("mdir", "mtype")


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# The names of the dist mkfile's FAT files, with their 8.3 fate in format.c.
MKFILE_FILES = [
    FatFile("9bootfat", payload(60_000, 1)),  # 8.3, DSYSTEM (cistrncmp(s, "9boot", 5))
    FatFile("plan9.ini", b"bootfile=9pc64\nconsole=0\n"),  # 8.3, stored PLAN9   INI
    FatFile("9pc64", payload(300_000, 2)),
    FatFile("LICENCE.broadcom", payload(1500, 3)),  # extension > 3: long name
    FatFile("bcm2711-rpi-4-b.dtb", payload(40_000, 4)),  # too long: long name
    FatFile("empty", b""),  # no cluster (start 0)
    FatFile("Ünïcode name with spaces and more than 26 chars.txt", b"hello\n"),  # 4 slots
    FatFile("exactly twenty-six chars.x", b"2 full slots, no terminator\n"),
]


def make_partition(
    tmp_path: Path, secs: int, start: int = PART_START
) -> tuple[RawFile, BlockDevice]:
    storage = RawFile.create(tmp_path / "disk.img", (start + secs) * 512)
    disk = BlockDevice(storage)
    return storage, disk.slice(start, start + secs, "dos")


def extract(storage: RawFile, part: BlockDevice, path: Path) -> Path:
    path.write_bytes(storage.pread(part.size, part.start * 512))
    return path


def fsck(image: Path) -> list[str]:
    """fsck.fat -n's findings: its output without the banner, the summary and blank lines."""
    out = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True,
                         check=False)
    assert "only space for" not in out.stdout + out.stderr, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).splitlines()
    return [
        line for line in lines
        if line.strip()
        and not line.startswith("fsck.fat ")
        and line != "Leaving filesystem unchanged."
        and not line.startswith(f"{image}: ")
    ]


# Every FAT disk/format writes gets this from fsck.fat: format fills in the BPB
# label ("CYLINDRICAL") but writes no volume-label entry into the root directory.
LABEL_MESSAGE = [
    "Label in boot sector is 'CYLINDRICAL', but there is no volume label in root directory.",
    "  Auto-removing label from boot sector.",
]


def mtools_env() -> dict[str, str]:
    # mtools refuses a FAT whose size is not a whole number of tracks of its BPB
    # geometry (format takes the geometry from the disk, not the partition);
    # MTOOLS_SKIP_CHECK turns those consistency checks off.
    return dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0")


def mdir(image: Path) -> str:
    return subprocess.run(["mdir", "-a", "-i", str(image), "::"], env=mtools_env(),
                          capture_output=True, text=True, check=True).stdout


def mtype(image: Path, name: str) -> bytes:
    return subprocess.run(["mtype", "-i", str(image), f"::{name}"], env=mtools_env(),
                          capture_output=True, check=True).stdout


def format_and_extract(
    tmp_path: Path, secs: int, files: list[FatFile], **kwargs: object
) -> tuple[FatParams, Path]:
    storage, part = make_partition(tmp_path, secs)
    params = format_fat(part, files, timestamp=TIMESTAMP, **kwargs)  # type: ignore[arg-type]
    image = extract(storage, part, tmp_path / "part.img")
    storage.close()
    return params, image


@needs_fsck
@needs_mtools
@pytest.mark.parametrize(
    ("secs", "cluster", "fat_bits"),
    [
        (3000, None, 12),  # 1.5 MiB: defcluster -> 1 sector, 2966 clusters < 4085
        (204800, None, 16),  # the 100 MiB 9fat: 8-sector clusters, 25570 clusters
        (81920, 1, 32),  # 40 MiB with -c 1: 80655 clusters >= 65525
    ],
)
def test_fat_independent_readers_agree(
    tmp_path: Path, secs: int, cluster: int | None, fat_bits: int
) -> None:
    params, image = format_and_extract(tmp_path, secs, MKFILE_FILES, cluster_sectors=cluster)
    assert params.fat_bits == fat_bits
    findings = fsck(image)
    if fat_bits == 32:
        # format.c writes bootbak = 0, a Fatinfo without the 0xAA550000 trail
        # signature (so fsck.fat also calls the free count uninitialized).
        expected = [
            "There is no backup boot sector.",
            "  Auto-creating backup boot block.",
            "Created backup of boot sector in sector 1",
            "FSINFO sector has bad magic number(s):",
            "  Offset 508: 0x00000000 != expected 0xaa550000",
            "  Auto-correcting it.",
            *LABEL_MESSAGE,
        ]
        assert findings[: len(expected)] == expected
        assert len(findings) == len(expected) + 1
        assert findings[-1].startswith("Free cluster summary uninitialized (should be ")
    else:
        assert findings == LABEL_MESSAGE

    listing = mdir(image)
    for file in MKFILE_FILES:
        assert mtype(image, file.name) == file.data, file.name
    # format's alias counter runs through its check pass first: 4 long names
    # take ids 0..3 there, so the commit pass writes ~4, ~5, ~6, ~7.
    assert "LICENC~4 BRO" in listing and "LICENCE.broadcom" in listing
    assert "BCM271~5 DTB" in listing and "exactly twenty-six chars.x" in listing
    assert "9BOOTFAT" in listing and "PLAN9    INI" in listing


@needs_mtools
def test_fat_mtools_sees_format_timestamps_and_sizes(tmp_path: Path) -> None:
    _, image = format_and_extract(tmp_path, 4000, [FatFile("plan9.ini", b"x" * 123)])
    listing = mdir(image)
    # 2023-11-14 22:13:20 UTC, stored as DOS date and time (2-second resolution)
    assert "PLAN9    INI       123 2023-11-14  22:13" in listing


def test_fat_deterministic(tmp_path: Path) -> None:
    images = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        _, image = format_and_extract(tmp_path / run, 20000, MKFILE_FILES)
        images.append(image.read_bytes())
    assert images[0] == images[1]


def test_fat_reader_reads_everything_back(tmp_path: Path) -> None:
    params, image = format_and_extract(tmp_path, 20000, MKFILE_FILES)
    volume = FatVolume(BlockDevice(RawFile(image)))
    assert volume.params == params
    names = [e.name for e in volume.listdir("/")]
    assert names == ["9BOOTFAT", "PLAN9.INI", "9PC64", "LICENCE.broadcom",
                     "bcm2711-rpi-4-b.dtb", "EMPTY", *(f.name for f in MKFILE_FILES[-2:])]
    for file in MKFILE_FILES:
        assert volume.read(file.name) == file.data


def test_fat_too_many_files_leaves_device_untouched(tmp_path: Path) -> None:
    storage, part = make_partition(tmp_path, 2000)  # 10 root sectors: 160 entries
    files = [FatFile(f"f{i}", b"x") for i in range(161)]
    with pytest.raises(FatError, match="too many files in root"):
        format_fat(part, files)
    assert storage.pread(part.size, part.start * 512) == bytes(part.size)


@needs_fsck
def test_fat_4096_byte_sectors(tmp_path: Path) -> None:
    # format works in disk->secsize units throughout
    storage = RawFile.create(tmp_path / "disk.img", (8 + 20000) * 4096)
    part = BlockDevice(storage, sector_size=4096).slice(8, 8 + 20000, "dos")
    params = format_fat(part, MKFILE_FILES[:4], timestamp=TIMESTAMP)
    assert (params.bytes_per_sector, params.root_entries, params.fat_bits) == (4096, 512, 16)
    image = tmp_path / "part.img"
    image.write_bytes(storage.pread(part.size, 8 * 4096))
    assert fsck(image) == LABEL_MESSAGE
    volume = FatVolume(part)
    assert [volume.read(f.name) for f in MKFILE_FILES[:4]] == [f.data for f in MKFILE_FILES[:4]]


FAT32_FORMAT_FINDINGS = (
    "There is no backup boot sector.",
    "  Auto-creating backup boot block.",
    "Created backup of boot sector in sector 1",
    "FSINFO sector has bad magic number(s):",
    "  Offset 508: 0x00000000 != expected 0xaa550000",
    "  Auto-correcting it.",
)

# 9.7: sizes where format.c's next-wider FAT leaves a cluster count of the narrower width
# (or where its count never settles), each with its neighbours; docs/fat.md.
WIDTH_EDGES = [
    (4129, None), (4130, None), (4137, None), (4140, None), (4141, None), (4149, None),
    (4150, None),
    (66070, 1), (66071, 1), (66295, 1), (66640, 1), (66641, 1),
    (8387745, None), (8387746, None), (8388226, None), (8388227, None),
]


@needs_fsck
@needs_mtools
@pytest.mark.parametrize(("secs", "cluster"), WIDTH_EDGES)
def test_fat_width_always_matches_its_cluster_count(
    tmp_path: Path, secs: int, cluster: int | None
) -> None:
    from imagebuild.fs.fat.layout import width_for

    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)  # sparse: the FAT is the partition file
    part = BlockDevice(storage).slice(0, secs, "dos")
    data = payload(70_000, secs)
    params = format_fat(part, [FatFile("kernel", data)], timestamp=TIMESTAMP,
                        cluster_sectors=cluster, xflag=True)
    storage.close()
    # the FAT spec's rule (section 3.5), which every reader applies
    assert params.fat_bits == width_for(params.cluster_count)
    assert params.total_sectors <= secs
    assert FatVolume(BlockDevice(RawFile(path)).slice(0, secs, "dos")).read("kernel") \
        == data
    findings = fsck(path)
    if params.is_fat32:  # format's known FAT32 findings (test_fat_independent_readers_agree)
        findings = [f for f in findings if f not in FAT32_FORMAT_FINDINGS
                    and not f.startswith("Free cluster summary uninitialized")]
    assert findings == LABEL_MESSAGE
    assert mtype(path, "kernel") == data
