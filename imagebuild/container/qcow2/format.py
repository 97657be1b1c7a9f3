"""QCOW2 on-disk structures: the header, header extensions, table entries, arithmetic.

Everything here is declared once and used by both the writer and the reader
(`qcow2.py`), the checker (`qcow2_check.py`) and the converter
(`qcow2_tools.py`).

References:
- QEMU, docs/interop/qcow2.txt ("Header", "Header extensions", "Feature name
  table", "Host cluster management", "Cluster mapping", "Snapshots").
- QEMU, block/qcow2.h (QCOW_OFLAG_COPIED/COMPRESSED/ZERO, L1E_OFFSET_MASK,
  L2E_OFFSET_MASK, REFT_OFFSET_MASK, the 32 MiB L1 and 8 MiB refcount table limits).
- 9front, sys/src/cmd/disk/qcowfs.c (the Header struct, read with GET4/GET8).
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field

from imagebuild.errors import ImageFormatError, UnsupportedImageError

MAGIC = b"QFI\xfb"

# Header layout (qcow2.txt "Header"): version 2 ends after snapshots_offset,
# version 3 adds the feature bitmaps, refcount_order and header_length.
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
HEADER_V3_EXTRA = struct.Struct(">QQQII")
V2_HEADER_LENGTH = HEADER_V2.size  # 72
V3_HEADER_LENGTH = HEADER_V2.size + HEADER_V3_EXTRA.size  # 104
COMPRESSION_TYPE_OFFSET = 104  # one byte, present when header_length > 104
V3_HEADER_LENGTH_WITH_COMPRESSION = 112  # 105 rounded up to a multiple of 8

# Byte offsets of the header fields we rewrite in place (single-sector writes).
INCOMPATIBLE_FEATURES_OFFSET = 72
AUTOCLEAR_FEATURES_OFFSET = 88
REFCOUNT_TABLE_FIELDS_OFFSET = 48  # refcount_table_offset (8) + refcount_table_clusters (4)
REFCOUNT_TABLE_FIELDS = struct.Struct(">QI")
FEATURES_FIELD = struct.Struct(">Q")

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
EXTENSION_HEADER = struct.Struct(">II")
FEATURE_ENTRY = struct.Struct(">BB46s")
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

# Snapshot table entry, fixed part (qcow2.txt "Snapshots").
SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")


# -- arithmetic ------------------------------------------------------------------------------
def offset_into_cluster(offset: int, cluster_bits: int) -> int:
    return offset & ((1 << cluster_bits) - 1)


def cluster_index(offset: int, cluster_bits: int) -> int:
    return offset >> cluster_bits


def size_to_clusters(size: int, cluster_bits: int) -> int:
    return (size + (1 << cluster_bits) - 1) >> cluster_bits


def l2_entries(cluster_bits: int) -> int:
    """Entries of an L2 table (or a refcount table cluster): one cluster of 8-byte entries."""
    return (1 << cluster_bits) // TABLE_ENTRY_SIZE


def l1_index(guest_cluster: int, cluster_bits: int) -> int:
    return guest_cluster >> (cluster_bits - 3)


def l2_index(guest_cluster: int, cluster_bits: int) -> int:
    return guest_cluster & (l2_entries(cluster_bits) - 1)


def l1_size_for(virtual_size: int, cluster_bits: int) -> int:
    """L1 entries needed to map `virtual_size` bytes."""
    per_l2 = l2_entries(cluster_bits) << cluster_bits
    return (virtual_size + per_l2 - 1) // per_l2


def refcount_block_entries(cluster_bits: int, refcount_order: int) -> int:
    return (1 << (cluster_bits + 3)) >> refcount_order


def refcount_table_index(host_cluster: int, cluster_bits: int, refcount_order: int) -> int:
    return host_cluster // refcount_block_entries(cluster_bits, refcount_order)


def refcount_block_index(host_cluster: int, cluster_bits: int, refcount_order: int) -> int:
    return host_cluster % refcount_block_entries(cluster_bits, refcount_order)


def align_up(value: int, alignment: int) -> int:
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
    code = _REFCOUNT_TYPECODES.get(order, "B")
    return array(code, bytes(refcount_block_entries(cluster_bits, order) * array(code).itemsize))


# -- header ------------------------------------------------------------------------------------
@dataclass
class HeaderExtension:
    type: int
    data: bytes

    def pack(self) -> bytes:
        padded = align_up(len(self.data), 8)
        return EXTENSION_HEADER.pack(self.type, len(self.data)) + self.data.ljust(padded, b"\0")


@dataclass
class Qcow2Header:
    """The image header and its extensions (qcow2.txt "Header")."""

    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = CRYPT_NONE
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = DEFAULT_REFCOUNT_ORDER
    header_length: int = V3_HEADER_LENGTH
    compression_type: int = COMPRESSION_ZLIB
    extra_fields: bytes = b""  # additional fields past compression_type, preserved
    extensions: list[HeaderExtension] = field(default_factory=list)
    backing_file: str | None = None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def backing_format(self) -> str | None:
        ext = self.extension(EXT_BACKING_FORMAT)
        return ext.data.decode("utf-8", "replace") if ext is not None else None

    def extension(self, type_: int) -> HeaderExtension | None:
        for ext in self.extensions:
            if ext.type == type_:
                return ext
        return None

    def feature_names(self) -> dict[tuple[int, int], str]:
        """(feature type, bit) -> name, from the image's feature name table."""
        names: dict[tuple[int, int], str] = {}
        ext = self.extension(EXT_FEATURE_TABLE)
        if ext is None:
            return names
        for start in range(0, len(ext.data) - FEATURE_ENTRY.size + 1, FEATURE_ENTRY.size):
            kind, bit, name = FEATURE_ENTRY.unpack_from(ext.data, start)
            names[(kind, bit)] = name.rstrip(b"\0").decode("utf-8", "replace")
        return names

    def pack(self) -> bytes:
        """Header, extensions, end marker and backing file name: the start of cluster 0.

        Sets header_length, backing_file_offset and backing_file_size to match.
        """
        fixed = self._pack_fixed()
        body = bytearray(fixed)
        for ext in self.extensions:
            body += ext.pack()
        body += EXTENSION_HEADER.pack(EXT_END, 0)
        if self.backing_file is not None:
            name = self.backing_file.encode()
            self.backing_file_offset = len(body)
            self.backing_file_size = len(name)
            body += name
            fixed = self._pack_fixed()
            body[: len(fixed)] = fixed
        else:
            self.backing_file_offset = self.backing_file_size = 0
        if len(body) > self.cluster_size:
            raise UnsupportedImageError(
                f"header, extensions and backing file name take {len(body)} bytes, "
                f"more than one {self.cluster_size}-byte cluster"
            )
        return bytes(body)

    def _pack_fixed(self) -> bytes:
        if self.version == 2:
            self.header_length = V2_HEADER_LENGTH
        else:
            tail = bytes([self.compression_type]) + self.extra_fields
            self.header_length = V3_HEADER_LENGTH + align_up(len(tail), 8)
        fixed = HEADER_V2.pack(
            MAGIC, self.version, self.backing_file_offset, self.backing_file_size,
            self.cluster_bits, self.size, self.crypt_method, self.l1_size,
            self.l1_table_offset, self.refcount_table_offset, self.refcount_table_clusters,
            self.nb_snapshots, self.snapshots_offset,
        )
        if self.version == 2:
            return fixed
        fixed += HEADER_V3_EXTRA.pack(
            self.incompatible_features, self.compatible_features, self.autoclear_features,
            self.refcount_order, self.header_length,
        )
        tail = bytes([self.compression_type]) + self.extra_fields
        return fixed + tail.ljust(self.header_length - V3_HEADER_LENGTH, b"\0")

    @classmethod
    def unpack(cls, data: bytes, name: str, file_size: int) -> Qcow2Header:
        """Parse and validate the header in `data` (the file's first cluster, or less).

        `name` is the file name for messages; `file_size` bounds every offset.
        """
        if len(data) < V2_HEADER_LENGTH:
            raise ImageFormatError(
                f"{name}: truncated header: file has {file_size} bytes, a qcow2 header "
                f"needs {V2_HEADER_LENGTH}"
            )
        (magic, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size,
         l1_offset, rt_offset, rt_clusters, nb_snapshots, snapshots_offset
         ) = HEADER_V2.unpack_from(data)
        if magic != MAGIC:
            raise ImageFormatError(f"{name}: bad magic {magic!r}, expected {MAGIC!r}")
        if version not in (2, 3):
            raise UnsupportedImageError(f"{name}: version {version} (only 2 and 3 are known)")
        header = cls(
            version=version, backing_file_offset=backing_offset,
            backing_file_size=backing_size, cluster_bits=cluster_bits, size=size,
            crypt_method=crypt, l1_size=l1_size, l1_table_offset=l1_offset,
            refcount_table_offset=rt_offset, refcount_table_clusters=rt_clusters,
            nb_snapshots=nb_snapshots, snapshots_offset=snapshots_offset,
        )
        if version == 3:
            if len(data) < V3_HEADER_LENGTH:
                raise ImageFormatError(
                    f"{name}: truncated header: file has {file_size} bytes, a version 3 "
                    f"header needs {V3_HEADER_LENGTH}"
                )
            (header.incompatible_features, header.compatible_features,
             header.autoclear_features, header.refcount_order, header.header_length,
             ) = HEADER_V3_EXTRA.unpack_from(data, V2_HEADER_LENGTH)
        else:
            header.refcount_order = DEFAULT_REFCOUNT_ORDER
            header.header_length = V2_HEADER_LENGTH
        header._validate(data, name, file_size)
        return header

    def _validate(self, data: bytes, name: str, file_size: int) -> None:
        if not MIN_CLUSTER_BITS <= self.cluster_bits <= MAX_CLUSTER_BITS:
            raise UnsupportedImageError(
                f"{name}: cluster_bits {self.cluster_bits} (cluster size must be 512 B..2 MiB)"
            )
        cs = self.cluster_size
        if self.version == 3:
            if self.header_length < V3_HEADER_LENGTH or self.header_length % 8:
                raise ImageFormatError(
                    f"{name}: header_length {self.header_length} (must be >= "
                    f"{V3_HEADER_LENGTH} and a multiple of 8)"
                )
            if self.header_length > min(cs, len(data)):
                raise ImageFormatError(
                    f"{name}: header_length {self.header_length} runs past the first cluster "
                    f"or the end of the file ({file_size} bytes)"
                )
            if self.header_length > COMPRESSION_TYPE_OFFSET:
                self.compression_type = data[COMPRESSION_TYPE_OFFSET]
                self.extra_fields = bytes(
                    data[COMPRESSION_TYPE_OFFSET + 1 : self.header_length]
                ).rstrip(b"\0")
        if self.refcount_order > MAX_REFCOUNT_ORDER:
            raise UnsupportedImageError(
                f"{name}: refcount_order {self.refcount_order} (supported: 0..6)"
            )
        self.extensions = _parse_extensions(data, self, name)
        unknown = self.incompatible_features & ~INCOMPAT_KNOWN
        if unknown:
            names = self.feature_names()
            bits = [b for b in range(64) if unknown >> b & 1]
            described = ", ".join(
                names.get((FEATURE_TYPE_INCOMPATIBLE, b), f"bit {b}") for b in bits
            )
            raise UnsupportedImageError(
                f"{name}: incompatible_features {self.incompatible_features:#x} has unknown "
                f"features: {described}"
            )
        if self.incompatible_features & INCOMPAT_DATA_FILE:
            raise UnsupportedImageError(f"{name}: uses an external data file (incompatible bit 2)")
        if self.incompatible_features & INCOMPAT_EXTL2:
            raise UnsupportedImageError(f"{name}: uses extended L2 entries (incompatible bit 4)")
        if self.crypt_method != CRYPT_NONE:
            raise UnsupportedImageError(
                f"{name}: crypt_method {self.crypt_method} (encrypted images are not supported)"
            )
        if bool(self.incompatible_features & INCOMPAT_COMPRESSION) != bool(self.compression_type):
            raise ImageFormatError(
                f"{name}: compression_type {self.compression_type} does not match the "
                f"compression type bit in incompatible_features "
                f"{self.incompatible_features:#x}"
            )
        if self.compression_type not in COMPRESSION_NAMES:
            raise UnsupportedImageError(
                f"{name}: compression_type {self.compression_type} (known: 0 zlib, 1 zstd)"
            )
        needed = l1_size_for(self.size, self.cluster_bits)
        if self.l1_size < needed:
            raise ImageFormatError(
                f"{name}: l1_size {self.l1_size} does not cover the virtual size {self.size} "
                f"(needs {needed} entries)"
            )
        if self.l1_size * TABLE_ENTRY_SIZE > MAX_L1_BYTES:
            raise UnsupportedImageError(
                f"{name}: l1_size {self.l1_size} (larger than QEMU's 32 MiB L1 limit)"
            )
        _check_table(name, "l1_table_offset", self.l1_table_offset,
                     self.l1_size * TABLE_ENTRY_SIZE, cs, file_size)
        if self.refcount_table_clusters == 0:
            raise ImageFormatError(f"{name}: refcount_table_clusters is 0")
        if self.refcount_table_clusters * cs > MAX_REFCOUNT_TABLE_BYTES:
            raise UnsupportedImageError(
                f"{name}: refcount_table_clusters {self.refcount_table_clusters} (larger than "
                f"QEMU's 8 MiB refcount table limit)"
            )
        _check_table(name, "refcount_table_offset", self.refcount_table_offset,
                     self.refcount_table_clusters * cs, cs, file_size)
        if self.nb_snapshots:
            _check_table(name, "snapshots_offset", self.snapshots_offset,
                         self.nb_snapshots * SNAPSHOT_ENTRY.size, cs, file_size)
        if self.backing_file_offset:
            if self.backing_file_size > MAX_BACKING_FILE_NAME:
                raise ImageFormatError(
                    f"{name}: backing_file_size {self.backing_file_size} (at most "
                    f"{MAX_BACKING_FILE_NAME})"
                )
            end = self.backing_file_offset + self.backing_file_size
            if end > len(data):
                raise ImageFormatError(
                    f"{name}: backing_file_offset {self.backing_file_offset} + size "
                    f"{self.backing_file_size} runs past the first cluster or end of file"
                )
            raw = bytes(data[self.backing_file_offset : end])
            try:
                self.backing_file = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImageFormatError(
                    f"{name}: backing file name {raw!r} is not valid UTF-8"
                ) from None


