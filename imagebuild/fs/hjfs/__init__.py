"""hjfs, 9front's default disk file system: ream and populate the fs partition, read it, check it.

The pieces live in their own modules:

- `layout`: the on-disk structures (superblock, reference counts, Dentry, indirect blocks,
  the user table), declared once in dat.h's names;
- `server`: hjfs as an in-memory file server (fs1.c/fs2.c), which imagebuild.fs.mkfs drives;
  `alloc` (getfree/putfree), `users` (/adm/users, auth.c), `cons` (console create/newuser);
- `copy`, `pieces`, `emit`: how file data is placed (dry, plan, stream replays) and written;
- `writer`: ream, console lines and mkfs replayed, then the blocks written
  (`ream_and_populate`, `plan`);
- `reader`: `HjfsVolume` (listdir, stat, read, walk, summary) and `fsck`.

docs/hjfs.md describes the format, the order in which hjfs allocates, and where we differ.
"""

from imagebuild.fs.api import FsSummary
from imagebuild.fs.hjfs.cons import MKFILE_CONSOLE
from imagebuild.fs.hjfs.layout import BLOCK, RBLOCK, HjfsSummary
from imagebuild.fs.hjfs.reader import HjfsError, HjfsStat, HjfsVolume, fsck, is_hjfs
from imagebuild.fs.hjfs.writer import (
    DEFAULT_OWNER,
    MKFS_USER,
    HjfsPlan,
    plan,
    ream_and_populate,
)

__all__ = [
    "BLOCK",
    "DEFAULT_OWNER",
    "MKFILE_CONSOLE",
    "MKFS_USER",
    "RBLOCK",
    "FsSummary",
    "HjfsError",
    "HjfsPlan",
    "HjfsStat",
    "HjfsSummary",
    "HjfsVolume",
    "fsck",
    "is_hjfs",
    "plan",
    "ream_and_populate",
]
