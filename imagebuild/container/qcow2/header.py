"""The QCOW2 image header and its extensions: parse, validate, pack.

`Qcow2Header` has one attribute per field of qcow2.txt "Header" (same names);
the fixed part is read and written through `format.HEADER_V2`/`HEADER_V3`,
extensions through `format.EXTENSION_HEADER`, the feature name table through
`format.FEATURE_NAME_ENTRY`.  Validation bounds every offset by the file size,
so nothing later reads tables that lie outside the file.

References: QEMU, docs/interop/qcow2.txt ("Header", "Header extensions",
"Feature name table"); block/qcow2.c (qcow2_do_open's checks).
"""

from __future__ import annotations

from imagebuild.container.qcow2.format import (
    COMPRESSION_NAMES,
    COMPRESSION_TYPE_OFFSET,
    COMPRESSION_ZLIB,
    CRYPT_NONE,
    DEFAULT_REFCOUNT_ORDER,
    EXT_BACKING_FORMAT,
    EXT_END,
    EXT_FEATURE_TABLE,
    EXTENSION_HEADER,
    FEATURE_NAME_ENTRY,
    FEATURE_TYPE_INCOMPATIBLE,
    HEADER_V2,
    HEADER_V3,
    INCOMPAT_COMPRESSION,
    INCOMPAT_DATA_FILE,
    INCOMPAT_EXTL2,
    INCOMPAT_KNOWN,
    KNOWN_FEATURE_NAMES,
    MAGIC,
    MAX_BACKING_FILE_NAME,
    MAX_CLUSTER_BITS,
    MAX_L1_BYTES,
    MAX_REFCOUNT_ORDER,
    MAX_REFCOUNT_TABLE_BYTES,
    MIN_CLUSTER_BITS,
    SNAPSHOT_ENTRY,
    TABLE_ENTRY_SIZE,
    V2_HEADER_LENGTH,
    V3_HEADER_LENGTH,
    align_up,
    l1_size_for,
)
from imagebuild.errors import ImageFormatError, UnsupportedImageError
from imagebuild.util.record import Record


# -- header ------------------------------------------------------------------------------------
class HeaderExtension(Record):
    """One header extension (qcow2.txt "Header extensions"): its type and raw data."""

    FIELDS = ("type", "data")
    __slots__ = FIELDS

    type: int
    data: bytes

    def __init__(self, type: int, data: bytes) -> None:
        self.type = type
        self.data = data

    def pack(self) -> bytes:
        """Extension header, data and padding to a multiple of 8 bytes."""
        padded = align_up(len(self.data), 8)
        return EXTENSION_HEADER.pack(type=self.type, length=len(self.data)) \
            + self.data.ljust(padded, b"\0")


