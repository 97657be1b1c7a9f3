"""`imagebuild build amd64.qcow2 --no-fs` against genimage + `qemu-img convert -O qcow2`.

    .venv/bin/python bench/build_bench.py [--repeat N]

Both make the boot side of the same image in one run, interleaved, as
commands (start-up included):
  imagebuild  `imagebuild build amd64.qcow2 --no-fs`: MBR with /386/mbr, the
              plan9 partition, prep's table, the 9fat FAT16 with 9bootfat,
              plan9.ini and 9pc64, into a 3770 MiB qcow2 image
  peer        genimage (Debian's, C) with the same MBR code, partition and a
              100 MiB FAT16 holding the same three files (mkdosfs + mcopy),
              then `qemu-img convert -O qcow2` of its raw output
Prints the median wall and CPU (user + system, children included) time of
each, their ratios (ours / peer; the target is <= 1.0) and the machine's load
average (on a busy machine the CPU ratio is the steadier one).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.pipeline.demo import make_demo_root

GENIMAGE_CONFIG = """\
image 9fat.vfat {{
	vfat {{
		extraargs = "-F 16 -R 2"
		files = {{ "9bootfat", "plan9.ini", "9pc64" }}
	}}
	size = {fat_bytes}
}}
image mbr {{
	file {{
		holes = {{"(440; 512)"}}
	}}
}}
image disk.img {{
	hdimage {{
		partition-table-type = "mbr"
		fill = true
	}}
	size = {disk_bytes}
	partition mbr {{
		in-partition-table = false
		offset = 0
		image = "mbr"
	}}
	partition plan9 {{
		partition-type = 0x39
		bootable = true
		offset = {plan9_offset}
		size = {plan9_bytes}
		image = "9fat.vfat"
	}}
}}
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of `cmd`."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("genimage") is None or shutil.which("qemu-img") is None:
        print("build_bench: needs genimage and qemu-img (apt-get install genimage qemu-utils)")
        return
    # bytecode as an installed wheel has it (pip compiles at install): with
    # PYTHONDONTWRITEBYTECODE=1 a stale __pycache__ would be recompiled at every run
    package = Path(__file__).resolve().parent.parent / "imagebuild"
    if not compileall.compile_dir(package, quiet=1):
        sys.exit("build_bench: cannot compile imagebuild's bytecode")
    imagebuild = Path(sys.executable).with_name("imagebuild")
    command = [str(imagebuild)] if imagebuild.exists() else [sys.executable, "-m", "imagebuild"]
    with tempfile.TemporaryDirectory(prefix="imagebuild-bench-") as tmp:
        work = Path(tmp)
        root = make_demo_root(work / "root")
        inputs = work / "in"
        inputs.mkdir()
        for rel in ("386/mbr", "386/9bootfat", "amd64/9pc64"):
            shutil.copy(root / rel, inputs / Path(rel).name)
        (inputs / "plan9.ini").write_text("bootfile=9pc64\nconsole=0\n")
        sector = 512
        disk_bytes = 3770 << 20
        plan9_offset = 63 * sector  # fdisk -baw: the first track is left free
        config = work / "genimage.cfg"
        config.write_text(GENIMAGE_CONFIG.format(
            fat_bytes=204800 * sector, disk_bytes=disk_bytes, plan9_offset=plan9_offset,
            plan9_bytes=(disk_bytes // sector // 63 * 63 - 63) * sector))
        (work / "empty").mkdir()
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
        ours_cmd = [*command, "build", "amd64.qcow2", "--root", str(root), "--no-fs",
                    "-o", str(work / "ours.qcow2")]

        def peer() -> tuple[float, float]:
            shutil.rmtree(work / "gtmp", ignore_errors=True)
            shutil.rmtree(work / "gout", ignore_errors=True)
            cpu, start = children_cpu(), time.perf_counter()
            subprocess.run(["genimage", "--config", str(config), "--rootpath",
                            str(work / "empty"), "--tmppath", str(work / "gtmp"),
                            "--inputpath", str(inputs), "--outputpath", str(work / "gout")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                            str(work / "gout/disk.img"), str(work / "peer.qcow2")],
                           check=True)
            return time.perf_counter() - start, children_cpu() - cpu

        timed(ours_cmd, env)  # warm the page cache for both
        peer()
        ours_times, peer_times = [], []
        load_before = os.getloadavg()
        for _ in range(args.repeat):  # interleaved
            ours_times.append(timed(ours_cmd, env))
            peer_times.append(peer())
        load_after = os.getloadavg()
        ours = statistics.median(t for t, _ in ours_times)
        theirs = statistics.median(t for t, _ in peer_times)
        ours_cpu = statistics.median(c for _, c in ours_times)
        theirs_cpu = statistics.median(c for _, c in peer_times)
        print(f"build_bench: amd64.qcow2 boot side (--no-fs), median of {args.repeat}, "
              f"interleaved; {os.cpu_count()} cores, load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
        print(f"  imagebuild build --no-fs      wall {ours * 1000:7.1f} ms, CPU "
              f"{ours_cpu * 1000:6.1f} ms ({(work / 'ours.qcow2').stat().st_size} bytes)")
        print(f"  genimage + qemu-img convert   wall {theirs * 1000:7.1f} ms, CPU "
              f"{theirs_cpu * 1000:6.1f} ms ({(work / 'peer.qcow2').stat().st_size} bytes)")
        print(f"  ratio (imagebuild / peer)     wall {ours / theirs:7.2f}, CPU "
              f"{ours_cpu / theirs_cpu:6.2f}   (target <= 1.0)")


if __name__ == "__main__":
    main()
