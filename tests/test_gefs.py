"""gefs: ream, installer steps, mkfs population, reader, check and repair.

Independent references: tests/gefs_helpers.py (a reader written apart from
imagebuild's, with its own MetroHash) and the MetroHash64_1 test vectors of
the reference implementation (testvector.h).
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.disk.device import BytesStorage
from imagebuild.errors import LayoutError
from imagebuild.fs.gefs import GefsVolume, fsck, ream_and_populate, ream_only
from imagebuild.fs.gefs.alloc import Allocator, ArenaModel
from imagebuild.fs.gefs.hash import metrohash64_1
from imagebuild.fs.gefs.layout import BLKSZ, LEAFSPC, TLEAF, pack_node, unpack_node
from imagebuild.fs.gefs.ream import Geometry, ream_users
from imagebuild.fs.gefs.repair import repair_adm_backlink
from imagebuild.fs.gefs.writer import installer_userfile
from imagebuild.fs.proto import read_proto
from tests.gefs_helpers import Gefs, metro64
from tests.gefs_rules import check as rules_check

MiB = 1 << 20
T = 1_700_000_000
OLD = T - 86400
SIZE = 160 * MiB
KEY63 = b"012345678901234567890123456789012345678901234567890123456789012"


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


SIZES = {
    "empty": b"",
    "small": b"hello\n",
    "one_block": rand(BLKSZ, 1),
    "one_block_plus": rand(BLKSZ + 1, 2),
    "three_mb": rand(3 * MiB + 5, 3),
    # data, zeros over several mkfs pieces, data, then a zero tail
    "holes": rand(100, 4) + bytes(16364 * 4) + rand(50, 5) + bytes(16364 * 2),
    "all_zero": bytes(40_000),
}

PROTO = """\
wide\td775
\t+
sizes\td775
\t*
names\td775 glenda upas
\t*
emptydir\td755
future\t664
"""


def make_source(root: Path) -> None:
    def put(rel: str, data: bytes, mode: int = 0o644, mtime: int = OLD) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
        os.utime(p, (mtime, mtime))

    for i in range(400):  # enough entries for pivots in the main tree
        put(f"wide/d{i // 50}/f{i:03d}-{'x' * 40}", f"file {i}\n".encode())
    for name, data in SIZES.items():
        put(f"sizes/{name}", data)
    for i, name in enumerate(["hello world", "ünïcødé", "日本語", "y" * 244]):
        put(f"names/{name}", f"name {i}\n".encode(), mode=0o755)
    put("future", b"from the future\n", mtime=T + 1000)
    (root / "emptydir").mkdir()
    for d in root.rglob("*"):
        if d.is_dir():
            os.utime(d, (OLD, OLD))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, list]:  # type: ignore[type-arg]
    tmp = tmp_path_factory.mktemp("gefs")
    src = tmp / "src"
    src.mkdir()
    make_source(src)
    (tmp / "proto").write_text(PROTO)
    entries = read_proto([tmp / "proto"], src)
    storage = BytesStorage(SIZE)
    ream_and_populate(storage, entries, timestamp=T)
    return bytes(storage.buffer), src, entries


@pytest.fixture(scope="module")
def helper(built: tuple[bytes, Path, list]) -> Gefs:  # type: ignore[type-arg]
    return Gefs(built[0])


def _volume(img: bytes) -> GefsVolume:
    return GefsVolume(lambda n, o: img[o : o + n], len(img))


# -- the hash ---------------------------------------------------------------------------------


def test_metrohash64_1_reference_vectors() -> None:
    for seed, want in ((0, "658F044F5C730E40"), (1, "AE49EBB0A856537B")):
        value = int.from_bytes(bytes.fromhex(want), "little")
        assert metrohash64_1(KEY63, seed) == value
        assert metro64(KEY63, seed) == value


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_metrohash_agrees_with_the_independent_one(data: bytes, seed: int) -> None:
    assert metrohash64_1(data, seed) == metro64(data, seed)


def test_batched_block_hashes_equal_single_ones() -> None:
    from imagebuild.fs.gefs.hash import blkhash, blkhash_many

    blocks = [rand(BLKSZ, i) for i in range(9)] + [bytes(BLKSZ), b"\xff" * BLKSZ]
    assert blkhash_many(blocks) == [blkhash(b) for b in blocks] == [metro64(b) for b in blocks]


# -- ream -------------------------------------------------------------------------------------


def test_geometry_follows_reamfs() -> None:
    g = Geometry.of(SIZE)
    sz = SIZE - 2 * BLKSZ
    asz = sz // 8
    asz = asz - asz % BLKSZ - 2 * BLKSZ
    assert (g.narena, g.asz, g.sb1) == (8, asz, sz + BLKSZ)
    assert g.arena_addrs[0] == BLKSZ and g.arena_addrs[1] == BLKSZ + asz + 2 * BLKSZ
    with pytest.raises(LayoutError, match="too small"):
        Geometry.of(128 * MiB)


def test_ream_only_is_what_gefs_r_writes() -> None:
    s = BytesStorage(SIZE)
    r = ream_only(s.pwrite, SIZE, "glenda")
    img = bytes(s.buffer)
    g = Gefs(img)
    assert g.labels() == {"adm": (1, 1), "empty": (0, 0), "main": (2, 1)}
    assert (g.nextqid, g.nextgen, g.qgen, g.narena) == (3, 3, 0, 8)
    assert g.files("adm")["/users"][1] == ream_users("glenda")
    assert set(g.files("main")) == {"/"}
    # arena 0's log: Free(whole), Alloc(log block), then the three tree leaves
    a0 = r.arenas[0]
    log = img[a0.logs[0][0] : a0.logs[0][0] + BLKSZ]
    typ, logsz = struct.unpack_from(">HH", log)
    body = log[36 : 36 + logsz]
    ents = [struct.unpack_from(">Q", body, i)[0] for i in range(0, len(body), 8)]
    addr = a0.hdaddr + 2 * BLKSZ
    top = a0.hdaddr + r.geo.asz
    assert typ == 3
    assert ents == [addr | 5, r.geo.asz - 2 * BLKSZ, addr | 4, BLKSZ,
                    (top - BLKSZ) | 1, (top - 2 * BLKSZ) | 1, (top - 3 * BLKSZ) | 1]
    # arenas ream allocated nothing in keep loadlog()'s cut-off barrier past logsz
    a2 = r.arenas[2].logs[0][0]
    log2 = img[a2 : a2 + BLKSZ]
    assert struct.unpack_from(">HH", log2) == (3, 32)
    assert struct.unpack_from(">Q", log2, 4)[0] == metro64(log2[36:68])
    assert log2[68:76] == (3).to_bytes(8, "big") and not log2[76:].strip(b"\0")
    assert fsck(_volume(img)).clean


def test_every_block_pointer_checksum_is_right(helper: Gefs) -> None:
    for label in ("main", "adm", "other"):
        helper.files(label)
    assert helper.pointers_checked > 500


# -- installer steps --------------------------------------------------------------------------


def test_installer_datasets_users_and_directories(helper: Gefs) -> None:
    assert helper.labels() == {"adm": (4, 1), "empty": (0, 0), "main": (5, 1), "other": (3, 1)}
    assert helper.files("adm")["/users"][1] == installer_userfile("glenda")
    users = helper.users()
    main = helper.files("main")
    for d, owner in (("/adm", "adm"), ("/dist", "sys"), ("/usr", "sys")):
        f = main[d][0]
        assert f.is_dir and users[f.uid] == owner and users[f.gid] == owner
    other = helper.files("other")
    home = other["/usr/glenda"][0]
    assert home.mode & 0o777 == 0o700 and users[home.uid] == "glenda"
    assert other["/usr/glenda/tmp"][0].mode & 0o777 == 0o700
    # the other dataset has automatic snapshots turned off: Kconf "retain" => ""
    assert helper.dataset("other")[b"\x06retain"] == b""


def test_installer_writes_users_as_adm(helper: Gefs) -> None:
    # mountgefs starts gefs with -S (main.c: permissive = 1), and fs.c fsattach()
    # replaces the user name by "adm" for a permissive attach of %adm: the
    # truncation (fsopen OTRUNC, Owmuid) and the write (fswrite, Owmuid) are adm's.
    users = helper.users()
    f = helper.files("adm")["/users"][0]
    assert users[f.muid] == "adm" and f.muid == -1
    # files in main stay id 1's, the reamed table's $user, shown as tor
    assert users[helper.files("main")["/adm"][0].muid] == "tor"


# -- mkfs population --------------------------------------------------------------------------


def test_every_proto_entry_reads_back(built: tuple[bytes, Path, list], helper: Gefs) -> None:  # type: ignore[type-arg]
    _, _, entries = built
    files = helper.files("main")
    users = helper.users()
    vol = _volume(built[0])
    for e in entries:
        f, data = files[e.path]
        assert f.mode == e.mode, e.path
        assert users[f.uid] == (e.uid or "sys") and users[f.gid] == (e.gid or "sys"), e.path
        assert f.mtime_ns == min(e.mtime, T) * 1_000_000_000, e.path
        st_ = vol.stat(e.path)
        assert (st_.mode, st_.uid, st_.gid, st_.mtime) == (
            e.mode, e.uid or "sys", e.gid or "sys", min(e.mtime, T))
        if not e.is_dir:
            want = e.source.read_bytes()
            assert data == want and f.length == len(want), e.path
            assert vol.read(e.path) == want


def test_holes_stay_holes(helper: Gefs) -> None:
    kvs = helper.dataset("main")
    f = helper.files("main")["/sizes/all_zero"][0]
    assert not [k for k in kvs if k[:9] == b"\x00" + f.qid.to_bytes(8, "big")][:-1]
    h = helper.files("main")["/sizes/holes"][0]
    present = sorted(int.from_bytes(k[9:17], "big") // BLKSZ for k in kvs
                     if k[:9] == b"\x00" + h.qid.to_bytes(8, "big"))
    # pieces of 16364 bytes: 0 written (block 0), 1-3 skipped, 4 = bytes 65456..81819 written
    # (blocks 3, 4), 5 and 6 skipped, then one zero byte at the end (block 6)
    assert present == [0, 3, 4, 6]


def test_trees_grow_pivots_and_check_clean(built: tuple[bytes, Path, list]) -> None:  # type: ignore[type-arg]
    vol = _volume(built[0])
    assert vol.snapshot("main").ht >= 2
    res = fsck(vol)
    assert res.clean, res.errors
    assert not res.warnings


def test_reproducible(tmp_path: Path, built: tuple[bytes, Path, list]) -> None:  # type: ignore[type-arg]
    s = BytesStorage(SIZE)
    ream_and_populate(s, built[2], timestamp=T)
    assert bytes(s.buffer) == built[0]


def test_unknown_group_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "proto").write_text("f\t644 sys nosuchgroup\n")
    entries = read_proto([tmp_path / "proto"], tmp_path)
    with pytest.raises(LayoutError, match="nosuchgroup"):
        ream_and_populate(BytesStorage(SIZE), entries, timestamp=T)


def test_allocation_stops_at_the_reserve_then_reports_full() -> None:
    arenas = [ArenaModel(i, i * 64 * BLKSZ, 62 * BLKSZ, reserve=10 * BLKSZ) for i in range(3)]
    for a in arenas:
        a.used = a.size
        a.release(a.hdaddr + 2 * BLKSZ, a.size - 2 * BLKSZ)
        a.logs.append((a.hdaddr + 2 * BLKSZ, bytearray()))
        a.grab(a.hdaddr + 2 * BLKSZ, BLKSZ)
    alloc = Allocator(arenas)
    got = []
    with pytest.raises(LayoutError, match="full"):
        while True:
            got.append(alloc.alloc(True, 7, True))
    assert len(got) == len(set(got)) == 3 * (62 - 3 - 10)
    assert all(a.size - a.used == a.reserve for a in arenas)


# -- check and repair -------------------------------------------------------------------------


def test_fsck_finds_a_corrupt_data_block(built: tuple[bytes, Path, list], helper: Gefs) -> None:  # type: ignore[type-arg]
    kvs = helper.dataset("main")
    f = helper.files("main")["/sizes/small"][0]
    addr = struct.unpack(">q", kvs[b"\x00" + struct.pack(">qQ", f.qid, 0)][:8])[0]
    img = bytearray(built[0])
    img[addr + 100] ^= 1
    res = fsck(_volume(bytes(img)))
    assert any("checksum" in e for e in res.errors)


def test_misreamed_adm_is_reported_and_repaired(built: tuple[bytes, Path, list]) -> None:  # type: ignore[type-arg]
    s = BytesStorage(SIZE)
    ream_and_populate(s, built[2][:20], timestamp=T, legacy_backlink=True)
    kvs = Gefs(bytes(s.buffer)).dataset("adm")
    assert kvs[b"\x02" + bytes(8)] == b"\x01" + b"\xff" * 8 + b"\x00\x00\x00"
    res = fsck(GefsVolume(s.pread, s.size))
    assert res.misreamed_adm and len(res.errors) == 1
    repair_adm_backlink(s)
    res = fsck(GefsVolume(s.pread, s.size))
    assert res.clean and not res.warnings, (res.errors, res.warnings)
    g = Gefs(bytes(s.buffer))
    kvs = g.dataset("adm")
    assert b"\x02" + bytes(8) not in kvs
    assert kvs[b"\x02" + (1).to_bytes(8, "big")] == b"\x01" + b"\xff" * 8 + b"\x00\x00\x00"
    assert g.files("adm")["/users"][1] == installer_userfile("glenda")
    with pytest.raises(LayoutError, match="nothing to repair"):
        repair_adm_backlink(s)


def test_node_layout_round_trips() -> None:
    kvs = [(bytes([1]) + i.to_bytes(8, "big"), rand(i % 50, i)) for i in range(100)]
    blk = pack_node(TLEAF, kvs)
    n = unpack_node(blk)
    assert n.vals == kvs and n.fill == 2 * 100 + n.valsz
    assert n.fill <= LEAFSPC


def test_bulk_copy_leaves_what_mkfs_writes_leave(built: tuple[bytes, Path, list]) -> None:  # type: ignore[type-arg]
    """The BulkCopy shortcut against the shared replay's piece-by-piece writes."""
    from imagebuild.fs.gefs.fileserver import COPYDIST_BUFLEN, GefsFileServer
    from imagebuild.fs.gefs.writer import GefsBuilder
    from imagebuild.fs.mkfs import mkfs

    class Writes:  # the FileServer requests only: no copy(), so mkfs writes each piece
        def __init__(self, inner: GefsFileServer) -> None:
            self.inner = inner
            self.attach, self.walk, self.stat = inner.attach, inner.walk, inner.stat
            self.create, self.write, self.wstat = inner.create, inner.write, inner.wstat

    images = []
    for bulk in (True, False):
        s = BytesStorage(SIZE)
        b = GefsBuilder(SIZE, now=T, put_data=lambda a, blk, s=s: s.pwrite(blk, a))
        b.install()
        fsrv = GefsFileServer(b.server, b.main, {b.user: b.mkfs_uid}, lambda m: None)
        mkfs(fsrv if bulk else Writes(fsrv), built[2], user=b.user,  # type: ignore[arg-type]
             default_owner=("sys", "sys"), timestamp=T, buflen=COPYDIST_BUFLEN)
        r = b.commit()
        for addr, blk in sorted(r.final_blocks().items()):
            s.pwrite(blk, addr)
        images.append(bytes(s.buffer))
    assert images[0] == images[1]


