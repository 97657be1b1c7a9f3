"""The real-tree tier: every target built from a 9front checkout named by IMAGEBUILD_REAL_ROOT.

Each image is checked with tools that do not share our code: qemu-img check and
convert (the qcow2 container), sfdisk and the Plan 9 table's text (the layout),
fsck.fat -n and mtools (the boot partition), tests/hjfs_helpers.py (the fs
partition, read block by block and recounted), and every file of the fs
partition is compared with the tree it came from; `imagebuild fsck`, `ls` and
`cat` are checked too.  The tree itself is never written to (checked).
Without IMAGEBUILD_REAL_ROOT every test here reports itself skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagebuild.recipe.load import Recipe, load_recipe
from tests import hjfs_helpers as hj
from tests.conftest import SOURCE_DATE_EPOCH, tool_env
from tests.realtree import (
    SKIP_REASON,
    FileView,
    buildable_copy,
    create_missing_proto_sources,
    files_under,
    given_tree,
    lenient_protos,
    recipe_inputs,
    tree_fingerprint,
)

pytestmark = pytest.mark.skipif(given_tree() is None, reason=SKIP_REASON)

SECTOR = 512
FAT_TYPES = {"01", "04", "06", "b", "c", "e", "ef"}  # sfdisk prints MBR types in hex, no 0x
TARGETS = sorted(recipe_inputs()) if given_tree() is not None else []
DISK_TARGETS = [t for t in TARGETS if load_recipe(t).iso is None]
ISO_TARGETS = [t for t in TARGETS if load_recipe(t).iso is not None]


def imagebuild(*args: str | Path, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "imagebuild", *map(str, args)],
                          capture_output=True, env=env, timeout=timeout, check=False)


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True,
                          env=tool_env()).stdout


@dataclass
class Built:
    image: Path
    raw: Path  # the image as a raw disk (qemu-img convert of a qcow2 image)
    stderr: str
    seconds: float


@dataclass
class RealTree:
    tree: Path
    root: Path  # the buildable copy
    out: Path
    added: list[str]
    made: list[str]  # proto sources we created because this imagebuild is strict
    lenient: bool
    before: list[tuple[str, int, int, int]]
    images: dict[str, Built] = field(default_factory=dict)

    def build(self, name: str) -> Built:
        if name not in self.images:
            env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
            image = self.out / name
            start = time.perf_counter()
            done = imagebuild("build", name, "--root", self.root, "-o", image, "--plain", env=env)
            seconds = time.perf_counter() - start
            stderr = done.stderr.decode(errors="replace")
            assert done.returncode == 0, f"{name}: {stderr}"
            assert "Traceback" not in stderr, stderr
            raw = image
            if image.read_bytes()[:4] == b"QFI\xfb":
                raw = self.out / f"{name}.raw"
                run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
            self.images[name] = Built(image, raw, stderr, seconds)
        return self.images[name]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealTree]:
    tree = given_tree()
    assert tree is not None
    before = tree_fingerprint(tree)
    root = tmp_path_factory.mktemp("realroot") / "root"
    added = buildable_copy(tree, root)
    lenient = lenient_protos()
    made = [] if lenient else create_missing_proto_sources(root)
    yield RealTree(tree, root, tmp_path_factory.mktemp("realout"), added, made, lenient, before)


# -- the layout, read without our code ----------------------------------------------------------


def mbr_partitions(raw: Path) -> list[dict[str, object]]:
    table = json.loads(run("sfdisk", "--json", raw))["partitiontable"]
    assert table["label"] == "dos"
    parts: list[dict[str, object]] = table["partitions"]
    return parts


def plan9_table(raw: Path, start: int) -> dict[str, tuple[int, int]]:
    """The Plan 9 partition table prep writes in the second sector of a PLAN9 partition:
    name -> (first sector, end sector), absolute."""
    with raw.open("rb") as f:
        f.seek((start + 1) * SECTOR)
        text = f.read(SECTOR).split(b"\0", 1)[0].decode("ascii")
    out = {}
    for line in text.splitlines():
        word, name, first, end = line.split()
        assert word == "part", line
        out[name] = (start + int(first), start + int(end))
    return out


def partitions(raw: Path) -> dict[str, tuple[int, int]]:
    """Every partition by the name 9front's partfs gives it: dos/esp for a FAT MBR
    partition, the Plan 9 table's names inside the PLAN9 one."""
    found: dict[str, tuple[int, int]] = {}
    for p in mbr_partitions(raw):
        start, size, kind = int(str(p["start"])), int(str(p["size"])), str(p["type"])
        if kind == "39":
            found.update(plan9_table(raw, start))
        elif kind in FAT_TYPES:
            found["esp" if kind == "ef" else "dos"] = (start, start + size)
    return found


