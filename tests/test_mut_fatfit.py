"""disk/format's FAT32 FAT grown to map the whole data area, at the size where it grows.

format.c sizes a FAT32 FAT for the clusters after its root directory, though the root is
in the data area; at 2^21 sectors with -c 8 its 2044 sectors map 261632 entries, two short
of the spec's CountofClusters + 2 (FAT spec, section 3.5), so the FAT takes a 2045th
sector and the count is the spec's for that layout.  Checked against fsck.fat -n and
mtools on the written image.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, RawFile
from imagebuild.fs.fat.format import format_fat
from imagebuild.fs.fat.layout import width_for
from tests.test_fat_format import FAT32_FORMAT_FINDINGS, LABEL_MESSAGE, fsck, needs_fsck
from tests.test_mut_fat import MTOOLS_ENV, _plan

SECS = 1 << 21
CLUSTER = 8
ENTRIES_PER_SECTOR = 512 // 4


def _smallest_covering_fat(secs: int, reserved: int) -> int:
    """The fewest FAT sectors whose entries map clusters 0..CountofClusters+1."""
    fat = 1
    while fat * ENTRIES_PER_SECTOR < 2 + (secs - reserved - 2 * fat) // CLUSTER:
        fat += 1
    return fat


# 2^21 and around: format's FAT has 2044 sectors, grown to 2045; 2098157..2098164: format's
# 2045 sectors map exactly CountofClusters + 2 entries, no growth; from 2098165 it takes 2046
@pytest.mark.parametrize(
    ("secs", "fat"),
    [
        (SECS - CLUSTER, 2045),
        (SECS - 5, 2045),
        (SECS - 1, 2045),
        (SECS, 2045),
        (SECS + 1, 2045),
        (SECS + CLUSTER, 2045),
        (2098157, 2045),
        (2098164, 2045),
        (2098165, 2046),
    ],
)
def test_the_fat32_fat_maps_every_cluster_where_it_grows(secs: int, fat: int) -> None:
    p = _plan(secs, cluster_sectors=CLUSTER)
    assert p.fat_bits == 32 and p.reserved_sectors == 3
    assert p.fat_sectors == _smallest_covering_fat(secs, p.reserved_sectors) == fat
    count = (secs - p.reserved_sectors - 2 * p.fat_sectors) // CLUSTER
    assert p.cluster_count == count
    assert width_for(count) == 32
    assert p.fat_sectors * ENTRIES_PER_SECTOR >= count + 2


def test_format_c_own_fat_is_one_sector_short_here() -> None:
    """The layout format.c would write: 2044 FAT sectors, two entries too few."""
    fat = 2044
    count = (SECS - 3 - 2 * fat) // CLUSTER
    assert fat * ENTRIES_PER_SECTOR == count  # < count + 2: fsck.fat refuses such a volume


@needs_fsck
@pytest.mark.parametrize("secs", [SECS, SECS - 5])
def test_the_grown_fat32_volume_reads_back(tmp_path: Path, secs: int) -> None:
    """At SECS - 5 the grown FAT also takes a cluster from format's own count."""
    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)
    part = BlockDevice(storage).slice(0, secs, "dos")
    params = format_fat(part, [], cluster_sectors=CLUSTER, xflag=True, timestamp=1700000000)
    storage.close()
    assert (params.fat_bits, params.fat_sectors) == (32, 2045)
    findings = [
        f
        for f in fsck(path)
        if f not in FAT32_FORMAT_FINDINGS and not f.startswith("Free cluster summary")
    ]
    assert findings == LABEL_MESSAGE
    count = (secs - 3 - 2 * 2045) // CLUSTER
    summary = subprocess.run(
        ["fsck.fat", "-n", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1]
    assert summary.endswith(f"/{count} clusters"), summary
    # FSInfo's free count, format.c's `clusters - fatlast`: its count + 2 from the data
    # area after the grown FAT and the 32-sector root, less the root's last cluster (2..5)
    format_clusters = 2 + (secs - (3 + 2 * 2045 + 32)) // CLUSTER
    with path.open("rb") as f:
        boot = f.read(512)
        f.seek(int.from_bytes(boot[48:50], "little") * 512)  # BPB_FSInfo
        fsinfo = f.read(512)
    assert fsinfo[484:488] == b"rrAa"
    assert int.from_bytes(fsinfo[488:492], "little") == format_clusters - 5
    info = subprocess.run(
        ["minfo", "-i", str(path)], capture_output=True, text=True, check=False, env=MTOOLS_ENV
    )
    if info.returncode == 0:  # mtools reads the FAT32 BPB's FAT size
        assert "Big fatlen=2045" in info.stdout, info.stdout


# format's count iteration alternating past a width's limit (least count + 2 at 0x1000 or
# 0x10000, past 0xff7 / 0xfff7): on to the next width, as format.c's Tryagain does
# (4140, 4141, 8247: the FAT12 pass, FAT16 chosen; 1049105: the FAT16 pass, FAT32 tried
# and a FAT16 count kept)
@needs_fsck
@pytest.mark.parametrize(
    ("secs", "cluster", "count"),
    [(4140, 1, 4087), (4141, 1, 4088), (8247, 2, 4091), (1049105, 16, 65524)],
)
def test_a_pass_alternating_past_its_width_moves_on(
    tmp_path: Path, secs: int, cluster: int, count: int
) -> None:
    p = _plan(secs, cluster_sectors=cluster)
    assert (p.fat_bits, p.cluster_count) == (16, count)
    assert width_for(count) == 16
    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)
    part = BlockDevice(storage).slice(0, secs, "dos")
    params = format_fat(part, [], cluster_sectors=cluster, xflag=True, timestamp=1700000000)
    storage.close()
    assert params.fat_bits == 16
    assert [f for f in fsck(path) if not f.startswith("Free cluster summary")] == LABEL_MESSAGE
    summary = subprocess.run(
        ["fsck.fat", "-n", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1]
    assert summary.endswith(f"/{count} clusters"), summary


# The FAT16 pass alternating past 0xfff7 (counts 65536 and 65537; default 128-sector
# clusters): at 8389025 and 8389026 sectors in format's check pass (1 reserved sector), at
# 8389026 and 8389027 in the pass written (2 reserved, left by the check pass's FAT32
# attempt).  format.c gives up there ("can't decide"); we go on to FAT32, as format does at
# 8389024 and 8389028, where both passes settle past 0xfff7, and get the layout they get.
@needs_fsck
@pytest.mark.parametrize("secs", [8389024, 8389025, 8389026, 8389027, 8389028])
def test_a_fat16_pass_alternating_past_its_limit_moves_on_to_fat32(
    tmp_path: Path, secs: int
) -> None:
    p = _plan(secs)
    assert (p.fat_bits, p.sectors_per_cluster, p.reserved_sectors) == (32, 128, 3)
    count = (secs - 3 - 2 * p.fat_sectors) // 128
    assert (p.fat_sectors, p.cluster_count, count) == (512, 65531, 65531)
    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)  # sparse: 4 GiB, little of it written
    part = BlockDevice(storage).slice(0, secs, "dos")
    params = format_fat(part, [], xflag=True, timestamp=1700000000)
    storage.close()
    assert (params.fat_bits, params.fat_sectors, params.cluster_count) == (32, 512, 65531)
    findings = [
        f
        for f in fsck(path)
        if f not in FAT32_FORMAT_FINDINGS and not f.startswith("Free cluster summary")
    ]
    assert findings == LABEL_MESSAGE
    summary = subprocess.run(
        ["fsck.fat", "-n", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1]
    assert summary.endswith(f"/{count} clusters"), summary


# The FAT32 pass never settling (counts alternating around a multiple of 128, the FAT32
# entries of a sector): format.c gives up; we keep the FAT16 layout format tried first,
# shortened to 65524 clusters, and undo the FAT32 attempt's FSInfo sector: format's check
# pass leaves the pass written the reserved sectors it was given (1, or -r 2).
@needs_fsck
@pytest.mark.parametrize(
    ("secs", "cluster", "reserved", "fat", "total"),
    [
        (66723, 1, 1, 259, 66075),
        (132128, 2, 1, 257, 131595),
        (525339, 8, 1, 257, 524739),
        (66724, 1, 2, 259, 66076),
        (525340, 8, 2, 257, 524740),
    ],
)
def test_a_fat32_pass_that_never_settles_keeps_fat16_shortened(
    tmp_path: Path, secs: int, cluster: int, reserved: int, fat: int, total: int
) -> None:
    p = _plan(secs, cluster_sectors=cluster, reserved=reserved)
    assert (p.fat_bits, p.reserved_sectors, p.fat_sectors) == (16, reserved, fat)
    assert p.cluster_count == 65524 and (p.total_sectors16 or p.total_sectors32) == total
    assert total == reserved + 2 * fat + 32 + 65524 * cluster
    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)
    part = BlockDevice(storage).slice(0, secs, "dos")
    params = format_fat(part, [], cluster_sectors=cluster, reserved=reserved, xflag=True,
                        timestamp=1700000000)
    storage.close()
    assert (params.fat_bits, params.reserved_sectors, params.cluster_count) == (
        16, reserved, 65524)
    assert [f for f in fsck(path) if not f.startswith("Free cluster summary")] == LABEL_MESSAGE
    summary = subprocess.run(
        ["fsck.fat", "-n", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1]
    assert summary.endswith("/65524 clusters"), summary


# The smallest FAT32 volumes with -c 1: a reader's count (FAT spec, section 3.5) takes in
# the root directory's 32 clusters, since on FAT32 the root lies in the data area; without
# them the count would be a FAT16's.
@needs_fsck
@pytest.mark.parametrize(("secs", "fat", "count"), [(66552, 512, 65525), (66583, 513, 65554)])
def test_a_fat32_count_includes_the_root_directory(
    tmp_path: Path, secs: int, fat: int, count: int
) -> None:
    p = _plan(secs, cluster_sectors=1)
    assert (p.fat_bits, p.reserved_sectors, p.fat_sectors, p.cluster_count) == (32, 3, fat, count)
    assert count == secs - 3 - 2 * fat and width_for(count - 32) == 16
    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)
    part = BlockDevice(storage).slice(0, secs, "dos")
    format_fat(part, [], cluster_sectors=1, xflag=True, timestamp=1700000000)
    storage.close()
    summary = subprocess.run(
        ["fsck.fat", "-n", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()[-1]
    assert summary.endswith(f"/{count} clusters"), summary


# Where the FAT16 pass never settles and FAT32 would hold a FAT16's count, format.c gives
# up; we keep that pass's FAT16 shortened to 65524 clusters, with the FAT of its larger
# count: the iteration starts from 0 clusters, the smallest count, so its counts alternate
# low, high, ... and the twelfth try, where it stops, computes the high count's FAT (257
# sectors for 65537 or 65538 clusters, not 256).
@pytest.mark.parametrize(("secs", "cluster"), [(66080, 1), (66081, 1), (1049105, 16)])
def test_an_unsettled_fat16_pass_keeps_the_fat_of_its_larger_count(
    secs: int, cluster: int
) -> None:
    p = _plan(secs, cluster_sectors=cluster)
    assert (p.fat_bits, p.reserved_sectors, p.fat_sectors, p.cluster_count) == (16, 1, 257, 65524)
    assert p.total_sectors == 1 + 2 * 257 + 32 + 65524 * cluster
