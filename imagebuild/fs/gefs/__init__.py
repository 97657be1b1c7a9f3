"""gefs, 9front's copy-on-write file system: ream, populate, read, check and repair it.

- `layout`: every on-disk record (block headers, keys, values, arena headers, superblock);
- `hash`: MetroHash64_1, the checksum of blocks, logs and the superblock;
- `alloc`: arenas, free ranges, block allocation and the allocation log;
- `ream`: `gefs -r USER`, byte for byte;
- `tree`: bulk-loading a B-epsilon tree;
- `server`: fs.c's create/write/wstat on datasets in memory;
- `writer`: ream, the installer's mountgefs steps, disk/mkfs, and the final sync;
- `reader`: `GefsVolume` (labels, datasets, stat, listdir, read, walk);
- `check`: `fsck`, check.c's rules plus checksums, block accounting and backlinks;
- `repair`: rewriting the adm root backlink old reams misplaced.

docs/gefs.md describes the format, the rules with their sources, and where we differ.
"""

from imagebuild.fs.gefs.check import MISREAMED_ADM, CheckResult, fsck
from imagebuild.fs.gefs.layout import BLKSZ, GefsFormatError
from imagebuild.fs.gefs.reader import GefsError, GefsStat, GefsSummary, GefsVolume, is_gefs
from imagebuild.fs.gefs.writer import INSTALL_USER, ream_and_populate, ream_only

__all__ = [
    "BLKSZ",
    "INSTALL_USER",
    "MISREAMED_ADM",
    "CheckResult",
    "GefsError",
    "GefsFormatError",
    "GefsStat",
    "GefsSummary",
    "GefsVolume",
    "fsck",
    "is_gefs",
    "ream_and_populate",
    "ream_only",
]
