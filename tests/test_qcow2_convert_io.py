"""The raw-source copy path of `qcow2 convert`: finding the data blocks, reserving runs.

`nonzero_blocks` is checked against a plain reading of the same bytes (every
block compared whole, bytes past the end of the file as zeros); the copies
against qemu-img compare/check and against the paths without preallocation
and without the kernel copy, on inputs built around the edges the copy loop
has: runs that do not start or end on a cluster, a file ending mid-cluster
(also within the first 16 bytes of a cluster), all-zero clusters inside a
data extent (reported as data by SEEK_DATA), clusters whose first bytes are
zero, holes between extents.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qcow2_helpers import KiB, MiB, assert_qemu_clean, needs_qemu_img, qemu_compare

from imagebuild.cli import main
from imagebuild.container.qcow2 import convert as convert_module
from imagebuild.container.qcow2 import convert_io
from imagebuild.container.qcow2.convert import convert
from imagebuild.container.qcow2.convert_io import KernelCopy, fallocator, nonzero_blocks


def _reference(data: bytes, pos: int, n: int, block: int) -> list[int]:
    """The non-zero blocks of data[pos:pos + n], the bytes past the end read as zeros."""
    window = data[pos : pos + n].ljust(n, b"\0")
    return [i for i, at in enumerate(range(0, n, block)) if window[at : at + block].strip(b"\0")]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), block=st.sampled_from([8, 24, 512, 4 * KiB, 16 * KiB]))
def test_nonzero_blocks_matches_a_plain_reading(tmp_path_factory: pytest.TempPathFactory,
                                                seed: int, block: int) -> None:
    rng = random.Random(seed)
    blocks = rng.randrange(1, 24)
    buf = bytearray(blocks * block)
    for i in range(blocks):
        kind = rng.randrange(5)
        at = i * block
        if kind == 1:  # data from the first byte
            buf[at : at + block] = rng.randbytes(block)
        elif kind == 2:  # one byte somewhere past the head: the block is read whole
            buf[at + rng.randrange(min(16, block - 1), block)] = rng.randrange(1, 256)
        elif kind == 3:  # one byte inside the head
            buf[at + rng.randrange(min(16, block))] = rng.randrange(1, 256)
        # kind 0, 4: all zero
    size = rng.randrange(1, len(buf) + 1)  # ends anywhere: mid-block, inside a head
    data = bytes(buf[:size])
    path = tmp_path_factory.mktemp("nz") / "src.raw"
    path.write_bytes(data)
    pos = rng.randrange(blocks) * block
    n = rng.randrange(1, blocks * block - pos + 1 + block)  # may run past the end of the file
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nonzero_blocks(fd, pos, n, block) == _reference(data, pos, n, block)
    finally:
        os.close(fd)


def test_nonzero_blocks_shorter_than_the_head(tmp_path: Path) -> None:
    """Blocks shorter than the 16 bytes looked at first: a zero block before a data
    block is not data (its head would reach into the next block)."""
    path = tmp_path / "src.raw"
    path.write_bytes(bytes(8) + b"\1" * 8 + bytes(16))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nonzero_blocks(fd, 0, 32, 8) == [1]
    finally:
        os.close(fd)


def test_nonzero_blocks_short_last_block(tmp_path: Path) -> None:
    """A last block shorter than the 16 bytes looked at first: only its own bytes count."""
    path = tmp_path / "src.raw"
    path.write_bytes(bytes(4096) + bytes(5) + b"\1" * 11)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nonzero_blocks(fd, 0, 4096 + 5, 4096) == []
        assert nonzero_blocks(fd, 0, 4096 + 6, 4096) == [1]
        assert nonzero_blocks(fd, 4096, 16, 4096) == [0]
    finally:
        os.close(fd)


def test_fallocator_reserves_and_grows_the_file(tmp_path: Path) -> None:
    fallocate = fallocator()
    if fallocate is None:
        pytest.skip("no fallocate in the C library")
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not fallocate(fd, 65536, 3 * 65536 + 100):
            pytest.skip("this file system refuses fallocate")
        st_ = os.fstat(fd)
        assert st_.st_size == 4 * 65536 + 100
        assert os.pread(fd, st_.st_size, 0) == bytes(st_.st_size)
        assert not fallocate(-1, 0, 4096)  # refused: False, no exception
    finally:
        os.close(fd)


def test_kernel_copy_stops_reserving_once_refused(tmp_path: Path) -> None:
    """A refused fallocate (no support, no space) is tried once; the copies go on."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(random.Random(1).randbytes(200_000))
    calls: list[tuple[int, int]] = []

    def refuse(fd: int, offset: int, length: int) -> bool:
        calls.append((offset, length))
        return False

    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copier = KernelCopy(sfd, dfd)
        copier.fallocate = refuse
        copier.copy_run(0, 4096, 70_000)
        copier.copy_run(100_000, 80_000, 100_000 + 10)  # past the source's end: zeros
    finally:
        os.close(sfd)
        os.close(dfd)
    assert calls == [(4096, 70_000)]
    data = src.read_bytes()
    assert dst.read_bytes() == (bytes(4096) + data[:70_000] + bytes(80_000 - 74_096)
                                + data[100_000:] + bytes(10))


