"""Creating overlays and opening backing chains: the refusals and promises of create.py and
backing.py at their edges, each checked against qemu-img as well as our own reader."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from qcow2_helpers import MiB, needs_qemu_img, qemu_img

from imagebuild.container.qcow2.backing import BackingFileMissing
from imagebuild.container.qcow2.image import Qcow2Image

pytestmark = needs_qemu_img


def _qemu_missing_path(overlay: Path) -> str:
    """The backing file path qemu-img says it could not open."""
    result = qemu_img("check", overlay, check=False)
    found = re.search(r"Could not open backing file: Could not open '([^']*)'", result.stderr)
    assert result.returncode != 0 and found, result.stderr
    return found.group(1)


@pytest.mark.parametrize("relative", [True, False])
def test_missing_backing_names_the_path_qemu_looks_for(tmp_path: Path, relative: bool) -> None:
    """A relative backing name is looked for beside the overlay (QEMU's path_combine): the
    message names both the stored name and, when they differ, where it looked, which is
    where qemu-img looks too."""
    (tmp_path / "sub").mkdir()
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    overlay = tmp_path / "sub" / "o.qcow2"
    name = "../base.raw" if relative else str(base)
    Qcow2Image.create(overlay, backing_file=name).close()
    base.unlink()
    with pytest.raises(BackingFileMissing) as caught:
        Qcow2Image.open(overlay)
    message = str(caught.value)
    qemu_path = os.path.abspath(_qemu_missing_path(overlay))
    assert message.startswith(f"{overlay}: backing file {name!r} not found")
    looked = re.search(r" \(looked for (.*)\); the overlay", message)
    if relative:
        assert looked and os.path.abspath(looked.group(1)) == qemu_path
    else:
        assert qemu_path == name and not looked and "not found; the overlay" in message


def test_new_overlay_reads_and_copies_on_write_through_its_backing_file(tmp_path: Path) -> None:
    """The image create() returns is already open on its backing chain: reads see the base,
    and a partial write into an unallocated cluster keeps the rest of the base's cluster
    (what qemu-img reads back through the chain)."""
    base = tmp_path / "base.raw"
    data = bytes(range(256)) * (MiB // 256)
    base.write_bytes(data)
    overlay = tmp_path / "o.qcow2"
    with Qcow2Image.create(overlay, backing_file="base.raw", cluster_size=4096) as image:
        assert image.backing is not None and image.backing_path == str(base)
        assert image.pread(8192, 4000) == data[4000:12192]
        image.pwrite(b"new bytes!", 5000)
    expected = tmp_path / "expected.raw"
    expected.write_bytes(data[:5000] + b"new bytes!" + data[5010:])
    result = qemu_img("compare", "-f", "qcow2", "-F", "raw", overlay, expected, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert qemu_img("check", overlay, check=False).returncode == 0


@pytest.mark.parametrize("size,fits", [(128 << 30, True), ((128 << 30) + 1, False)])
def test_create_l1_table_limit_like_qemu(tmp_path: Path, size: int, fits: bool) -> None:
    """QEMU's 32 MiB L1 limit: 512-byte clusters map at most 128 GiB (qcow2.txt "size")."""
    from imagebuild.errors import UnsupportedImageError

    ours = tmp_path / "o.qcow2"
    if fits:  # (qemu-img create takes seconds to write its 32 MiB L1 table; info opens ours)
        Qcow2Image.create(ours, size, cluster_size=512).close()
        info = json.loads(qemu_img("info", "--output=json", ours).stdout)
        assert info["virtual-size"] == size
    else:
        theirs = qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                          tmp_path / "q.qcow2", str(size), check=False)
        assert theirs.returncode == 1 and "too large" in theirs.stderr
        with pytest.raises(UnsupportedImageError, match="32 MiB"):
            Qcow2Image.create(ours, size, cluster_size=512)
        assert not ours.exists()


