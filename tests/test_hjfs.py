"""hjfs as `hjfs -r` + the dist mkfile's console lines + `disk/mkfs -z 4096 -U` leave it.

Expected values are derived in comments from 9front's sources
(sys/src/cmd/hjfs: dat.h, fs1.c, fs2.c, auth.c, cons.c; sys/src/cmd/disk/mkfs.c)
and checked against tests/hjfs_helpers.py, an independent reading of the
raw blocks, as well as through imagebuild's reader.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hjfs_helpers import (
    ALLOC,
    BLOCK,
    Entry,
    block,
    entries,
    file_blocks,
    indirect_blocks,
    mkfs_touched_blocks,
    read_file,
    recount,
    stored_counts,
    superblock,
    walk_tree,
)

from imagebuild.disk.device import BlockDevice, BytesStorage, RawFile
from imagebuild.fs.hjfs import HjfsVolume, fsck, ream_and_populate
from imagebuild.fs.proto import DMAPPEND, DMDIR, DMEXCL, DMTMP, read_proto

T = 1_700_000_000  # the pinned clock (SOURCE_DATE_EPOCH)
OLD = T - 86400  # source mtimes before it
MiB = 1 << 20
RB = 4095  # hjfs stores 4095 file bytes per block

# the user table after ream (auth.c udef[]) and newuser glenda; adm, sys, upas +glenda
MKFILE_USERS = (
    b"-1:adm:adm:glenda\n"
    b"0:none:adm:\n"
    b"1:tor:tor:\n"
    b"2:glenda:glenda:\n"
    b"10000:sys::glenda\n"
    b"10001:map:map:\n"
    b"10002:doc::\n"
    b"10003:upas:upas:glenda\n"
    b"10004:font::\n"
)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


SIZES = {
    "empty": b"",
    "one_block": rand(RB, 1),
    "one_block_plus": rand(RB + 1, 2),
    "direct_full": rand(15 * RB, 3),
    "indirect": rand(15 * RB + 1, 4),
    "three_mb": rand(3 * MiB, 5),
    "all_zero": bytes(100_000),
    # data, a hole of five 4088-byte pieces, data, a zero tail of three pieces
    "holes": rand(5000, 6) + bytes(4088 * 5 + 3176) + rand(3000, 7) + bytes(4088 * 3),
}
NAMES = ["hello world", "ünïcødé", "日本語", "x" * 255, "trailing space "]


def make_source(root: Path) -> None:
    def put(rel: str, data: bytes, mode: int = 0o644, mtime: int = OLD) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, (mtime, mtime))

    for i in range(20):
        put(f"wide/f{i:02d}", f"file {i}\n".encode())
    for i in range(12):
        put(f"wide/sub/g{i:02d}", f"sub {i}\n".encode(), mode=0o755)
    for name, data in SIZES.items():
        put(f"sizes/{name}", data)
    for i, name in enumerate(NAMES):
        put(f"names/{name}", f"name {i}\n".encode())
    put("special/tmp/scratch", b"scratch\n")
    put("future", b"from the future\n", mtime=T + 1000)
    (root / "emptydir").mkdir()
    os.utime(root / "emptydir", (OLD - 5, OLD - 5))
    for rel in ("wide/sub", "wide", "sizes", "names", "special/tmp", "special"):
        os.utime(root / rel, (OLD, OLD))


PROTO = """\
wide\td775
\t+
sizes\td775
\t*
names\td775
\t*
special\td775 glenda upas
\tlog\ta662 sys sys /sizes/empty
\tlock\tl600 glenda glenda /sizes/empty
\ttmp\td775
\t\tmode=+t
\t\t*
emptydir\td755
future\t664
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, BlockDevice, Path]:
    tmp = tmp_path_factory.mktemp("hjfs")
    src = tmp / "src"
    src.mkdir()
    make_source(src)
    (tmp / "proto").write_text(PROTO)
    entries_ = read_proto([tmp / "proto"], src)
    storage = BytesStorage(32 * MiB)
    dev = BlockDevice(storage, name="fs")
    ream_and_populate(dev, entries_, timestamp=T)
    return bytes(storage.buffer), dev, src


