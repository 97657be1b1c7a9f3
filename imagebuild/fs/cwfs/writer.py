"""cwfs writer: the partitions as the installer's cwfs64x session leaves them before the first dump.

rc/bin/inst/mountcwfs starts `cwfs64x -n cwfs.newfs -f $fs -C -c` on this
fsconfig (with $fs the fscache partition):

    service cwfs
    config $fs
    noauth
    filsys main c($fs)($fsworm)
    filsys dump o
    filsys other ($fsother)
    ream other
    ream main
    end

then feeds its console `users default`, creates /adm, /adm/users, /dist and
/usr, runs `newuser $user` and adds $user to adm, sys and upas, and makes /usr,
/usr/$user and /usr/$user/tmp in `other`; rc/bin/inst/copydist then runs
`disk/mkfs -z 16372 -U -s /n/dist -d /n/newfs` as $user.  We replay that
sequence on a model of cwfs (volume.py, tree.py), then write:

- fscache: the config block (block 0), the Cache header (block 2), the bucket
  map, and every block written since ream in the cache slot its bucket entry
  names (new blocks Cdirty, rewritten dumped blocks Cwrite);
- fsworm: what ream's dump sent: the superblock (2) and the two roots (3, 4);
- other: its superblock, root, free-list chain and the installer's directories.

References (9front): sys/src/cmd/cwfs config.c (arginit, sysinit, mergeconf),
cw.c (cwream, cacheinit, cwgrow, dumpblock), sub.c (devream, superream,
rootream), con.c cmd_create(), uidgid.c do_newuser(); sys/src/cmd/disk/mkfs.c
copy()/mkdir() with -z 16372 (16364-byte writes, zero pieces skipped).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import LayoutError
from imagebuild.fs.cwfs.layout import (
    CONFIG_ADDR,
    DALLOC,
    DDIR,
    QPDIR,
    QPROOT,
    QPSUPER,
    RBUFSIZE,
    SUPER_ADDR,
    Cdirty,
    Dentry,
    Superb,
    Tdir,
    Tsuper,
    cache_geometry,
    installer_config,
    new_block,
    put_dentry,
    wren_blocks,
)
from imagebuild.fs.cwfs.server import CwfsServer
from imagebuild.fs.cwfs.tree import FileTree, Node
from imagebuild.fs.cwfs.users import UserTable
from imagebuild.fs.cwfs.volume import CwVolume, PlainVolume, Volume
from imagebuild.fs.mkfs import mkfs
from imagebuild.fs.proto import DMDIR, ProtoEntry

MKFS_USER = "glenda"  # the installer's default $user, who runs copydist's mkfs
DEFAULT_OWNER = ("sys", "sys")
DEFAULT_DISK = "sdC0"
MKFS_BUFLEN = 16372 - 8  # disk/mkfs -z 16372: buflen = 16372-8
CONSOLE_UID = -1  # the console attaches as adm (cmd_cfs)
PARTS = ("fscache", "fsworm", "other")

@dataclass(frozen=True)
class CwfsResult:
    """What the writer did: blocks in use on main (worm addresses) and on other."""

    main_blocks: int
    other_blocks: int
    cache_slots: int
    files: int


def _root_block(now: int) -> bytearray:
    """sub.c rootream(): the root Dentry "/" in slot 0 of a Tdir block tagged QPROOT."""
    block = new_block(Tdir, QPROOT)
    root = Dentry(name=b"/", uid=-1, gid=-1, mode=DALLOC | DDIR | 0o775,
                  path=QPROOT | QPDIR, atime=now, mtime=now, muid=0)  # fmt: skip
    put_dentry(block, 0, root)
    return block


def _ream_main(cache_dev: BlockDevice, worm_dev: BlockDevice, now: int) -> CwVolume:
    """cw.c cwream(): cache map, superblock and roots, dumped to the worm at once."""
    cache = cache_geometry(wren_blocks(cache_dev.size))
    cache.wsize = wren_blocks(worm_dev.size)
    if cache.wsize < SUPER_ADDR + 4 + 1:
        raise LayoutError(f"cwfs: fsworm partition of {worm_dev.size} bytes is too small")
    cache.sbaddr, cache.cwraddr, cache.roraddr, cache.fsize = 2, 3, 4, 0
    cache.toytime, cache.time = now + 30, now
    v = CwVolume("main", cache_dev, worm_dev, cache)
    for a in (2, 3, 4):
        v.centry(a).state = Cdirty  # Ogrow
    v.sb = Superb(fsize=0)  # superream(): devsize(cw) is the cache's fsize, 0 here
    v.meta[2] = new_block(Tsuper, QPSUPER)
    v.meta[3] = _root_block(now)
    v.meta[4] = _root_block(now)
    for a in (2, 3, 4):
        v.dirty(a)
    cache.fsize = 6
    v.sb.last, v.sb.cwraddr, v.sb.roraddr, v.sb.next, v.sb.fsize = 2, 3, 4, 5, 6
    v.store_super()
    worm: dict[int, bytes] = {}
    v.dump([2, 3, 4], worm)
    for a, block in worm.items():
        worm_dev.pwrite(block, a * RBUFSIZE)
    return v


def _ream_other(dev: BlockDevice, now: int) -> PlainVolume:
    """sub.c devream() on a plain device: rootream(ROOT_ADDR), then superream(SUPER_ADDR)."""
    blocks = wren_blocks(dev.size)
    if blocks < 5:
        raise LayoutError(f"cwfs: other partition of {dev.size} bytes is too small")
    v = PlainVolume("other", dev, blocks)
    v.meta[3] = _root_block(now)
    v.dirty(3)
    v.ream_free_list()
    v.meta[2] = new_block(Tsuper, QPSUPER)
    v.store_super()
    return v


class Console:
    """The console commands mountcwfs sends (con.c, uidgid.c), on the current file system."""

    def __init__(self, trees: dict[str, FileTree]) -> None:
        self.trees = trees
        self.cur = trees["main"]
        self.users = UserTable.default()

    def cfs(self, name: str) -> None:
        self.cur = self.trees[name]

    def create(self, path: str, owner: str, group: str, perm: int, flags: str = "") -> Node:
        """con.c cmd_create(): `create PATH UID GID PERM [lad]` as the console's adm."""
        head, _, name = path.rpartition("/")
        parent = self.cur.walk(head or "/")
        uid, gid = self._id(owner), self._id(group)
        perm &= 0o777
        if "d" in flags:
            perm |= DMDIR
        return self.cur.create(parent, name.encode(), perm, CONSOLE_UID, owner=(uid, gid))

    def _id(self, name: str) -> int:
        uid = self.users.strtouid(name)
        if uid < -1:
            try:
                uid = int(name, 10)
            except ValueError:
                raise LayoutError(f"cwfs console: bad uid {name}") from None
        return uid

    def newuser(self, name: str, arg: str = "") -> None:
        """uidgid.c do_newuser(): change the table, rewrite /adm/users, maybe make /usr/NAME."""
        main = self.trees["main"]
        home = None
        if not arg:
            if self.users.by_name(name) is not None:
                return
            uid = self.users.newuser(name)
            if uid < 10000:
                home = name
        elif arg.startswith("+"):
            self.users.add_member(name, arg[1:])
        node = main.walk("/adm/users")
        main.truncate(node, CONSOLE_UID)
        offset = 0
        for line in self.users.lines():
            main.write(node, offset, line, CONSOLE_UID)
            offset += len(line)
        main.close()
        if home is not None:
            save, self.cur = self.cur, main
            self.create(f"/usr/{home}", home, home, 0o755, "d")
            self.cur = save