@pytest.mark.parametrize("size,refcount_order", [
    (16 << 30, 6), (32 << 30, 4),
    (3968 * 64 * 32768, 6),  # a 3968-cluster L1: the metadata just needs a 2nd table cluster
])
def test_create_sizes_the_refcount_table_for_a_large_l1_up_front(
        tmp_path: Path, size: int, refcount_order: int) -> None:
    """With 512-byte clusters an L1 table of several MiB needs a refcount table of several
    clusters: create() sizes it before laying out, so QEMU's order holds (header, refcount
    table covering all of them, refcount block 0, L1 table) and qemu-img check finds nothing."""
    import struct

    path = tmp_path / "o.qcow2"
    Qcow2Image.create(path, size, cluster_size=512, refcount_order=refcount_order).close()
    l1_size, l1_offset, rt_offset, rt_clusters = struct.unpack_from(
        ">IQQI", path.read_bytes()[:72], 36)
    clusters = 1 + rt_clusters + 1 + l1_size * 8 // 512  # up to the end of the L1 table
    assert rt_clusters * 512 // 8 * (512 * 8 >> refcount_order) >= clusters
    assert rt_clusters > 1 and rt_offset == 512 and l1_offset == 512 * (1 + rt_clusters + 1)
    result = qemu_img("check", path, check=False)
    assert result.returncode == 0 and "No errors" in result.stdout, result.stdout


@pytest.mark.parametrize("size,cluster,backing,order", [
    (MiB, 65536, None, 4), (4 * MiB, 512, "b.raw", 4), (16 * MiB, 4096, "b.raw", 4),
    (MiB, 65536, None, 6), (MiB, 4096, None, 0)])
def test_create_writes_qemus_first_cluster(tmp_path: Path, size: int, cluster: int,
                                           backing: str | None, order: int) -> None:
    """Cluster 0 of a new image is qemu-img create's, byte for byte: version 3 header
    (refcount_order included), extensions, backing file name, zeros to the cluster's end."""
    (tmp_path / "b.raw").write_bytes(bytes(size))
    ours, theirs = tmp_path / "o.qcow2", tmp_path / "q.qcow2"
    Qcow2Image.create(ours, None if backing else size, cluster_size=cluster,
                      backing_file=backing, refcount_order=order).close()
    qemu_img("create", "-q", "-f", "qcow2",
             "-o", f"cluster_size={cluster},refcount_bits={1 << order}",
             *(["-b", backing, "-F", "raw"] if backing else []), theirs,
             *([] if backing else [str(size)]))
    assert ours.read_bytes()[:cluster] == theirs.read_bytes()[:cluster]


@pytest.mark.parametrize("length", [1023, 1024])
def test_create_backing_name_length_limit_like_qemu(tmp_path: Path, length: int) -> None:
    """qcow2.txt "backing_file_size": at most 1023 bytes; qemu-img create draws the same line."""
    from imagebuild.errors import UnsupportedImageError

    parts = [letter * 200 for letter in "abcd"]  # (file names stop at 255 bytes)
    name = "/".join([*parts, "e" * (length - 4 * 201)])
    assert len(name.encode()) == length
    (tmp_path / "/".join(parts)).mkdir(parents=True)
    (tmp_path / name).write_bytes(bytes(MiB))
    ours, theirs = tmp_path / "o.qcow2", tmp_path / "q.qcow2"
    result = qemu_img("create", "-q", "-f", "qcow2", "-b", name, "-F", "raw", theirs,
                      check=False)
    if length <= 1023:
        assert result.returncode == 0, result.stderr
        Qcow2Image.create(ours, backing_file=name).close()
        assert ours.read_bytes()[:65536] == theirs.read_bytes()[:65536]
    else:
        assert result.returncode == 1 and "Could not assign backing file" in result.stderr
        with pytest.raises(UnsupportedImageError, match=r"o\.qcow2: backing file name longer "
                                                        r"than 1023 bytes"):
            Qcow2Image.create(ours, backing_file=name)
        assert not ours.exists()


def test_create_file_mode_and_given_backing_format_like_qemu(tmp_path: Path) -> None:
    """A new image gets qemu-img create's mode under the same umask, and a backing format
    given by the caller is the one used to read the base (a qcow2 file read as raw shows
    its own header bytes, as qemu-img reads it)."""
    base = tmp_path / "base.qcow2"
    Qcow2Image.create(base, MiB).close()
    ours, theirs = tmp_path / "o.qcow2", tmp_path / "q.qcow2"
    old = os.umask(0o022)
    try:
        with Qcow2Image.create(ours, backing_file="base.qcow2", backing_format="raw") as image:
            head = image.pread(4, 0)
        qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "raw", theirs)
    finally:
        os.umask(old)
    assert ours.stat().st_mode == theirs.stat().st_mode
    raw = tmp_path / "q.raw"
    qemu_img("convert", "-O", "raw", theirs, raw)
    assert head == raw.read_bytes()[:4] == b"QFI\xfb"


@pytest.mark.parametrize("sync", [True, False])
def test_create_fsyncs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       sync: bool) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    Qcow2Image.create(tmp_path / "o.qcow2", MiB, sync=sync).close()
    assert bool(calls) == sync
