"""The fs partition: `imagebuild build amd64.qcow2` vs. `mkfs.ext4 -d` and `cp -r`, in one run.

    .venv/bin/python bench/fs_bench.py [--repeat 5]              # whole build vs. C peers
    .venv/bin/python bench/fs_bench.py --populate [--mb 300] [--repeat 3] [--raw]

Default: the tree is the 9front checkout named by IMAGEBUILD_REAL_ROOT, made
buildable as the real-tree tests make it (a hard-linked copy with stand-in
kernels and boot programs; the checkout is not written to), or without it a
generated 9front-shaped tree (~17 700 files, ~290 MiB: sources, manual pages,
fonts, a git pack).  Three sides, interleaved (the order rotates each round),
each after a sync, medians of --repeat (at least 5):
  imagebuild  `imagebuild build amd64.qcow2 --root TREE -o OUT` (start-up, boot
              partition, hjfs with every file the protos name, qcow2 container)
  mkfs.ext4   `mkfs.ext4 -q -F -d TREE FILE` into a sparse file of the image's size
  cp -r       `cp -r TREE DIR` on the same disk
Prints the machine's load before and after, the medians and the ratios.

--populate: population alone (read_proto("+") + ream_and_populate() into the
fs partition of a qcow2 image, a raw file with --raw), hjfs, gefs (ream,
installer steps, mkfs -z 16372) and cwfs (fscache/fsworm/other slices, the cache
sized to hold the tree), against `cp -r` of a generated tree of about
--mb megabytes (many small files, some of a few hundred KB, a few large), best
of --repeat; target ratio hjfs / cp <= 2.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.disk.device import BlockDevice, RawFile, Storage
from imagebuild.fs import cwfs, gefs
from imagebuild.fs.hjfs import ream_and_populate
from imagebuild.fs.proto import read_proto

MiB = 1 << 20
TIMESTAMP = 1_700_000_000
TARGET = "amd64.qcow2"


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
        (d / f"f{i:05d}.dat").write_bytes(_slice(blob, rng, size))
    return len(sizes), sum(sizes)


def _slice(blob: bytes, rng: random.Random, size: int) -> bytes:
    if size > len(blob):
        return (blob * (size // len(blob) + 1))[:size]
    start = rng.randrange(0, len(blob) - size + 1)
    return blob[start : start + size]


# -- a generated 9front-shaped tree -------------------------------------------------------------

# (directory, files, share of files under 4 KiB, of 4-64 KiB, of 64 KiB-1 MiB, files >= 1 MiB):
# the counts of the 2025 tree's parts; sizes log-uniform within 20 B-4 KiB, 4-32 KiB,
# 64-512 KiB and 1-4 MiB (about the tree's bytes); directories of about 15 files, 3 deep
SHAPE = [
    ("sys/src", 8606, 0.60, 0.39, 0.0125, 2),
    ("lib", 6221, 0.47, 0.52, 0.004, 7),
    ("sys/lib", 1145, 0.49, 0.49, 0.017, 0),
    ("sys/man", 669, 0.72, 0.28, 0.0, 0),
    ("sys/doc", 112, 0.37, 0.51, 0.12, 1),
    ("sys/include", 121, 0.78, 0.22, 0.0, 0),
    ("rc", 217, 0.98, 0.02, 0.0, 0),
    ("acme", 70, 0.73, 0.27, 0.0, 0),
]
GIT_PACK = 130 * MiB
GENERATED_PROTO = """\
mode=ug+rw
mode=o-w
uid=sys
gid=sys
adm\td775 adm adm
\tuid=adm
\tgid=adm
\ttimezone\td775
\t\t*
cfg\td775
lib\td775
\t+
rc\td775
\t+
acme\td775
\t+
$objtype\td775
\tbin\td775
\t\t+
sys\td775
\tsrc\td775
\t\t+
\tlib\td775
\t\t+
\tman\td775
\t\t+
\tdoc\td775
\t\t+
\tinclude\td775
\t\t+
mail\td775 upas upas
\tuid=upas
\tgid=upas
\tlib\td775
\t\t*
usr\td775
\tglenda\td775 glenda glenda
\t\tuid=glenda
\t\tgid=glenda
\t\tlib\td775
\t\t\t*
\t\ttmp\td775
tmp\td555
dist\td775
\tplan9front\td775
\t\tuid=glenda
\t\t.git\td775
\t\t\t+
"""


def make_9front_shaped_tree(root: Path, seed: int = 9) -> None:
    """The demo root (stand-in kernels, mbr, pbs, 9bootfat) grown to the real tree's shape."""
    from imagebuild.pipeline.demo import DEMO_MARKER, make_demo_root

    make_demo_root(root)
    (root / DEMO_MARKER).unlink()
    rng = random.Random(seed)
    blob = rng.randbytes(32 * MiB)
    for top, count, small, medium, large_share, huge in SHAPE:
        for i in range(count):
            x = rng.random()
            if i < huge:
                low, high = MiB, 4 * MiB
            elif x < small + medium + large_share and x >= small + medium:
                low, high = 64 * 1024, 512 * 1024
            elif x < small + medium and x >= small:
                low, high = 4096, 32 * 1024
            else:
                low, high = 20, 4095
            size = int(low * (high / low) ** rng.random())  # log-uniform, as file sizes go
            n = i // 15
            d = root / top / f"d{n % 37}" / f"e{n % 5}" / f"f{n}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"file{i}.c").write_bytes(_slice(blob, rng, size))
    for empty in ("tmp", "usr/glenda/tmp"):
        (root / empty).mkdir(parents=True, exist_ok=True)
    pack = root / "dist/plan9front/.git/objects/pack"
    pack.mkdir(parents=True)
    (pack / "pack-0.pack").write_bytes(_slice(blob, rng, GIT_PACK))
    (pack / "pack-0.idx").write_bytes(_slice(blob, rng, 2 * MiB))
    (root / "dist/plan9front/.git/HEAD").write_text("ref: refs/heads/front\n")
    (root / "sys/lib/sysconfig/proto/distproto").write_text(GENERATED_PROTO)