class Qcow2Header:
    """The image header and its extensions (qcow2.txt "Header"), changed in place as the
    image grows (refcount table, L1, feature bits).

    `extra_fields` are the bytes past compression_type, preserved; `extensions`
    the header extensions in file order; `backing_file` the name, None without one.
    """

    __slots__ = ("autoclear_features", "backing_file", "backing_file_offset", "backing_file_size",
                 "cluster_bits", "compatible_features", "compression_type", "crypt_method",
                 "extensions", "extra_fields", "header_length", "incompatible_features", "l1_size",
                 "l1_table_offset", "nb_snapshots", "refcount_order", "refcount_table_clusters",
                 "refcount_table_offset", "size", "snapshots_offset", "version")

    def __init__(self, *, version: int = 3, backing_file_offset: int = 0,
                 backing_file_size: int = 0, cluster_bits: int = 16, size: int = 0,
                 crypt_method: int = CRYPT_NONE, l1_size: int = 0, l1_table_offset: int = 0,
                 refcount_table_offset: int = 0, refcount_table_clusters: int = 0,
                 nb_snapshots: int = 0, snapshots_offset: int = 0,
                 incompatible_features: int = 0, compatible_features: int = 0,
                 autoclear_features: int = 0, refcount_order: int = DEFAULT_REFCOUNT_ORDER,
                 header_length: int = V3_HEADER_LENGTH, compression_type: int = COMPRESSION_ZLIB,
                 extra_fields: bytes = b"", extensions: list[HeaderExtension] | None = None,
                 backing_file: str | None = None) -> None:
        self.version = version
        self.backing_file_offset = backing_file_offset
        self.backing_file_size = backing_file_size
        self.cluster_bits = cluster_bits
        self.size = size
        self.crypt_method = crypt_method
        self.l1_size = l1_size
        self.l1_table_offset = l1_table_offset
        self.refcount_table_offset = refcount_table_offset
        self.refcount_table_clusters = refcount_table_clusters
        self.nb_snapshots = nb_snapshots
        self.snapshots_offset = snapshots_offset
        self.incompatible_features = incompatible_features
        self.compatible_features = compatible_features
        self.autoclear_features = autoclear_features
        self.refcount_order = refcount_order
        self.header_length = header_length
        self.compression_type = compression_type
        self.extra_fields = extra_fields
        self.extensions: list[HeaderExtension] = [] if extensions is None else extensions
        self.backing_file = backing_file

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Qcow2Header({fields})"

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster (1 << cluster_bits)."""
        return 1 << self.cluster_bits

    @property
    def backing_format(self) -> str | None:
        """The backing file format extension's text ("qcow2", "raw"), None without one."""
        ext = self.extension(EXT_BACKING_FORMAT)
        return ext.data.decode("utf-8", "replace") if ext is not None else None

    def extension(self, type_: int) -> HeaderExtension | None:
        """The first header extension of type `type_`, None if absent."""
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
        step = FEATURE_NAME_ENTRY.size
        for start in range(0, len(ext.data) - step + 1, step):
            entry = FEATURE_NAME_ENTRY.unpack(ext.data, start)
            names[(entry["type"], entry["bit_number"])] = \
                entry["feature_name"].rstrip(b"\0").decode("utf-8", "replace")
        return names

    def pack(self) -> bytes:
        """Header, extensions, end marker and backing file name: the start of cluster 0.

        Sets header_length, backing_file_offset and backing_file_size to match.
        """
        if self.backing_file is None:
            self.backing_file_offset = self.backing_file_size = 0
        fixed = self._pack_fixed()
        body = bytearray(fixed)
        for ext in self.extensions:
            body += ext.pack()
        body += EXTENSION_HEADER.pack(type=EXT_END, length=0)
        if self.backing_file is not None:
            name = self.backing_file.encode()
            self.backing_file_offset = len(body)
            self.backing_file_size = len(name)
            body += name
            fixed = self._pack_fixed()
            body[: len(fixed)] = fixed
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
        values = {name: getattr(self, name) for name in HEADER_V3.names if name != "magic"}
        if self.version == 2:
            return HEADER_V2.pack(values, magic=MAGIC)
        fixed = HEADER_V3.pack(values, magic=MAGIC)
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
        fields = HEADER_V2.unpack(data)
        magic = fields.pop("magic")
        if magic != MAGIC:
            raise ImageFormatError(f"{name}: bad magic {magic!r}, expected {MAGIC!r}")
        version = fields["version"]
        if version not in (2, 3):
            raise UnsupportedImageError(f"{name}: version {version} (only 2 and 3 are known)")
        if version == 3:
            if len(data) < V3_HEADER_LENGTH:
                raise ImageFormatError(
                    f"{name}: truncated header: file has {file_size} bytes, a version 3 "
                    f"header needs {V3_HEADER_LENGTH}"
                )
            fields = HEADER_V3.unpack(data)
            del fields["magic"]
        else:
            fields.update(refcount_order=DEFAULT_REFCOUNT_ORDER,
                          header_length=V2_HEADER_LENGTH)
        header = cls(**fields)
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
            if end > min(cs, len(data)):
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
    """Header extensions from header_length up to the end marker or the end of the area
    (where the backing file name or the first cluster starts): all of them, in order."""
    limit = min(len(data), header.cluster_size)
    if header.backing_file_offset:
        # The area ends where the backing file name starts (qcow2_do_open's ext_end): a
        # version 2 name right after the 72-byte header leaves no room for extensions.
        limit = min(limit, header.backing_file_offset)
    pos = header.header_length
    found: list[HeaderExtension] = []
    while True:
        if pos + EXTENSION_HEADER.size > limit:
            if pos >= limit:
                return found  # the area may end without a marker (qcow2_read_extensions)
            raise ImageFormatError(
                f"{name}: header extension at offset {pos} runs past the end of the header "
                f"area ({limit} bytes)"
            )
        ext = EXTENSION_HEADER.unpack(data, pos)
        type_, length = ext["type"], ext["length"]
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
    """The feature name table QEMU writes into new images (qcow2.txt "Feature name table")."""
    body = b"".join(
        FEATURE_NAME_ENTRY.pack(type=kind, bit_number=bit, feature_name=text.encode())
        for kind, bit, text in KNOWN_FEATURE_NAMES
    )
    return HeaderExtension(EXT_FEATURE_TABLE, body)