def test_leaked_block_is_a_warning() -> None:
    from imagebuild.fs.gefs.writer import GefsBuilder

    s = BytesStorage(SIZE)
    b = GefsBuilder(SIZE, now=T, put_data=lambda a, blk: s.pwrite(blk, a))
    b.install()
    r = b.commit()
    stray = r.alloc.alloc(False)  # allocated in the log, referenced by nothing
    for addr, blk in r.final_blocks().items():
        s.pwrite(blk, addr)
    res = fsck(GefsVolume(s.pread, s.size))
    assert res.clean
    assert any(f"first {stray:#x}" in w for w in res.warnings), res.warnings


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_corrupt_metadata_raises_only_image_errors(data: st.DataObject) -> None:
    from imagebuild.errors import ImageBuildError

    base = _small_image()
    meta = [a for a in range(0, len(base), BLKSZ) if base[a : a + BLKSZ].strip(b"\0")]
    img = bytearray(base)
    addr = data.draw(st.sampled_from(meta))
    for _ in range(data.draw(st.integers(1, 20))):
        img[addr + data.draw(st.integers(0, 300))] = data.draw(st.integers(0, 255))
    b = bytes(img)
    try:
        vol = _volume(b)
        fsck(vol)
        for label in vol.labels():
            list(vol.walk(label=label))
    except ImageBuildError:
        pass


