"""cwfs: trees that need several dumps, checked in the main tree and in every dump.

A small cache partition forces the writer to dump (cw.c cfsdump()) again
and again while mkfs copies.  The kinds of input a dump can get wrong, each in
every generated tree: a directory of several blocks that gains entries after
one, two, three dumps; a deep directory whose ancestors do not change between
dumps while it does; files that grow across dumps, through their indirect
blocks (Tind1, and Tind2 past a hole); directories left alone between dumps.

Checked by the separately written reader (tests/cwfs_helpers.py): every proto
entry (mode, owner, group, mtime, bytes) in the main tree, and every dump,
read as roread() reads the dump file system, holding exactly the entries mkfs
had finished when it was made, unchanged by what came later.  And by our own
reader and `fsck`.
"""

from __future__ import annotations

import itertools
import random
import struct
from pathlib import Path

import cwfs_helpers as h
import pytest

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.cwfs import CwfsVolume, fsck, ream_and_populate
from imagebuild.fs.cwfs.layout import BUFSIZE, DIRPERBUF
from imagebuild.fs.mkfs import MKFSTMP
from imagebuild.fs.proto import DMDIR, ProtoEntry

MB = 1 << 20
SDE = 1_700_000_000
OWNERS = ["sys", "glenda", "bootes", "upas", "adm"]
INSTALLER = {"/adm", "/adm/users", "/dist", "/usr", "/usr/glenda"}


def _disk(cache_mb: int, worm_mb: int) -> dict[str, BlockDevice]:
    whole = BlockDevice(BytesStorage((cache_mb + worm_mb + 2) * MB))
    c, w = cache_mb * MB // 512, (cache_mb + worm_mb) * MB // 512
    return {
        "fscache": whole.slice(0, c, "fscache"),
        "fsworm": whole.slice(c, w, "fsworm"),
        "other": whole.slice(w, whole.secs, "other"),
    }


class _Gen:
    """Proto entries in mkfs order with their sources under `src`."""

    def __init__(self, src: Path, seed: int, unit: int) -> None:
        self.rng = random.Random(seed)
        self.unit = unit  # the size of a big file's pieces
        self.src = src
        self.entries: list[ProtoEntry] = []

    def dir(self, path: str) -> None:
        owner = self.rng.choice(OWNERS)
        mode = DMDIR | self.rng.choice([0o775, 0o755, 0o777])
        self.entries.append(ProtoEntry(path, mode, owner, owner, self.src, SDE - 7, 0))

    def file(self, path: str, pieces: list[tuple[int, int]]) -> None:
        """A file of (offset, length) random pieces, zeros between them (mkfs's holes)."""
        f = self.src / f"s{len(self.entries)}"
        size = max((o + n for o, n in pieces), default=0)
        with open(f, "wb") as fh:
            for o, n in pieces:
                fh.seek(o)
                fh.write(self.rng.randbytes(n))
            fh.truncate(size)
        mode = self.rng.choice([0o644, 0o755, 0o664 | 0x40000000, 0o600 | 0x20000000, 0o444])
        owner, group = self.rng.choice(OWNERS), self.rng.choice(OWNERS)
        mtime = SDE - self.rng.randrange(1, 10**8)
        self.entries.append(ProtoEntry(path, mode, owner, group, f, mtime, size))

    def small(self, path: str) -> None:
        sizes = [0, 1, BUFSIZE - 1, BUFSIZE, BUFSIZE + 1, 6 * BUFSIZE, 7 * BUFSIZE + 3]
        size = self.rng.choice([*sizes, self.rng.randrange(120_000)])
        self.file(path, [(0, size)] if size else [])

    def big(self, path: str) -> None:
        self.file(path, [(0, self.rng.randrange(self.unit, 3 * self.unit))])


