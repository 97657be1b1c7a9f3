"""disk/format's size refusals at their edges, found untested by a mutation run.

The data area holds exactly the clusters the FAT spec's count gives (section 3.5:
CountofClusters from the BPB), no more; the FAT's width is the one that count implies,
also where format.c's own pass would give up ("can't decide how many clusters to use")
or leave a FAT32 with a FAT16's count; a boot program must fit before the 0x55AA
signature (format.c: "boot block too large") and jump past the BPB.  Checked against
fsck.fat -n and mtools where an image is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.disk.device import BlockDevice, RawFile
from imagebuild.fs.fat.bpb import BPB32_SIZE, BPB_SIZE, FatParams
from imagebuild.fs.fat.format import FatError, FatFile, format_fat, plan_layout
from imagebuild.fs.fat.layout import width_for
from tests.test_fat_format import (
    FAT32_FORMAT_FINDINGS,
    LABEL_MESSAGE,
    fsck,
    needs_fsck,
    needs_mtools,
    payload,
)
from tests.test_fat_rules import partition

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def _plan(secs: int, files: list[FatFile] | None = None, **kw: object) -> FatParams:
    return plan_layout(secs, 512, sectors_per_track=63, heads=16, hidden_sectors=63,
                       files=files or [], **kw).params  # type: ignore[arg-type]


def _root_clusters(p: FatParams) -> int:
    """A FAT32 root directory's clusters: format's 512 entries (32 sectors) rounded down to
    whole clusters, at least one."""
    root_sectors = 512 * 32 // 512
    root_sectors -= root_sectors % p.sectors_per_cluster
    return max(root_sectors, p.sectors_per_cluster) // p.sectors_per_cluster


def _last_cluster(p: FatParams) -> int:
    """The last cluster format hands out: the spec's count + 1 on FAT12/16.  On FAT32,
    format.c counts its clusters after the root directory's sectors, though the root
    lies in the data area: the last root_clusters clusters stay unused (format's quirk,
    kept; its FSInfo free count says the same)."""
    last = p.cluster_count + 1
    return last - _root_clusters(p) if p.is_fat32 else last


def _free_clusters(p: FatParams) -> int:
    """The clusters left for files: clusters 2..last, less the FAT32 root's."""
    free = _last_cluster(p) - 1
    return free - _root_clusters(p) if p.is_fat32 else free


# (secs, -c): format's ordinary FAT12/16/32, its shortened FAT12 (4130, 4148, 4149: the
# FAT16 pass leaves a FAT12 count or never settles), its FAT16 where the FAT16 pass never
# settles and FAT32 would have a FAT16 count (66080, 66081), and the first FAT32 sizes whose
# count is a FAT32's only with the root directory's clusters in it (66551).
EDGES = [(2000, None), (4130, None), (4148, None), (4149, None), (20000, None),
         (66080, 1), (66081, 1), (66551, 1), (70000, 1)]


@pytest.mark.parametrize(("secs", "cluster"), EDGES)
def test_the_data_area_holds_exactly_the_spec_count(secs: int, cluster: int | None) -> None:
    p = _plan(secs, cluster_sectors=cluster)
    assert p.fat_bits == width_for(p.cluster_count)
    assert p.total_sectors <= secs
    room = _free_clusters(p) * p.cluster_size
    size = p.cluster_size
    fits = _plan(secs, [FatFile("a", bytes(room - size)), FatFile("b", bytes(size))],
                 cluster_sectors=cluster)
    assert fits == p
    with pytest.raises(FatError) as err:
        _plan(secs, [FatFile("a", bytes(room - size)), FatFile("b", bytes(size + 1))],
              cluster_sectors=cluster)
    last = _last_cluster(p)
    assert str(err.value) == (f"file 'b' ({size + 1} bytes): data does not fit on disk (needs "
                              f"cluster {last + 1}, the partition has clusters 2..{last})")


@needs_fsck
@needs_mtools
@pytest.mark.parametrize(("secs", "cluster"), [(4148, None), (66080, 1), (66551, 1)])
def test_full_volumes_at_the_width_edges_read_back(tmp_path: Path, secs: int,
                                                   cluster: int | None) -> None:
    import subprocess

    path = tmp_path / "part.img"
    storage = RawFile.create(path, secs * 512)
    part = BlockDevice(storage).slice(0, secs, "dos")
    p = _plan(secs, cluster_sectors=cluster)
    data = payload(_free_clusters(p) * p.cluster_size, secs)
    params = format_fat(part, [FatFile("full", data)], cluster_sectors=cluster, xflag=True,
                        timestamp=1700000000)
    storage.close()
    assert params.fat_bits == p.fat_bits
    findings = [f for f in fsck(path) if f not in FAT32_FORMAT_FINDINGS
                and not f.startswith("Free cluster summary")]
    assert findings == LABEL_MESSAGE
    out = subprocess.run(["mtype", "-i", str(path), "::full"], capture_output=True,
                         check=True, env=MTOOLS_ENV)
    assert out.stdout == data
    info = subprocess.run(["minfo", "-i", str(path)], capture_output=True, text=True,
                          check=False, env=MTOOLS_ENV)
    if info.returncode == 0:  # minfo names the width it reads
        assert f"FAT{p.fat_bits}" in info.stdout or "big FAT" in info.stdout or \
            "fat bits" in info.stdout.lower()


