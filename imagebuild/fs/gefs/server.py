"""A gefs file server in memory: fs.c's create, write and wstat on a dataset's tree contents.

Each mutable dataset (main, adm, other) is held as its tree's key/value
pairs; file data goes to blocks at once (allocated as newdblk() does, by
the file's qid), and the trees are written bottom-up when the server
commits (writer.py).  Operations update entries exactly as the messages
gefs upserts would once applied (tree.c apply(), statupdate()): a new entry
starts at qid.vers 0 with atime = mtime = now and its parent's group; each
write, wstat and truncation bumps qid.vers; a create or rename touches the
parent (qid.vers + 1, mtime unchanged); directories get a Kup backlink.

References: fs.c fscreate(), fswrite()/writeb(), fswstat(), fsopen() (OTRUNC),
touch(), okname(); tree.c statupdate(); user.c parseusers(), name2user().
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from imagebuild.errors import LayoutError
from imagebuild.fs.gefs.hash import blkhash_many
from imagebuild.fs.gefs.layout import (
    BLKSZ,
    DMAPPEND,
    DMDIR,
    DMEXCL,
    DMTMP,
    MAXNAME,
    MAXUNAME,
    QTAPPEND,
    QTDIR,
    QTEXCL,
    QTTMP,
    Bptr,
    Xdir,
    conf_key,
    dat_key,
    ent_key,
    up_key,
)


@dataclass
class Entry:
    """A file or directory of a dataset: where its Kent key lives and its Xdir."""

    up: int
    name: bytes
    dir: Xdir


@dataclass
class Dataset:
    """One mutable snapshot's tree contents, held as entries plus raw key/value pairs."""

    name: str
    gen: int
    paths: dict[str, Entry] = field(default_factory=dict)
    extra: dict[bytes, bytes] = field(default_factory=dict)  # Kdat, Kconf
    root_backlink: int | None = None  # the qid a mis-reamed root's Kup is stored under

    def kvs(self) -> list[tuple[bytes, bytes]]:
        """Every key/value pair of the tree, sorted by key (tree.c keycmp: memcmp)."""
        out = dict(self.extra)
        for e in self.paths.values():
            out[ent_key(e.up, e.name)] = e.dir.pack()
            if e.dir.qtype & QTDIR:
                q = e.dir.qid
                if e.up == -1 and self.root_backlink is not None:
                    q = self.root_backlink
                out[up_key(q)] = ent_key(e.up, e.name)
        return sorted(out.items())

    def lookup(self, path: str) -> Entry:
        e = self.paths.get(path)
        if e is None:
            raise LayoutError(f"gefs: {self.name}:{path}: does not exist")
        return e


HASH_BATCH = 256  # data blocks hashed together (hash.blkhash_many)


def parse_users(text: bytes) -> dict[str, int]:
    """user.c parseusers(), the first pass: name -> id; raises LayoutError on a bad line."""
    users: dict[str, int] = {}
    for lnum, raw in enumerate(text.decode("utf-8", "replace").split("\n")[:-1], 1):
        if raw == "" or raw.startswith("#"):
            continue
        f = raw.split(":")
        if len(f) < 4:
            raise LayoutError(f"gefs: /adm/users:{lnum}: missing ':'")
        try:
            users[f[1]] = int(f[0])
        except ValueError as e:
            raise LayoutError(f"gefs: /adm/users:{lnum}: bad id {f[0]!r}") from e
    return users


def okname(name: bytes) -> str | None:
    """fs.c okname(): why gefs refuses `name`, or None."""
    if name in (b"", b".", b".."):
        return "invalid file name"
    # okname() looks for the terminating NUL among the first Maxname bytes: a name has
    # at most Maxname-1 (244) bytes, which keeps a Kent key (1+8+2+name+1) within Keymax.
    if len(name) >= MAXNAME:
        return f"name longer than {MAXNAME - 1} bytes"
    if any(c < 0x20 or c == 0x2F for c in name):
        return "control character or '/' in name"
    return None


def _parent(path: str) -> tuple[str, str]:
    head, _, name = path.rpartition("/")
    return head or "/", name