@pytest.fixture(scope="module")
def image(built: tuple[bytes, BlockDevice, Path]) -> bytes:
    return built[0]


@pytest.fixture(scope="module")
def tree(image: bytes) -> dict[str, Entry]:
    return walk_tree(image)


@pytest.fixture(scope="module")
def volume(built: tuple[bytes, BlockDevice, Path]) -> HjfsVolume:
    return HjfsVolume(built[1])


# -- ream: superblock, reference counts, root ----------------------------------------------------


def test_superblock_follows_ream(image: bytes, tree: dict[str, Entry]) -> None:
    sb = superblock(image)
    size = 32 * MiB // BLOCK  # newdev(): device length / BLOCK
    fend = 1 + -(-size * 3 // 4095)  # fstart = SUPERBLK+1; fend = fstart + HOWMANY(size*REFSIZ)
    qids = max(e.path for e in tree.values()) + 1  # newqid() hands out qidpath++
    assert sb == {
        "magic": 0x6E0DE51C,
        "size": size,
        "fstart": 1,
        "fend": fend,
        "root": fend,
        "qidpath": qids,
    }


def test_reference_counts_mark_metadata_and_sentinels(image: bytes) -> None:
    sb = superblock(image)
    counts = stored_counts(image)
    assert len(counts) == (sb["fend"] - 1) * 1365
    assert counts[: sb["fend"]] == [1] * sb["fend"]  # superblock and reference blocks
    assert counts[sb["size"] :] == [0xFFFFFF] * (len(counts) - sb["size"])  # ream's -1 past the end
    assert set(counts[: sb["size"]]) <= {0, 1}


def test_reference_counts_recomputed_from_pointers_match(image: bytes) -> None:
    sb = superblock(image)
    want = recount(image)
    have = stored_counts(image)
    assert {b: have[b] for b in range(sb["size"]) if have[b] != want.get(b, 0)} == {}


def test_root_block_holds_root_and_dump_root(image: bytes, tree: dict[str, Entry]) -> None:
    sb = superblock(image)
    root, dump, *rest = entries(block(image, sb["root"]))
    for e in (root, dump):  # createroot(): both "/" with ROOTQID, QTDIR, uid/gid -1 ("adm")
        assert (e.name, e.path, e.type, e.mode, e.uid, e.gid) == (
            b"/",
            1,
            0x80,
            ALLOC | 0o775,
            -1,
            -1,
        )
    assert (dump.size, dump.vers, dump.muid, dump.mtime, dump.atime) == (0, 0, -1, T, T)
    # root changed by: writeusers' adm, create /dist, /usr (as sys), then mkfs's 6 top-level creates
    # (5 directories, and one file created as __mkfstmp and renamed: 2 changes) by glenda
    # nine entries fill exactly one directory block
    assert (root.vers, root.muid, root.mtime, root.size) == (3 + 5 + 2, 2, T, 1)
    assert all(e.mode == 0 and e.name == b"" for e in rest)
    assert block(image, sb["root"])[1 + 9 * 453 :] == bytes(4095 - 9 * 453)


def test_adm_dist_usr_as_ream_and_console_make_them(tree: dict[str, Entry]) -> None:
    adm, dist, usr = tree["/adm"], tree["/dist"], tree["/usr"]
    assert (adm.path, adm.uid, adm.gid, adm.muid, adm.mode) == (3, -1, -1, -1, ALLOC | 0o775)
    # cmdcreate(): owner from the command, group set by a wstat afterwards, no modified()
    for e, qid in ((dist, 5), (usr, 6)):
        assert (e.path, e.uid, e.gid, e.muid, e.mode, e.type, e.vers) == (
            qid,
            10000,
            10000,
            10000,
            ALLOC | 0o775,
            0x80,
            0,
        )
    assert [n for n in tree if n.count("/") == 1 and n != "/"] == [
        "/adm",
        "/dist",
        "/usr",
        "/wide",
        "/sizes",
        "/names",
        "/special",
        "/emptydir",
        "/future",
    ]


def test_user_table_is_what_the_mkfile_newusers_leave(image: bytes, tree: dict[str, Entry]) -> None:
    users = tree["/adm/users"]
    assert read_file(image, users) == MKFILE_USERS
    # created (0666 masked by /adm's 0775 -> 0664) and written once at ream, then for each
    # of the four newusers truncated (modified) and written again (modified): 1 + 4*2
    assert (users.path, users.uid, users.gid, users.muid, users.mode, users.vers) == (
        4,
        -1,
        -1,
        -1,
        ALLOC | 0o664,
        9,
    )
    # getfree(): root at fend; after ream the free list holds fend+2.. (256 of them):
    # adm's block fend+1 came from the scan, then fend+2 (adm's entries), fend+3 (users);
    # each newuser frees the table's block (queued at the tail) and takes the next: fend+7
    fend = superblock(image)["fend"]
    assert (
        users.db[0] == fend + 7 and tree["/adm"].db[0] == fend + 2 and tree["/"].db[0] == fend + 1
    )


# -- mkfs: entries, owners, modes, times, versions ------------------------------------------------


def test_qid_paths_follow_creation_order(tree: dict[str, Entry]) -> None:
    created = [e for n, e in tree.items() if n not in ("/", "/adm", "/adm/users", "/dist", "/usr")]
    # walk_tree lists in on-disk order, which is creation order within each directory
    assert sorted(e.path for e in created) == list(range(7, 7 + len(created)))
    assert tree["/wide"].path == 7 and tree["/wide/f00"].path == 8


def test_owners_come_from_proto_else_sys(tree: dict[str, Entry]) -> None:
    glenda, sys, upas = 2, 10000, 10003
    assert (tree["/special"].uid, tree["/special"].gid) == (glenda, upas)
    assert (tree["/special/log"].uid, tree["/special/log"].gid) == (sys, sys)
    assert (tree["/special/lock"].uid, tree["/special/lock"].gid) == (glenda, glenda)
    assert (tree["/wide/f00"].uid, tree["/wide/f00"].gid) == (sys, sys)  # the default owner
    # mkfs attaches as glenda: every file it creates or writes records glenda as modifier
    assert {e.muid for n, e in tree.items() if n.startswith("/wide")} == {glenda}


def test_modes_keep_permissions_and_type_bits(tree: dict[str, Entry]) -> None:
    def plan9_mode(e: Entry) -> int:  # statbuf(): permissions | Qid.type << 24
        return (e.mode & 0o777) | (e.type << 24)

    assert plan9_mode(tree["/special/log"]) == DMAPPEND | 0o662
    assert plan9_mode(tree["/special/lock"]) == DMEXCL | 0o600
    assert plan9_mode(tree["/special/tmp/scratch"]) == DMTMP | 0o644
    assert plan9_mode(tree["/wide/sub"]) == DMDIR | 0o755
    assert plan9_mode(tree["/wide/sub/g00"]) == 0o755
    assert plan9_mode(tree["/emptydir"]) == DMDIR | 0o755
    assert all(e.mode & ALLOC for e in tree.values())


def test_times_are_source_mtimes_clamped_and_directories_touched(tree: dict[str, Entry]) -> None:
    assert tree["/wide/f00"].mtime == OLD  # wstat sets the source mtime
    assert tree["/future"].mtime == T  # clamped to SOURCE_DATE_EPOCH
    assert tree["/emptydir"].mtime == OLD - 5  # nothing created in it after its wstat
    # creating a child runs modified() on the directory: its mtime is the build's clock
    assert tree["/wide"].mtime == T and tree["/wide/sub"].mtime == T
    assert {e.atime for e in tree.values()} == {T}


def test_versions_count_modifications(tree: dict[str, Entry]) -> None:
    # a file: one modified() per 4088-byte write (mkfs -z 4096), holes skipped
    assert tree["/sizes/three_mb"].vers == -(-3 * MiB // 4088)
    assert tree["/sizes/empty"].vers == 0
    assert tree["/sizes/all_zero"].vers == 1  # only the final zero byte
    assert tree["/sizes/holes"].vers == mkfs_touched_blocks(SIZES["holes"])[1]
    # a directory: create + rename for each file, create for each directory
    assert tree["/wide"].vers == 2 * 20 + 1
    assert tree["/wide/sub"].vers == 2 * 12
    assert tree["/emptydir"].vers == 0


# -- contents, sizes and block structure --------------------------------------------------------


def test_every_file_reads_back(
    built: tuple[bytes, BlockDevice, Path], tree: dict[str, Entry]
) -> None:
    image, _, src = built
    checked = 0
    for path, e in tree.items():
        if e.type & 0x80 or path.startswith(("/adm", "/special/lo")):
            continue
        assert read_file(image, e) == (src / path.lstrip("/")).read_bytes(), path
        assert e.size == (src / path.lstrip("/")).stat().st_size
        checked += 1
    assert checked == 20 + 12 + len(SIZES) + len(NAMES) + 2


def test_file_blocks_and_indirect_levels(image: bytes, tree: dict[str, Entry]) -> None:
    def blocks(name: str) -> dict[int, int]:
        return file_blocks(image, tree[f"/sizes/{name}"])

    assert blocks("empty") == {}
    assert list(blocks("one_block")) == [0]
    assert list(blocks("one_block_plus")) == [0, 1]  # 4095 bytes per block, not 4096
    assert (
        list(blocks("direct_full")) == list(range(15)) and tree["/sizes/direct_full"].ib == [0] * 4
    )
    indirect = tree["/sizes/indirect"]
    assert list(blocks("indirect")) == list(range(16)) and indirect.ib[0] and not indirect.ib[1]
    big = tree["/sizes/three_mb"]
    n = -(-3 * MiB // RB)  # 769 blocks: 15 direct, 341 single indirect, the rest double
    assert list(blocks("three_mb")) == list(range(n))
    assert big.ib[1] and not big.ib[2]
    assert len(indirect_blocks(image, big)) == 1 + 1 + -(-(n - 15 - 341) // 341)


def test_allocation_is_in_write_order(image: bytes, tree: dict[str, Entry]) -> None:
    # getblk() allocates an indirect block just before the first data block below it
    big = tree["/sizes/three_mb"]
    found = file_blocks(image, big)
    assert found[15] == big.ib[0] + 1
    assert found[1] == found[0] + 1 and found[14] == found[0] + 14


def test_holes_stay_sparse(image: bytes, tree: dict[str, Entry]) -> None:
    for name in ("all_zero", "holes", "three_mb", "one_block_plus"):
        touched, _ = mkfs_touched_blocks(SIZES[name])
        assert sorted(file_blocks(image, tree[f"/sizes/{name}"])) == touched, name
    # an all-zero file: only the last block, written by mkfs's final one-byte write
    assert list(file_blocks(image, tree["/sizes/all_zero"])) == [100_000 // RB]


def test_wide_directories_span_blocks(image: bytes, tree: dict[str, Entry]) -> None:
    wide = tree["/wide"]
    assert wide.size == 3  # 21 entries, 9 per block; a directory's size counts blocks
    assert [n.rsplit("/", 1)[1] for n in tree if n.startswith("/wide/") and n.count("/") == 2] == [
        *(f"f{i:02d}" for i in range(20)),
        "sub",
    ]


def test_names_are_stored_as_utf8(tree: dict[str, Entry]) -> None:
    names = [n.rsplit("/", 1)[1] for n in tree if n.startswith("/names/")]
    assert names == sorted(NAMES)
    assert tree["/names/" + "x" * 255].name == b"x" * 255


# -- the reader and the checker -------------------------------------------------------------------


def test_reader_stat_listdir_read(
    volume: HjfsVolume, built: tuple[bytes, BlockDevice, Path]
) -> None:
    src = built[2]
    assert volume.listdir("/") == [
        "adm",
        "dist",
        "usr",
        "wide",
        "sizes",
        "names",
        "special",
        "emptydir",
        "future",
    ]
    st = volume.stat("/special/log")
    assert (st.mode, st.uid, st.gid, st.muid, st.length) == (
        DMAPPEND | 0o662,
        "sys",
        "sys",
        "glenda",
        0,
    )
    assert volume.stat("/adm").uid == "adm" and volume.stat("/usr").gid == "sys"
    assert volume.read("/sizes/holes") == SIZES["holes"]
    assert volume.read("/names/日本語") == (src / "names" / "日本語").read_bytes()
    assert volume.stat("/wide").is_dir and volume.stat("/wide").length == 0


def test_summary_counts_blocks_and_tree(
    volume: HjfsVolume, image: bytes, tree: dict[str, Entry]
) -> None:
    s = volume.summary()
    counts = stored_counts(image)[: s.blocks_total]
    assert s.blocks_free == counts.count(0) and s.blocks_used == s.blocks_total - s.blocks_free
    assert s.directories == sum(1 for e in tree.values() if e.type & 0x80)
    assert s.files == len(tree) - s.directories
    assert s.bytes == sum(e.size for e in tree.values() if not e.type & 0x80)


def test_fsck_finds_nothing_in_a_fresh_build(built: tuple[bytes, BlockDevice, Path]) -> None:
    assert fsck(built[1]) == []


def test_fsck_reports_wrong_count_and_leak(image: bytes, tree: dict[str, Entry]) -> None:
    damaged = bytearray(image)
    sb = superblock(image)
    victim = tree["/wide/f00"].db[0]
    # zero the count of a used block (block `victim` is entry victim % 1365 of ref block 1 + ...)
    ref_block, index = 1 + victim // 1365, victim % 1365
    damaged[ref_block * BLOCK + 1 + 3 * index] = 0
    # and raise the count of a free block
    free = stored_counts(image)[: sb["size"]].index(0, sb["fend"])
    damaged[(1 + free // 1365) * BLOCK + 1 + 3 * (free % 1365)] = 1
    storage = BytesStorage(len(damaged))
    storage.buffer[:] = damaged
    problems = fsck(BlockDevice(storage, name="fs"))
    assert f"block {victim}: reference count 0, expected 1" in problems
    assert f"block {free}: reference count 1, expected 0" in problems


def test_fsck_reports_bad_block_type(image: bytes, tree: dict[str, Entry]) -> None:
    storage = BytesStorage(len(image))
    storage.buffer[:] = image
    target = tree["/wide"].db[0]
    storage.buffer[target * BLOCK] = 0  # a directory block that claims to be raw data
    problems = fsck(BlockDevice(storage, name="fs"))
    assert any(f"block {target} has type 0 (raw), expected 2 (dentry)" in p for p in problems)


def test_raw_image_file_stays_sparse(
    tmp_path: Path, built: tuple[bytes, BlockDevice, Path]
) -> None:
    src = built[2]
    (tmp_path / "proto").write_text("sizes\td775\n\t*\n")
    with RawFile.create(tmp_path / "fs.img", 256 * MiB) as raw:
        dev = BlockDevice(raw, name="fs")
        summary = ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=T)
        assert fsck(dev) == []
    allocated = os.stat(tmp_path / "fs.img").st_blocks * 512
    # the data, the 47 reference blocks and a little metadata; not 256 MB
    assert allocated < (summary.blocks_used + 64) * BLOCK
    assert summary.blocks_total == 256 * MiB // BLOCK