def dump_tree(src: Path, seed: int, unit: int = MB) -> list[ProtoEntry]:
    """A tree that needs several dumps on a small cache, with every kind of input above;
    `unit` scales its big files."""
    g = _Gen(src, seed, unit)
    rng = g.rng
    g.dir("/a")  # a directory of several blocks, filled across dumps
    n = DIRPERBUF * 2 + rng.randrange(10, 40)
    big_at = set(rng.sample(range(n), 4))
    for i in range(n // 2):
        (g.big if i in big_at else g.small)(f"/a/f{i}")
    deep = "/a/d"
    g.dir(deep)
    for level in range(rng.randrange(4, 7)):  # each level changes while those above do not
        deep += f"/l{level}"
        g.dir(deep)
        g.small(deep + "/x")
        if level % 2:
            g.big(deep + "/big")
    g.file("/a/d/grow", [(0, 6 * unit + rng.randrange(BUFSIZE))])  # Tind1, across dumps
    tind2 = (6 + 2046) * BUFSIZE  # the first byte Tind2 maps (dentry.c rel2abs)
    g.file("/a/d/l0/far", [(0, 2 * unit), (tind2 + rng.randrange(MB), 3 * unit)])
    g.small("/a/d/l0/after")  # a directory modified again after dumps below it
    for i in range(n // 2, n):
        (g.big if i in big_at else g.small)(f"/a/f{i}")
    g.dir("/b")  # left alone while /a changes
    g.dir("/c")
    for i in range(rng.randrange(3, 8)):
        g.small(f"/c/g{i}")
    g.big("/c/last")
    return g.entries


def _check_entry(img: h.Image, users: dict[int, str], e: ProtoEntry, got: h.Entry) -> None:
    assert got.mode & 0o777 == e.mode & 0o777, e.path
    assert bool(got.mode & 0x4000) == e.is_dir, e.path
    assert bool(got.mode & 0x2000) == bool(e.mode & 0x40000000), e.path  # DAPND
    assert bool(got.mode & 0x1000) == bool(e.mode & 0x20000000), e.path  # DLOCK
    assert (users[got.uid], users[got.gid]) == (e.uid, e.gid), e.path
    if e.is_dir:
        assert got.mtime in (e.mtime, SDE), e.path  # the time of its last change
    else:
        assert got.mtime == e.mtime, e.path
        assert got.size == e.length, e.path
        assert img.data(got) == e.source.read_bytes(), e.path


def _check_dump(view: h.DumpView, users: dict[int, str], entries: list[ProtoEntry],
                tree: dict[str, h.Entry]) -> tuple[int, bool]:  # fmt: skip
    """The number of proto entries the dump holds: exactly the first ones, each as finished,
    and at most mkfs's temporary file of the next, holding a prefix of its bytes; and whether
    it holds that file (a dump in the middle of a file's writes)."""
    done = 0
    while done < len(entries) and entries[done].path in tree:
        _check_entry(view, users, entries[done], tree[entries[done].path])
        done += 1
    names = {e.path for e in entries}
    extra = {p for p in tree if p in names} - {e.path for e in entries[:done]}
    assert not extra, sorted(extra)[:5]
    temps = [p for p in tree if p.endswith("/" + MKFSTMP)]
    assert len(temps) <= 1
    if temps:
        nxt = entries[done]
        assert temps[0] == nxt.path.rsplit("/", 1)[0] + "/" + MKFSTMP
        part = tree[temps[0]]
        assert view.data(part) == nxt.source.read_bytes()[: part.size]
    return done, bool(temps)


# A 13 MiB fscache has one bucket of 135 slots (cacheinit(): msize 1): a dump every 92
# blocks or so; 22 MiB has five buckets, 26 MiB seven.  Each dump leaves the old superblock
# Cwrite in its slot for good (cfsdump() rewrites it in place), so a one-bucket cache takes
# about twenty dumps before one of them finds the bucket full, as cwfs would.
@pytest.mark.parametrize(
    ("seed", "cache_mb", "unit", "min_dumps"),
    [(1, 13, MB // 4, 6), (2, 13, MB // 5, 6), (3, 22, MB, 3), (4, 26, MB, 2)],
)
def test_a_tree_dumped_several_times_reads_back_in_main_and_in_every_dump(
    tmp_path: Path, seed: int, cache_mb: int, unit: int, min_dumps: int
) -> None:
    entries = dump_tree(tmp_path, seed, unit)
    parts = _disk(cache_mb=cache_mb, worm_mb=120)
    ream_and_populate(parts, entries, timestamp=SDE)
    assert fsck(parts["fscache"], parts["fsworm"], parts["other"]) == []
    cache, worm = (parts[p].pread(parts[p].size, 0) for p in ("fscache", "fsworm"))

    img = h.Image(cache, worm)
    tree, users = img.tree(), img.users()
    for e in entries:
        _check_entry(img, users, e, tree[e.path])
    assert not [p for p in tree if p.endswith(MKFSTMP)]
    assert {p for p in tree if p not in INSTALLER and p != "/"} == {e.path for e in entries}

    ours = CwfsVolume(parts["fscache"], parts["fsworm"], parts["other"])
    for e in entries:
        st = ours.stat(e.path)
        assert (st.mode & 0o777, st.uid, st.gid) == (e.mode & 0o777, e.uid, e.gid), e.path
        if not e.is_dir:
            assert (st.mtime, st.length) == (e.mtime, e.length), e.path
            assert ours.read(e.path) == e.source.read_bytes(), e.path

    view = h.DumpView(cache, worm)
    dumps = view.dumps()
    names = [name for name, _ in dumps]
    assert len(names) >= min_dumps, names
    assert names == ["/2023/1114"] + [f"/2023/1114{k}" for k in range(1, len(names))]
    progress, midfile, a_sizes = [], [], []
    for _name, root in dumps:
        snap = view.tree(root)
        done, temp = _check_dump(view, users, entries, snap)
        progress.append(done)
        midfile.append(temp)
        a_sizes.append(len(view.children(snap["/a"])) if "/a" in snap else 0)
    assert progress == sorted(progress) and progress[-1] < len(entries)
    assert any(midfile)  # some file grew across a dump
    # our reader's `dump` file system (fs:dump:/...) agrees on the last dump
    last, ours_dump = names[-1], CwfsVolume(parts["fscache"], parts["fsworm"], filsys="dump")
    ro_paths = {p[len(last) :]: st for p, st in ours_dump.walk(last)}
    assert ro_paths.keys() == set(snap) - {"/"}
    for e in [e for e in entries[: progress[-1]] if not e.is_dir][-5:]:
        assert ours_dump.read(last + e.path) == e.source.read_bytes(), e.path
    # /a (several blocks) gained entries between dumps
    assert sum(1 for x, y in itertools.pairwise(a_sizes) if y > x) >= min_dumps // 2
    assert a_sizes[-1] <= len(img.children(tree["/a"])) > DIRPERBUF * 2


def test_fsck_reports_a_change_the_next_dump_would_not_reach(tmp_path: Path) -> None:
    """cwrecur() stops at a clean block: a root block marked Cread hides what changed below."""
    rng = random.Random(9)
    entries = [ProtoEntry("/x", DMDIR | 0o775, "sys", "sys", tmp_path, SDE, 0)]
    for i in range(4):
        f = tmp_path / f"f{i}"
        f.write_bytes(rng.randbytes(MB + i))
        entries.append(ProtoEntry(f"/x/f{i}", 0o644, "sys", "sys", f, SDE, MB + i))
    parts = _disk(cache_mb=13, worm_mb=40)
    ream_and_populate(parts, entries, timestamp=SDE)
    cache, worm = parts["fscache"], parts["fsworm"]
    assert fsck(cache, worm, parts["other"]) == []
    img = h.Image(cache.pread(cache.size, 0), worm.pread(worm.size, 0))
    assert img.slots[img.cwraddr][1] == 4  # the root block: Cwrite, touched since the dump
    bn = img.cwraddr % img.msize
    base = (img.maddr + bn // 10) * h.BS + (bn % 10) * (4 + 135 * 12) + 4
    for i in range(135):
        _age, state, waddr = struct.unpack_from("<Hhq", cache.pread(12, base + i * 12))
        if state and waddr == img.cwraddr:
            cache.pwrite(struct.pack("<h", 3), base + i * 12 + 2)  # Cread
    problems = fsck(cache, worm, parts["other"])
    assert any("out of the next dump's reach" in p for p in problems), problems
