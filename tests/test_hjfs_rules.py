"""hjfs writer rules: allocation order, console commands, mkfs's up-to-date check, bad input."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from hjfs_helpers import BLOCK, block, entries, file_blocks, read_file, superblock, walk_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.errors import ImageBuildError, InputError, LayoutError
from imagebuild.fs.hjfs import HjfsVolume, fsck, plan, ream_and_populate
from imagebuild.fs.hjfs.layout import Dentry, UserTable, default_users, indirect_path
from imagebuild.fs.hjfs.pieces import scan_holes
from imagebuild.fs.hjfs.users import bio_pieces
from imagebuild.fs.proto import ProtoEntry, read_proto
from imagebuild.plan9.libc import tokenize

T = 1_700_000_000
MiB = 1 << 20
RB = 4095


def build(
    tmp_path: Path,
    proto_text: str,
    files: dict[str, bytes | None],
    *,
    size: int = 16 * MiB,
    **kwargs: object,
) -> tuple[BytesStorage, BlockDevice]:
    src = tmp_path / "src"
    for rel, data in files.items():
        path = src / rel
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    src.mkdir(exist_ok=True)
    (tmp_path / "proto").write_text(proto_text)
    storage = BytesStorage(size)
    dev = BlockDevice(storage, name="fs")
    ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=T, **kwargs)  # type: ignore[arg-type]
    return storage, dev


# -- allocation order (fs1.c getfree, putfree) -----------------------------------------------


def test_freed_user_table_blocks_come_back_after_the_free_list(tmp_path: Path) -> None:
    big = random.Random(1).randbytes(300 * RB)
    storage, _ = build(tmp_path, "big\td775\n\tfile\n", {"big/file": big})
    image = bytes(storage.buffer)
    fend = superblock(image)["fend"]
    tree = walk_tree(image)
    # After ream the free list holds fend+2..fend+257; adm's entries and the table take
    # fend+2, fend+3; each of the four newusers frees the table's block (queued at the
    # tail) and takes the next one, ending at fend+7.  mkfs then gets fend+8..fend+257,
    # the four freed blocks fend+3..fend+6, and only then scans on from fend+258.
    assert tree["/big"].db[0] == fend + 8
    blocks = file_blocks(image, tree["/big/file"])
    assert [blocks[i] for i in range(15)] == list(range(fend + 9, fend + 24))
    assert tree["/big/file"].ib[0] == fend + 24  # allocated before file block 15
    assert [blocks[i] for i in range(15, 248)] == list(range(fend + 25, fend + 258))
    assert [blocks[i] for i in range(248, 252)] == [fend + 3, fend + 4, fend + 5, fend + 6]
    assert [blocks[i] for i in range(252, 300)] == list(range(fend + 258, fend + 306))
    assert read_file(image, tree["/big/file"]) == (tmp_path / "src/big/file").read_bytes()


def test_freed_blocks_keep_the_old_user_tables(tmp_path: Path) -> None:
    storage, dev = build(tmp_path, "", {})
    image = bytes(storage.buffer)
    fend = superblock(image)["fend"]
    udef = (
        b"-1:adm:adm:\n0:none:adm:\n1:tor:tor:\n2:glenda:glenda:\n10000:sys::\n"
        b"10001:map:map:\n10002:doc::\n10003:upas:upas:\n10004:font::\n"
    )
    # dirty buffers reach the disk on sync even after their block was freed
    stale = [block(image, fend + k) for k in (3, 4, 5, 6)]
    assert all(b[0] == 0 for b in stale)  # TRAW
    assert stale[0][1 : 1 + len(udef)] == udef  # written at ream
    assert stale[1][1 : 1 + len(udef)] == udef  # newuser glenda: she exists, nothing changes
    assert stale[2][1:].rstrip(b"\0").startswith(b"-1:adm:adm:glenda\n0:none")
    assert b"10000:sys::glenda\n" in stale[3] and b"10003:upas:upas:\n" in stale[3]
    assert fsck(dev) == []
    assert HjfsVolume(dev).summary().blocks_used == fend + 4  # root, its block, adm's, table


def test_directory_blocks_go_indirect_past_fifteen(tmp_path: Path) -> None:
    files: dict[str, bytes | None] = {f"d/n{i:03d}": b"" for i in range(15 * 9 + 1)}
    storage, dev = build(tmp_path, "d\td775\n\t*\n", files)
    image = bytes(storage.buffer)
    d = walk_tree(image)["/d"]
    assert d.size == 16 and d.ib[0] != 0  # 136 entries need 16 blocks: 15 direct + 1 indirect
    assert HjfsVolume(dev).listdir("/d") == sorted(f"n{i:03d}" for i in range(136))
    assert fsck(dev) == []


# -- console commands (cons.c, auth.c) ------------------------------------------------------------


def test_newuser_for_a_new_user_makes_home_directory(tmp_path: Path) -> None:
    console = ("create /usr sys sys 775 d", "newuser bob", "newuser sys +bob")
    _, dev = build(tmp_path, "", {}, console=console)
    vol = HjfsVolume(dev)
    # cmdnewuser(): the first free uid counting up from 0 past -1,0,1,2 is 3; bob leads himself
    assert b"2:glenda:glenda:\n3:bob:bob:\n10000:sys::bob\n" in vol.read("/adm/users")
    st = vol.stat("/usr/bob")
    assert (st.uid, st.gid, st.muid, st.is_dir, st.mode & 0o777) == (
        "bob",
        "bob",
        "bob",
        True,
        0o775,
    )
    assert fsck(dev) == []


def _groups_filling_users(rune: str) -> tuple[str, ...]:
    """`newuser NAME :` lines that grow ream's table (auth.c udef[]) to exactly 8180 bytes,
    with `rune` (1 or 2 characters, 2 bytes in UTF-8) starting at byte 4089."""
    udef = (
        "-1:adm:adm:\n0:none:adm:\n1:tor:tor:\n2:glenda:glenda:\n10000:sys::\n"
        "10001:map:map:\n10002:doc::\n10003:upas:upas:\n10004:font::\n"
    )
    pos = len(udef)
    names: list[str] = []

    def add(name: str) -> None:
        nonlocal pos
        names.append(name)
        # cmdnewuser(): a group (":") takes the next uid from 10000 up: 10005, 10006, ...
        pos += len(f"1{len(names) + 4:04d}:{name}::\n".encode())

    while 4089 - pos > 100:
        add(f"g{len(names):03d}".ljust(60, "x"))
    if 4089 - pos > 50:
        add(f"g{len(names):03d}".ljust(4089 - pos - 49, "x"))  # leaves 40 bytes
    prefix = f"g{len(names):03d}".ljust(4089 - (pos + 6), "x")  # "100NN:" is 6 bytes
    add(prefix + rune + "y")
    while 8180 - pos > 72:
        add(f"g{len(names):03d}".ljust(60, "x"))
    add(f"g{len(names):03d}".ljust(8180 - pos - 9, "z"))
    assert pos == 8180
    return tuple(f"newuser {name} :" for name in names)


def test_user_table_pieces_never_split_a_rune(tmp_path: Path) -> None:
    # userssave() prints into a Biobuf of RBLOCK-Bungetsize = 4090 bytes; fmt flushes it when
    # the next rune does not fit (fmtdef.h FMTRUNE), so a 2-byte rune at byte 4089 ends the
    # first piece at 4089 bytes and the 8180-byte table takes three writes instead of two.
    # Each write is one modified(): the file's version is one higher than with ASCII names.
    tables = {}
    for rune in ("é", "ee"):
        (tmp_path / rune).mkdir()
        storage, dev = build(tmp_path / rune, "", {}, console=_groups_filling_users(rune))
        image = bytes(storage.buffer)
        users = walk_tree(image)["/adm/users"]
        assert users.size == 8180
        assert read_file(image, users)[4089:4091] == rune.encode()
        assert fsck(dev) == []
        tables[rune] = users
    assert tables["é"].vers == tables["ee"].vers + 1


def test_bio_pieces_fill_the_buffer_with_whole_runes() -> None:
    assert [len(p) for p in bio_pieces(b"a" * 8181, 4090)] == [4090, 4090, 1]
    # a 3-byte rune at 4088 does not fit the first piece; a 4-byte one ending the second does
    text = "a" * 4088 + "\u65e5" + "b" * 4083 + "\U0001f600"
    assert [len(p) for p in bio_pieces(text.encode(), 4090)] == [4088, 4090]
    assert b"".join(bio_pieces(text.encode(), 4090)) == text.encode()


def test_console_create_with_flags(tmp_path: Path) -> None:
    console = ("create /log adm sys 662 a", "create /lock glenda glenda 600 l", "newuser glenda")
    _, dev = build(tmp_path, "", {}, console=console)
    vol = HjfsVolume(dev)
    assert (vol.stat("/log").mode, vol.stat("/log").uid, vol.stat("/log").gid) == (
        0x40000000 | 0o662,
        "adm",
        "sys",
    )
    assert vol.stat("/lock").mode == 0x20000000 | 0o600


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("create /x nobody sys 775 d", "unknown hjfs user 'nobody'"),
        ("create /x sys sys 7x5 d", "syntax error"),
        ("create /x sys sys 775 q", "syntax error"),
        ("create /adm sys sys 775 d", "file exists"),
        ("create /no/x sys sys 775 d", "/no: file does not exist"),
        ("newuser bad:name", "invalid user name"),
        ("newuser sys +ghost", "no user 'ghost'"),
        ("fsck", "unsupported command"),
    ],
)
def test_console_errors(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        build(tmp_path, "", {}, console=(line,))


# -- mkfs's rules ---------------------------------------------------------------------------------


def test_a_directory_listed_twice_is_left_alone(tmp_path: Path) -> None:
    # cat distproto 9bootproto names /386 twice; the second time it is up to date
    storage, dev = build(tmp_path, "d\td775\n\ta\nd\td775\n\tb\n", {"d/a": b"a", "d/b": b"b"})
    assert HjfsVolume(dev).listdir("/d") == ["a", "b"]
    assert walk_tree(bytes(storage.buffer))["/d"].vers == 4


def test_a_file_listed_twice_from_the_same_source_is_skipped(tmp_path: Path) -> None:
    _, dev = build(tmp_path, "a\na\n", {"a": b"x"})
    assert HjfsVolume(dev).listdir("/") == ["adm", "dist", "usr", "a"]


def test_a_file_replaced_by_a_newer_source_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "old").mkdir(parents=True)
    (src / "old" / "a").write_bytes(b"old")
    (src / "a").write_bytes(b"new")
    os.utime(src / "old" / "a", (T - 100, T - 100))
    os.utime(src / "a", (T - 10, T - 10))
    (tmp_path / "proto").write_text("a - - - /old/a\na\n")
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    with pytest.raises(LayoutError, match=r"proto:2: /a: already in the file system"):
        ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=T)


def test_default_owner_and_mkfs_user(tmp_path: Path) -> None:
    _, dev = build(tmp_path, "a\n", {"a": b"x"}, default_owner=("upas", "adm"), mkfs_user="sys")
    st = HjfsVolume(dev).stat("/a")
    assert (st.uid, st.gid, st.muid) == ("upas", "adm", "sys")


def test_numeric_owner_is_a_uid(tmp_path: Path) -> None:
    _, dev = build(tmp_path, "a - 10001 2\n", {"a": b"x"})  # auth.c name2uid(): digits are a uid
    st = HjfsVolume(dev).stat("/a")
    assert (st.uid, st.gid) == ("map", "glenda")


def test_without_timestamp_the_clock_is_now(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x")
    os.utime(src / "a", (T, T))
    (tmp_path / "proto").write_text("a\n")
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    before = int(time.time())
    ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=None)
    vol = HjfsVolume(dev)
    assert vol.stat("/a").mtime == T
    assert before <= vol.stat("/").mtime <= int(time.time())


# -- refusals, before anything is written --------------------------------------------------


def test_tree_too_big_is_refused_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(random.Random(2).randbytes(2 * MiB))
    (tmp_path / "proto").write_text("big\n")
    storage = BytesStorage(1 * MiB)
    with pytest.raises(
        LayoutError, match=r"fs: the tree needs \d+ hjfs blocks .* the partition has 256 blocks"
    ):
        ream_and_populate(
            BlockDevice(storage, name="fs"), read_proto([tmp_path / "proto"], src), timestamp=T
        )
    assert not any(storage.buffer)


def test_plan_reports_blocks_needed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(random.Random(3).randbytes(100 * RB))
    (tmp_path / "proto").write_text("f\n")
    small = plan(64, read_proto([tmp_path / "proto"], src), timestamp=T)
    roomy = plan(4096, read_proto([tmp_path / "proto"], src), timestamp=T)
    # 100 data blocks + 1 indirect, on top of what an empty tree uses
    empty = plan(4096, [], timestamp=T)
    assert roomy.blocks_needed == empty.blocks_needed + 101
    assert small.blocks_needed == empty.blocks_needed - empty.fend + small.fend + 101
    with pytest.raises(LayoutError, match="needs"):
        small.check_fits("fs")


def test_device_too_small_for_ream(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no room"):
        ream_and_populate(BlockDevice(BytesStorage(2 * BLOCK), name="fs"), [], timestamp=T)


def entry(path: str, source: Path, **kw: object) -> ProtoEntry:
    args: dict[str, object] = {"mode": 0o644, "uid": None, "gid": None, "mtime": T, "length": 0}
    args.update(kw)
    return ProtoEntry(path=path, source=source, origin="p:1", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/" + "y" * 256, "name is 256 bytes, hjfs keeps at most 255"),
        ("/a\x01b", "control character"),
        ("/__mkfstmp", "mkfs's temporary file"),
        ("/nodir/a", "can't create: /nodir is not a directory"),
    ],
)
def test_names_hjfs_cannot_store(tmp_path: Path, path: str, message: str) -> None:
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    with pytest.raises(LayoutError, match=message):
        ream_and_populate(dev, [entry(path, tmp_path)], timestamp=T)


def test_unknown_owner_is_refused(tmp_path: Path) -> None:
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    with pytest.raises(LayoutError, match=r"p:1: /a: unknown hjfs user or group 'nobody'"):
        ream_and_populate(dev, [entry("/a", tmp_path, uid="nobody")], timestamp=T)
    with pytest.raises(LayoutError, match="mkfs user 'ghost'"):
        ream_and_populate(dev, [], timestamp=T, mkfs_user="ghost")


def test_source_that_changed_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    with pytest.raises(InputError, match="changed size"):
        ream_and_populate(dev, [entry("/f", tmp_path / "f", length=3)], timestamp=T)


def test_errors_are_one_line(tmp_path: Path) -> None:
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    with pytest.raises(ImageBuildError) as info:
        ream_and_populate(dev, [entry("/a", tmp_path, uid="nobody")], timestamp=T)
    assert "\n" not in str(info.value)


def test_reader_refuses_a_device_without_hjfs() -> None:
    from imagebuild.errors import ImageFormatError

    dev = BlockDevice(BytesStorage(64 * BLOCK), name="fs")
    with pytest.raises(ImageFormatError, match="block 0 has type 0"):
        HjfsVolume(dev)
    assert fsck(dev) == ["hjfs superblock: block 0 has type 0 (raw), not 1"]


# -- pieces ---------------------------------------------------------------------------------------


def test_scan_holes_matches_mkfs_rule(tmp_path: Path) -> None:
    from hjfs_helpers import mkfs_touched_blocks

    cases = [
        bytes(4088) + b"x" + bytes(9000),
        b"x" * 4088 + bytes(4088),
        bytes(4087),
        b"y" + bytes(4088 * 1024 * 2),  # past one read piece
        bytes(4088 * 1024) + b"z",
    ]
    for i, data in enumerate(cases):
        f = tmp_path / f"c{i}"
        f.write_bytes(data)
        touched, writes = scan_holes(f, len(data))
        assert (list(touched), writes) == mkfs_touched_blocks(data), i


@settings(max_examples=60, deadline=None)
@given(
    name=st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b),
    shorts=st.lists(st.integers(-0x8000, 0x7FFF), min_size=3, max_size=3),
    mode=st.integers(0, 0xFFFF),
    numbers=st.lists(st.integers(0, 2**63 - 1), min_size=4, max_size=4),
    pointers=st.lists(st.integers(0, 2**64 - 1), min_size=19, max_size=19),
)
def test_dentry_pack_round_trips(
    name: bytes, shorts: list[int], mode: int, numbers: list[int], pointers: list[int]
) -> None:
    d = Dentry(
        name=name,
        uid=shorts[0],
        muid=shorts[1],
        gid=shorts[2],
        mode=mode,
        path=numbers[0],
        vers=numbers[1] & 0xFFFFFFFF,
        type=numbers[2] & 0xFF,
        size=numbers[3],
        db=pointers[:15],
        ib=pointers[15:],
        atime=-numbers[0],
        mtime=numbers[1],
    )
    packed = d.pack()
    assert len(packed) == 453
    assert Dentry.unpack(packed) == d
    assert packed[:256].rstrip(b"\0") == name and packed[256:258] == (shorts[0] & 0xFFFF).to_bytes(
        2, "little"
    )


def test_indirect_path_matches_getblk() -> None:
    assert indirect_path(14) is None
    assert indirect_path(15) == (0, [0])
    assert indirect_path(15 + 340) == (0, [340])
    assert indirect_path(15 + 341) == (1, [0, 0])
    assert indirect_path(15 + 341 + 341 * 341 - 1) == (1, [340, 340])
    assert indirect_path(15 + 341 + 341**2) == (2, [0, 0, 0])
    with pytest.raises(ValueError):
        indirect_path(15 + 341 + 341**2 + 341**3 + 341**4)


def test_user_table_round_trips_and_skips_bad_lines() -> None:
    table = UserTable(default_users())
    assert UserTable.parse(table.serialize()).serialize() == table.serialize()
    parsed = UserTable.parse(b"# comment\n5:x:x:\nbad line\n7:y::x,nobody\nz:1:2:3\n")
    assert [(u.uid, u.name, u.lead, u.members) for u in parsed.users] == [
        (5, "x", 5, []),
        (7, "y", -0x8000, [-0x8000, 5]),
    ]
    # userssave() puts a comma before every member but the first slot, even if that one is empty
    assert parsed.serialize() == b"5:x:x:\n7:y::,x\n"


def test_tokenize_follows_plan9_quoting() -> None:
    assert tokenize("create /a 'b c' sys 775 d") == ["create", "/a", "b c", "sys", "775", "d"]
    assert tokenize("  x  'it''s'  ") == ["x", "it's"]
    assert tokenize("") == []


def test_dentry_block_layout_is_conv_c(tmp_path: Path) -> None:
    storage, _ = build(tmp_path, "", {})
    image = bytes(storage.buffer)
    sb = superblock(image)
    adm_block = entries(block(image, walk_tree(image)["/adm"].db[0]))
    assert adm_block[0].name == b"users" and all(e.mode == 0 for e in adm_block[1:])
    assert sb["root"] == sb["fend"]


# -- the three replays agree -------------------------------------------------------------------


def sparse_tree(src: Path) -> None:
    from imagebuild.fs.hjfs.pieces import PIECE

    src.mkdir(parents=True, exist_ok=True)
    data = bytearray(random.Random(4).randbytes(PIECE + 50_000))
    data[PIECE - 20_000 : PIECE + 30_000] = bytes(50_000)  # a hole across a read piece
    (src / "straddle").write_bytes(bytes(data))
    (src / "zeros").write_bytes(bytes(3 * MiB))
    (src / "small").write_bytes(b"small\n")


def test_streamed_and_planned_images_are_identical(tmp_path: Path) -> None:
    src = tmp_path / "src"
    sparse_tree(src)
    (tmp_path / "proto").write_text("+\n")
    entries_ = read_proto([tmp_path / "proto"], src)
    streamed = BytesStorage(32 * MiB)
    ream_and_populate(BlockDevice(streamed, name="fs"), entries_, timestamp=T)
    planned = BytesStorage(32 * MiB)
    plan(32 * MiB // BLOCK, entries_, timestamp=T).write(BlockDevice(planned, name="fs"))
    assert streamed.buffer == planned.buffer
    vol = HjfsVolume(BlockDevice(streamed, name="fs"))
    assert vol.read("/straddle") == (src / "straddle").read_bytes()


def test_holes_across_read_pieces_follow_mkfs(tmp_path: Path) -> None:
    from hjfs_helpers import mkfs_touched_blocks

    src = tmp_path / "src"
    sparse_tree(src)
    for name in ("straddle", "zeros", "small"):
        data = (src / name).read_bytes()
        assert scan_holes(src / name, len(data)) == mkfs_touched_blocks(data), name


def test_a_tree_that_fits_only_thanks_to_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "zeros").write_bytes(bytes(3 * MiB))  # 769 blocks without holes, 1 with
    (tmp_path / "proto").write_text("zeros\n")
    storage = BytesStorage(2 * MiB)
    dev = BlockDevice(storage, name="fs")
    summary = ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=T)
    assert summary.blocks_used < 32
    assert HjfsVolume(dev).read("/zeros") == bytes(3 * MiB)
    assert fsck(dev) == []


def test_dry_replay_bounds_the_exact_one(tmp_path: Path) -> None:
    from imagebuild.fs.hjfs.copy import DryCopier
    from imagebuild.fs.hjfs.layout import indirect_blocks_for
    from imagebuild.fs.hjfs.writer import MKFILE_CONSOLE, _replay

    # getblk's tree: 15 direct; then 341 below one single-indirect block; then
    # double-indirect: one top block and one per 341 data blocks
    assert [indirect_blocks_for(n) for n in (15, 16, 356, 357, 356 + 341, 356 + 342)] == [
        0,
        1,
        1,
        3,
        3,
        4,
    ]
    assert indirect_blocks_for(15 + 341 + 341**2 + 1) == 1 + (1 + 341) + 3
    src = tmp_path / "src"
    sparse_tree(src)
    (src / "dense").write_bytes(random.Random(5).randbytes(3 * MiB))
    for text, sparse in (("dense\nsmall\n", False), ("+\n", True)):
        (tmp_path / "proto").write_text(text)
        entries_ = read_proto([tmp_path / "proto"], src)
        exact = plan(8192, entries_, timestamp=T).blocks_needed
        dry = _replay(
            8192,
            entries_,
            DryCopier(),
            timestamp=T,
            now=T,
            default_owner=("sys", "sys"),
            console_lines=MKFILE_CONSOLE,
            mkfs_user="glenda",
        ).blocks_needed
        # without holes the count is exact; holes only save blocks
        assert (dry > exact) if sparse else (dry == exact), text


def test_writer_summary_matches_reader(tmp_path: Path) -> None:
    src = tmp_path / "src"
    sparse_tree(src)
    (tmp_path / "proto").write_text("+\n")
    dev = BlockDevice(BytesStorage(32 * MiB), name="fs")
    progress: list[int] = []
    written = ream_and_populate(
        dev, read_proto([tmp_path / "proto"], src), timestamp=T,
        progress=lambda step, done, total: progress.append(done),
    )
    assert written == HjfsVolume(dev).summary()
    assert (written.files, written.directories) == (4, 4)  # users + 3; /, adm, dist, usr
    assert progress == sorted(progress) and progress[-1] >= 2 * MiB


def test_proto_naming_the_root_leaves_it_alone(tmp_path: Path) -> None:
    # "." is the new root: mkfs finds /n/newfs/ up to date (ream stamped it with the clock)
    _, dev = build(tmp_path, ".\td700\na\n", {"a": b"x"})
    assert HjfsVolume(dev).stat("/").mode & 0o777 == 0o775  # not 0700
    assert HjfsVolume(dev).listdir("/")[-1] == "a"


def test_every_permission_bit_survives(tmp_path: Path) -> None:
    modes = [0o777, 0o000, 0o421, 0o124, 0o241, 0o700, 0o070, 0o007]
    text = "".join(f"m{m:03o}\t{m:03o}\n" for m in modes) + "d\td000\n"
    files: dict[str, bytes | None] = {f"m{m:03o}": b"x" for m in modes}
    files["d"] = None
    _, dev = build(tmp_path, text, files)
    vol = HjfsVolume(dev)
    assert [vol.stat(f"/m{m:03o}").mode for m in modes] == modes
    assert vol.stat("/d").mode == 0x80000000