def edges(path: Path, cluster: int) -> None:
    """Extents around the copy loop's edges (see the module docstring), ending mid-cluster."""
    rng = random.Random(cluster)
    size = 40 * cluster + 10  # the last cluster holds 10 bytes: inside its 16-byte head
    with open(path, "wb") as f:
        f.truncate(size)

        def put(at: int, data: bytes) -> None:
            f.seek(at)
            f.write(data)

        put(cluster // 2, rng.randbytes(3 * cluster))  # starts and ends mid-cluster
        put(6 * cluster, rng.randbytes(cluster) + bytes(2 * cluster) + rng.randbytes(cluster))
        put(12 * cluster, bytes(100) + rng.randbytes(cluster - 100))  # a zero head
        put(14 * cluster, bytes(cluster - 1) + b"\1")  # data only in the last byte
        put(16 * cluster, bytes(cluster))  # written zeros: data to SEEK_DATA, not to qcow2
        put(20 * cluster + 7, rng.randbytes(5 * cluster))
        put(39 * cluster, rng.randbytes(cluster) + b"\7" * 10)  # to the end of the file


@needs_qemu_img
@pytest.mark.parametrize("cluster", [16 * KiB, 64 * KiB, 2 * MiB])
def test_convert_edges_same_bytes_every_path(tmp_path: Path, cluster: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "edges.raw"
    edges(src, cluster)
    outputs: dict[str, bytes] = {}
    for name, kernel, reserve in (("reserved", True, True), ("kernel", True, False),
                                  ("buffered", False, False)):
        for fmt in ("qcow2", "raw"):
            out = tmp_path / f"{name}.{fmt}"
            with monkeypatch.context() as patch:
                patch.setattr(convert_module, "KERNEL_COPY", kernel)
                patch.setattr(convert_io, "PREALLOCATE", reserve)
                convert(src, out, output_format=fmt, cluster_size=cluster)
            outputs[f"{name}.{fmt}"] = out.read_bytes()
            if fmt == "qcow2":
                assert_qemu_clean(out)
            qemu_compare(out, src, fmt_a=fmt)
    for fmt in ("qcow2", "raw"):
        assert outputs[f"reserved.{fmt}"] == outputs[f"kernel.{fmt}"] == outputs[f"buffered.{fmt}"]


def test_convert_disk_full_after_some_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC from a later run, its blocks reserved: one line naming the output, the old
    file kept, no temporary left."""
    src = tmp_path / "edges.raw"
    edges(src, 64 * KiB)
    real = os.copy_file_range
    calls: list[int] = []

    def full_later(src_fd: int, dst_fd: int, count: int, offset_src: int,
                   offset_dst: int) -> int:
        calls.append(count)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src_fd, dst_fd, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", full_later)
    for fmt in ("qcow2", "raw"):
        calls.clear()
        out = tmp_path / f"out.{fmt}"
        out.write_bytes(b"previous")
        assert main(["qcow2", "convert", "-O", fmt, str(src), str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err and "No space left" in err
        assert out.read_bytes() == b"previous"
        assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edges.raw", "out.qcow2", "out.raw"]