class GefsServer:
    """create/write/wstat/truncate over datasets, allocating file data through `alloc`.

    `now_ns` is the server clock (nanoseconds) stamped on creations and
    writes; `put(addr, block)` stores a data block.
    """

    def __init__(
        self,
        alloc: Callable[[int, bool], int],
        put: Callable[[int, bytes], object],
        now_ns: int,
        nextqid: int,
    ) -> None:
        self._alloc = alloc
        self._put = put
        self.now_ns = now_ns
        self.nextqid = nextqid
        self.datasets: dict[str, Dataset] = {}
        self.users: dict[str, int] = {}
        self._unhashed: list[tuple[Dataset, bytes, int, bytes]] = []  # (ds, Kdat key, addr, blk)

    def uid(self, name: str) -> int | None:
        return self.users.get(name)

    # -- fs.c fscreate ---------------------------------------------------------------------
    def create(self, ds: Dataset, path: str, perm: int, uid: int) -> Entry:
        parent_path, name = _parent(path)
        parent = ds.lookup(parent_path)
        if not parent.dir.qtype & QTDIR:
            raise LayoutError(f"gefs: {ds.name}:{parent_path}: not a directory")
        nb = name.encode("utf-8", "surrogateescape")
        why = okname(nb)
        if why:
            raise LayoutError(f"gefs: {ds.name}:{path}: {why}")
        if path in ds.paths:
            raise LayoutError(f"gefs: {ds.name}:{path}: file already exists")
        qtype = 0
        for dm, qt in ((DMDIR, QTDIR), (DMAPPEND, QTAPPEND), (DMEXCL, QTEXCL), (DMTMP, QTTMP)):
            if perm & dm:
                qtype |= qt
        mask = 0o777 if perm & DMDIR else 0o666
        mode = perm & (~mask | (parent.dir.mode & mask)) & 0xFFFFFFFF
        qid = self.nextqid
        self.nextqid += 1
        d = Xdir(0, qid, 0, qtype, mode, self.now_ns, self.now_ns, 0, uid, parent.dir.gid, uid)
        e = Entry(parent.dir.qid, nb, d)
        ds.paths[path] = e
        parent.dir.vers += 1  # touch()
        return e

    # -- fs.c fswrite/writeb: whole blocks, written once ----------------------------------
    def write_blocks(
        self, ds: Dataset, e: Entry, blocks: Iterable[tuple[int, bytes]], length: int,
        writes: int, uid: int,
    ) -> None:
        """Store file blocks (index, BLKSZ bytes) and apply `writes` write calls' Owstat."""
        for index, blk in blocks:
            # writeb(): a write reaching the end of a block allocates from the arena's bottom
            addr = self._alloc(e.dir.qid, (index + 1) * BLKSZ <= length)
            self._put(addr, blk)
            self._unhashed.append((ds, dat_key(e.dir.qid, index * BLKSZ), addr, blk))
            if len(self._unhashed) >= HASH_BATCH:
                self.flush()
        if writes:
            e.dir.length = max(e.dir.length, length)
            e.dir.mtime = self.now_ns
            e.dir.muid = uid
            e.dir.vers += writes

    def flush(self) -> None:
        """Hash the data blocks written since the last flush and store their Kdat pointers."""
        pending, self._unhashed = self._unhashed, []
        hashes = blkhash_many([blk for _, _, _, blk in pending])
        for (ds, key, addr, _), h in zip(pending, hashes, strict=True):
            ds.extra[key] = Bptr(addr, h, ds.gen).pack()

    def truncate(self, ds: Dataset, e: Entry, uid: int) -> list[Bptr]:
        """fsopen(OTRUNC): length 0, muid; returns the data blocks dropped."""
        self.flush()
        dropped = []
        prefix = dat_key(e.dir.qid, 0)[:9]
        for k in [k for k in ds.extra if k[:9] == prefix]:
            dropped.append(Bptr.unpack(ds.extra.pop(k)))
        e.dir.length = 0
        e.dir.muid = uid
        e.dir.vers += 1
        return dropped

    # -- fs.c fswstat ----------------------------------------------------------------------
    def wstat(
        self,
        ds: Dataset,
        path: str,
        muid: int,
        *,
        mode: int | None = None,
        mtime: int | None = None,
        uid: str | None = None,
        gid: str | None = None,
        rename: str | None = None,
    ) -> str:
        """Apply one wstat; returns the entry's path afterwards.  Raises LayoutError."""
        e = ds.lookup(path)
        n_uid = e.dir.uid
        n_gid = e.dir.gid
        for what, name in (("user", uid), ("group", gid)):
            if name is None:
                continue
            if len(name) > MAXUNAME:
                raise LayoutError(f"gefs: {ds.name}:{path}: {what} name {name!r} too long")
            if name not in self.users:
                raise LayoutError(f"gefs: {ds.name}:{path}: unknown {what} {name!r}")
            if what == "user":
                n_uid = self.users[name]
            else:
                n_gid = self.users[name]
        if mode is not None:
            if (mode ^ e.dir.mode) & DMDIR:
                raise LayoutError(f"gefs: {ds.name}:{path}: wstat can't change DMDIR")
            e.dir.mode = mode
            e.dir.qtype = (mode >> 24) & 0xFF
        if mtime is not None:
            e.dir.mtime = mtime
        e.dir.uid, e.dir.gid, e.dir.muid = n_uid, n_gid, muid
        e.dir.vers += 1
        if rename is not None and rename != path.rpartition("/")[2]:
            nb = rename.encode("utf-8", "surrogateescape")
            why = okname(nb)
            if why:
                raise LayoutError(f"gefs: {ds.name}:{path}: can't rename to {rename!r}: {why}")
            parent_path, _ = _parent(path)
            new_path = (parent_path.rstrip("/") + "/" + rename)
            if new_path in ds.paths:
                raise LayoutError(f"gefs: {ds.name}:{new_path}: file already exists")
            del ds.paths[path]
            e.name = nb
            ds.paths[new_path] = e
            ds.lookup(parent_path).dir.vers += 1  # touch(f->dir)
            return new_path
        return path

    def setconf(self, ds: Dataset, key: str, value: str) -> None:
        """fs.c setconf(): `set SNAP KEY VALUE` on a dataset's tree."""
        ds.extra[conf_key(key.encode())] = value.encode()
