"""The qcow2 header rules at their edges, each checked against qemu-img as well as our reader.

Every case is one field of docs/interop/qcow2.txt ("Header", "Header extensions", "Feature
name table") set just inside and just outside its limit.  Where qemu-img is laxer than we
are (a header_length that is not a multiple of 8, tables past the end of the file), the case
says so: those are refusals the qcow2 docs ask for and imagebuild makes on purpose.  The
images start as qemu-img writes them, so the bytes around the patched field are QEMU's.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from qcow2_helpers import MiB, needs_qemu_img, qemu_img

from imagebuild.container.qcow2.format import EXT_BACKING_FORMAT, EXT_FEATURE_TABLE
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.errors import ImageBuildError

pytestmark = needs_qemu_img

# Field offsets (qcow2.txt "Header").
BACKING_FILE_OFFSET, BACKING_FILE_SIZE, CLUSTER_BITS, SIZE = 8, 16, 20, 24
L1_SIZE, L1_TABLE_OFFSET, REFCOUNT_TABLE_OFFSET, REFCOUNT_TABLE_CLUSTERS = 36, 40, 48, 56
NB_SNAPSHOTS, SNAPSHOTS_OFFSET, INCOMPATIBLE_FEATURES = 60, 64, 72
REFCOUNT_ORDER, HEADER_LENGTH = 96, 100


def qemu_verdict(path: Path) -> str | None:
    """None when `qemu-img info` opens the image, else its message."""
    result = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                            capture_output=True, text=True, errors="replace", check=False)
    return None if result.returncode == 0 else result.stderr.strip()


def our_verdict(path: Path) -> str | None:
    """None when we open the image (header only, like qemu-img info), else our message."""
    try:
        Qcow2Image.open(path, backing=False).close()
    except ImageBuildError as err:
        message = str(err)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return message
    return None


def qemu_image(path: Path, size: int = 4 * MiB, *options: str) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *(["-o", ",".join(options)] if options else []),
             path, str(size))
    return path


def patch(path: Path, *edits: tuple[object, ...]) -> Path:
    """Each edit is (offset, struct format, values...), packed into the file in place."""
    data = bytearray(path.read_bytes())
    for offset, fmt, *values in edits:
        assert isinstance(offset, int) and isinstance(fmt, str)
        struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(data)
    return path


# -- pack: the header QEMU writes, byte for byte --------------------------------------------
def _first_cluster(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data[: 1 << struct.unpack_from(">I", data, CLUSTER_BITS)[0]], len(data)


@pytest.mark.parametrize("options", [("cluster_size=65536",), ("cluster_size=4096",),
                                     ("compat=0.10", "cluster_size=4096"),
                                     ("compression_type=zstd",)])
@pytest.mark.parametrize("with_backing", [False, True])
def test_pack_writes_qemus_header_bytes(tmp_path: Path, options: tuple[str, ...],
                                        with_backing: bool) -> None:
    """Parsing a header qemu-img wrote and packing it again gives QEMU's bytes: fixed part
    (version 2 or 3, header_length, compression_type padding), extensions padded with zeros
    to 8 bytes, end marker, backing file name; and pack() sets the offsets it wrote."""
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    path = tmp_path / "q.qcow2"
    backing = ["-b", "base.raw", "-F", "raw"] if with_backing else []
    qemu_img("create", "-q", "-f", "qcow2", "-o", ",".join(options), *backing, path,
             *([] if with_backing else ["1M"]))
    first, size = _first_cluster(path)
    header = Qcow2Header.unpack(first, str(path), size)
    expected = {k: getattr(header, k) for k in ("backing_file_offset", "backing_file_size",
                                                "header_length")}
    header.backing_file_offset = header.backing_file_size = header.header_length = 7
    packed = header.pack()
    assert packed == first[: len(packed)] and not first[len(packed) :].strip(b"\0")
    assert {k: getattr(header, k) for k in expected} == expected
    assert expected["header_length"] == (72 if "compat=0.10" in options else 112)
    assert header.compression_type == ("compression_type=zstd" in options)


def test_pack_keeps_unknown_additional_header_fields(tmp_path: Path) -> None:
    """qcow2.txt "Additional fields", rule 2: a field past compression_type that we do not
    know is preserved when the header is written again (qemu-img ignores it too)."""
    path = patch(qemu_image(tmp_path / "q.qcow2", MiB, "cluster_size=4096"),
                 (HEADER_LENGTH, ">I", 120), (112, ">B", ord("X")), (120, ">Q", 0))
    assert qemu_verdict(path) is None and our_verdict(path) is None
    first, size = _first_cluster(path)
    header = Qcow2Header.unpack(first, str(path), size)
    assert header.extra_fields == bytes(7) + b"X"  # only the zero padding is dropped
    header.header_length = 0
    assert header.pack() == first[:128] and header.header_length == 120


def test_pack_without_backing_clears_its_offset(tmp_path: Path) -> None:
    """An overlay's header with the backing file and its format dropped packs into the
    header qemu-img writes for the same image without one (backing_file_offset/size 0)."""
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    overlay, plain = tmp_path / "o.qcow2", tmp_path / "p.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay)
    qemu_img("create", "-q", "-f", "qcow2", plain, "1M")
    first, size = _first_cluster(overlay)
    header = Qcow2Header.unpack(first, str(overlay), size)
    assert header.backing_file == "base.raw" and header.backing_format == "raw"
    header.backing_file = None
    header.extensions = [e for e in header.extensions if e.type != EXT_BACKING_FORMAT]
    packed = header.pack()
    assert (header.backing_file_offset, header.backing_file_size) == (0, 0)
    expected, _ = _first_cluster(plain)
    assert packed == expected[: len(packed)] and not expected[len(packed) :].strip(b"\0")


# -- the feature name table ----------------------------------------------------------------
QEMU_FEATURE_NAMES = {  # what qemu-img create writes into 64 KiB-cluster images
    (0, 0): "dirty bit", (0, 1): "corrupt bit", (0, 2): "external data file",
    (0, 3): "compression type", (0, 4): "extended L2 entries", (1, 0): "lazy refcounts",
    (2, 0): "bitmaps", (2, 1): "raw external data",
}


def _feature_table(path: Path) -> tuple[int, int]:
    """(offset of the feature name table's data, its length) in a qemu-img image."""
    data = path.read_bytes()
    at = data.index(struct.pack(">I", EXT_FEATURE_TABLE))
    return at + 8, struct.unpack_from(">I", data, at + 4)[0]


def test_feature_names_are_every_entry_of_qemus_table(tmp_path: Path) -> None:
    path = qemu_image(tmp_path / "q.qcow2")
    first, size = _first_cluster(path)
    assert Qcow2Header.unpack(first, str(path), size).feature_names() == QEMU_FEATURE_NAMES


@pytest.mark.parametrize("entry,name,table_length", [
    (7, b"frobnication", None),  # the last entry of the table
    (2, b"ends in X", None),  # only the zero padding is stripped
    (3, b"n" * 46, None),  # a full-length name has no terminating zero
    (1, b"in a cut table", 8 * 48 - 1),  # a partial last entry is no entry
])
def test_unknown_incompatible_bit_is_named_like_qemu(tmp_path: Path, entry: int, name: bytes,
                                                     table_length: int | None) -> None:
    """qcow2.txt "Feature name table": an image names its own features, and an unknown
    incompatible bit is refused with that name; qemu-img names it the same way."""
    path = qemu_image(tmp_path / "q.qcow2")
    table, length = _feature_table(path)
    assert length == 8 * 48
    patch(path, (table + 48 * entry, ">BB46s", 0, 9, name),
          (INCOMPATIBLE_FEATURES, ">Q", 1 << 9),
          *([(table - 4, ">I", table_length)] if table_length is not None else []))
    ours, qemu = our_verdict(path), qemu_verdict(path)
    assert ours is not None and qemu is not None
    assert ours.endswith(f"unknown features: {name.decode()}")
    assert qemu.endswith(f"Unsupported qcow2 feature(s): {name.decode()}")


def test_feature_name_not_utf8_is_still_one_message(tmp_path: Path) -> None:
    path = qemu_image(tmp_path / "q.qcow2")
    table, _ = _feature_table(path)
    patch(path, (table, ">BB46s", 0, 9, b"caf\xe9"),
          (INCOMPATIBLE_FEATURES, ">Q", 1 << 9))
    assert qemu_verdict(path) is not None
    ours = our_verdict(path)
    assert ours is not None and ours.endswith("unknown features: caf\ufffd")


# -- every header field at its limit -------------------------------------------------------
def _grow(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _move_refcount_table(path: Path, clusters: int) -> None:
    """Copy the refcount table (4 KiB clusters) to the end of the file, `clusters` long."""
    data = bytearray(path.read_bytes())
    table = bytes(data[0x1000:0x2000])
    end = -(-len(data) // 4096) * 4096
    data[len(data):] = bytes(end - len(data)) + table + bytes((clusters - 1) * 4096)
    struct.pack_into(">QI", data, REFCOUNT_TABLE_OFFSET, end, clusters)
    path.write_bytes(data)


def _backing_name(path: Path, offset: int, length: int) -> None:
    patch(path, (BACKING_FILE_OFFSET, ">QI", offset, length), (offset, f"{length}s", b"b" * length))


# (qemu-img create options, edits, refused by us, refused by qemu-img info).  4 MiB images;
# with 4 KiB clusters qemu-img puts the refcount table at 0x1000 and the L1 table (2
# entries) at 0x3000, and the file ends at 0x3010.
CASES: dict[str, tuple[tuple[str, ...], object, bool, bool]] = {
    # cluster_bits: at least 9; qemu's limit is 21 (2 MiB)
    "cluster_bits 9": (("cluster_size=512",), [], False, False),
    "cluster_bits 8": (("cluster_size=512",), [(CLUSTER_BITS, ">I", 8)], True, True),
    "cluster_bits 21": (("cluster_size=2M",), [], False, False),
    "cluster_bits 22": (("cluster_size=2M",), [(CLUSTER_BITS, ">I", 22)], True, True),
    # header_length (v3): at least 104, a multiple of 8 (qemu-img does not check that),
    # inside the first cluster; a header filling the whole cluster has no extensions
    "header_length 104": ((), [(HEADER_LENGTH, ">I", 104)], False, False),
    "header_length 100": ((), [(HEADER_LENGTH, ">I", 100)], True, True),
    "header_length 108": ((), [(HEADER_LENGTH, ">I", 108)], True, False),
    "header_length = cluster": ((), [(HEADER_LENGTH, ">I", 4096)], False, False),
    "header_length > cluster": ((), [(HEADER_LENGTH, ">I", 4104)], True, True),
    # compression_type: present when header_length > 104; non-zero iff incompatible bit 3
    "zstd": ((), [(104, ">B", 1), (INCOMPATIBLE_FEATURES, ">Q", 8)], False, False),
    "zstd without bit 3": ((), [(104, ">B", 1)], True, True),
    "bit 3 with zlib": ((), [(INCOMPATIBLE_FEATURES, ">Q", 8)], True, True),
    "compression_type 2": ((), [(104, ">B", 2), (INCOMPATIBLE_FEATURES, ">Q", 8)], True, True),
    "byte 104 past header_length 104": (  # an (unknown) extension there, not the field
        (), [(HEADER_LENGTH, ">I", 104), (104, ">B", 1)], False, False),
    # refcount_order: at most 6
    "refcount_order 6": (("refcount_bits=64",), [], False, False),
    "refcount_order 7": (("refcount_bits=64",), [(REFCOUNT_ORDER, ">I", 7)], True, True),
    # l1_size: covers the virtual size; at most 32 MiB of entries (qemu's limit)
    "l1_size 1 for 4 MiB": ((), [(L1_SIZE, ">I", 1)], True, True),
    "l1_size 32 MiB": ((), [(L1_SIZE, ">I", 4 << 20), ("grow", 0x3000 + (32 << 20))],
                       False, False),
    "l1_size 32 MiB + 8": ((), [(L1_SIZE, ">I", (4 << 20) + 1),
                                ("grow", 0x3000 + (32 << 20) + 8)], True, True),
    # refcount_table_clusters: not 0; at most 8 MiB (qemu's limit)
    "refcount_table_clusters 0": ((), [(REFCOUNT_TABLE_CLUSTERS, ">I", 0)], True, True),
    "refcount table 8 MiB": ((), [("reftable", 2048)], False, False),
    "refcount table 8 MiB + 1 cluster": ((), [("reftable", 2049)], True, True),
    # tables lie inside the file (qemu-img reads zeros past its end; we refuse), and not
    # over the header (qemu-img check: cluster 0 referenced twice)
    "L1 table ends at end of file": ((), [], False, False),
    "L1 table 1 byte past end of file": ((), [("grow", 0x300F)], True, False),
    "refcount table 1 cluster past end of file": (
        (), [(REFCOUNT_TABLE_OFFSET, ">Q", 0x3000)], True, False),
    "snapshot table past end of file": ((), [(NB_SNAPSHOTS, ">IQ", 1, 0x3000)], True, False),
    "L1 table at offset 0": ((), [(L1_TABLE_OFFSET, ">Q", 0)], True, False),
    "snapshot table at offset 0": ((), [(NB_SNAPSHOTS, ">IQ", 1, 0)], True, False),
    # backing_file_size: at most 1023 bytes, and the name lies inside the first cluster
    "backing name 1023 bytes": ((), [("backing", 1024, 1023)], False, False),
    "backing name 1024 bytes": ((), [("backing", 1024, 1024)], True, True),
    "backing name ends at cluster end": ((), [("backing", 4086, 10)], False, False),
    "backing name 1 byte past cluster": ((), [("backing", 4086, 11)], True, True),
    # header extensions: padded to 8 bytes, inside the area before the backing name; the
    # area may end without an end marker
    "extension ending at the backing name": (
        (), [(112, ">IIQ", 0x12345678, 8, 0), ("backing", 128, 4)], False, False),
    "extension 1 byte into the backing name": (
        (), [(112, ">IIQ", 0x12345678, 9, 0), ("backing", 128, 4)], True, True),
    "v2 extension ending at the backing name": (
        ("compat=0.10",), [(72, ">IIQ", 0x12345678, 8, 0), ("backing", 88, 4)], False, False),
    "v2 extension 1 byte into the backing name": (
        ("compat=0.10",), [(72, ">IIQ", 0x12345678, 9, 0), ("backing", 88, 4)], True, True),
    "v2 backing name right after the header": (("compat=0.10",), [("backing", 72, 8)],
                                               False, False),
    "extension header across the area's end": (
        (), [(112, ">IIQ", 0x12345678, 0, 0), ("backing", 124, 4)], True, True),
    # incompatible_features: every unknown bit refused, bit 63 included
    "incompatible bit 63": ((), [(INCOMPATIBLE_FEATURES, ">Q", 1 << 63)], True, True),
}


@pytest.mark.parametrize("case", CASES)
def test_header_field_limits_like_qemu(tmp_path: Path, case: str) -> None:
    options, edits, we_refuse, qemu_refuses = CASES[case]
    cluster = [o for o in options if o.startswith("cluster_size=")]
    path = qemu_image(tmp_path / "q.qcow2", 4 * MiB, *(cluster or ["cluster_size=4096"]),
                      *[o for o in options if not o.startswith("cluster_size=")])
    assert isinstance(edits, list)
    for edit in edits:
        if edit[0] == "grow":
            _grow(path, edit[1])
        elif edit[0] == "reftable":
            _move_refcount_table(path, edit[1])
        elif edit[0] == "backing":
            _backing_name(path, edit[1], edit[2])
        else:
            patch(path, edit)
    ours, qemu = our_verdict(path), qemu_verdict(path)
    assert (ours is not None, qemu is not None) == (we_refuse, qemu_refuses), (ours, qemu)
    if ours is None and qemu is None:  # and both read the same backing file name
        info = json.loads(qemu_img("info", "--output=json", path).stdout)
        with Qcow2Image.open(path, backing=False) as image:
            assert image.header.backing_file == info.get("backing-filename")
    if case == "snapshot table past end of file":  # the header names it, before any parse
        assert ours is not None and "snapshots_offset 0x3000 (+40 bytes) lies outside" in ours
    if case.startswith("L1 table at offset 0"):
        assert qemu_img("check", path, check=False).returncode == 2  # corruptions


@pytest.mark.parametrize("edit,ours,qemu", [
    ((4, ">I", 4), "version 4 (only 2 and 3 are known)", "Unsupported qcow2 version 4"),
    ("cut 100", "truncated header: file has 100 bytes, a version 3 header needs 104",
     "header too short"),
    ("cut 50", "truncated header: file has 50 bytes, a qcow2 header needs 72",
     "header too short"),
    ((BACKING_FILE_OFFSET, ">QI", 1024, 2), "backing file name b'\\xff\\xfe' is not valid UTF-8",
     None),
])
def test_refusals_name_the_file_and_the_problem(tmp_path: Path, edit: object, ours: str,
                                                qemu: str | None) -> None:
    """One line naming the file, the field and its value; qemu-img refuses the same headers
    (a backing name that is not UTF-8 it passes on as bytes: we have to show it as text)."""
    path = qemu_image(tmp_path / "q.qcow2", MiB, "cluster_size=4096")
    if isinstance(edit, str):
        path.write_bytes(path.read_bytes()[: int(edit.split()[1])])
    else:
        patch(path, edit, (1024, "2s", b"\xff\xfe"))
    assert our_verdict(path) == f"{path}: {ours}"
    theirs = qemu_verdict(path)
    assert (theirs is None) if qemu is None else (theirs is not None and qemu in theirs)
