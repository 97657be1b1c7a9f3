"""gefs writer: `gefs -r`, the installer's mountgefs steps and disk/mkfs, then one sync.

9front's installer (rc/bin/inst/mountgefs, copydist) runs, on the fs partition:

    gefs -r $user ... -f $fs                  ream (ream.py)
    snap -m empty other                       a mutable dataset forked from empty
    set other retain ''                       no automatic snapshots of it
    mount %main, %adm, %other (as $user, while the reamed user table says $user is 1)
    echo $userfile > /n/newfs.adm/users; users
    mkdir adm dist usr in main; chgrp and chgrp -u each to adm/sys
    mkdir -p usr/$user/tmp in other; chmod 700, chgrp and chgrp -u $user both
    disk/mkfs -z 16372 -U -s /n/dist -d /n/newfs allproto

We replay those operations on GefsServer, writing file data as it comes,
then write every dataset's tree bottom-up (tree.py), the snapshot tree, the
arena logs and headers and both superblocks, as a sync would leave them.
Differences from a live gefs (docs/gefs.md lists them): trees are
bulk-loaded rather than grown; each dataset ends as one snapshot generation
(other 3, adm 4, main 5) instead of the chain a live server leaves after
several syncs; the reamed blocks nothing references any more (the first adm
leaf and users block, the first snapshot leaf) are freed in the log, where
gefs leaks the adm ones; logs carry no LogSync barrier and qgen stays 0.

References: rc/bin/inst/mountgefs, copydist; sys/src/cmd/disk/mkfs.c
(copy(), mkdir(), uptodate(), -z, -U); gefs fs.c (sync(), fscreate(),
fswrite(), fswstat(), fsopen()), snap.c (tagsnap(), updatesnap()).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from imagebuild.disk.device import Storage
from imagebuild.errors import LayoutError
from imagebuild.fs.gefs.alloc import reserve_of
from imagebuild.fs.gefs.fileserver import COPYDIST_BUFLEN, GefsFileServer
from imagebuild.fs.gefs.layout import (
    BLKSZ,
    DMDIR,
    NSEC,
    Bptr,
    TreeRec,
    label_key,
    label_value,
    snap_key,
)
from imagebuild.fs.gefs.ream import Ream
from imagebuild.fs.gefs.server import Dataset, Entry, GefsServer, parse_users
from imagebuild.fs.gefs.tree import build_tree
from imagebuild.fs.mkfs import mkfs
from imagebuild.fs.proto import ProtoEntry

INSTALL_USER = "glenda"  # the live system's $user
DEFAULT_OWNER = ("sys", "sys")
# snapshot generations of the datasets once written (ream used 0, 1 and 2)
GEN_OTHER, GEN_ADM, GEN_MAIN, NEXTGEN = 3, 4, 5, 6

Progress = Callable[[int], None]
Warn = Callable[[str], None]


def installer_userfile(user: str) -> bytes:
    """mountgefs's $userfile, as `echo` writes it to /adm/users."""
    return (
        f"-1:adm:adm:{user}\n0:none::\n1:tor:tor:\n2:{user}:{user}:\n"
        f"10000:sys::{user}\n10001:map:map:\n10002:doc::\n10003:upas:upas:{user}\n"
        "10004:font::\n10005:bootes:bootes:\n"
    ).encode()


