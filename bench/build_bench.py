"""Build amd64.qcow2 directly vs. the same layout as raw + `qemu-img convert -O qcow2`.

    .venv/bin/python bench/build_bench.py [--repeat N]

Both sides in one run, on one root whose kernel is 3 MB of random bytes:
  direct   imagebuild writes the qcow2 image
  via-raw  imagebuild writes the same layout as a raw file, then
           `qemu-img convert -O qcow2` (the C pipeline's shape)
once as commands (`imagebuild build`, start-up included) and once through the
library (write_image). Prints wall times (best of N), output sizes and ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.disk.device import RawFile
from imagebuild.pipeline.build import BuildOptions, plan_build, write_image
from imagebuild.pipeline.demo import DEMO_MARKER, make_demo_root
from imagebuild.recipe.load import load_recipe

KERNEL_SIZE = 3 * 1000 * 1000


def best(repeat: int, fn: object) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebuild-bench-", dir=".") as tmp:
        work = Path(tmp)
        root = make_demo_root(work / "root")
        (root / DEMO_MARKER).unlink()
        (root / "amd64/9pc64").write_bytes(random.Random(9).randbytes(KERNEL_SIZE))
        direct_out = work / "direct.qcow2"
        raw_out, via_out = work / "layout.raw", work / "via-raw.qcow2"
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")

        def cli_direct() -> None:
            subprocess.run([sys.executable, "-m", "imagebuild", "build", "amd64.qcow2",
                            "--root", str(root), "-o", str(direct_out), "--quiet"],
                           check=True, env=env)

        def cli_raw() -> None:
            subprocess.run([sys.executable, "-m", "imagebuild", "build", "amd64.qcow2",
                            "--format", "raw", "--root", str(root), "-o", str(raw_out),
                            "--quiet"], check=True, env=env)

        plan = plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=root, timestamp=1))

        def lib_direct() -> None:
            with Qcow2Image.create(direct_out, plan.size) as image:
                write_image(plan, image.data)

        def lib_raw() -> None:
            with RawFile.create(raw_out, plan.size) as raw:
                write_image(plan, raw)

        def convert() -> None:
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw_out),
                            str(via_out)], check=True)

        print("build_bench: amd64.qcow2 (3770 MiB virtual) with a 3 MB kernel, "
              f"best of {args.repeat}")
        for label, direct, raw in (("command", cli_direct, cli_raw),
                                   ("library", lib_direct, lib_raw)):
            t_direct = best(args.repeat, direct)
            t_raw = best(args.repeat, raw)
            t_convert = best(args.repeat, convert)
            t_via = t_raw + t_convert
            print(f"  {label}: imagebuild -> qcow2 {t_direct * 1000:7.1f} ms "
                  f"({direct_out.stat().st_size} bytes) | imagebuild -> raw "
                  f"{t_raw * 1000:6.1f} ms + qemu-img convert {t_convert * 1000:6.1f} ms = "
                  f"{t_via * 1000:7.1f} ms ({via_out.stat().st_size} bytes) | "
                  f"ratio {t_direct / t_via:.2f}")


if __name__ == "__main__":
    main()
