"""cwfs64x rules re-derived from 9front's sys/src/cmd/cwfs C, checked on raw bytes.

Each test decodes the partitions with struct alone (no imagebuild reader) and
cites the C it follows; cwfs64x sizes are those of 64xbit.h and portdat.h.
"""

from __future__ import annotations

import struct

import cwfs_helpers as h

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.cwfs import ream_and_populate

MB = 1 << 20
SDE = 1_700_000_000
RB, BS = 16384, 16372  # RBUFSIZE; BUFSIZE = RBUFSIZE - sizeof(Tag)
FEPERBUF = 2037  # (BUFSIZE - sizeof(Super1) - sizeof(Off)) / sizeof(Off)
T_SUPER, T_FREE, T_BUCK, T_CACHE, T_DIR = 1, 6, 7, 9, 11


def _parts(cache_mb: int, worm_mb: int, other_mb: int) -> dict[str, BlockDevice]:
    whole = BlockDevice(BytesStorage((cache_mb + worm_mb + other_mb) * MB))
    c, w = cache_mb * MB // 512, (cache_mb + worm_mb) * MB // 512
    return {
        "fscache": whole.slice(0, c, "fscache"),
        "fsworm": whole.slice(c, w, "fsworm"),
        "other": whole.slice(w, whole.secs, "other"),
    }


def _blk(dev: BlockDevice, a: int) -> bytes:
    return dev.pread(RB, a * RB)


def _tag(b: bytes) -> tuple[int, int, int]:
    return struct.unpack_from("<hhq", b, BS)  # portdat.h Tag {short pad; short tag; Off path}


def test_users_file_is_pentry_of_minusers_and_the_installers_newusers() -> None:
    # uidgid.c: minusers[] (name, uid, lead), pentry() "uid:name:leader:members" with the
    # leader printed only when lead != 0, entries sorted by uid; `newuser glenda` takes the
    # first free uid from 1 (2) as its own leader; `newuser X +glenda` adds a member.
    parts = _parts(40, 40, 8)
    ream_and_populate(parts, [], timestamp=SDE)
    cache, worm = parts["fscache"], parts["fsworm"]
    img = h.Image(cache.pread(cache.size, 0), worm.pread(worm.size, 0))
    text = img.data(img.tree()["/adm/users"])
    assert text.decode() == (
        "-1:adm:adm:glenda\n0:none:adm:\n1:tor:tor:\n2:glenda:glenda:\n"
        "10000:sys::glenda\n10001:map:map:\n10002:doc::\n10003:upas:upas:glenda\n"
        "10004:font::\n10005:bootes:bootes:\n"
    )


def test_other_superream_free_list_chains_through_tfree_blocks() -> None:
    # sub.c superream(): fstart 2, fsize = devsize (wren.c: (sectors+1)/32), qidgen 10,
    # addfree() of every block from fsize-1 down to addr+2; when the Fbuf holds FEPERBUF
    # entries it is copied into the block being freed (tag Tfree) and that block becomes
    # free[0] of a new list.  rootream(): root "/" in slot 0 of block 3, tag Tdir/QPROOT.
    # chk.c ckfreelist(): the chain must end at free[0] == 0 and count tfree entries.
    parts = _parts(40, 40, 40)
    ream_and_populate(parts, [], timestamp=SDE)
    other = parts["other"]
    nblocks = (other.size // 512 + 1) // 32
    sb = _blk(other, 2)
    assert _tag(sb)[1:] == (T_SUPER, 2)
    fstart, fsize, tfree, qidgen = struct.unpack_from("<4q", sb, 8 + 8 * FEPERBUF)
    assert (fstart, fsize) == (2, nblocks) and qidgen >= 10
    root = _blk(other, 3)
    assert _tag(root)[1:] == (T_DIR, 1)
    assert root[:2] == b"/\0"
    uid, gid, mode = struct.unpack_from("<hhH", root, 144)
    qpath = struct.unpack_from("<q", root, 152)[0]
    assert (uid, gid, mode, qpath) == (-1, -1, 0x8000 | 0x4000 | 0o775, 0x80000001)
    seen: set[int] = set()
    fb, links = sb, 0
    while True:
        n = struct.unpack_from("<q", fb, 0)[0]
        assert 0 < n <= FEPERBUF
        free = struct.unpack_from(f"<{n}q", fb, 8)
        for a in free[1:]:
            assert 4 <= a < fsize and a not in seen
            seen.add(a)
        if free[0] == 0:
            break
        assert free[0] not in seen
        seen.add(free[0])
        fb = _blk(other, free[0])
        assert _tag(fb)[1] == T_FREE
        links += 1
    assert links >= 1  # 40 MB = 2560 blocks: one list overflowed into a Tfree block
    assert len(seen) == tfree
    # /usr, /usr/glenda and /usr/glenda/tmp each hold one directory block, plus the root's
    assert tfree == fsize - 4 - 3


def test_cache_map_and_header_follow_cacheinit_and_getcentry() -> None:
    # cw.c cacheinit(): header at CACHE_ADDR 2 tagged Tcache/QPSUPER, map blocks from
    # maddr 3 each tagged Tbuck with their own address; getcentry(): an entry that is not
    # Cnone caches worm address waddr of bucket waddr % msize, one entry per address, with
    # age below the bucket's agegen; states Cnone..Cdump1 are 0..5.
    parts = _parts(40, 40, 0)
    del parts["other"]
    ream_and_populate(parts, [], timestamp=SDE)
    cache = parts["fscache"]
    hb = _blk(cache, 2)
    assert _tag(hb)[1:] == (T_CACHE, 2)
    maddr, msize, caddr, csize, fsize, wsize = struct.unpack_from("<6q", hb, 0)
    assert maddr == 3 and csize == msize * 135 and caddr == 3 + (msize + 9) // 10
    seen: set[int] = set()
    for bn in range(msize):
        b = _blk(cache, maddr + bn // 10)
        assert _tag(b)[1:] == (T_BUCK, maddr + bn // 10)
        off = (bn % 10) * 1624  # Bucket {long agegen; Centry entry[135]}
        agegen = struct.unpack_from("<i", b, off)[0]
        for i in range(135):
            age, state, waddr = struct.unpack_from("<Hhq", b, off + 4 + 12 * i)
            assert 0 <= state <= 5
            if state:
                assert waddr % msize == bn and waddr not in seen and age < agegen
                seen.add(waddr)
    assert set(range(2, 5)) <= seen and max(seen) < fsize <= wsize
