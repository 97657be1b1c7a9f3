"""Populate hjfs and gefs on the fs partition of an image vs. `cp -r` of the same tree, in one run.

    .venv/bin/python bench/fs_bench.py [--mb 300] [--repeat 3] [--raw]

Generates a tree of about --mb megabytes of realistic files (many small ones,
some of a few hundred KB, a few large), reads it once so both sides start
with a warm cache, then times each side --repeat times, alternating, after a
sync (best of each; neither side syncs its own output):
  cp       `cp -r TREE DIR` into a directory on the same disk
  hjfs     read_proto("+") + ream_and_populate() into the fs partition (a slice
           starting at 1 MiB) of a QCOW2 image (a raw file with --raw or when the
           QCOW2 engine is unavailable), image closed at the end
  gefs     the same with imagebuild.fs.gefs (ream, installer steps, mkfs -z 16372)
  cwfs     the same with imagebuild.fs.cwfs on fscache/fsworm/other slices (the cache
           sized to hold the tree, so no dump), installer steps, mkfs -z 16372
Prints the times and the ratios hjfs / cp (target: <= 2), gefs / cp and cwfs / cp.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.disk.device import BlockDevice, RawFile, Storage
from imagebuild.fs import cwfs, gefs
from imagebuild.fs.hjfs import ream_and_populate
from imagebuild.fs.proto import read_proto

MiB = 1 << 20
TIMESTAMP = 1_700_000_000


def make_tree(root: Path, megabytes: int, seed: int = 1) -> tuple[int, int]:
    """About `megabytes` MB: ~16% in small files (0.1-16 KB), ~50% in medium, the rest large."""
    rng = random.Random(seed)
    budget = megabytes * MiB
    sizes: list[int] = []
    small_budget, medium_budget = budget * 16 // 100, budget * 50 // 100
    while sum(sizes) < small_budget:
        sizes.append(rng.randint(100, 16 * 1024))
    while sum(sizes) < small_budget + medium_budget:
        sizes.append(rng.randint(64 * 1024, 1024 * 1024))
    while sum(sizes) < budget:
        sizes.append(min(rng.randint(8 * MiB, 24 * MiB), budget - sum(sizes) + 1))
    rng.shuffle(sizes)
    blob = rng.randbytes(32 * MiB)  # slices of one random blob: quick to make, not compressible
    for i, size in enumerate(sizes):
        d = root / f"d{i % 40:02d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        start = rng.randrange(0, len(blob) - min(size, len(blob)) + 1)
        data = (
            (blob * (size // len(blob) + 1))[start : start + size]
            if size > len(blob)
            else blob[start : start + size]
        )
        (d / f"f{i:05d}.dat").write_bytes(data)
    return len(sizes), sum(sizes)


def warm(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(8 * MiB):
                    pass


def timed(fn: Callable[[], None], reset: Callable[[], None]) -> float:
    reset()
    os.sync()  # start each run without the previous one's writeback pending
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def open_image(path: Path, size: int, raw: bool) -> tuple[Storage, Callable[[], None], str]:
    if not raw:
        try:
            from imagebuild.container.qcow2.image import Qcow2Image

            image = Qcow2Image.create(path, size, sync=False)
            return image.data, image.close, "qcow2"
        except ImportError:
            pass
    rawfile = RawFile.create(path, size)
    return rawfile, rawfile.close, "raw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="a raw image instead of QCOW2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebuild-fsbench-", dir=".") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        nfiles, nbytes = make_tree(tree, args.mb)
        (work / "proto").write_text("+\n")
        warm(tree)
        copy = work / "copy"
        image_path = work / "fs.img"
        image_size = max(args.mb * 2 + 64, 192) * MiB  # gefs wants 128 MiB at least
        kind = "?"

        def reset_cp() -> None:
            shutil.rmtree(copy, ignore_errors=True)

        def run_cp() -> None:
            subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)

        def reset_image() -> None:
            image_path.unlink(missing_ok=True)

        def run_hjfs() -> None:
            nonlocal kind
            storage, close, kind = open_image(image_path, image_size, args.raw)
            try:
                disk = BlockDevice(storage)
                fs = disk.slice(2048, disk.secs, "fs")  # a partition starting at 1 MiB
                entries = read_proto([work / "proto"], tree)
                ream_and_populate(fs, entries, timestamp=TIMESTAMP)
            finally:
                close()

        def run_gefs() -> None:
            storage, close, _ = open_image(image_path, image_size, args.raw)
            try:
                disk = BlockDevice(storage)
                fs = disk.slice(2048, disk.secs, "fs")
                entries = read_proto([work / "proto"], tree)
                gefs.ream_and_populate(fs, entries, timestamp=TIMESTAMP)
            finally:
                close()

        def run_cwfs() -> None:
            storage, close, _ = open_image(image_path, (args.mb * 3 + 96) * MiB, args.raw)
            try:
                disk = BlockDevice(storage)
                cache_end = 2048 + (args.mb * 3 // 2 + 32) * MiB // 512
                parts = {"fscache": disk.slice(2048, cache_end, "fscache"),
                         "fsworm": disk.slice(cache_end, disk.secs - 16 * 2048, "fsworm"),
                         "other": disk.slice(disk.secs - 16 * 2048, disk.secs, "other")}
                entries = read_proto([work / "proto"], tree)
                cwfs.ream_and_populate(parts, entries, timestamp=TIMESTAMP)
            finally:
                close()

        cp_times, hjfs_times, gefs_times, cwfs_times = [], [], [], []
        for _ in range(args.repeat):  # alternate, so all see the same load on the machine
            cp_times.append(timed(run_cp, reset_cp))
            hjfs_times.append(timed(run_hjfs, reset_image))
            gefs_times.append(timed(run_gefs, reset_image))
            cwfs_times.append(timed(run_cwfs, reset_image))
        t_cp, t_hjfs, t_gefs = min(cp_times), min(hjfs_times), min(gefs_times)
        t_cwfs = min(cwfs_times)
        print(f"fs_bench: {nfiles} files, {nbytes / MiB:.0f} MiB, best of {args.repeat}")
        print(f"  cp -r                                   {t_cp * 1000:9.1f} ms")
        print(
            f"  hjfs ream + mkfs into {kind:5} fs partition {t_hjfs * 1000:9.1f} ms  "
            f"(image file {image_path.stat().st_size / MiB:.0f} MiB)"
        )
        print(f"  gefs ream + mkfs into {kind:5} fs partition {t_gefs * 1000:9.1f} ms")
        print(f"  ratio hjfs / cp                         {t_hjfs / t_cp:9.2f}  (target <= 2)")
        print(f"  cwfs ream + mkfs into {kind:5} fs partitions {t_cwfs * 1000:8.1f} ms")
        print(f"  ratio gefs / cp                         {t_gefs / t_cp:9.2f}")
        print(f"  ratio cwfs / cp                         {t_cwfs / t_cp:9.2f}")


if __name__ == "__main__":
    main()