def _check_table(name: str, what: str, offset: int, length: int, cs: int, file_size: int) -> None:
    if offset % cs:
        raise ImageFormatError(f"{name}: {what} {offset:#x} is not aligned to a cluster ({cs})")
    if length and (offset == 0 or offset + length > file_size):
        raise ImageFormatError(
            f"{name}: {what} {offset:#x} (+{length} bytes) lies outside the file "
            f"({file_size} bytes)"
        )


def _parse_extensions(data: bytes, header: Qcow2Header, name: str) -> list[HeaderExtension]:
    """Header extensions from header_length up to the end marker (all of them, in order)."""
    limit = min(len(data), header.cluster_size)
    if header.backing_file_offset and header.backing_file_offset > header.header_length:
        limit = min(limit, header.backing_file_offset)
    pos = header.header_length
    found: list[HeaderExtension] = []
    while True:
        if pos + EXTENSION_HEADER.size > limit:
            if pos >= limit and header.version == 2:
                return found  # a v2 header may end without a marker
            raise ImageFormatError(
                f"{name}: header extension at offset {pos} runs past the end of the header "
                f"area ({limit} bytes)"
            )
        type_, length = EXTENSION_HEADER.unpack_from(data, pos)
        pos += EXTENSION_HEADER.size
        if type_ == EXT_END:
            return found
        if pos + length > limit:
            raise ImageFormatError(
                f"{name}: header extension {type_:#010x} length {length} at offset {pos} runs "
                f"past the end of the header area ({limit} bytes)"
            )
        found.append(HeaderExtension(type_, bytes(data[pos : pos + length])))
        pos += align_up(length, 8)


