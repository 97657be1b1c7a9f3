"""Fuzzing every reader: built images with bytes of their metadata changed, read by every verb.

Readers: the qcow2 container (header, L1, L2, refcount table and blocks), the MBR and
the Plan 9 partition table, FAT (BPB, FAT, directory entries) and hjfs (superblock,
reference blocks, directory entries, indirect blocks).  Each case is a deterministic
seed: the image, the region and the bytes written follow from it alone.

Every read verb (`inspect`, `inspect --json`, `ls`, `cat`, `fsck`, `qcow2 info/check/map`)
runs in a child process with a wall-clock limit and an address-space limit.  A verb
must then end with exit status 0 or 1 (`qcow2 check` also 2 and 3, as documented), no
traceback, at most one line on stderr (on failure exactly one, naming the image), and
must leave the image as it was.

The children are forked from one driver process that has imported imagebuild once
(a fresh interpreter per run would cost the suite minutes); `test_entry_point_*`
checks that `python -m imagebuild` itself behaves the same on a corrupt image.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tests import hjfs_helpers as hj

TIME_LIMIT = 10  # seconds of CPU time a verb may take (wall-clock time depends on the load)
KNOWN_LIMIT = 3  # for the known failures: a fixed reader needs well under a second
MEMORY_LIMIT = 1 << 30  # bytes of address space a verb may map
SECTOR = 512
CASES = 16  # seeds per region kind

DRIVER = r"""
import importlib, json, os, pkgutil, resource, signal, sys, traceback
import imagebuild
from imagebuild.cli import main

for module in pkgutil.walk_packages(imagebuild.__path__, "imagebuild."):  # the children's
    if not module.name.endswith("__main__"):                           # imports, done once
        importlib.import_module(module.name)
