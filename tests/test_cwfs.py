"""cwfs64x: the installer's ream and copy, read back by a separately written reader."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import cwfs_helpers as h
import pytest
from cwfs_helpers import entry

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.errors import LayoutError
from imagebuild.fs.cwfs import CwfsVolume, fsck, installer_config, ream_and_populate
from imagebuild.fs.cwfs.layout import (
    BUFSIZE,
    CACHE,
    CEPERBK,
    DENTRY,
    DIRPERBUF,
    FEPERBUF,
    INDPERBUF,
    RBUFSIZE,
    cache_geometry,
    prime,
    wren_blocks,
)
from imagebuild.fs.proto import DMDIR, ProtoEntry

MB = 1 << 20
SDE = 1_700_000_000


def _disk(cache_mb: int = 40, worm_mb: int = 40, other_mb: int = 8) -> dict[str, BlockDevice]:
    storage = BytesStorage((cache_mb + worm_mb + other_mb) * MB)
    whole = BlockDevice(storage)
    c, w = cache_mb * MB // 512, (cache_mb + worm_mb) * MB // 512
    parts = {"fscache": whole.slice(0, c, "fscache"), "fsworm": whole.slice(c, w, "fsworm")}
    if other_mb:
        parts["other"] = whole.slice(w, whole.secs, "other")
    return parts


def _raw(dev: BlockDevice) -> bytes:
    return dev.pread(dev.size, 0)


def test_cwfs64x_constants_match_portdat_h() -> None:
    assert (RBUFSIZE, BUFSIZE, DENTRY.size, CACHE.size) == (16384, 16372, 260, 88)
    assert (DIRPERBUF, INDPERBUF, FEPERBUF, CEPERBK) == (62, 2046, 2037, 135)


def test_prime_keeps_sub_c_quirks() -> None:
    assert [n for n in range(1, 30) if prime(n)] == [1, 5, 7, 11, 13, 17, 19, 23, 29]


def test_cache_geometry_follows_cacheinit() -> None:
    c = cache_geometry(wren_blocks(200 * MB))
    m = 12800 - 3
    csize = ((m - 1) * 1350) // 1351
    msize = csize // 135 - 5
    while not prime(msize):
        msize -= 1
    assert (c.maddr, c.msize, c.csize) == (3, msize, msize * 135)
    assert c.caddr == 3 + (msize + 9) // 10
    with pytest.raises(LayoutError, match="too small"):
        cache_geometry(10)


def test_wren_blocks_rounds_like_wreninit() -> None:
    assert wren_blocks(32 * 512) == 1
    assert wren_blocks(31 * 512) == 1  # (31+1)/32: wreninit counts a block one sector short
    assert wren_blocks(30 * 512) == 0


def test_config_block_is_what_cwfs_c_writes() -> None:
    text = installer_config("sdF0").text()
    assert text == (
        b"service cwfs\n"
        b"filsys main c(/dev/sdF0/fscache)(/dev/sdF0/fsworm)\n"
        b"filsys dump o\n"
        b"filsys other (/dev/sdF0/other)\n"
        b"noauth\nnewcache\n"
        b"blocksize 16384\ndaddrbits 64\nindirblks 4\ndirblks 6\nnamelen 144\n"
    )
    assert len(text) < 512  # rc/bin/fstype reads only the first sector


def test_ream_alone_is_clean_and_matches_cwream() -> None:
    parts = _disk()
    ream_and_populate(parts, [], timestamp=SDE)
    assert fsck(parts["fscache"], parts["fsworm"], parts["other"]) == []
    cache, worm = _raw(parts["fscache"]), _raw(parts["fsworm"])
    assert h.tag_of(cache[:RBUFSIZE]) == (h.T_CONFIG, 0)
    assert cache.startswith(b"service cwfs\nfilsys main c(/dev/sdC0/fscache)(/dev/sdC0/fsworm)\n")
    img = h.Image(cache, worm)
    assert (img.sbaddr, img.cwraddr, img.roraddr, img.wmax) == (2, 3, 4, 4)
    assert img.wsize == 40 * MB // RBUFSIZE
    # what ream dumped: the superblock and both roots are on the worm, read-only in the cache
    for a, tag, path in ((2, h.T_SUPER, 2), (3, h.T_DIR, 1), (4, h.T_DIR, 1)):
        assert h.tag_of(worm[a * RBUFSIZE : (a + 1) * RBUFSIZE]) == (tag, path)
    assert img.slots[4][1] == 3  # Cread
    assert img.slots[2][1] == img.slots[3][1] == 4  # Cwrite: rewritten since the dump
    worm_sb = worm[2 * RBUFSIZE : 3 * RBUFSIZE]
    super1 = struct.unpack_from("<8q", worm_sb, 8 + 8 * 2037)  # fstart fsize tfree qidgen ...
    assert super1 == (2, 6, 0, 10, 3, 4, 2, 5)
    users = img.data(img.tree()["/adm/users"]).decode()
    head = ["-1:adm:adm:glenda", "0:none:adm:", "1:tor:tor:", "2:glenda:glenda:"]
    assert users.splitlines()[:4] == head
    assert "10000:sys::glenda" in users and "10003:upas:upas:glenda" in users
    tree = img.tree()
    assert {"/adm", "/adm/users", "/dist", "/usr", "/usr/glenda"} <= tree.keys()
    other = CwfsVolume(parts["fscache"], parts["fsworm"], parts["other"], filsys="other")
    assert [s.name for s in other.scandir("/usr/glenda")] == ["tmp"]
    assert other.stat("/usr/glenda/tmp").mode & 0o777 == 0o750


def _tree(tmp_path: Path, seed: int) -> list[ProtoEntry]:
    rng = random.Random(seed)
    src = tmp_path / "src"
    src.mkdir()
    entries = [ProtoEntry("/lib", DMDIR | 0o775, "sys", "sys", src, SDE - 50, 0)]
    sizes = [0, 1, BUFSIZE - 1, BUFSIZE, BUFSIZE + 1, 6 * BUFSIZE + 7, 300_000]
    sizes += [rng.randrange(0, 200_000) for _ in range(70)]
    for i, size in enumerate(sizes):
        f = src / f"f{i}"
        data = bytearray(rng.randbytes(size))
        if size > 40_000 and i % 3 == 0:
            data[16_000:36_000] = bytes(20_000)  # a zero piece mkfs seeks over
        f.write_bytes(bytes(data))
        owner = rng.choice(["sys", "glenda", "bootes", "upas"])
        mode = rng.choice([0o644, 0o755, 0o664 | 0x40000000, 0o600 | 0x20000000])
        entries.append(ProtoEntry(f"/lib/f{i}", mode, owner, "sys", f, SDE - i, size))
    sparse = src / "sparse"
    with open(sparse, "wb") as fh:  # reaches Tind2 without writing 33 MB
        fh.seek(40 * MB)
        fh.write(b"end")
    entries.append(ProtoEntry("/lib/sparse", 0o644, "sys", "sys", sparse, SDE, 40 * MB + 3))
    entries.append(ProtoEntry("/lib/sub", DMDIR | 0o755, "glenda", "glenda", src, SDE, 0))
    return entries


@pytest.mark.parametrize("seed", [1, 2])
def test_every_proto_entry_reads_back_through_the_independent_reader(
    tmp_path: Path, seed: int
) -> None:
    entries = _tree(tmp_path, seed)
    parts = _disk()
    ream_and_populate(parts, entries, timestamp=SDE)
    img = h.Image(_raw(parts["fscache"]), _raw(parts["fsworm"]))
    tree, users = img.tree(), img.users()
    for e in entries:
        got = tree[e.path]
        assert got.mode & 0o777 == e.mode & 0o777, e.path
        assert bool(got.mode & 0x4000) == e.is_dir
        assert bool(got.mode & 0x2000) == bool(e.mode & 0x40000000)  # DAPND
        assert bool(got.mode & 0x1000) == bool(e.mode & 0x20000000)  # DLOCK
        assert (users[got.uid], users[got.gid]) == (e.uid, e.gid), e.path
        if not e.is_dir:
            assert got.mtime == e.mtime
            assert got.size == e.length
            assert img.data(got) == e.source.read_bytes(), e.path
            assert users[got.muid] == "glenda"
    assert fsck(parts["fscache"], parts["fsworm"], parts["other"]) == []


def test_block_invariants_every_block_once_tags_and_qids(tmp_path: Path) -> None:
    parts = _disk()
    ream_and_populate(parts, _tree(tmp_path, 3), timestamp=SDE)
    img = h.Image(_raw(parts["fscache"]), _raw(parts["fsworm"]))
    seen: set[int] = set()
    qids: set[int] = set()
    for path, e in img.tree().items():
        qp = e.qpath & 0x7FFFFFFF if e.isdir else e.qpath
        assert bool(e.qpath & 0x80000000) == e.isdir, path
        assert qp not in qids, path
        qids.add(qp)
        for a in e.indirect:
            if a:
                assert a not in seen
                seen.add(a)
        for a in img.blocks_of(e):
            if a:
                assert a not in seen, (path, a)
                seen.add(a)
                assert h.tag_of(img.block(a)) == ((h.T_DIR if e.isdir else h.T_FILE), qp)
    sb = img.block(2)
    assert h.tag_of(sb) == (h.T_SUPER, 2)
    qidgen = struct.unpack_from("<q", sb, 8 + 8 * 2037 + 24)[0]
    assert qidgen >= max(qids)
    assert seen.isdisjoint({2, 3, 4, 5})
    assert max(seen) < img.fsize
    for a in seen:  # written since ream: Cdirty in the cache, nothing on the worm yet
        assert img.slots[a][1] == 1


def test_reproducible_with_source_date_epoch(tmp_path: Path) -> None:
    entries = _tree(tmp_path, 4)
    images = []
    for _ in range(2):
        parts = _disk()
        ream_and_populate(parts, entries, timestamp=SDE)
        images.append(b"".join(_raw(p) for p in parts.values()))
    assert images[0] == images[1]


def test_a_tree_larger_than_the_cache_is_dumped_to_the_worm(tmp_path: Path) -> None:
    rng = random.Random(7)
    entries = [ProtoEntry("/d", DMDIR | 0o775, "sys", "sys", tmp_path, SDE, 0)]
    for i in range(250):
        f = tmp_path / f"f{i}"
        f.write_bytes(rng.randbytes(rng.randrange(0, 400_000)))
        entries.append(ProtoEntry(f"/d/f{i}", 0o644, "sys", "sys", f, SDE - i, f.stat().st_size))
    parts = _disk(cache_mb=40, worm_mb=150)
    ream_and_populate(parts, entries, timestamp=SDE)
    assert fsck(parts["fscache"], parts["fsworm"], parts["other"]) == []
    img = h.Image(_raw(parts["fscache"]), _raw(parts["fsworm"]))
    assert img.sbaddr != 2  # each dump writes the superblock to the address the last reserved
    tree = img.tree()
    for e in entries[1:]:
        assert img.data(tree[e.path]) == e.source.read_bytes(), e.path
    # the dump file system: /2023/1114 holds the root as it was frozen
    ro = entry(img.tagged(img.roraddr, h.T_DIR, 1), 0)
    (year,) = img.children(ro)
    (day,) = img.children(year)
    assert (year.name, day.name) == ("2023", "1114")
    assert {c.name for c in img.children(day)} >= {"adm", "usr", "d"}


def test_cache_and_worm_too_small_are_layout_errors() -> None:
    with pytest.raises(LayoutError, match="too small"):
        ream_and_populate(_disk(cache_mb=1, worm_mb=40), [], timestamp=SDE)
    parts = _disk(worm_mb=0)
    with pytest.raises(LayoutError, match="fsworm"):
        ream_and_populate(parts, [], timestamp=SDE)


def test_unknown_owner_is_a_layout_error(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    entries = [ProtoEntry("/f", 0o644, "nobody-here", "sys", f, SDE, 1, origin="proto:3")]
    with pytest.raises(LayoutError, match="nobody-here"):
        ream_and_populate(_disk(), entries, timestamp=SDE)


def test_fsck_reports_a_wrong_tag_and_a_doubly_used_block(tmp_path: Path) -> None:
    parts = _disk()
    ream_and_populate(parts, _tree(tmp_path, 6), timestamp=SDE)
    img = h.Image(_raw(parts["fscache"]), _raw(parts["fsworm"]))
    f = img.tree()["/lib/f5"]
    slot = img.slots[f.direct[0]][0]
    cache = parts["fscache"]
    cache.pwrite(struct.pack("<hhq", 0, h.T_DIR, f.qpath), slot * RBUFSIZE + BUFSIZE)
    problems = fsck(cache, parts["fsworm"], parts["other"])
    assert any("f5" in p and "tagged dir" in p for p in problems)


def test_fsck_reports_a_bad_config_and_missing_worm_superblock() -> None:
    parts = _disk()
    ream_and_populate(parts, [], timestamp=SDE)
    parts["fsworm"].pwrite(bytes(RBUFSIZE), 2 * RBUFSIZE)
    assert any("touchsb" in p for p in fsck(parts["fscache"], parts["fsworm"]))
    parts["fscache"].pwrite(bytes(RBUFSIZE), 0)
    assert fsck(parts["fscache"], parts["fsworm"])[0].startswith("cwfs config block has tag 0")


def test_times_past_cwfs_timet_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """portdat.h: `typedef long Timet` is 32 bits; cwream() sets toytime 30 s ahead."""
    src = tmp_path / "f"
    src.write_bytes(b"x")
    last = (1 << 31) - 1
    ok = [ProtoEntry("/f", 0o644, "sys", "sys", src, SDE, 1)]
    ream_and_populate(_disk(), ok, timestamp=last - 30)  # the last clock that fits
    for clock in (last - 29, 1 << 31, (1 << 32) - 1):
        parts = _disk()
        with pytest.raises(LayoutError, match="32-bit Timet"):
            ream_and_populate(parts, ok, timestamp=clock)
        assert not any(_raw(p).strip(b"\0") for p in parts.values())
    late = [ProtoEntry("/f", 0o644, "sys", "sys", src, 1 << 31, 1, origin="distproto:3")]
    with pytest.raises(LayoutError, match=r"distproto:3: /f: mtime 2147483648"):
        ream_and_populate(_disk(), late, timestamp=None)