def _stat_seconds(ns: int) -> int:
    """pack.c dir2statbuf(): times rounded to the nearest second."""
    return (ns + NSEC // 2) // NSEC


class GefsBuilder:
    """The whole replay: ream, installer, mkfs, commit.  `put_data` receives file data blocks."""

    def __init__(
        self,
        devsize: int,
        *,
        now: int,
        user: str = INSTALL_USER,
        put_data: Callable[[int, bytes], object] | None = None,
        legacy_backlink: bool = False,
        warn: Warn | None = None,
    ) -> None:
        self.ream = Ream(devsize, user, legacy_backlink=legacy_backlink).build()
        self.user = user
        self.warn = warn or (lambda msg: print(f"imagebuild: {msg}", file=sys.stderr))
        self._put_data = put_data or self.ream.blocks.__setitem__
        for a in self.ream.arenas:  # a running gefs keeps the reserve back (loadfs)
            a.reserve = reserve_of(a.size)
        self.server = GefsServer(
            lambda qid, seq: self.ream.alloc.alloc(True, qid, seq),
            self._put_data, now * NSEC, self.ream.nextqid,
        )
        self.server.users = parse_users(self.ream.users_text)
        self.main = self._ream_dataset("main", GEN_MAIN, self.ream.main_leaf)
        self.adm = self._ream_dataset("adm", GEN_ADM, self.ream.adm_leaf)
        self.other: Dataset | None = None
        self.files = 0
        self.bytes = 0
        self._dropped: list[int] = []

    def _ream_dataset(self, name: str, gen: int, leaf: Bptr) -> Dataset:
        from imagebuild.fs.gefs.layout import Xdir, ent_key, ent_key_parts, unpack_node

        ds = Dataset(name, gen)
        node = unpack_node(self.ream.blocks[leaf.addr])
        for k, v in node.vals:
            if k[0] == 1:  # Kent
                up, nm = ent_key_parts(k)
                d = Xdir.unpack(v)
                path = "/" if up == -1 else "/" + nm.decode()
                ds.paths[path] = Entry(up, nm, d)
            elif k[0] == 0:
                ds.extra[k] = v
            elif k[0] == 2 and v == ent_key(-1, b"") and name == "adm" and self.ream.legacy:
                ds.root_backlink = int.from_bytes(k[1:9], "big")
        return ds

    # -- mountgefs -------------------------------------------------------------------------
    def install(self) -> None:
        srv = self.server
        # snap -m empty other; set other retain ''
        other = Dataset("other", GEN_OTHER)
        root = self.main.paths["/"]
        from copy import deepcopy

        other.paths["/"] = deepcopy(root)
        srv.setconf(other, "retain", "")
        self.other = other
        # the mounts attach while the reamed table maps $user to 1; but mountgefs runs
        # gefs -S (permissive), and fs.c fsattach() then attaches %adm as "adm" (-1)
        # whoever asks, so the users file is truncated and written by adm.
        me = srv.users[self.user]
        adm = srv.users["adm"]
        users = self.adm.lookup("/users")
        for bp in srv.truncate(self.adm, users, adm):
            if bp.addr == self.ream.adm_users.addr:
                self._dropped.append(bp.addr)
        text = installer_userfile(self.user)
        srv.write_blocks(self.adm, users, [(0, text + bytes(BLKSZ - len(text)))], len(text), 1, adm)
        srv.users = parse_users(text)  # echo users >>/srv/gefs.newfs.cmd
        self.mkfs_uid = me
        for d in ("adm", "dist", "usr"):
            grp = "adm" if d == "adm" else "sys"
            srv.create(self.main, f"/{d}", DMDIR | 0o777, me)
            srv.wstat(self.main, f"/{d}", me, gid=grp)
            srv.wstat(self.main, f"/{d}", me, uid=grp)
        home = f"/usr/{self.user}"
        for p in ("/usr", home, home + "/tmp"):
            srv.create(other, p, DMDIR | 0o777, me)
        for p in (home, home + "/tmp"):
            e = other.lookup(p)
            srv.wstat(other, p, me, mode=(e.dir.mode & ~0o777) | 0o700)
        for p in (home, home + "/tmp"):
            srv.wstat(other, p, me, gid=self.user)
        for p in (home, home + "/tmp"):
            srv.wstat(other, p, me, uid=self.user)

    # -- copydist: disk/mkfs -z 16372 -U --------------------------------------------------
    def mkfs(
        self, entries: Sequence[ProtoEntry], *, timestamp: int | None,
        default_owner: tuple[str, str] = DEFAULT_OWNER,
    ) -> None:
        """The shared disk/mkfs replay against the main dataset, as copydist runs it."""
        fsrv = GefsFileServer(self.server, self.main, {self.user: self.mkfs_uid}, self.warn)
        mkfs(fsrv, entries, user=self.user, default_owner=default_owner, timestamp=timestamp,
             buflen=COPYDIST_BUFLEN)
        self.files, self.bytes = fsrv.files, fsrv.bytes

    # -- sync ------------------------------------------------------------------------------
    def commit(self) -> Ream:
        """Write the datasets' trees, the snapshot tree, and free what nothing references."""
        self.server.flush()
        r = self.ream
        alloc = lambda: r.alloc.alloc(False)  # noqa: E731
        put = r.blocks.__setitem__
        trees: dict[str, tuple[Bptr, int]] = {}
        datasets = [d for d in (self.other, self.adm, self.main) if d is not None]
        for ds in datasets:
            trees[ds.name] = build_tree(ds.kvs(), ds.gen, alloc, put)
        flag = int.from_bytes(_label(r, b"main")[9:13], "big")
        labels = {"adm": GEN_ADM, "empty": 0, "main": GEN_MAIN}
        if self.other is not None:
            labels["other"] = GEN_OTHER
        kvs = [
            (label_key(n.encode()), label_value(g, 0 if n == "empty" else flag))
            for n, g in sorted(labels.items())
        ]
        kvs.append((snap_key(0), TreeRec(len(labels) - 1, 1, 1, 0, 0, 0, GEN_MAIN, 0,
                                         r.main_leaf).pack()))
        for name, gen in sorted(((n, g) for n, g in labels.items() if n != "empty"),
                                key=lambda x: x[1]):
            bp, ht = trees[name]
            kvs.append((snap_key(gen), TreeRec(0, 1, ht, 0, gen, 0, -1, 0, bp).pack()))
        old_snap = r.snap_root
        r.snap_root, r.snap_ht = build_tree(kvs, NEXTGEN - 1, alloc, put)
        for addr in [r.adm_leaf.addr, old_snap.addr, *self._dropped]:
            r.alloc.free(addr)
        r.nextqid = self.server.nextqid
        r.nextgen = NEXTGEN
        return r


def _label(r: Ream, name: bytes) -> bytes:
    from imagebuild.fs.gefs.layout import unpack_node

    for k, v in unpack_node(r.blocks[r.snap_root.addr]).vals:
        if k == label_key(name):
            return v
    raise LayoutError(f"gefs: ream left no {name.decode()} label")


# -- writing a device ------------------------------------------------------------------------


def write_blocks(pwrite: Callable[[bytes, int], object], blocks: dict[int, bytes]) -> None:
    """Write `blocks` (address -> 16 KiB) in runs of adjacent blocks."""
    run: list[bytes] = []
    start = -1
    for addr in sorted(blocks):
        if run and addr == start + len(run) * BLKSZ and len(run) < 512:
            run.append(blocks[addr])
            continue
        if run:
            pwrite(b"".join(run), start)
        run, start = [blocks[addr]], addr
    if run:
        pwrite(b"".join(run), start)


def ream_only(
    pwrite: Callable[[bytes, int], object], devsize: int, user: str = INSTALL_USER,
    *, legacy_backlink: bool = False,
) -> Ream:
    """`gefs -r user` on a partition of `devsize` bytes."""
    r = Ream(devsize, user, legacy_backlink=legacy_backlink).build()
    write_blocks(pwrite, r.final_blocks())
    return r


def ream_and_populate(
    dev: Storage,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    user: str = INSTALL_USER,
    default_owner: tuple[str, str] = DEFAULT_OWNER,
    progress: Progress | None = None,
    legacy_backlink: bool = False,
) -> dict[str, int]:
    """Make `dev` (anything with .size and .pwrite(data, offset)) what the installer leaves.

    `timestamp` (SOURCE_DATE_EPOCH) pins gefs's clock and clamps source
    mtimes; None uses the current time.  Returns a summary (files, bytes,
    blocks used, blocks total).  Raises LayoutError, InputError.
    """
    size = int(dev.size)
    pwrite = dev.pwrite
    now = int(time.time()) if timestamp is None else timestamp
    b = GefsBuilder(size, now=now, user=user, legacy_backlink=legacy_backlink,
                    put_data=lambda a, blk: pwrite(blk, a))
    b.install()
    b.mkfs(entries, timestamp=timestamp, default_owner=default_owner)
    if progress is not None:
        progress(b.bytes)
    r = b.commit()
    write_blocks(pwrite, r.final_blocks())
    used = sum(a.used for a in r.arenas)
    total = sum(a.size for a in r.arenas)
    return {"files": b.files, "bytes": b.bytes, "used": used, "total": total}
