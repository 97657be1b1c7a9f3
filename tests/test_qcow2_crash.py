"""Crash safety: a writer killed with SIGKILL at random points leaves an image that
`qemu-img check` finds clean or only leaking (exit 0 or 3), never corrupt (exit 2)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qcow2_helpers import assert_qemu_clean, needs_qemu_img, qemu_check

from imagebuild.container.qcow2.image import Qcow2Image

pytestmark = needs_qemu_img

WRITER = r"""
import os, random, signal, sys
from imagebuild.container.qcow2.image import Qcow2Image
path, seed, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
image = Qcow2Image.open(path, writable=True, sync=False)
image.cache_limit = 6  # write metadata back often, so kills land mid-flush too
if kill_at:
    # die just before the kill_at-th write reaches the file: every point of the
    # write sequence (data, refcount blocks, table moves, L2, L1) is a possible crash
    count = [0]
    def counted(method):
        def wrapper(*args):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return method(*args)
        return wrapper
    image.host.write = counted(image.host.write)
    image.host.writev = counted(image.host.writev)
print("ready", flush=True)
while True:
    offset = rng.randrange(image.size - 300_000)
    image.pwrite(rng.randbytes(rng.randrange(1, 300_000)), offset)
    if rng.random() < 0.3:
        image.flush()
"""


@pytest.mark.parametrize("cluster,mode", [(512, "time"), (65536, "time"),
                                          (512, "write"), (4096, "write")])
def test_qcow2_sigkill_never_corrupts(tmp_path: Path, cluster: int, mode: str) -> None:
    rng = random.Random(cluster)
    path = tmp_path / "crash.qcow2"
    # 512 B clusters: refcount blocks and the refcount table keep growing during the run
    Qcow2Image.create(path, 256 << 20, cluster_size=cluster).close()
    for run in range(4 if mode == "time" else 8):
        kill_at = rng.randrange(1, 400) if mode == "write" else 0
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(run),
                                 str(kill_at)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        if mode == "time":
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        rc, report, text = qemu_check(path)
        # qemu-img check: 0 clean, 2 corruptions, 3 leaked clusters only
        assert rc in (0, 3), text
        assert report.get("corruptions", 0) == 0, text
        # the next writable open (ours, like QEMU's) repairs a dirty image's refcounts
        with Qcow2Image.open(path, writable=True) as image:
            image.pwrite(b"after the crash", 4096)
        assert_qemu_clean(path)
