"""The real-tree tier for gefs and cwfs: every disk target, built with `--fs gefs` and with
`--fs cwfs` from the 9front checkout IMAGEBUILD_REAL_ROOT names (tests/test_realtree.py
does hjfs).

Each build must exit 0 with no traceback, pass `qemu-img check` (qcow2 targets) and
`imagebuild fsck`, and every proto entry must read back through our reader: 9P mode,
owner, group, mtime, bytes.  The separately written readers read some again:
tests/cwfs_helpers.py amd64.qcow2 and pi.img (the smallest cwfs cache, so the most
dumps), tests/gefs_helpers.py pi.img (it hashes every block in pure Python, one at a
time: minutes for a full tree).  A full tree with its .git takes cwfs one or two dumps.
Without IMAGEBUILD_REAL_ROOT every test here reports itself skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imagebuild.container.qcow2.image import open_image
from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.fs.proto import ProtoEntry
from imagebuild.pipeline.plan import fs_tree
from imagebuild.readback import partitions
from imagebuild.recipe.load import load_recipe, with_fs
from tests import cwfs_helpers as ch
from tests import gefs_helpers as gh
from tests.conftest import SOURCE_DATE_EPOCH
from tests.realtree import SKIP_REASON, FileView, buildable_copy, given_tree, recipe_inputs
from tests.test_realtree import imagebuild

pytestmark = pytest.mark.skipif(given_tree() is None, reason=SKIP_REASON)

# The disk targets: an ISO has no fs partition to choose (`--fs` is refused there).
TARGETS = sorted(t for t in recipe_inputs() if load_recipe(t).iso is None) if (
    given_tree() is not None) else []
CASES = [(t, fs) for fs in ("cwfs", "gefs") for t in TARGETS]
INDEPENDENT = {("amd64.qcow2", "cwfs"), ("pi.img", "cwfs"), ("pi.img", "gefs")}
INSTALLER_MADE = {"/adm", "/dist", "/usr", "/usr/glenda"}  # mkfs's uptodate() leaves them


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = given_tree()
    assert tree is not None
    copy = tmp_path_factory.mktemp("realroot-fs") / "root"
    buildable_copy(tree, copy)
    return copy


@contextmanager
def _parts(image: Path) -> Iterator[tuple[PartFS, int]]:
    """The image's partitions and a file descriptor of it as a raw disk (qcow2 converted)."""
    raw = image
    if image.read_bytes()[:4] == b"QFI\xfb":
        raw = image.with_suffix(".raw")
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)],
                       check=True, capture_output=True)  # fmt: skip
    fd = os.open(raw, os.O_RDONLY)
    try:
        with open_image(raw) as opened:
            yield partitions(BlockDevice(opened.storage, name=raw.name)), fd
    finally:
        os.close(fd)
        if raw != image:
            raw.unlink()


def _check(e: ProtoEntry, mode: int, uid: str, gid: str, mtime: int, length: int) -> None:
    assert mode == e.mode, (e.path, oct(mode), oct(e.mode))
    assert (uid, gid) == (e.uid or "sys", e.gid or "sys"), e.path
    want = min(e.mtime, SOURCE_DATE_EPOCH)
    if e.is_dir:
        assert mtime in (want, SOURCE_DATE_EPOCH), e.path  # a directory: its last change
    else:
        assert (mtime, length) == (want, e.length), e.path


def _ours_cwfs(parts: PartFS, entries: dict[str, ProtoEntry]) -> None:
    from imagebuild.fs.cwfs import CwfsVolume

    vol = CwfsVolume(parts["fscache"], parts["fsworm"], parts["other"])
    seen = set()
    for path, d in vol.walk_entries("/"):
        e = entries.get(path)
        if e is None:
            continue
        seen.add(path)
        st = vol.stat_of(d)
        _check(e, st.mode, st.uid, st.gid, st.mtime, st.length)
        if not e.is_dir:
            assert vol.read_entry(d) == e.source.read_bytes(), path
    assert seen == set(entries), sorted(set(entries) - seen)[:10]


