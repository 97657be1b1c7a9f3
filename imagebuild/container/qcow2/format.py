"""QCOW2 on-disk structures declared once: record layouts, constants, table coding.

Every fixed record of the format is one `Layout` below, with the field names of
QEMU's docs/interop/qcow2.txt: the header (`HEADER_V2`, `HEADER_V3`), the
header extension header, the feature name table entry, the snapshot table
entry and its extra data, the bitmaps extension and the bitmap directory
entry.  `header.py`, `metadata.py`, the engine and the checker read and write
those records only through these declarations.

References:
- QEMU, docs/interop/qcow2.txt ("Header", "Header extensions", "Feature name
  table", "Host cluster management", "Cluster mapping", "Snapshots").
- QEMU, block/qcow2.h (QCOW_OFLAG_COPIED/COMPRESSED/ZERO, L1E_OFFSET_MASK,
  L2E_OFFSET_MASK, REFT_OFFSET_MASK, the 32 MiB L1 and 8 MiB refcount table limits).
- 9front, sys/src/cmd/disk/qcowfs.c (the Header struct, read with GET4/GET8).
"""

from __future__ import annotations

import sys
from array import array

from imagebuild.errors import UnsupportedImageError
from imagebuild.util.layout import Layout

MAGIC = b"QFI\xfb"

# qcow2.txt "Header": version 2 ends after snapshots_offset; version 3 adds the
# feature bitmaps, refcount_order and header_length, and compression_type at
# byte 104 when header_length > 104.
_HEADER_V2_FIELDS = [
    ("magic", "4s"), ("version", "I"), ("backing_file_offset", "Q"),
    ("backing_file_size", "I"), ("cluster_bits", "I"), ("size", "Q"),
    ("crypt_method", "I"), ("l1_size", "I"), ("l1_table_offset", "Q"),
    ("refcount_table_offset", "Q"), ("refcount_table_clusters", "I"),
    ("nb_snapshots", "I"), ("snapshots_offset", "Q"),
]
HEADER_V2 = Layout("qcow2 version 2 header", ">", _HEADER_V2_FIELDS)
HEADER_V3 = Layout("qcow2 version 3 header", ">", [
    *_HEADER_V2_FIELDS, ("incompatible_features", "Q"), ("compatible_features", "Q"),
    ("autoclear_features", "Q"), ("refcount_order", "I"), ("header_length", "I"),
])
V2_HEADER_LENGTH = HEADER_V2.size  # 72
V3_HEADER_LENGTH = HEADER_V3.size  # 104
COMPRESSION_TYPE_OFFSET = V3_HEADER_LENGTH  # one byte, present when header_length > 104

MIN_CLUSTER_BITS = 9  # 512 B
MAX_CLUSTER_BITS = 21  # 2 MiB, QEMU's implementation limit
DEFAULT_CLUSTER_SIZE = 65536
DEFAULT_REFCOUNT_ORDER = 4  # 16-bit refcounts
MAX_REFCOUNT_ORDER = 6  # 64-bit refcounts
MAX_BACKING_FILE_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
MAX_REFCOUNT_TABLE_BYTES = 8 << 20  # QEMU's QCOW_MAX_REFTABLE_SIZE
SECTOR = 512  # compressed cluster sizes are counted in 512-byte sectors

CRYPT_NONE = 0

# incompatible_features bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)
# compatible_features / autoclear_features bits
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

# Header extension types (qcow2.txt "Header extensions").
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
# qcow2.txt "Header extensions" and "Feature name table".
EXTENSION_HEADER = Layout("header extension", ">", [("type", "I"), ("length", "I")])
FEATURE_TABLE_MIN_CLUSTER = 4096  # QEMU writes the table only into larger clusters
FEATURE_NAME_ENTRY = Layout("feature name table entry", ">", [
    ("type", "B"), ("bit_number", "B"), ("feature_name", "46s"),
])
FEATURE_TYPE_INCOMPATIBLE, FEATURE_TYPE_COMPATIBLE, FEATURE_TYPE_AUTOCLEAR = 0, 1, 2

# The names QEMU writes in its feature name table.
KNOWN_FEATURE_NAMES: tuple[tuple[int, int, str], ...] = (
    (FEATURE_TYPE_INCOMPATIBLE, 0, "dirty bit"),
    (FEATURE_TYPE_INCOMPATIBLE, 1, "corrupt bit"),
    (FEATURE_TYPE_INCOMPATIBLE, 2, "external data file"),
    (FEATURE_TYPE_INCOMPATIBLE, 3, "compression type"),
    (FEATURE_TYPE_INCOMPATIBLE, 4, "extended L2 entries"),
    (FEATURE_TYPE_COMPATIBLE, 0, "lazy refcounts"),
    (FEATURE_TYPE_AUTOCLEAR, 0, "bitmaps"),
    (FEATURE_TYPE_AUTOCLEAR, 1, "raw external data"),
)

# Table entries (qcow2.txt "Cluster mapping"; block/qcow2.h).
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
TABLE_ENTRY_SIZE = 8

# qcow2.txt "Snapshots": the fixed part of a snapshot table entry, then
# extra_data_size bytes of extra data (the fields below, as far as present),
# the unique ID, the name, and padding to a multiple of 8.
SNAPSHOT_ENTRY = Layout("snapshot table entry", ">", [
    ("l1_table_offset", "Q"), ("l1_size", "I"), ("id_str_size", "H"), ("name_size", "H"),
    ("date_sec", "I"), ("date_nsec", "I"), ("vm_clock_nsec", "Q"), ("vm_state_size", "I"),
    ("extra_data_size", "I"),
])
SNAPSHOT_EXTRA = Layout("snapshot extra data", ">", [
    ("vm_state_size_large", "Q"), ("disk_size", "Q"), ("icount", "Q"),
])
SNAPSHOT_EXTRA_MIN = 16  # QEMU writes at least vm_state_size_large and disk_size

