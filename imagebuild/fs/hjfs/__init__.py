"""hjfs, 9front's default disk file system: ream and populate the fs partition, read it, check it.

The pieces live in their own modules:

- `hjfs_layout`: the on-disk structures (superblock, reference counts, Dentry, indirect blocks,
  the user table);
- `hjfs_writer`: replays `hjfs -r`, the dist mkfile's console commands and `disk/mkfs -z 4096 -U`
  on a model, then writes the blocks (`ream_and_populate`, `plan`);
- `hjfs_reader`: `HjfsVolume` (listdir, stat, read, walk, summary) and `fsck`.

docs/hjfs.md describes the format, the order in which hjfs allocates, and where we differ.
"""

from imagebuild.fs.hjfs.layout import BLOCK, RBLOCK, FsSummary
from imagebuild.fs.hjfs.reader import HjfsError, HjfsStat, HjfsVolume, fsck, is_hjfs
from imagebuild.fs.hjfs.writer import (
    DEFAULT_OWNER,
    MKFILE_CONSOLE,
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
    "HjfsVolume",
    "fsck",
    "is_hjfs",
    "plan",
    "ream_and_populate",
]
