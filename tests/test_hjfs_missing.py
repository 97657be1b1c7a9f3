"""Sources the protos name that a tree lacks (a git checkout): directories made, files warned."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hjfs_helpers import walk_tree

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.hjfs import HjfsVolume, fsck, ream_and_populate
from imagebuild.fs.proto import DMDIR, MissingSource, read_proto

T = 1_700_000_000
MiB = 1 << 20


def _imagebuild(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuild", *map(str, args)],
                          capture_output=True, text=True, check=False)


def test_missing_directories_become_empty_hjfs_directories(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib/a").write_text("a\n")
    proto = tmp_path / "proto"
    proto.write_text("lib d775\n\ta\ntmp d555 sys sys\nmail d775\n\tbox d775\n"
                     "\t\tglenda d700 glenda glenda\n\t\t\tmbox a600 glenda glenda\n")
    left_out: list[MissingSource] = []
    entries = read_proto([proto], src, on_missing=left_out.append)
    assert [m.path for m in left_out] == ["/mail/box/glenda/mbox"]
    dev = BlockDevice(BytesStorage(16 * MiB), name="fs")
    ream_and_populate(dev, entries, timestamp=T)
    vol = HjfsVolume(dev)
    tmp, glenda = vol.stat("/tmp"), vol.stat("/mail/box/glenda")
    assert (tmp.mode, tmp.uid, tmp.gid, tmp.mtime) == (DMDIR | 0o555, "sys", "sys", T)
    assert (glenda.mode, glenda.uid, glenda.gid) == (DMDIR | 0o700, "glenda", "glenda")
    assert vol.listdir("/tmp") == [] and vol.listdir("/mail/box/glenda") == []
    assert vol.read("/lib/a") == b"a\n"
    assert fsck(dev) == []
    # the independent reader agrees
    tree = walk_tree(dev.pread(16 * MiB, 0))
    assert tree["/tmp"].mode & 0o777 == 0o555 and tree["/tmp"].size == 0  # no entry blocks
    assert not [p for p in tree if p.startswith("/tmp/")]


def test_build_warns_once_at_the_end_and_strict_refuses(tmp_path: Path, root: Path) -> None:
    r = tmp_path / "root"
    shutil.copytree(root, r, symlinks=True)
    proto = r / "sys/lib/sysconfig/proto/distproto"
    proto.write_text(proto.read_text() + "tmp\td555 sys sys\nnosuchfile\t664\nsys\td775\n"
                     "\tlog\td775\n\t\tgone\t664\n")
    out = tmp_path / "z.img"
    proc = _imagebuild("build", "zynq.img", "--root", r, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert warning[0].startswith("warning: 2 files named in the protos do not exist")
    assert warning[1].endswith(f"/nosuchfile: source {r}/nosuchfile does not exist")
    assert "distproto:" in warning[1] and "/sys/log/gone" in warning[2] and len(warning) == 3
    ls = _imagebuild("ls", out, "fs:/tmp")
    assert ls.returncode == 0, ls.stderr
    strict = tmp_path / "s.img"
    proc = _imagebuild("build", "zynq.img", "--root", r, "-o", strict, "--strict")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "distproto:" in proc.stderr and "nosuchfile" in proc.stderr
    assert not strict.exists()
    recipe = tmp_path / "strict.toml"
    recipe.write_text('extends = "zynq.img"\n\n[fs]\nstrict = true\n')
    proc = _imagebuild("build", recipe, "--root", r, "-o", strict)
    assert proc.returncode == 1 and "nosuchfile" in proc.stderr and not strict.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