def test_a_count_format_cannot_settle_is_refused_as_format_does() -> None:
    """format.c dosfs(): fatal("can't decide how many clusters to use (%d? %d?)")."""
    with pytest.raises(FatError, match=r"^can't decide how many clusters to use \(\d+\? \d+\?\)$"):
        _plan(344, cluster_sectors=1)


def _format_c_counts(volsecs: int) -> list[int]:
    """format.c's `newclusters` at each try of its FAT12 loop (1 reserved sector, 512-byte
    sectors, 1-sector clusters, rootsecs = volsecs/200, under its cap of 32 here), written
    out from dosfs()."""
    counts, clusters = [], 0
    for _ in range(12):  # for(i=0;; i++) ... if(i > 10) fatal: twelve tries
        fatsecs = (12 * clusters + 8 * 512 - 1) // (8 * 512)
        data = 1 + 2 * fatsecs + (volsecs // 200 * 16 * 32 + 511) // 512
        counts.append(2 + (volsecs - data) // 1)
        if counts[-1] == clusters:
            break
        clusters = counts[-1]
    return counts


@pytest.mark.parametrize("secs", [344, 345])
def test_format_gives_up_after_its_twelfth_try(secs: int) -> None:
    """The message names the count of the eleventh try and that of the twelfth (format.c
    prints the twelfth twice: it assigns `clusters = newclusters` first)."""
    counts = _format_c_counts(secs)
    assert len(counts) == 12 and counts[10] != counts[11] and counts[9] == counts[11]
    with pytest.raises(FatError) as err:
        _plan(secs, cluster_sectors=1)
    assert str(err.value) == (f"can't decide how many clusters to use "
                              f"({counts[10]}? {counts[11]}?)")


# -- the boot program (-b): format.c "boot block too large"; our stricter checks ---------------
def _program(size: int, jump: int = BPB_SIZE - 2) -> bytes:
    return bytes([0xEB, jump]) + bytes(size - 2)


def test_a_boot_program_must_fit_before_the_signature() -> None:
    format_fat(partition(), pbs=_program(510), dos=False)
    with pytest.raises(FatError) as err:
        format_fat(partition(), pbs=_program(511), pbs_source="big.pbs", dos=False)
    assert str(err.value) == ("boot program big.pbs: boot block too large (511 bytes; at most "
                              "510 fit before the boot signature)")


def test_a_boot_program_must_reach_past_the_bpb() -> None:
    format_fat(partition(), pbs=_program(BPB_SIZE + 1), dos=False)
    with pytest.raises(FatError) as err:
        format_fat(partition(), pbs=_program(BPB_SIZE), pbs_source="p", dos=False)
    assert str(err.value) == (f"boot program p: pbs too small ({BPB_SIZE} bytes; its code "
                              f"starts after the BPB at {BPB_SIZE:#x})")


def test_a_boot_program_must_jump_over_the_bpb_and_no_further_is_needed() -> None:
    format_fat(partition(), pbs=_program(200, BPB_SIZE - 2), dos=False)
    with pytest.raises(FatError) as err:
        format_fat(partition(), pbs=_program(200, BPB_SIZE - 3), pbs_source="p", dos=False)
    assert str(err.value) == (f"boot program p: jumps to {BPB_SIZE - 1:#x}, inside the BPB "
                              f"that ends at {BPB_SIZE:#x}")
    with pytest.raises(FatError) as err2:
        format_fat(partition(), pbs=b"\xe9\xeb" + bytes(198), pbs_source="p", dos=False)
    assert str(err2.value) == ("boot program p: doesn't start with a short jump (first byte "
                               "0xe9, want 0xeb)")
    # on FAT32 the BPB ends at 0x5A: a jump to 0x3E lands inside it
    with pytest.raises(FatError, match=f"inside the BPB that ends at {BPB32_SIZE:#x}$"):
        format_fat(partition(70000), pbs=_program(200), cluster_sectors=1)


def test_a_name_clash_names_both_files() -> None:
    with pytest.raises(FatError) as err:
        _plan(8000, [FatFile("Kernel", b"1"), FatFile("KERNEL", b"2")])
    assert str(err.value) == "file 'KERNEL': name clashes with file 'Kernel' in the root"


# -- format.c's geometry, transcribed separately from dosfs() -------------------------------------
class _CantDecide(Exception):
    pass


def _dosfs_reference(volsecs: int, clustersize: int, nresrv: int) -> tuple[int, ...]:
    """sys/src/cmd/disk/format.c dosfs(), the "Tryagain" loop, 512-byte sectors: returns
    (fatbits, clusters, fatsecs, rootsecs, rootfiles, nresrv) as format leaves them."""
    secsize, dirsize = 512, 32
    fatbits = 12
    while True:
        if fatbits == 32:
            nresrv += 1
        clusters = 0
        i = 0
        while True:
            fatsecs = (fatbits * clusters + 8 * secsize - 1) // (8 * secsize)
            rootsecs = volsecs // 200
            rootfiles = rootsecs * (secsize // dirsize)
            if rootfiles > 512:
                rootfiles = 512
                rootsecs = rootfiles // (secsize // dirsize)
            if fatbits == 32:
                rootsecs -= rootsecs % clustersize
                if rootsecs <= 0:
                    rootsecs = clustersize
                rootfiles = rootsecs * (secsize // dirsize)
            data = nresrv + 2 * fatsecs + (rootfiles * dirsize + secsize - 1) // secsize
            newclusters = 2 + (volsecs - data) // clustersize
            if newclusters == clusters:
                break
            clusters = newclusters
            if i > 10:
                raise _CantDecide
            i += 1
        if fatbits == 12 and clusters >= 0xFF7:
            fatbits = 16
        elif fatbits == 16 and clusters >= 0xFFF7:
            fatbits = 32
        else:
            return fatbits, clusters, fatsecs, rootsecs, rootfiles, nresrv


def _reference(volsecs: int, clustersize: int, reserved: int) -> tuple[int, ...] | None:
    """Both of format's passes (nresrv carries over); None where format gives up."""
    try:
        check = _dosfs_reference(volsecs, clustersize, reserved)
        return _dosfs_reference(volsecs, clustersize, check[5])
    except _CantDecide:
        return None


@pytest.mark.parametrize(("cluster", "sizes"), [
    (None, range(200, 140_000, 331)),
    (1, range(200, 70_000, 97)),
    (4, range(2_000, 280_000, 1013)),
])
def test_the_layout_is_format_c_wherever_format_c_is_sound(cluster: int | None,
                                                           sizes: range) -> None:
    from imagebuild.fs.fat.layout import default_cluster_sectors

    compared = 0
    for secs in sizes:
        c = cluster or default_cluster_sectors(secs)
        ref = _reference(secs, c, 1)
        try:
            p = _plan(secs, cluster_sectors=cluster)
        except FatError as err:
            assert ref is None or ref[1] - 2 < 1, (secs, str(err))
            continue
        if ref is None:
            continue  # gives up; we settle on the narrower width (docs/fat.md)
        fatbits, _clusters, fatsecs, rootsecs, rootfiles, nresrv = ref
        first_data = nresrv + 2 * fatsecs + (0 if fatbits == 32 else rootsecs)
        sound = width_for((secs - first_data) // c) == fatbits
        if fatbits == 32:  # and the FAT maps every cluster (else we grow it)
            sound = sound and fatsecs * 128 >= 2 + (secs - nresrv - 2 * fatsecs) // c
        if not sound:
            continue
        compared += 1
        assert (p.fat_bits, p.reserved_sectors, p.total_sectors, p.sectors_per_cluster) == \
            (fatbits, nresrv, secs, c), secs
        assert (p.fat_sectors32 if fatbits == 32 else p.fat_sectors16) == fatsecs, secs
        assert p.root_entries == (0 if fatbits == 32 else rootfiles), secs
    assert compared > len(sizes) * 9 // 10


# (secs, -c, -r) -> (width, reserved, FAT sectors, spec count, BPB total sectors), each
# where format's width rules (dosfs: clusters >= 0xff7 / 0xfff7 moves on) decide:
# 4124: FAT12, format's count 4081 (< 0xff7); 66064 -c 1: FAT16, 65521 (< 0xfff7);
# 66070 -c 1: 0xfff7 exactly, so on to FAT32, whose count would be a FAT16's: FAT16 kept,
# shortened to 65524 clusters; 66300 -c 1 -r 2: the same, the -r 2 kept though the
# FAT32 attempt took a third reserved sector for FSInfo.
@pytest.mark.parametrize(("secs", "cluster", "reserved", "expected"), [
    (4124, None, 1, (12, 1, 12, 4079, 4124)),
    (66064, 1, 1, (16, 1, 256, 65519, 66064)),
    (66070, 1, 1, (16, 1, 256, 65524, 1 + 2 * 256 + 32 + 65524)),
    (66300, 1, 2, (16, 2, 257, 65524, 2 + 2 * 257 + 32 + 65524)),
])
def test_the_width_at_format_c_limits(secs: int, cluster: int | None, reserved: int,
                                      expected: tuple[int, ...]) -> None:
    p = _plan(secs, cluster_sectors=cluster, reserved=reserved)
    assert (p.fat_bits, p.reserved_sectors, p.fat_sectors, p.cluster_count,
            p.total_sectors) == expected
    assert p.fat_bits == width_for(p.cluster_count)


def test_a_fat32_count_from_0xffffff7_is_refused_as_format_does() -> None:
    """format.c dosfs(): `if(clusters >= 0xffffff7) fatal("filesystem too big")`."""
    with pytest.raises(FatError) as err:
        _plan(272629783, cluster_sectors=1)
    assert str(err.value) == "filesystem too big (268435447 clusters)"
