"""QCOW2 engine benchmark: sequential write/read vs a raw file, random writes, create, RSS,
and `qcow2 convert` / `convert -c` against `qemu-img convert` / `convert -c`.

    .venv/bin/python bench/qcow2_bench.py            # full run (1 GiB, 64 GiB image)
    .venv/bin/python bench/qcow2_bench.py --quick    # 128 MiB, a few seconds
    .venv/bin/python bench/qcow2_bench.py --convert  # only the convert comparison

The convert rows time both commands as a user runs them (process start-up
included), interleaved (the order alternates every round), and print the
median of --convert-rounds runs, the ratio ours/qemu-img, the CPUs and the
load average before and after.

Files go to a temporary directory (--dir to choose; it needs ~2x --seq-size free).
The sequential ratios compare the data view with os.pwrite/os.pread of the same
bytes in the same chunk size on a raw file in the same directory.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.util.sizes import format_size, parse_size


def _timed(label: str, fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--seq-size", default=None, help="sequential bytes (default 1G)")
    parser.add_argument("--chunk", default="4M", help="write/read chunk (default 4M)")
    parser.add_argument("--random-image", default=None, help="random-write image size (64G)")
    parser.add_argument("--random-ops", type=int, default=None, help="random writes (4000)")
    parser.add_argument("--dir", default=None, help="where to put the scratch files")
    parser.add_argument("--rounds", type=int, default=3, help="best of N for sequential runs")
    parser.add_argument("--convert", action="store_true", help="only the convert comparison")
    parser.add_argument("--convert-size", default=None, help="convert input (default 1G)")
    parser.add_argument("--compress-size", default=None,
                        help="convert -c input (default 64M)")
    parser.add_argument("--convert-rounds", type=int, default=5, help="median of N (>= 5)")
    args = parser.parse_args()
    if args.convert:
        convert_bench(args)
        return
    seq = parse_size(args.seq_size or ("128M" if args.quick else "1G"))
    chunk = parse_size(args.chunk)
    rand_size = parse_size(args.random_image or ("4G" if args.quick else "64G"))
    rand_ops = args.random_ops or (500 if args.quick else 4000)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="qcow2-bench-") as tmp:
        d = Path(tmp)
        rng = random.Random(1)
        block = rng.randbytes(chunk)
        chunks = seq // chunk

        raw = d / "seq.raw"
        qcow = d / "seq.qcow2"

        def raw_write(durable: bool) -> None:
            fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for i in range(chunks):
                    os.pwrite(fd, block, i * chunk)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)

        def qcow_write(durable: bool) -> None:
            with Qcow2Image.create(qcow, seq, sync=durable) as image:
                view = image.data
                for _ in range(chunks):
                    view.write(block)

        def best(fn: object, durable: bool, path: Path) -> float:
            times = []
            for _ in range(args.rounds):
                if path.exists():
                    path.unlink()  # dropping the old file's pages is not part of the run
                os.sync()
                times.append(_timed("", lambda: fn(durable)))  # type: ignore[operator]
            return min(times)

        results: dict[str, float] = {}
        for durable in (False, True):
            results[f"raw{durable}"] = best(raw_write, durable, raw)
            results[f"qcow{durable}"] = best(qcow_write, durable, qcow)

        buf = bytearray(chunk)

        def raw_read() -> None:
            fd = os.open(raw, os.O_RDONLY)
            try:
                for i in range(chunks):
                    os.preadv(fd, [buf], i * chunk)
            finally:
                os.close(fd)

        def qcow_read() -> None:
            with Qcow2Image.open(qcow) as image:
                view = image.data
                for _ in range(chunks):
                    view.readinto(buf)

        t_raw_r = min(_timed("", raw_read) for _ in range(args.rounds))
        t_q_r = min(_timed("", qcow_read) for _ in range(args.rounds))

        rand_path = d / "rand.qcow2"
        piece = rng.randbytes(65536)
        slots = rand_size // 65536

        def random_writes() -> None:
            with Qcow2Image.create(rand_path, rand_size) as image:
                for _ in range(rand_ops):
                    image.pwrite(piece, rng.randrange(slots) * 65536)

        t_rand = _timed("random", random_writes)

        big = d / "big.qcow2"
        t_create = _timed("create", lambda: Qcow2Image.create(big, 2 << 40).close())
        big_size = os.path.getsize(big)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mib = seq / (1 << 20)
    for durable, what in ((False, "page cache"), (True, "fsync at close")):
        t_raw, t_q = results[f"raw{durable}"], results[f"qcow{durable}"]
        print(f"sequential write {format_size(seq)} in {format_size(chunk)} chunks ({what}): "
              f"qcow2 {mib / t_q:.0f} MiB/s, raw os.pwrite {mib / t_raw:.0f} MiB/s, "
              f"ratio {t_raw / t_q:.2f}")
    print(f"sequential read  {format_size(seq)}: qcow2 {mib / t_q_r:.0f} MiB/s, "
          f"raw os.preadv {mib / t_raw_r:.0f} MiB/s, ratio {t_raw_r / t_q_r:.2f}")
    print(f"random 64 KiB writes over a {format_size(rand_size)} image: "
          f"{rand_ops / t_rand:.0f} ops/s ({rand_ops} ops incl. create and close)")
    print(f"create 2 TiB image: {t_create * 1000:.1f} ms, {format_size(big_size)} file")
    print(f"peak RSS: {format_size(rss)}")
    convert_bench(args)


def _holey_raw(path: Path, size: int, seed: int) -> None:
    """Half data, half holes: 4 MiB of data at the start of every 8 MiB, whose bytes are
    random nibbles (deflate makes them ~55 %), so -c has real work."""
    rng = random.Random(seed)
    nibbles = bytes(range(16)) * 16
    with open(path, "wb") as f:
        f.truncate(size)
        for at in range(0, size, 8 << 20):
            f.seek(at)
            f.write(rng.randbytes(min(4 << 20, size - at)).translate(nibbles))


def _run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one command.

    Both tools start without an output to replace; removing the previous one
    (untimed) also drops its dirty pages, so no run pays for another's writeback.
    """
    Path(argv[-1]).unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def convert_bench(args: argparse.Namespace) -> None:
    """`imagebuild qcow2 convert [-c]` vs `qemu-img convert [-c]`, interleaved medians."""
    if shutil.which("qemu-img") is None:
        print("convert: qemu-img not found, skipped")
        return
    ours = [str(Path(sys.executable).with_name("imagebuild")), "qcow2", "convert"]
    size = parse_size(args.convert_size or ("128M" if args.quick else "1G"))
    csize = parse_size(args.compress_size or ("32M" if args.quick else "64M"))
    rounds = max(5, args.convert_rounds)
    # what an installed command gets: byte-compiled modules (PYTHONDONTWRITEBYTECODE
    # would otherwise recompile every module at every start)
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "imagebuild"),
                           quiet=1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="qcow2-convert-") as tmp:
        d = Path(tmp)
        plain, small = d / "in.raw", d / "small.raw"
        _holey_raw(plain, size, 1)
        _holey_raw(small, csize, 2)
        cases = [("convert -O qcow2", plain, []), ("convert -c -O qcow2", small, ["-c"])]
        for label, src, flags in cases:
            times: dict[str, list[float]] = {"ours": [], "qemu": []}
            cpu: dict[str, list[float]] = {"ours": [], "qemu": []}
            commands = {"ours": [*ours, *flags, "-O", "qcow2", str(src), str(d / "o.qcow2")],
                        "qemu": ["qemu-img", "convert", *flags, "-f", "raw", "-O", "qcow2",
                                 str(src), str(d / "q.qcow2")]}
            for who in ("ours", "qemu"):  # untimed: binaries and input in the page cache
                _run(commands[who])
            load = os.getloadavg()[0]
            for r in range(rounds):
                order = ("ours", "qemu") if r % 2 == 0 else ("qemu", "ours")
                for who in order:
                    wall, used = _run(commands[who])
                    times[who].append(wall)
                    cpu[who].append(used)
            med = {who: statistics.median(times[who]) for who in times}
            med_cpu = {who: statistics.median(cpu[who]) for who in cpu}
            print(f"{label} {format_size(src.stat().st_size)} (half holes): "
                  f"ours {med['ours']:.3f} s, qemu-img {med['qemu']:.3f} s, "
                  f"ratio {med['ours'] / med['qemu']:.2f}; CPU ours {med_cpu['ours']:.3f} s, "
                  f"qemu-img {med_cpu['qemu']:.3f} s (median of {rounds}, interleaved; "
                  f"load {load:.2f} -> {os.getloadavg()[0]:.2f})")
    load_after = os.getloadavg()
    print(f"convert machine: {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")


if __name__ == "__main__":
    main()