_SMALL: list[bytes] = []


def _small_image() -> bytes:
    if not _SMALL:
        s = BytesStorage(SIZE)
        ream_and_populate(s, [], timestamp=T)
        _SMALL.append(bytes(s.buffer))
    return _SMALL[0]


def test_okname_length_limit() -> None:
    # fs.c okname() scans name[0..Maxname-1] for the NUL: 244 bytes pass, 245 are
    # Elength; a 245-byte name would make a Kent key of 1+8+2+245+1 > Keymax bytes.
    from imagebuild.fs.gefs.layout import MAXENT, MAXNAME, ent_key
    from imagebuild.fs.gefs.server import okname

    assert MAXNAME == 245
    assert okname(b"y" * 244) is None
    assert len(ent_key(1, b"y" * 244)) <= MAXENT
    assert okname(b"y" * 245) is not None
    assert okname(b"a\x1fb") is not None and okname(b"a\x7fb") is None


def test_gefs_mount_and_check_rules(built: tuple[bytes, Path, list]) -> None:  # type: ignore[type-arg]
    # tests/gefs_rules.py replays load.c loadfs() and check.c checkfs() from the C sources
    ld = rules_check(built[0])
    assert ld.errors == []
    assert ld.leaked == []  # we free what the install leaves unreferenced
    assert ld.labels == {"adm": (4, 1), "empty": (0, 0), "main": (5, 1), "other": (3, 1)}
    assert ld.qgen == 0 and ld.nextgen == 6
    assert any(ht > 1 for _, _, ht, *_ in ld.snaps.values())  # pivots were checked too


def test_ream_only_mount_and_check_rules() -> None:
    s = BytesStorage(SIZE)
    ream_only(s.pwrite, SIZE, "glenda")
    ld = rules_check(bytes(s.buffer))
    assert ld.errors == [] and ld.leaked == []
    assert (ld.nextqid, ld.nextgen, ld.qgen) == (3, 3, 0)
    assert ld.labels == {"adm": (1, 1), "empty": (0, 0), "main": (2, 1)}