for name in ("rich.console", "rich.table", "rich.text"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass

memory, seconds = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    case = json.loads(line)
    err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_WRONLY)
    pid = os.fork()
    if pid == 0:
        os.dup2(null, 1)
        os.dup2(err, 2)
        limit = case.get("seconds", seconds)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))  # SIGXCPU ends it
        signal.alarm(6 * limit)  # and SIGALRM, should it sleep: both whatever the load
        code = 1
        try:
            code = main(case["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        sys.stderr.flush()
        os._exit(code)
    os.close(err)
    os.close(null)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Runner:
    """One driver process; `run(argv)` forks a limited child for each verb."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(MEMORY_LIMIT), str(TIME_LIMIT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"),  # as on a UTF-8 terminal
        )

    def run(self, argv: list[str], seconds: int = TIME_LIMIT) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        err = self.scratch / "stderr"
        case = {"argv": argv, "stderr": str(err), "seconds": seconds}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        code = json.loads(self.proc.stdout.readline())["code"]
        return code, err.read_text(errors="replace")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    r = Runner(tmp_path_factory.mktemp("fuzz-run"))
    yield r
    r.close()


# -- the images -------------------------------------------------------------------------------


def _build(args: list[str]) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    done = subprocess.run([sys.executable, "-m", "imagebuild", "build", *args, "-q", "--plain"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagebuild.pipeline.demo import make_demo_root

    root = make_demo_root(tmp_path_factory.mktemp("fuzz-root") / "root")
    # a file of 80 blocks, so the fs holds an indirect block
    (root / "rc/bin/big").write_bytes(bytes(range(256)) * 1280)
    return root


@pytest.fixture(scope="module")
def qcow2_image(fuzz_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-qcow2") / "a.qcow2"
    _build(["amd64.qcow2", "--no-fs", "--root", str(fuzz_root), "-o", str(out)])
    return out


@pytest.fixture(scope="module")
def raw_image(fuzz_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zynq's layout (MBR, PLAN9 partition, prep 9fat nvram fs) on a 300 MiB raw disk."""
    from imagebuild.recipe.load import recipe_path

    work = tmp_path_factory.mktemp("fuzz-raw")
    text = recipe_path("zynq.img").read_text()
    recipe = work / "tiny.img.toml"
    recipe.write_text(text.replace("mb = 1885", "mb = 300", 1))
    out = work / "tiny.img"
    _build([str(recipe), "--root", str(fuzz_root), "-o", str(out)])
    return out


# -- where the metadata is, found without our readers -------------------------------------------


Field = tuple[int, int]  # (offset in the region, width in bytes)


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    length: int
    fields: tuple[Field, ...] = ()  # the numbers in it that mutations aim at
    order: Literal["little", "big"] = "little"
    kinds: tuple[str, ...] = ("byte", "number", "pointer", "random")


def repeat(fields: list[Field], stride: int, count: int, base: int = 0) -> tuple[Field, ...]:
    return tuple((base + i * stride + at, w) for i in range(count) for at, w in fields)


QCOW2_HEADER = ((0, 4), (4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8),
                (48, 8), (56, 4), (60, 4), (64, 8), (72, 8), (80, 8), (88, 8), (96, 4),
                (100, 4))


def qcow2_regions(path: Path) -> list[Region]:
    data = path.read_bytes()
    (cluster_bits,) = struct.unpack_from(">I", data, 20)
    (l1_size,) = struct.unpack_from(">I", data, 36)
    l1_offset, rt_offset = struct.unpack_from(">QQ", data, 40)
    (header_length,) = struct.unpack_from(">I", data, 100)
    regions = [
        Region("header", 0, 104, QCOW2_HEADER, "big"),
        Region("header-ext", header_length, 64, repeat([(0, 4), (4, 4)], 8, 4), "big"),
        Region("l1", l1_offset, l1_size * 8, repeat([(0, 8)], 8, l1_size), "big"),
        Region("refcount-table", rt_offset, 64, repeat([(0, 8)], 8, 8), "big"),
    ]
    (block,) = struct.unpack_from(">Q", data, rt_offset)
    regions.append(Region("refcount-block", block, 512, repeat([(0, 2)], 2, 256), "big"))
    for i in range(l1_size):
        (entry,) = struct.unpack_from(">Q", data, l1_offset + 8 * i)
        l2 = entry & 0x00FF_FFFF_FFFF_FE00
        if l2:
            count = 1 << (cluster_bits - 3)
            regions.append(Region("l2", l2, count * 8, repeat([(0, 8)], 8, count), "big"))
            break
    return regions


def plan9_partition(data: bytes) -> int:
    """The first sector of the MBR's PLAN9 (0x39) partition."""
    for i in range(4):
        entry = data[446 + 16 * i : 462 + 16 * i]
        if entry[4] == 0x39:
            return int(struct.unpack_from("<I", entry, 8)[0])
    raise AssertionError("no PLAN9 partition")


def plan9_table(data: bytes, start: int) -> dict[str, int]:
    text = data[(start + 1) * SECTOR : (start + 2) * SECTOR].split(b"\0", 1)[0].decode()
    return {w[1]: start + int(w[2]) for w in (line.split() for line in text.splitlines())}


def raw_head(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def table_regions(path: Path) -> list[Region]:
    start = plan9_partition(raw_head(path, SECTOR))
    mbr_entry = [(0, 1), (4, 1), (8, 4), (12, 4)]  # status, type, first LBA, sectors
    return [Region("mbr-table", 446, 66, repeat(mbr_entry, 16, 4)),
            Region("plan9-table", (start + 1) * SECTOR, 120)]


DIRENT = [(0, 1), (11, 1), (20, 2), (26, 2), (28, 4)]  # name[0], attr, cluster hi/lo, size


def fat_regions(path: Path) -> list[Region]:
    data = raw_head(path, 64 << 20)
    fat = plan9_table(data, plan9_partition(data))["9fat"] * SECTOR
    reserved, nfats = struct.unpack_from("<HB", data, fat + 14)
    (rootents,) = struct.unpack_from("<H", data, fat + 17)
    (fatsize,) = struct.unpack_from("<H", data, fat + 22)
    fat1 = fat + reserved * SECTOR
    root = fat1 + nfats * fatsize * SECTOR
    assert rootents, "the fuzz image's 9fat is FAT12/16"
    bpb = ((11, 2), (13, 1), (14, 2), (16, 1), (17, 2), (19, 2), (21, 1), (22, 2), (28, 4),
           (32, 4))
    return [Region("bpb", fat, 62, bpb), Region("fat", fat1, 64, repeat([(0, 2)], 2, 32)),
            Region("root-dir", root, 4 * 32, repeat(DIRENT, 32, 4))]


# dat.h's Dentry after its name: uid gid mode path type size db[15] ib[4] (tests/hjfs_helpers.py)
DENTRY = [(256, 2), (260, 2), (262, 2), (264, 8), (276, 1), (277, 8),
          *((285 + 8 * k, 8) for k in range(15)), *((405 + 8 * k, 8) for k in range(4))]


def hjfs_regions(path: Path) -> list[Region]:
    data = raw_head(path, 200 << 20)
    fs = plan9_table(data, plan9_partition(data))["fs"] * SECTOR
    view = data[fs:]
    sb = hj.superblock(view)
    superblock = ((0, 1), (1, 4), (5, 8), (13, 8), (21, 8), (29, 8), (37, 8))
    regions = [
        Region("superblock", fs, 48, superblock),
        Region("refs", fs + sb["fstart"] * hj.BLOCK, 64, repeat([(1, 3)], 3, 20)),
        Region("root-block", fs + sb["root"] * hj.BLOCK, 2 * hj.ENTRY + 1,
               repeat(DENTRY, hj.ENTRY, 2, base=1)),
    ]
    tree = hj.walk_tree(view)
    for path_ in ("/rc/bin", "/adm"):
        for n in hj.file_blocks(view, tree[path_]).values():
            used = [i for i, e in enumerate(hj.entries(hj.block(view, n))) if e.mode & hj.ALLOC]
            length = 1 + (used[-1] + 1) * hj.ENTRY
            where = fs + n * hj.BLOCK
            name = path_.replace("/", "-")

            def fields(chosen: list[Field], used: list[int] = used) -> tuple[Field, ...]:
                return tuple((1 + i * hj.ENTRY + at, w) for i in used for at, w in chosen)

            regions += [
                Region(f"dir{name}", where, length, fields(DENTRY)),
                # the sizes and pointers every reader trusts: huge, negative, looping
                Region(f"size{name}", where, length, fields([(277, 8)]), kinds=("number",)),
                Region(f"pointer{name}", where, length, fields(DENTRY[6:]), kinds=("pointer",)),
            ]
    big = tree["/rc/bin/big"]
    regions.append(Region("indirect", fs + big.ib[0] * hj.BLOCK, 1 + 8 * 70,
                          repeat([(1, 8)], 8, 70)))
    return regions


# -- what the mutations write ----------------------------------------------------------------


INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
               0xFFFF_FFFF, 1 << 40, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
               0xFFFF_FFFF_FFFF_FFFF]


def mutate(region: Region, rng: random.Random, pointers: list[int]) -> list[tuple[int, bytes]]:
    """One to three patches inside `region`: a changed byte, an extreme number in a field,
    a field pointing at another piece of metadata (loops, shared blocks) or random bytes."""
    patches = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice([k for k in region.kinds if region.fields or k in ("byte", "random")])
        if kind == "byte":
            patches.append((region.offset + rng.randrange(region.length),
                            bytes([rng.randrange(256)])))
        elif kind == "random":
            at = rng.randrange(region.length)
            size = min(rng.randint(1, 16), region.length - at)
            patches.append((region.offset + at, rng.randbytes(size)))
        else:
            at, width = rng.choice(region.fields)
            value = rng.choice(INTERESTING if kind == "number" else pointers)
            value &= (1 << (8 * width)) - 1
            patches.append((region.offset + at, value.to_bytes(width, region.order)))
    return patches


@dataclass
class Patched:
    path: Path
    original: list[tuple[int, bytes]]


def apply(path: Path, patches: list[tuple[int, bytes]]) -> Patched:
    original = []
    with path.open("r+b") as f:
        for at, data in patches:
            f.seek(at)
            original.append((at, f.read(len(data))))
            f.seek(at)
            f.write(data)
    return Patched(path, original)


def restore(p: Patched) -> None:
    with p.path.open("r+b") as f:
        for at, data in reversed(p.original):
            f.seek(at)
            f.write(data)


# -- the verbs and what they must do ----------------------------------------------------------


QCOW2_VERBS = [["inspect"], ["inspect", "--json"], ["ls", "9fat:/"], ["cat", "9fat:plan9.ini"],
               ["fsck"], ["qcow2", "info"], ["qcow2", "check"], ["qcow2", "map"],
               ["qcow2", "map", "--output", "json"]]
RAW_VERBS = [["inspect"], ["inspect", "--json"], ["ls", "9fat:/"], ["cat", "9fat:plan9.ini"],
             ["ls", "fs:/rc/bin"], ["cat", "fs:/rc/bin/big"], ["cat", "fs:/adm/users"],
             ["fsck"]]


def verb_argv(verb: list[str], image: Path) -> list[str]:
    """The image goes after the verb (and its sub-verb), before the other arguments."""
    n = 2 if verb[0] == "qcow2" else 1
    return [*verb[:n], str(image), *verb[n:]]


def check_verbs(runner: Runner, image: Path, verbs: list[list[str]],
                limit: int = TIME_LIMIT) -> list[str]:
    """Every verb's violations, one line each (empty: all well-behaved): a status other
    than 0 or 1 (`qcow2 check`: 0 to 3), a traceback, more than one line on stderr, a
    failure without exactly one line naming the image, a verb still running after `limit`
    s of CPU time, a changed image."""
    problems = []
    before = image.stat()
    for verb in verbs:
        code, stderr = runner.run(verb_argv(verb, image), limit)
        allowed = {0, 1, 2, 3} if verb[:2] == ["qcow2", "check"] else {0, 1}
        lines = stderr.strip().splitlines()
        what = " ".join(verb)
        if code in (-signal.SIGXCPU, -signal.SIGALRM):
            problems.append(f"{what}: still running after {limit} s of CPU time")
            limit = 2  # one hang found: the other verbs need not each take the full limit
        elif code not in allowed:
            problems.append(f"{what}: exit status {code}")
        if "Traceback" in stderr:
            problems.append(f"{what}: traceback: {lines[-1] if lines else ''}")
        elif len(lines) > 1:
            problems.append(f"{what}: {len(lines)} lines on stderr: {lines[:2]}")
        elif code == 1 and (len(lines) != 1 or image.name not in lines[0]):
            problems.append(f"{what}: failed without one line naming the image: {lines}")
    after = image.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        problems.append("a read verb changed the image")
    return problems


def fuzz_case(runner: Runner, image: Path, regions: list[Region], blocks: list[int],
              verbs: list[list[str]], kind: str, seed: int) -> None:
    rng = random.Random(f"{kind}/{seed}")
    chosen = [r for r in regions if r.name.startswith(kind)]
    region = chosen[seed % len(chosen)]
    patches = mutate(region, rng, blocks)
    patched = apply(image, patches)
    limit = KNOWN_LIMIT if (kind, seed) in KNOWN else TIME_LIMIT
    try:
        problems = check_verbs(runner, image, verbs, limit)
    finally:
        restore(patched)
    shown = [(hex(at), data.hex()) for at, data in patches]
    assert not problems, f"{region.name} patched with {shown}: " + "; ".join(problems)


def params(kinds: dict[str, int], known: dict[tuple[str, int], str]) -> list[object]:
    out = []
    for kind, count in kinds.items():
        for seed in range(count):
            marks = []
            if (kind, seed) in known:
                marks.append(pytest.mark.xfail(strict=True, reason=known[kind, seed]))
            out.append(pytest.param(kind, seed, id=f"{kind}-{seed}", marks=marks))
    return out


# Cases that find a bug in a reader, kept as strict xfails until it is fixed
# (reproduce: the test id gives region and seed; its message the bytes written).
# Cases that find a bug in a reader, kept as strict xfails until it is fixed:
# (kind, seed) -> the reader and the bug.  Those found so far are fixed: a Plan 9 table
# that is not UTF-8, an empty FAT root in `inspect`, hjfs file and directory sizes of 2^63.
KNOWN: dict[tuple[str, int], str] = {}


@pytest.mark.parametrize(("kind", "seed"), params(
    {"header": CASES, "l1": CASES // 2, "l2": CASES // 2, "refcount": CASES // 2}, KNOWN))
def test_qcow2_metadata(runner: Runner, qcow2_image: Path, kind: str, seed: int) -> None:
    regions = qcow2_regions(qcow2_image)
    offsets = [r.offset for r in regions]  # and as L1/L2 entries: with the "copied" bit
    pointers = [*offsets, *(o | 1 << 63 for o in offsets), 1 << 40, 3 << 9]
    fuzz_case(runner, qcow2_image, regions, pointers, QCOW2_VERBS, kind, seed)


@pytest.mark.parametrize(("kind", "seed"), params(
    {"mbr-table": CASES // 2, "plan9-table": CASES}, KNOWN))
def test_partition_tables(runner: Runner, raw_image: Path, kind: str, seed: int) -> None:
    fuzz_case(runner, raw_image, table_regions(raw_image), [1, 63, 1 << 31], RAW_VERBS,
              kind, seed)


@pytest.mark.parametrize(("kind", "seed"), params(
    {"bpb": CASES, "fat": CASES // 2, "root-dir": CASES // 2}, KNOWN))
def test_fat(runner: Runner, raw_image: Path, kind: str, seed: int) -> None:
    fuzz_case(runner, raw_image, fat_regions(raw_image), [0, 1, 2, 0xFFF7, 0xFFFF], RAW_VERBS,
              kind, seed)


@pytest.mark.parametrize(("kind", "seed"), params(
    {"superblock": CASES, "refs": CASES // 4, "root-block": CASES // 2, "dir": CASES // 2,
     "size": CASES // 2, "pointer": CASES // 2, "indirect": CASES // 2}, KNOWN))
def test_hjfs(runner: Runner, raw_image: Path, kind: str, seed: int) -> None:
    regions = hjfs_regions(raw_image)
    fs = plan9_table(raw_head(raw_image, 1 << 20), plan9_partition(raw_head(raw_image, 512)))
    base = fs["fs"] * SECTOR
    blocks = [*sorted({(r.offset - base) // hj.BLOCK for r in regions}), 0, 1 << 33]
    fuzz_case(runner, raw_image, regions, blocks, RAW_VERBS, kind, seed)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("verb", [["inspect"], ["fsck"], ["qcow2", "check"]])
def test_entry_point_on_a_corrupt_image(qcow2_image: Path, tmp_path: Path,
                                        verb: list[str]) -> None:
    """`python -m imagebuild` itself, limited in preexec_fn: one line, exit 1 (check: 2)."""
    bad = tmp_path / "bad.qcow2"
    data = bytearray(qcow2_image.read_bytes())
    data[40:48] = (1 << 50).to_bytes(8, "big")  # the L1 table far past the end of the file
    bad.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "imagebuild", *verb_argv(verb, bad)],
                          capture_output=True, text=True, timeout=TIME_LIMIT * 3,
                          preexec_fn=_limits, check=False)
    assert done.returncode in ({1, 2} if verb[0] == "qcow2" else {1}), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