def feature_table_extension() -> HeaderExtension:
    body = b"".join(
        FEATURE_ENTRY.pack(kind, bit, text.encode()) for kind, bit, text in KNOWN_FEATURE_NAMES
    )
    return HeaderExtension(EXT_FEATURE_TABLE, body)


@dataclass
class Snapshot:
    """The parts of a snapshot table entry that locate its clusters."""

    l1_table_offset: int
    l1_size: int
    id: str
    name: str


def parse_snapshots(data: bytes, count: int, name: str) -> tuple[list[Snapshot], int]:
    """Snapshot table entries and the table's length in bytes."""
    snaps: list[Snapshot] = []
    pos = 0
    for i in range(count):
        if pos + SNAPSHOT_ENTRY.size > len(data):
            raise ImageFormatError(f"{name}: snapshot table entry {i} runs past the end of file")
        (l1_offset, l1_size, id_len, name_len, _s, _ns, _vm, _state, extra
         ) = SNAPSHOT_ENTRY.unpack_from(data, pos)
        pos += SNAPSHOT_ENTRY.size + extra
        end = pos + id_len + name_len
        if end > len(data):
            raise ImageFormatError(f"{name}: snapshot table entry {i} runs past the end of file")
        ident = data[pos : pos + id_len].decode("utf-8", "replace")
        label = data[pos + id_len : end].decode("utf-8", "replace")
        pos = align_up(end, 8)
        snaps.append(Snapshot(l1_offset, l1_size, ident, label))
    return snaps, pos