def _ours_gefs(parts: PartFS, entries: dict[str, ProtoEntry]) -> None:
    from imagebuild.fs.gefs import GefsVolume

    fs = parts["fs"]
    vol = GefsVolume(fs.pread, fs.size)
    seen = set()
    for path, st in vol.walk("/"):
        e = entries.get(path)
        if e is None:
            continue
        seen.add(path)
        _check(e, st.mode, st.uid, st.gid, st.mtime, st.length)
        if not e.is_dir:
            assert vol.read(path) == e.source.read_bytes(), path
    assert seen == set(entries), sorted(set(entries) - seen)[:10]


def _independent_cwfs(parts: PartFS, fd: int, entries: dict[str, ProtoEntry]) -> None:
    c, w = parts["fscache"], parts["fsworm"]
    co, wo = c.offset * c.sector_size, w.offset * w.sector_size  # bytes into the raw disk
    img = ch.Image(lambda off, n: os.pread(fd, n, co + off),
                   lambda off, n: os.pread(fd, n, wo + off))  # fmt: skip
    tree, users = img.tree(), img.users()
    for path, e in entries.items():
        got = tree[path]
        assert bool(got.mode & 0x4000) == e.is_dir, path
        assert got.mode & 0o777 == e.mode & 0o777, path
        assert (users[got.uid], users[got.gid]) == (e.uid or "sys", e.gid or "sys"), path
        if not e.is_dir:
            assert got.mtime == min(e.mtime, SOURCE_DATE_EPOCH), path
            assert img.data(got) == e.source.read_bytes(), path


def _independent_gefs(parts: PartFS, fd: int, entries: dict[str, ProtoEntry]) -> None:
    fs = parts["fs"]
    g = gh.Gefs(FileView(fd, fs.offset * fs.sector_size, fs.size))
    kvs, files, users = g.dataset("main"), g.files("main", data=False), g.users()
    for path, e in entries.items():
        f = files[path][0]
        assert f.mode == e.mode and f.is_dir == e.is_dir, path
        assert (users[f.uid], users[f.gid]) == (e.uid or "sys", e.gid or "sys"), path
        if not e.is_dir:
            assert f.mtime_ns == min(e.mtime, SOURCE_DATE_EPOCH) * 1_000_000_000, path
            assert g.read(kvs, f) == e.source.read_bytes(), path


@pytest.mark.parametrize(("target", "fs"), CASES)
def test_builds_checks_clean_and_every_entry_reads_back(
    root: Path, tmp_path: Path, target: str, fs: str
) -> None:
    image = tmp_path / target
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    done = imagebuild("build", target, "--fs", fs, "--root", root, "-o", image, "--plain", "-q",
                      env=env)  # fmt: skip
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{target} --fs {fs}: {stderr}"
    assert "Traceback" not in stderr, stderr
    try:
        if target.endswith(".qcow2"):
            check = subprocess.run(["qemu-img", "check", "--output=json", str(image)],
                                   capture_output=True, text=True, check=False)  # fmt: skip
            assert check.returncode == 0, check.stdout + check.stderr
            report: dict[str, Any] = json.loads(check.stdout)
            assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
        fsck = imagebuild("fsck", image, "fs")
        out = fsck.stdout.decode(errors="replace") + fsck.stderr.decode(errors="replace")
        assert fsck.returncode == 0 and "clean" in out, out
        recipe = with_fs(load_recipe(target), fs)
        entries = {e.path: e for e in fs_tree(recipe, root, missing=[])}
        for path in INSTALLER_MADE:
            entries.pop(path, None)
        with _parts(image) as (parts, fd):
            (_ours_cwfs if fs == "cwfs" else _ours_gefs)(parts, entries)
            if (target, fs) in INDEPENDENT:
                if fs == "cwfs":
                    _independent_cwfs(parts, fd, entries)
                else:
                    _independent_gefs(parts, fd, entries)
    finally:
        image.unlink(missing_ok=True)
