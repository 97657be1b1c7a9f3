"""hjfs on hostile input: zero runs at the read-piece boundaries, huge files, corrupt fields."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hjfs_helpers import BLOCK, read_file, walk_tree
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagebuild.disk.device import BlockDevice, BytesStorage, RawFile
from imagebuild.errors import ImageFormatError
from imagebuild.fs.hjfs import HjfsVolume, fsck, plan, ream_and_populate
from imagebuild.fs.hjfs.pieces import PIECE
from imagebuild.fs.proto import read_proto

T = 1_700_000_000
MiB = 1 << 20
DENTRY = 453  # dat.h: bytes per directory entry; 9 per block after the type byte
SIZE_AT = 277  # conv.c: a Dentry's size (u64)
DB_AT = 285  # its first direct pointer


def _build(tmp_path: Path, data: bytes, mb: int = 64) -> tuple[BytesStorage, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(data)
    (tmp_path / "proto").write_text("f\n")
    entries = read_proto([tmp_path / "proto"], src)
    streamed = BytesStorage(mb * MiB)
    ream_and_populate(BlockDevice(streamed, name="fs"), entries, timestamp=T)
    planned = BytesStorage(mb * MiB)
    plan(mb * MiB // BLOCK, entries, timestamp=T).write(BlockDevice(planned, name="fs"))
    assert streamed.buffer == planned.buffer  # the streaming replay is the exact one
    return streamed, src / "f"


# -- 9.5: an all-zero read piece (PIECE bytes) followed by data -----------------------------------


def test_a_whole_zero_piece_then_a_tail(tmp_path: Path) -> None:
    # the user's report: 9 565 920 zero bytes then `tail` died with IndexError
    storage, _ = _build(tmp_path, bytes(9_565_920) + b"tail\n")
    vol = HjfsVolume(BlockDevice(storage, name="fs"))
    assert vol.read("/f") == bytes(9_565_920) + b"tail\n"
    assert fsck(BlockDevice(storage, name="fs")) == []


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(-3 * 4095, 3 * 4095),  # where the zero run starts (<= 0: at the file's start)
    st.integers(-3 * 4095, 3 * 4095),  # where it ends, around the first piece boundary
    st.integers(1, 3 * 4095),  # data after it
)
@example(0, 0, 0, 5)  # a whole zero piece, then `tail\n`
def test_zero_runs_across_piece_boundaries(
    tmp_path_factory: pytest.TempPathFactory, seed: int, start: int, end: int, tail: int
) -> None:
    # the whole kind: a read piece that is all zero (no block touched), then more data
    rng = random.Random(seed)
    begin = max(0, start)
    data = rng.randbytes(begin) + bytes(PIECE + end - begin) + rng.randbytes(tail)
    storage, _ = _build(tmp_path_factory.mktemp("z"), data)
    tree = walk_tree(bytes(storage.buffer))  # the independent reader
    assert tree["/f"].size == len(data)
    assert read_file(bytes(storage.buffer), tree["/f"]) == data
    assert HjfsVolume(BlockDevice(storage, name="fs")).read("/f") == data


# -- files read straight into the run buffer: zero runs about the size that can make a hole ----


@settings(max_examples=12, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(  # per file: zero runs (start, length) near the sizes a hole or a zero block needs
        st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from(
            [1, 2, 1021, 1022, 2043, 2044, 2045, 4087, 4088, 4095, 8190])), max_size=3),
        min_size=1, max_size=4),
    st.lists(st.integers(1, 40_000), min_size=4, max_size=4),  # file lengths
    st.booleans(),  # the last byte zero
)
def test_streamed_files_with_zero_runs_equal_the_exact_replay(
    tmp_path_factory: pytest.TempPathFactory, seed: int, runs: list[list[tuple[int, int]]],
    lengths: list[int], zero_end: bool,
) -> None:
    # files in two directories (a new directory block between files), one long enough for
    # indirect blocks and more than one read piece
    rng = random.Random(seed)
    tmp = tmp_path_factory.mktemp("zr")
    src = tmp / "src"
    contents: dict[str, bytes] = {}
    for i, zero_runs in enumerate(runs):
        data = bytearray(rng.randbytes(lengths[i]))
        for start, n in zero_runs:
            data[start : start + n] = bytes(min(n, max(0, len(data) - start)))
        if zero_end:
            data[-1] = 0
        contents[f"d{i % 2}/f{i}"] = bytes(data)
    contents["d1/long"] = rng.randbytes(PIECE + 9000) + bytes(3000) + b"x"
    contents["d0/short_hole"] = rng.randbytes(4088) + bytes(3)  # a last write piece of zeros
    contents["d0/short_zero_block"] = rng.randbytes(4095) + bytes(5)  # a last block of zeros
    for name, data in contents.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (tmp / "proto").write_text("+\n")
    entries = read_proto([tmp / "proto"], src)
    streamed = BytesStorage(16 * MiB)
    ream_and_populate(BlockDevice(streamed, name="fs"), entries, timestamp=T)
    planned = BytesStorage(16 * MiB)
    plan(16 * MiB // BLOCK, entries, timestamp=T).write(BlockDevice(planned, name="fs"))
    assert streamed.buffer == planned.buffer
    tree = walk_tree(bytes(streamed.buffer))  # the independent reader
    for name, data in contents.items():
        assert read_file(bytes(streamed.buffer), tree["/" + name]) == data, name


# -- 9.4: cat of a file larger than 2 GiB streams it ---------------------------------------------


def test_iter_read_streams_a_sparse_file_with_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    with open(big, "wb") as f:  # sparse: holes cost nothing here, hjfs keeps them as holes
        f.truncate(300_000_000)
        f.seek(100_000_000)
        f.write(b"middle")
        f.seek(300_000_000 - 4)
        f.write(b"end\n")
    (tmp_path / "proto").write_text("big\n")
    image = tmp_path / "fs.raw"
    with RawFile.create(image, 64 * MiB) as raw:
        ream_and_populate(BlockDevice(raw, name="fs"), read_proto([tmp_path / "proto"], src),
                          timestamp=T)
    with RawFile(image) as raw:
        vol = HjfsVolume(BlockDevice(raw, name="fs"))
        total = 0
        largest = 0
        found = b""
        for chunk in vol.iter_read("/big"):
            if total <= 100_000_000 < total + len(chunk):
                found = chunk[100_000_000 - total : 100_000_000 - total + 6]
            total += len(chunk)
            largest = max(largest, len(chunk))
            last = chunk
        assert total == 300_000_000 and found == b"middle" and last.endswith(b"end\n")
        assert largest <= 2 * MiB  # bounded memory


@pytest.mark.skipif(sys.platform != "linux", reason="RSS from /proc")
def test_cli_cat_writes_every_byte_in_bounded_memory(tmp_path: Path, root: Path) -> None:
    import shutil

    r = tmp_path / "root"
    shutil.copytree(root, r, symlinks=True)
    with open(r / "rc/bin/big", "wb") as f:
        f.truncate(2_200_000_000)  # more than one write(2) can take
        f.seek(2_200_000_000 - 4)
        f.write(b"end\n")
    out = tmp_path / "z.img"
    proc = subprocess.run([sys.executable, "-m", "imagebuild", "build", "zynq.img", "--root", r,
                           "-o", out, "-q"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    code = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'imagebuild', 'cat', {str(out)!r}, "
        "'fs:/rc/bin/big'], stdout=open('/dev/null', 'wb'))\n"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    rc, rss_kb = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split()
    assert rc == "0" and int(rss_kb) < 200_000
    counted = subprocess.run(
        f"{sys.executable} -m imagebuild cat {out} fs:/rc/bin/big | tail -c 4; "
        f"{sys.executable} -m imagebuild cat {out} fs:/rc/bin/big | wc -c",
        shell=True, capture_output=True, check=True).stdout
    assert counted.split(b"\n")[0] == b"end" and int(counted.split(b"\n")[1]) == 2_200_000_000


# -- 9.8: corrupt fields in the image ------------------------------------------------------------


def _small_image(tmp_path: Path) -> BytesStorage:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/c").write_text("c\n")
    (tmp_path / "proto").write_text("+\n")
    storage = BytesStorage(8 * MiB)
    ream_and_populate(BlockDevice(storage, name="fs"), read_proto([tmp_path / "proto"], src),
                      timestamp=T)
    return storage


def _dentry_offset(storage: BytesStorage, path: str) -> int:
    """Byte offset of `path`'s Dentry in the image, found with the independent reader."""
    image = bytes(storage.buffer)
    target = path.rsplit("/", 1)[-1].encode()
    parent = walk_tree(image)[path.rsplit("/", 1)[0] or "/"] if path.count("/") > 1 else None
    blocks = parent.db if parent is not None else None
    for b in range(len(image) // BLOCK):
        if blocks is not None and b not in blocks:
            continue
        if image[b * BLOCK] != 2:  # TDENTRY
            continue
        for i in range(9):
            at = b * BLOCK + 1 + i * DENTRY
            if image[at : at + 256].rstrip(b"\0") == target:
                return at
    raise AssertionError(path)


def _bounded(fn: object) -> None:
    start = time.monotonic()
    with pytest.raises(ImageFormatError):
        fn()  # type: ignore[operator]
    assert time.monotonic() - start < 10


def test_a_huge_size_on_adm_users_is_a_format_error(tmp_path: Path) -> None:
    storage = _small_image(tmp_path)
    at = _dentry_offset(storage, "/adm/users")
    storage.buffer[at + SIZE_AT : at + SIZE_AT + 8] = struct.pack("<Q", 1 << 40)
    vol = HjfsVolume(BlockDevice(storage, name="fs"))
    _bounded(lambda: vol.listdir("/") and vol.stat("/a"))
    _bounded(lambda: vol.summary())


def test_a_huge_directory_size_ends(tmp_path: Path) -> None:
    storage = _small_image(tmp_path)
    at = _dentry_offset(storage, "/a")
    storage.buffer[at + SIZE_AT : at + SIZE_AT + 8] = struct.pack("<Q", 1 << 62)
    dev = BlockDevice(storage, name="fs")
    vol = HjfsVolume(dev)
    _bounded(lambda: vol.listdir("/a"))
    _bounded(lambda: list(vol.walk()))
    start = time.monotonic()
    problems = fsck(dev)
    assert any("/a: directory of" in p for p in problems) and time.monotonic() - start < 10


def test_a_directory_pointing_back_at_its_parent(tmp_path: Path) -> None:
    storage = _small_image(tmp_path)
    image = bytes(storage.buffer)
    root_data = walk_tree(image)["/"].db[0]
    at = _dentry_offset(storage, "/a/b")
    storage.buffer[at + DB_AT : at + DB_AT + 8] = struct.pack("<Q", root_data)
    dev = BlockDevice(storage, name="fs")
    _bounded(lambda: list(HjfsVolume(dev).walk()))
    _bounded(lambda: HjfsVolume(dev).summary())
    start = time.monotonic()
    assert fsck(dev) != [] and time.monotonic() - start < 10


def test_a_deep_tree_walks_without_recursion(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src.joinpath(*["d"] * 300)
    deep.mkdir(parents=True)
    (deep / "f").write_text("f\n")
    (tmp_path / "proto").write_text("+\n")
    dev = BlockDevice(BytesStorage(32 * MiB), name="fs")
    ream_and_populate(dev, read_proto([tmp_path / "proto"], src), timestamp=T)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # less than the depth: only an iterative walk gets through
    try:
        count = sum(1 for _ in HjfsVolume(dev).walk())
        problems = fsck(dev)
    finally:
        sys.setrecursionlimit(limit)
    assert count == 300 + 1 + 4 and problems == []  # + f, adm, users, dist, usr
