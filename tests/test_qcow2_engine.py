"""QCOW2 engine behaviour: sparseness, overlays, dirty bit, the file view, refcount repair."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from qcow2_helpers import (
    MiB,
    TiB,
    assert_qemu_clean,
    make_raw,
    needs_qemu_img,
    patterned,
    qemu_check,
    qemu_compare,
    qemu_img,
    qemu_raw,
)

from imagebuild.container.qcow2.check import check
from imagebuild.container.qcow2.format import INCOMPAT_DIRTY
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.container.qcow2.image import Qcow2Image, open_image
from imagebuild.disk.device import BlockDevice, RawFile, Storage

pytestmark = needs_qemu_img


def _header(path: Path) -> Qcow2Header:
    data = path.read_bytes()[:65536]
    return Qcow2Header.unpack(data, str(path), os.path.getsize(path))


def test_qcow2_create_2tib_is_fast_and_small(tmp_path: Path) -> None:
    path = tmp_path / "big.qcow2"
    start = time.perf_counter()
    Qcow2Image.create(path, 2 * TiB).close()
    assert time.perf_counter() - start < 0.5
    # header, refcount table, refcount block, one 32 KiB L1 table cluster
    assert os.path.getsize(path) == 4 * 65536
    found = qemu_img("info", "--output=json", path).stdout
    assert '"virtual-size": 2199023255552' in found
    assert_qemu_clean(path)


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_qcow2_create_layout_is_qemus(tmp_path: Path, cluster_size: int) -> None:
    path = tmp_path / "x.qcow2"
    Qcow2Image.create(path, 100 * MiB, cluster_size=cluster_size).close()
    header = _header(path)
    assert (header.version, header.refcount_order, header.cluster_size) == (3, 4, cluster_size)
    # qemu-img create puts the refcount table in cluster 1 and the L1 table after block 0
    assert header.refcount_table_offset == cluster_size
    assert header.l1_table_offset == 3 * cluster_size
    assert_qemu_clean(path)


def test_qcow2_zero_writes_allocate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "z.qcow2"
    with Qcow2Image.create(path, 64 * MiB) as image:
        image.pwrite(bytes(10 * MiB), 3 * MiB + 17)
    assert os.path.getsize(path) == 4 * 65536
    assert_qemu_clean(path)


def test_qcow2_partly_zero_write_allocates_only_nonzero_clusters(tmp_path: Path) -> None:
    path = tmp_path / "p.qcow2"
    data = bytearray(8 * 65536)
    data[100:200] = b"a" * 100  # cluster 0
    data[5 * 65536 + 7] = 1  # cluster 5
    with Qcow2Image.create(path, 64 * MiB) as image:
        image.pwrite(data, 0)
        assert image.pread(len(data), 0) == bytes(data)
    # metadata (4 clusters) + one L2 table + two data clusters
    assert os.path.getsize(path) == 7 * 65536
    extents = [e for e in qemu_img_map(path) if e["data"]]
    assert [(e["start"], e["length"]) for e in extents] == [(0, 65536), (5 * 65536, 65536)]


def qemu_img_map(path: Path) -> list[dict[str, object]]:
    import json

    found: list[dict[str, object]] = json.loads(qemu_img("map", "--output=json", path).stdout)
    return found


def test_qcow2_sequential_write_is_one_contiguous_run(tmp_path: Path) -> None:
    path = tmp_path / "s.qcow2"
    with Qcow2Image.create(path, 64 * MiB) as image:
        for i in range(8):
            image.data.write(patterned(MiB, i + 1))
    extents = [e for e in qemu_img_map(path) if e["data"]]
    assert len(extents) == 1 and extents[0]["length"] == 8 * MiB


def qemu_dirty(path: Path) -> bool:
    """The dirty bit as qemu-img info reports it (not our header parser)."""
    import json

    info = json.loads(qemu_img("info", "-U", "--output=json", path).stdout)
    return bool(info["dirty-flag"])


def test_qcow2_dirty_bit_while_open_clean_after_close(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    image = Qcow2Image.create(path, MiB)
    image.pwrite(b"x", 0)
    assert _header(path).incompatible_features & INCOMPAT_DIRTY
    image.flush()
    assert qemu_dirty(path)
    rc, _, text = qemu_check(path)  # dirty, but every refcount is already on disk
    assert rc == 0, text
    image.close()
    assert not _header(path).incompatible_features & INCOMPAT_DIRTY
    assert not qemu_dirty(path)
    with Qcow2Image.open(path, writable=True):
        assert _header(path).incompatible_features & INCOMPAT_DIRTY
        assert qemu_dirty(path)
    with Qcow2Image.open(path):  # read-only opens leave the header alone
        assert not _header(path).incompatible_features & INCOMPAT_DIRTY
        assert not qemu_dirty(path)
    assert_qemu_clean(path)


def test_qcow2_dirty_image_refcounts_rebuilt_on_writable_open(tmp_path: Path) -> None:
    path = tmp_path / "r.qcow2"
    with Qcow2Image.create(path, 8 * MiB, cluster_size=4096) as image:
        image.pwrite(patterned(MiB, 1), 0)
        image.refcounts.adjust(image.refcounts.end - 3, 3, -1)  # lose three refcounts
        image.refcounts.allocate(2)  # and leak two clusters
    header = bytearray(path.read_bytes()[:4096])
    header[72:80] = INCOMPAT_DIRTY.to_bytes(8, "big")
    with open(path, "r+b") as f:
        f.write(header)
    rc, report, text = qemu_check(path)
    # three refcounts too low, and those clusters' COPIED flags now disagree with them
    assert rc == 2 and report["corruptions"] == 6 and report["leaks"] == 2, text
    ours = check(path)
    assert (ours.exit_code, ours.corruptions, ours.leaks) == (2, 6, 2)
    with Qcow2Image.open(path, writable=True) as image:
        image.pwrite(b"more", 3 * MiB)
    assert_qemu_clean(path)
    assert check(path).clean


def test_qcow2_repair_leaks_like_qemu(tmp_path: Path) -> None:
    path = tmp_path / "l.qcow2"
    with Qcow2Image.create(path, 8 * MiB) as image:
        image.pwrite(patterned(300_000, 2), 1000)
        image.refcounts.allocate(2)
    rc, report, _ = qemu_check(path)
    assert rc == 3 and report["leaks"] == 2
    result = check(path)
    assert (result.exit_code, result.leaks) == (3, 2)
    assert "Leaked cluster" in result.to_human()
    fixed = check(path, repair="leaks")
    assert fixed.leaks_fixed == 2 and fixed.clean
    assert_qemu_clean(path)


def test_qcow2_overlay_skip_unchanged_stays_tiny(tmp_path: Path) -> None:
    size = 64 * MiB
    base = tmp_path / "base.qcow2"
    boot = patterned(16 * MiB, 4)
    with Qcow2Image.create(base, size) as image:
        image.pwrite(boot, MiB)
    overlay = tmp_path / "over.qcow2"
    with Qcow2Image.create(overlay, backing_file="base.qcow2") as image:
        image.skip_unchanged = True
        changed = bytearray(boot)
        changed[5 * MiB + 3 : 5 * MiB + 20] = b"bootfile=9pc64\n\0\0"
        image.data.seek(MiB)
        image.data.write(changed)
        image.pwrite(bytes(MiB), 40 * MiB)  # zeros over unallocated-and-zero backing
    # 4 metadata clusters + 1 L2 table + 1 data cluster
    assert os.path.getsize(overlay) == 6 * 65536
    expected = bytearray(size)
    expected[MiB : MiB + len(changed)] = changed
    assert qemu_raw(overlay, tmp_path) == bytes(expected)
    assert_qemu_clean(overlay)


def test_qcow2_overlay_zeros_over_backing_data_become_zero_clusters(tmp_path: Path) -> None:
    make_raw(tmp_path / "b.raw", 4 * MiB, [(0, patterned(4 * MiB, 9))])
    overlay = tmp_path / "o.qcow2"
    with Qcow2Image.create(overlay, backing_file="b.raw", backing_format="raw") as image:
        image.pwrite(bytes(2 * 65536), 65536)
        assert image.pread(2 * 65536, 65536) == bytes(2 * 65536)
    entries = qemu_img_map(overlay)
    assert any(e["zero"] and e["present"] and e["depth"] == 0 for e in entries)
    assert os.path.getsize(overlay) == 5 * 65536  # only an L2 table was added
    assert qemu_raw(overlay, tmp_path)[65536 : 3 * 65536] == bytes(2 * 65536)


def test_qcow2_data_view_is_a_file_and_storage(tmp_path: Path) -> None:
    path = tmp_path / "v.qcow2"
    with Qcow2Image.create(path, 3 * MiB) as image:
        view = image.data
        assert isinstance(view, io.RawIOBase)
        storage: Storage = view
        assert storage.size == 3 * MiB
        assert view.seek(0, io.SEEK_END) == 3 * MiB
        view.seek(100)
        assert view.write(b"hello") == 5
        assert view.tell() == 105
        view.seek(-5, io.SEEK_CUR)
        assert view.read(5) == b"hello"
        assert view.pread(5, 100) == b"hello"
        view.pwrite(b"world", 3 * MiB - 5)
        view.seek(3 * MiB - 5)
        assert view.read(100) == b"world"  # reads stop at the end of the disk
        assert view.read(10) == b""
        disk = BlockDevice(view)
        assert disk.read_sectors(0)[100:105] == b"hello"
        buffered = io.BufferedReader(view)
        buffered.seek(100)
        assert buffered.read(5) == b"hello"
    qemu_data = qemu_raw(path, tmp_path)
    assert qemu_data[100:105] == b"hello" and qemu_data[-5:] == b"world"


def test_qcow2_open_image_sniffs_format(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "r.img", MiB, [(10, b"raw")])
    qcow = tmp_path / "q.qcow2"
    Qcow2Image.create(qcow, MiB).close()
    with open_image(raw) as a, open_image(qcow, writable=True) as b:
        assert isinstance(a, RawFile) and isinstance(b, Qcow2Image)
        assert a.pread(3, 10) == b"raw"
        b.pwrite(b"q", 0)
        assert b.size == a.size == MiB


def test_qcow2_reopen_and_append_keeps_refcounts_exact(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    shadow = make_raw(tmp_path / "a.raw", 32 * MiB, [])
    for round_ in range(4):
        opener = Qcow2Image.create if round_ == 0 else Qcow2Image.open
        kwargs = {"cluster_size": 512} if round_ == 0 else {"writable": True}
        image = opener(path, 32 * MiB, **kwargs) if round_ == 0 else opener(path, **kwargs)
        with image, open(shadow, "r+b") as f:
            for i in range(6):
                offset = (round_ * 7 + i * 5) * 1_000_003 % (31 * MiB)
                data = patterned(200_000 + i * 1000, round_ + i)
                image.pwrite(data, offset)
                f.seek(offset)
                f.write(data)
    assert_qemu_clean(path)
    qemu_compare(path, shadow)


def test_qcow2_refcount_table_grows(tmp_path: Path) -> None:
    # 512 B clusters: one refcount block covers 256 clusters, a one-cluster table 64
    # blocks (8 MiB of file); writing 12 MiB forces the table to move.
    path = tmp_path / "g.qcow2"
    with Qcow2Image.create(path, 16 * MiB, cluster_size=512) as image:
        first = image.header.refcount_table_offset
        image.pwrite(patterned(12 * MiB, 3), 0)
        image.flush()
        assert image.header.refcount_table_offset != first
        assert image.header.refcount_table_clusters > 1
    assert_qemu_clean(path)
    assert qemu_raw(path, tmp_path)[: 12 * MiB] == patterned(12 * MiB, 3)


def test_qcow2_small_cache_still_consistent(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    shadow = make_raw(tmp_path / "c.raw", 64 * MiB, [])
    with Qcow2Image.create(path, 64 * MiB, cluster_size=4096) as image, \
            open(shadow, "r+b") as f:
        image.cache_limit = 3  # forces write-back and eviction all the time
        for i in range(40):
            offset = (i * 7_654_321) % (60 * MiB)
            data = patterned(50_000, i)
            image.pwrite(data, offset)
            f.seek(offset)
            f.write(data)
    assert_qemu_clean(path)
    qemu_compare(path, shadow)


@pytest.mark.parametrize("refcount_bits", ["1", "8", "64"])
def test_qcow2_write_into_other_refcount_widths(tmp_path: Path, refcount_bits: str) -> None:
    path = tmp_path / "w.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"refcount_bits={refcount_bits}", path, "8M")
    with Qcow2Image.open(path, writable=True) as image:
        image.pwrite(patterned(3 * MiB, 1), 65536 + 5)
    assert_qemu_clean(path)
    assert qemu_raw(path, tmp_path)[65541 : 65541 + 3 * MiB] == patterned(3 * MiB, 1)


def test_qcow2_layouts_match_the_spec_offsets() -> None:
    """The declared records put each field at the byte qcow2.txt gives for it."""
    from imagebuild.container.qcow2.format import (
        BITMAP_DIRECTORY_ENTRY,
        BITMAPS_EXTENSION,
        HEADER_V3,
        SNAPSHOT_ENTRY,
        SNAPSHOT_EXTRA,
    )

    spec = {HEADER_V3: {"version": 4, "backing_file_offset": 8, "cluster_bits": 20,
                        "size": 24, "l1_table_offset": 40, "refcount_table_offset": 48,
                        "refcount_table_clusters": 56, "snapshots_offset": 64,
                        "incompatible_features": 72, "autoclear_features": 88,
                        "refcount_order": 96, "header_length": 100},
            SNAPSHOT_ENTRY: {"l1_size": 8, "id_str_size": 12, "date_sec": 16,
                             "vm_clock_nsec": 24, "extra_data_size": 36},
            SNAPSHOT_EXTRA: {"disk_size": 8, "icount": 16},
            BITMAPS_EXTENSION: {"bitmap_directory_size": 8, "bitmap_directory_offset": 16},
            BITMAP_DIRECTORY_ENTRY: {"bitmap_table_size": 8, "flags": 12, "type": 16,
                                     "granularity_bits": 17, "name_size": 18,
                                     "extra_data_size": 20}}
    for layout, offsets in spec.items():
        assert {n: layout.offset(n) for n in offsets} == offsets, layout.name
    assert (HEADER_V3.size, SNAPSHOT_ENTRY.size, BITMAP_DIRECTORY_ENTRY.size) == (104, 40, 24)