# qcow2.txt "Bitmaps extension" and "Bitmap directory".
BITMAPS_EXTENSION = Layout("bitmaps extension", ">", [
    ("nb_bitmaps", "I"), ("reserved32", "I"), ("bitmap_directory_size", "Q"),
    ("bitmap_directory_offset", "Q"),
])
BITMAP_DIRECTORY_ENTRY = Layout("bitmap directory entry", ">", [
    ("bitmap_table_offset", "Q"), ("bitmap_table_size", "I"), ("flags", "I"),
    ("type", "B"), ("granularity_bits", "B"), ("name_size", "H"), ("extra_data_size", "I"),
])
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00


# -- arithmetic ------------------------------------------------------------------------------
def size_to_clusters(size: int, cluster_bits: int) -> int:
    """Clusters needed to hold `size` bytes (rounded up)."""
    return (size + (1 << cluster_bits) - 1) >> cluster_bits


def l2_entries(cluster_bits: int) -> int:
    """Entries of an L2 table (or a refcount table cluster): one cluster of 8-byte entries."""
    return (1 << cluster_bits) // TABLE_ENTRY_SIZE


def l1_size_for(virtual_size: int, cluster_bits: int) -> int:
    """L1 entries needed to map `virtual_size` bytes."""
    per_l2 = l2_entries(cluster_bits) << cluster_bits
    return (virtual_size + per_l2 - 1) // per_l2


def refcount_block_entries(cluster_bits: int, refcount_order: int) -> int:
    """Refcounts per refcount block: one cluster of 2**refcount_order-bit entries."""
    return (1 << (cluster_bits + 3)) >> refcount_order


def align_up(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment`."""
    return (value + alignment - 1) // alignment * alignment


# -- compressed cluster descriptors -----------------------------------------------------------
def compressed_layout(cluster_bits: int) -> tuple[int, int]:
    """(csize_shift, csize_mask): the sector-count field starts at bit 62 - (cluster_bits - 8)."""
    shift = 62 - (cluster_bits - 8)
    return shift, (1 << (cluster_bits - 8)) - 1


def parse_compressed(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host byte offset, byte length ending on a sector boundary) of a compressed cluster."""
    shift, mask = compressed_layout(cluster_bits)
    coffset = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & mask) + 1
    return coffset, sectors * SECTOR - (coffset & (SECTOR - 1))


def make_compressed(coffset: int, length: int, cluster_bits: int) -> int:
    """The L2 descriptor of `length` compressed bytes at host byte `coffset` (qcow2.txt
    "Compressed Clusters Descriptor"); UnsupportedImageError when it does not fit."""
    shift, mask = compressed_layout(cluster_bits)
    extra = (coffset + length - 1) // SECTOR - coffset // SECTOR
    if extra > mask or coffset >= (1 << shift):
        raise UnsupportedImageError(
            f"compressed cluster of {length} bytes at {coffset} does not fit a descriptor"
        )
    return OFLAG_COMPRESSED | (extra << shift) | coffset


# -- tables as arrays of host integers -------------------------------------------------------
_SWAP = sys.byteorder == "little"
_REFCOUNT_TYPECODES = {3: "B", 4: "H", 5: "I", 6: "Q"}


def decode_table(data: bytes | bytearray | memoryview) -> array[int]:
    """Big-endian 64-bit entries (L1, L2, refcount table) as an array of ints."""
    table = array("Q")
    table.frombytes(data)
    if _SWAP:
        table.byteswap()
    return table


def encode_table(table: array[int]) -> bytes:
    """An array of 64-bit entries as big-endian bytes (inverse of decode_table)."""
    if not _SWAP:
        return table.tobytes()
    copy = array("Q", table)
    copy.byteswap()
    return copy.tobytes()


def _subbyte_tables(order: int) -> tuple[list[bytes], int]:
    bits = 1 << order
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    decode = [bytes((b >> (i * bits)) & mask for i in range(per_byte)) for b in range(256)]
    return decode, per_byte


def decode_refcount_block(data: bytes | bytearray | memoryview, order: int) -> array[int]:
    """One refcount block as an array of refcounts (sub-byte entries: bit 0 is the LSB)."""
    code = _REFCOUNT_TYPECODES.get(order)
    if code is not None:
        block = array(code)
        block.frombytes(data)
        if _SWAP and block.itemsize > 1:
            block.byteswap()
        return block
    decode, _ = _subbyte_tables(order)
    return array("B", b"".join(decode[b] for b in bytes(data)))


def encode_refcount_block(block: array[int], order: int) -> bytes:
    """A refcount block as bytes (inverse of decode_refcount_block)."""
    code = _REFCOUNT_TYPECODES.get(order)
    if code is not None:
        if _SWAP and block.itemsize > 1:
            copy = array(code, block)
            copy.byteswap()
            return copy.tobytes()
        return block.tobytes()
    bits = 1 << order
    per_byte = 8 // bits
    out = bytearray(len(block) // per_byte)
    for i in range(len(out)):
        value = 0
        for j in range(per_byte):
            value |= block[i * per_byte + j] << (j * bits)
        out[i] = value
    return bytes(out)


def new_refcount_block(cluster_bits: int, order: int) -> array[int]:
    """An all-zero refcount block for the given cluster_bits and refcount_order."""
    code = _REFCOUNT_TYPECODES.get(order, "B")
    return array(code, bytes(refcount_block_entries(cluster_bits, order) * array(code).itemsize))
