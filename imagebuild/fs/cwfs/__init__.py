"""cwfs64x, the cached-WORM file server: ream and populate fscache/fsworm/other, read, check.

The pieces live in their own modules:

- `layout`: the on-disk records (Tag, Dentry, Superb, Cache, Bucket/Centry, the config block);
- `users`: the user table and /adm/users;
- `volume`: block allocation on the cw device (cache + worm) and on a plain device;
- `tree`: the 9P operations (create, write, wstat, truncate, remove) on a volume;
- `writer`: replays the installer's cwfs session and disk/mkfs (`ream_and_populate`);
- `reader`: `CwfsVolume` (stat, scandir, read, walk, summary);
- `check`: `fsck`, what cwfs's `check` console command verifies, and the cache around it.

docs/cwfs.md describes the format, the order in which cwfs allocates, and where we differ.
"""

from imagebuild.fs.cwfs.check import fsck
from imagebuild.fs.cwfs.layout import RBUFSIZE, Config, installer_config
from imagebuild.fs.cwfs.reader import CwfsError, CwfsStat, CwfsSummary, CwfsVolume, is_cwfs
from imagebuild.fs.cwfs.writer import (
    DEFAULT_DISK,
    DEFAULT_OWNER,
    MKFS_USER,
    PARTS,
    CwfsResult,
    ream_and_populate,
)

__all__ = [
    "DEFAULT_DISK",
    "DEFAULT_OWNER",
    "MKFS_USER",
    "PARTS",
    "RBUFSIZE",
    "Config",
    "CwfsError",
    "CwfsResult",
    "CwfsStat",
    "CwfsSummary",
    "CwfsVolume",
    "fsck",
    "installer_config",
    "is_cwfs",
    "ream_and_populate",
]