def extract(raw: Path, first: int, end: int, dest: Path) -> Path:
    with raw.open("rb") as src, dest.open("wb") as out:
        src.seek(first * SECTOR)
        left = (end - first) * SECTOR
        while left:
            chunk = src.read(min(left, 1 << 22))
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
            left -= len(chunk)
        out.truncate((end - first) * SECTOR)
    return dest


def recipe(name: str) -> Recipe:
    return load_recipe(name)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_builds_and_qemu_img_check_is_clean(real: RealTree, name: str) -> None:
    built = real.build(name)
    if built.raw != built.image:
        check = subprocess.run(["qemu-img", "check", "--output=json", str(built.image)],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        report = json.loads(check.stdout)
        assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    info = imagebuild("inspect", "--json", built.image)
    assert info.returncode == 0, info.stderr


@pytest.mark.parametrize("name", DISK_TARGETS)
def test_boot_partition_passes_fsck_fat_and_mtools_reads_every_file(
    real: RealTree, name: str, tmp_path: Path
) -> None:
    from tests.test_fat_format import LABEL_MESSAGE, fsck

    r = recipe(name)
    built = real.build(name)
    parts = partitions(built.raw)
    assert r.fat_partition in parts, parts
    fat = extract(built.raw, *parts[r.fat_partition], tmp_path / "fat.img")
    assert set(fsck(fat)) <= set(LABEL_MESSAGE)
    listing = subprocess.run(["mdir", "-a", "-b", "-i", str(fat), "::"], capture_output=True,
                             text=True, check=True, env=tool_env()).stdout
    names = {line.rsplit("/", 1)[-1].lower() for line in listing.split()}
    for rel in r.fat_files:
        base = rel.rsplit("/", 1)[-1]
        assert base.lower() in names, (base, names)
        got = subprocess.run(["mtype", "-i", str(fat), f"::{base}"], capture_output=True,
                             check=True, env=tool_env()).stdout
        if rel in r.render:
            assert got, base
        else:
            assert got == (real.root / rel).read_bytes(), base


@pytest.mark.parametrize("name", DISK_TARGETS)
def test_imagebuild_fsck_and_the_independent_recount_agree_the_fs_is_clean(
    real: RealTree, name: str
) -> None:
    if recipe(name).fs.type != "hjfs":
        pytest.skip(f"{name}: the fs partition is not hjfs")
    built = real.build(name)
    done = imagebuild("fsck", built.image)
    assert done.returncode == 0, done.stdout + done.stderr
    first, end = partitions(built.raw)["fs"]
    with built.raw.open("rb") as f:
        view = FileView(f.fileno(), first * SECTOR, (end - first) * SECTOR)
        size = hj.superblock(view)["size"]
        stored = hj.stored_counts(view)
        want = hj.recount(view)
    bad = [(n, stored[n], want[n]) for n in range(size) if stored[n] != want[n]]
    assert not bad, bad[:10]
    assert set(stored[size:]) <= {0xFFFFFF}  # ream's -1 past the end


def fs_files(built: Built) -> Iterator[tuple[FileView, dict[str, hj.Entry]]]:
    first, end = partitions(built.raw)["fs"]
    with built.raw.open("rb") as f:
        view = FileView(f.fileno(), first * SECTOR, (end - first) * SECTOR)
        yield view, hj.walk_tree(view)


@pytest.mark.parametrize("name", DISK_TARGETS)
def test_every_file_of_the_fs_partition_is_the_trees(real: RealTree, name: str) -> None:
    """Read back with the independent reader: every proto entry is there with its bytes and
    permissions, and nothing else is (but what hjfs -r and the mkfile's console make)."""
    from imagebuild.pipeline.build import fs_tree

    r = recipe(name)
    if r.fs.type != "hjfs":
        pytest.skip(f"{name}: the fs partition is not hjfs")
    built = real.build(name)
    entries = {e.path: e for e in fs_tree(r, real.root, missing=[])}
    for view, found in fs_files(built):
        extra = set(found) - set(entries) - {"/", "/adm", "/adm/users", "/dist", "/usr"}
        assert not extra, sorted(extra)[:20]
        missing = set(entries) - set(found)
        assert not missing, sorted(missing)[:20]
        for path, e in entries.items():
            got = found[path]
            assert bool(got.type & hj.QTDIR) == e.is_dir, path
            assert got.mode & 0o777 == e.mode & 0o777, path
            if not e.is_dir:
                assert got.size == e.length, path
                assert hj.read_file(view, got) == e.source.read_bytes(), path


@pytest.mark.parametrize("name", ISO_TARGETS)
def test_every_file_of_the_iso_reads_back_with_pycdlib(real: RealTree, name: str) -> None:
    """An ISO target from the real tree: pycdlib, not our reader, gives every proto file's
    bytes under its Joliet name (plan9.ini is rendered, so it is only looked up)."""
    import io

    import pycdlib

    from imagebuild.fs.iso9660 import names
    from imagebuild.pipeline.build import fs_tree

    r = recipe(name)
    assert r.iso is not None
    built = real.build(name)
    entries = fs_tree(r, real.root, missing=[])
    cd = pycdlib.PyCdlib()
    cd.open(str(built.image))
    checked = 0
    try:
        for e in entries:
            if e.is_dir or names.is_bad_joliet(e.name):
                continue
            data = io.BytesIO()
            cd.get_file_from_iso_fp(data, joliet_path=e.path)
            if e.path != "/" + r.iso.plan9ini:
                assert data.getvalue() == e.source.read_bytes(), e.path
            checked += 1
    finally:
        cd.close()
    assert checked > 1000, checked


PLUS_WALKS = {  # fs directory -> (tree directory, the proto's skip= for it)
    "/sys/src": ("sys/src", r"\.(out|orig|([ao]?[0125678vqki]?))$"),
    "/sys/man": ("sys/man", r"\.(pdf|ps|orig)$"),
    "/sys/include": ("sys/include", None),
    "/rc": ("rc", r"\.local$"),
    "/lib/ndb": ("sys/lib/dist/ndb", None),
}


@pytest.mark.parametrize("name", ["amd64.qcow2", "pi.img"])
def test_plus_walks_hold_what_os_walk_finds_in_the_tree(real: RealTree, name: str) -> None:
    """Independent of our proto reader: a `+` line copies the whole directory but skip=."""
    built = real.build(name)
    walks = dict(PLUS_WALKS)
    if (real.root / ".git").is_dir():  # the mkfile's bind of the checkout at /dist/plan9front
        walks["/dist/plan9front/.git"] = (".git", None)
    for _, found in fs_files(built):
        for fsdir, (treedir, skip) in walks.items():
            want = set(files_under(real.root / treedir, re.compile(skip) if skip else None))
            if fsdir == "/lib/ndb":  # `*` of the distproto: the files, and the dhcp it names
                want = {w for w in want if "/" not in w and (real.root / treedir / w).is_file()}
                want.add("dhcp")
            got = {p[len(fsdir) + 1:] for p in found if p.startswith(fsdir + "/")}
            assert got == want, (fsdir, sorted(got ^ want)[:20])


@pytest.mark.parametrize("name", ["amd64.qcow2", "arm64.qcow2"])
def test_imagebuild_cat_and_ls_agree_with_the_tree(real: RealTree, name: str) -> None:
    from imagebuild.pipeline.build import fs_tree

    built = real.build(name)
    files = [e for e in fs_tree(recipe(name), real.root, missing=[]) if not e.is_dir]
    sample = [*files[:: max(1, len(files) // 12)], max(files, key=lambda e: e.length)]
    for e in sample:
        done = imagebuild("cat", built.image, f"fs:{e.path}")
        assert done.returncode == 0, (e.path, done.stderr)
        assert done.stdout == e.source.read_bytes(), e.path
    listing = imagebuild("ls", "--json", built.image, "fs:/sys/src/cmd")
    assert listing.returncode == 0, listing.stderr
    names = {d["name"] for d in json.loads(listing.stdout)}
    skip = re.compile(PLUS_WALKS["/sys/src"][1] or "")
    assert names == {n for n in os.listdir(real.root / "sys/src/cmd") if not skip.search(n)}


def test_missing_proto_directories_are_made_and_missing_files_summed_up(real: RealTree) -> None:
    """A git checkout has no empty directories: the build makes /tmp and its kind itself and
    names the missing files once (a strict imagebuild needs them made first)."""
    if not real.lenient:
        pytest.skip("this imagebuild is strict about missing proto sources (no --strict flag "
                    f"yet); the tier made {len(real.made)} of them itself")
    built = real.build("amd64.qcow2")
    for d in ("/tmp", "/mail/box/glenda/mbox", "/usr/glenda/tmp", "/amd64/bin/ape"):
        done = imagebuild("ls", built.image, f"fs:{d}")
        assert done.returncode == 0, (d, done.stderr)
    assert "do not exist" in built.stderr or "missing" in built.stderr.lower(), built.stderr


def test_the_given_tree_is_not_written_to(real: RealTree) -> None:
    for name in ("amd64.qcow2", "pi.img"):
        real.build(name)
    assert tree_fingerprint(real.tree) == real.before


def test_stand_ins_have_the_real_names(real: RealTree) -> None:
    """Every input a recipe reads exists in the copy; what the tree lacked was added."""
    for name, inputs in recipe_inputs().items():
        for rel in inputs:
            assert (real.root / rel).is_file(), (name, rel)
            if not (real.tree / rel).exists():
                assert rel in real.added, rel