def real_tree_root(tree: Path, dest: Path) -> None:
    """The checkout made buildable as tests/test_realtree.py makes it."""
    from tests.realtree import buildable_copy, create_missing_proto_sources, lenient_protos

    buildable_copy(tree, dest)
    if not lenient_protos():
        create_missing_proto_sources(dest)


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files, size = files + 1, size + st.st_size
    return files, size


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


class Run(NamedTuple):
    seconds: float
    max_rss_kb: int  # the child's peak resident set (getrusage ru_maxrss, KiB on Linux)
    stderr: str


GNU_TIME = "/usr/bin/time"


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Run `argv` after a sync; its wall time, peak RSS and stderr (kept out of the bench's
    output).  Exits naming the command if it fails.

    The peak RSS comes from GNU time when it is there: a child forked from
    this process inherits its resident size as a high-water mark, which
    would hide the peak of a smaller command.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        wrapped = argv
        if os.access(GNU_TIME, os.X_OK):
            wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv]
        os.sync()  # start without the previous runs' writeback pending
        start = time.perf_counter()
        child = subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
        reported = rss.read().split()
    if child.returncode != 0:
        sys.exit(f"fs_bench: {argv[0]} failed ({child.returncode}):\n{text}")
    max_rss = int(reported[-1]) if reported and reported[-1].isdigit() else usage.ru_maxrss
    return Run(seconds, max_rss, text)