def installer_session(console: Console, user: str, *, other: bool) -> None:
    """rc/bin/inst/mountcwfs's console lines after ream."""
    console.cfs("main")
    console.create("/adm", "adm", "adm", 0o775, "d")
    console.create("/adm/users", "adm", "adm", 0o664)
    console.create("/dist", "sys", "sys", 0o775, "d")
    console.create("/usr", "sys", "sys", 0o775, "d")
    console.newuser(user)
    for group in ("adm", "sys", "upas"):
        console.newuser(group, "+" + user)
    if other:
        console.cfs("other")
        console.create("/usr", "sys", "sys", 0o775, "d")
        console.create(f"/usr/{user}", user, user, 0o775, "d")
        console.create(f"/usr/{user}/tmp", user, user, 0o750, "d")
        console.cfs("main")


# portdat.h: typedef long Timet, and Plan 9's long is 32 bits even in cwfs64x
TIMET_MIN, TIMET_MAX = -(1 << 31), (1 << 31) - 1
TOY_AHEAD = 30  # cwream(): the cache's toytime is set 30 seconds ahead of its time


def check_times(now: int, entries: Sequence[ProtoEntry], timestamp: int | None) -> None:
    """Raise LayoutError when a time cwfs would store does not fit its signed 32-bit Timet.

    `now` is the clock (seconds, UTC) every ream and creation takes; each entry's
    mtime is clamped to `timestamp` (SOURCE_DATE_EPOCH) as mkfs's replay clamps it.
    cwfs64x would store such a time wrapped to a date before 1970; we refuse.
    """
    if not TIMET_MIN <= now <= TIMET_MAX - TOY_AHEAD:
        raise LayoutError(
            f"cwfs: time {now} (SOURCE_DATE_EPOCH or the clock) does not fit cwfs's 32-bit "
            f"Timet (portdat.h); the last it holds is {TIMET_MAX - TOY_AHEAD} (January 2038)"
        )
    for entry in entries:
        mtime = entry.mtime if timestamp is None else min(entry.mtime, timestamp)
        if not TIMET_MIN <= mtime <= TIMET_MAX:
            where = f"{entry.origin}: {entry.path}" if entry.origin else entry.path
            raise LayoutError(
                f"{where}: mtime {mtime} does not fit cwfs's 32-bit Timet (portdat.h); "
                "set SOURCE_DATE_EPOCH to clamp it"
            )