def compile_sources() -> None:
    """Byte-compile imagebuild once, so no timed run compiles it (PYTHONDONTWRITEBYTECODE)."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "imagebuild"), quiet=1)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def compare_main(args: argparse.Namespace) -> None:
    from imagebuild.recipe.load import load_recipe

    if shutil.which("mkfs.ext4") is None:
        sys.exit("fs_bench: mkfs.ext4 is not installed (e2fsprogs): run ./dev setup")
    if args.repeat < 5:
        print(f"fs_bench: --repeat {args.repeat} < 5: medians of so few runs are noisy")
    given = os.environ.get("IMAGEBUILD_REAL_ROOT")
    with tempfile.TemporaryDirectory(prefix="imagebuild-fsbench-", dir=".") as tmp:
        work = Path(tmp)
        root = work / "root"
        if given:
            real_tree_root(Path(given).resolve(), root)
            what = f"the tree at {given}"
        else:
            make_9front_shaped_tree(root)
            what = "a generated 9front-shaped tree (set IMAGEBUILD_REAL_ROOT for a real one)"
        nfiles, nbytes = tree_size(root)
        warm(root)
        size = load_recipe(TARGET).image_size("qcow2")
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(TIMESTAMP))
        out = work / "out"
        out.mkdir()
        compile_sources()

        # Every run writes to a path of its own and nothing is deleted until all are done:
        # on ext4 without a journal, inodes freed in the last minute are skipped one by one
        # when new ones are allocated (ialloc.c recently_deleted()), so `cp -r` just after
        # deleting the previous copy's 17 000 files takes seconds more, and more each round.
        def run_imagebuild(i: int) -> Run:
            return run_measured([sys.executable, "-m", "imagebuild", "build", TARGET, "--root",
                                 str(root), "-o", str(out / f"image{i}.qcow2"), "--plain", "-q"],
                                env)  # fmt: skip

        def run_mkfs(i: int) -> Run:
            image = out / f"ext4-{i}.img"
            with image.open("wb") as f:
                f.truncate(size)
            return run_measured(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)])

        def run_cp(i: int) -> Run:
            return run_measured(["cp", "-r", str(root), str(out / f"copy{i}")])

        sides: list[tuple[str, Callable[[int], Run]]] = [
            ("imagebuild", run_imagebuild), ("mkfs.ext4", run_mkfs), ("cp -r", run_cp)]
        runs: dict[str, list[Run]] = {name: [] for name, _ in sides}
        print(f"fs_bench: {what}: {nfiles} files, {nbytes / MiB:.0f} MiB")
        print(f"  before: {load()}")
        for i in range(args.repeat):
            k = i % len(sides)
            for name, fn in sides[k:] + sides[:k]:  # rotate, so no side always runs first
                runs[name].append(fn(i))
        print(f"  after:  {load()}")
        med = {name: statistics.median(r.seconds for r in rs) for name, rs in runs.items()}
        for name, rs in runs.items():
            rss = max(r.max_rss_kb for r in rs) / 1024
            print(f"  {name:11} median {med[name] * 1000:7.0f} ms  peak RSS {rss:5.1f} MiB   "
                  "runs " + " ".join(f"{r.seconds * 1000:.0f}" for r in rs))
        print(f"  ratio imagebuild / mkfs.ext4  {med['imagebuild'] / med['mkfs.ext4']:6.2f}"
              "  (target <= 1.0)")
        print(f"  ratio imagebuild / cp -r      {med['imagebuild'] / med['cp -r']:6.2f}"
              "  (target <= 2.0)")
        rss = max(r.max_rss_kb for r in runs["imagebuild"]) / 1024
        print(f"  imagebuild peak RSS {rss:.1f} MiB (target <= 64 MiB)")
        warnings = runs["imagebuild"][0].stderr.splitlines()
        if warnings:
            print(f"  imagebuild said (each run): {warnings[0]}")


# -- --populate: hjfs alone against cp -r -------------------------------------------------------


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


def populate_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="imagebuild-fsbench-", dir=".") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        nfiles, nbytes = make_tree(tree, args.mb)
        (work / "proto").write_text("+\n")
        warm(tree)
        copy = work / "copy"
        copy.mkdir()
        image_path = work / "fs.img"
        image_size = max(args.mb * 2 + 64, 192) * MiB  # gefs wants 128 MiB at least
        kind = "?"

        copies = iter(range(1 << 30))

        def reset_cp() -> None:
            pass  # a new directory each run, deleted at the end (see compare_main)

        def run_cp() -> None:
            subprocess.run(["cp", "-r", str(tree), str(copy / str(next(copies)))], check=True)

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
        print(f"fs_bench --populate: {nfiles} files, {nbytes / MiB:.0f} MiB, best of {args.repeat}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populate", action="store_true",
                        help="hjfs population alone against cp -r of a generated tree")
    parser.add_argument("--mb", type=int, default=300, help="--populate: the tree's size")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each side (default 5; --populate: 3)")
    parser.add_argument("--raw", action="store_true", help="--populate: a raw image, not QCOW2")
    args = parser.parse_args()
    if args.populate:
        args.repeat = args.repeat or 3
        populate_main(args)
    else:
        args.repeat = args.repeat or 5
        compare_main(args)


if __name__ == "__main__":
    main()