def ream_and_populate(
    parts: Mapping[str, BlockDevice],
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None = None,
    disk: str = DEFAULT_DISK,
    user: str = MKFS_USER,
) -> CwfsResult:
    """Ream `fscache`/`fsworm` (and `other` when present) and copy `entries` into main.

    `parts` maps partition names to views; `disk` is the sd(3) name written into
    the config block.  Raises LayoutError when something does not fit, InputError
    when a source cannot be read.
    """
    for name in ("fscache", "fsworm"):
        if name not in parts:
            raise LayoutError(f"cwfs needs a {name} partition (prep: nvram fscache fsworm other)")
    now = int(time.time()) if timestamp is None else timestamp
    check_times(now, entries, timestamp)
    has_other = "other" in parts
    config = installer_config(disk, other=has_other)
    cache_dev = parts["fscache"]
    main = _ream_main(cache_dev, parts["fsworm"], now)
    cache_dev.pwrite(bytes(config.block()), CONFIG_ADDR * RBUFSIZE)
    trees = {"main": FileTree(main, now, main.cache.cwraddr)}
    other: PlainVolume | None = None
    if has_other:
        other = _ream_other(parts["other"], now)
        trees["other"] = FileTree(other, now, 3)
    console = Console(trees)
    installer_session(console, user, other=has_other)
    mkfs(CwfsServer(trees["main"], console.users), entries, user=user,
         default_owner=DEFAULT_OWNER, timestamp=timestamp, buflen=MKFS_BUFLEN)  # fmt: skip
    volumes: list[Volume] = [main] + ([other] if other is not None else [])
    for v in volumes:
        v.finish()
    return CwfsResult(
        main_blocks=main.sb.fsize - main.sb.tfree,
        other_blocks=(other.sb.fsize - other.sb.tfree) if other is not None else 0,
        cache_slots=main.cache.csize,
        files=sum(1 for e in entries if not e.is_dir),
    )
