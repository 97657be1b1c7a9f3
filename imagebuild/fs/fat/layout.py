"""The geometry of a FAT as format.c decides it: width, cluster count, FAT and root sizes.

format.c's dosfs() starts from FAT12 and, in its "Tryagain" loop, iterates
the cluster count until the FAT it needs and the clusters it leaves agree,
then moves on to a wider FAT when the count passes FAT12's or FAT16's limit.
`fit_layout` is that loop; `Layout` its result; `DISK_TYPES` format's
floppytype[] table and `default_cluster_sectors` its defcluster().

References: sys/src/cmd/disk/format.c (dosfs, defcluster, floppytype[]);
Microsoft, "FAT: General Overview of On-Disk Format" (2000), section 3.5
(the cluster-count rule that decides a FAT's width).
"""

from __future__ import annotations

from imagebuild.errors import LayoutError
from imagebuild.fs.fat.bpb import FAT12_MAX_CLUSTERS, FAT16_MAX_CLUSTERS, FAT32_MAX_CLUSTERS
from imagebuild.fs.fat.dirent import DIR_ENTRY_SIZE
from imagebuild.plan9.libc import cdiv
from imagebuild.util.record import Record

FAT_COUNT = 2  # b->nfats = 2
ROOT_DIR_FRACTION = 200  # rootsecs = volsecs/200
MAX_ROOT_ENTRIES = 512  # rootfiles capped at 512


class FatError(LayoutError):
    """A FAT cannot be formatted as asked (bad boot program, names, sizes)."""


class DiskType(Record):
    """A row of format.c's floppytype[] table."""

    FIELDS = ("name", "sector_bytes", "sectors", "heads", "tracks", "media", "cluster")
    __slots__ = FIELDS

    name: str
    sector_bytes: int
    sectors: int  # sectors per track; 0: from the disk's geometry
    heads: int
    tracks: int
    media: int
    cluster: int  # default sectors per cluster

    def __init__(
        self,
        name: str,
        sector_bytes: int,
        sectors: int,
        heads: int,
        tracks: int,
        media: int,
        cluster: int,
    ) -> None:
        self.name = name
        self.sector_bytes = sector_bytes
        self.sectors = sectors
        self.heads = heads
        self.tracks = tracks
        self.media = media
        self.cluster = cluster


HARD = "hard"
# format.c floppytype[] ("all MFM encoding"); "hard" takes the disk's geometry.
DISK_TYPES: dict[str, DiskType] = {
    t.name: t
    for t in (
        DiskType("3½HD", 512, 18, 2, 80, 0xF0, 1),
        DiskType("3½DD", 512, 9, 2, 80, 0xF9, 2),
        DiskType("3½QD", 512, 36, 2, 80, 0xF9, 2),
        DiskType("5¼HD", 512, 15, 2, 80, 0xF9, 1),
        DiskType("5¼DD", 512, 9, 2, 40, 0xFD, 2),
        DiskType(HARD, 512, 0, 0, 0, 0xF8, 4),
    )
}


def default_cluster_sectors(secs: int) -> int:
    """defcluster(): one sector per 16 MiB of partition, rounded up to a power of two, <= 128."""
    i = secs // 32768
    if i <= 1:
        return 1
    if i >= 128:
        return 128
    return 1 << (i - 1).bit_length()


class Layout(Record):
    """What format.c's "crock inside a crock" settles on for one partition."""

    FIELDS = (
        "fat_bits", "reserved_sectors", "fat_sectors", "root_sectors", "root_entries", "clusters",
        "volume_sectors")
    __slots__ = FIELDS

    fat_bits: int
    reserved_sectors: int
    fat_sectors: int
    root_sectors: int
    root_entries: int
    clusters: int  # format's `clusters`: data clusters + the 2 reserved FAT entries
    volume_sectors: int  # the BPB's total sectors: the partition, unless settle_width shortened it

    def __init__(
        self,
        fat_bits: int,
        reserved_sectors: int,
        fat_sectors: int,
        root_sectors: int,
        root_entries: int,
        clusters: int,
        volume_sectors: int,
    ) -> None:
        self.fat_bits = fat_bits
        self.reserved_sectors = reserved_sectors
        self.fat_sectors = fat_sectors
        self.root_sectors = root_sectors
        self.root_entries = root_entries
        self.clusters = clusters
        self.volume_sectors = volume_sectors

    @property
    def root_start(self) -> int:
        """First sector of the root directory (FAT12/16) or of the data area (FAT32)."""
        return self.reserved_sectors + FAT_COUNT * self.fat_sectors

    @property
    def files_start(self) -> int:
        """First sector format writes file data to."""
        return self.root_start + self.root_sectors


class _Unsettled(FatError):
    """format's cluster-count iteration alternates forever (format.c: "can't decide")."""

    def __init__(self, message: str, layout: Layout, least: int) -> None:
        super().__init__(message)
        self.layout = layout  # the iteration with the larger FAT
        self.least = least  # the smaller of the counts (+2) it alternates between


class Pass:
    """format.c globals that one run of dosfs() leaves changed for the next."""

    __slots__ = ("alias_id", "reserved")

    def __init__(self, reserved: int, alias_id: int = 0) -> None:
        self.reserved = reserved
        self.alias_id = alias_id


def _fit_width(reserved: int, volsecs: int, sector_size: int, cluster: int, fat_bits: int
               ) -> Layout:
    """dosfs(): the cluster-count iteration for one FAT width (format's `clusters` = count+2)."""
    entries_per_sector = sector_size // DIR_ENTRY_SIZE
    clusters = 0
    i = 0
    seen: Layout | None = None
    while True:
        fat_sectors = cdiv(fat_bits * clusters + 8 * sector_size - 1, 8 * sector_size)
        root_sectors = volsecs // ROOT_DIR_FRACTION
        root_entries = root_sectors * entries_per_sector
        if root_entries > MAX_ROOT_ENTRIES:
            root_entries = MAX_ROOT_ENTRIES
            root_sectors = root_entries // entries_per_sector
        if fat_bits == 32:
            root_sectors -= root_sectors % cluster
            if root_sectors <= 0:
                root_sectors = cluster
            root_entries = root_sectors * entries_per_sector
        data = (
            reserved
            + FAT_COUNT * fat_sectors
            + cdiv(root_entries * DIR_ENTRY_SIZE + sector_size - 1, sector_size)
        )
        new_clusters = 2 + cdiv(volsecs - data, cluster)
        layout = Layout(fat_bits, reserved, fat_sectors, root_sectors, root_entries, clusters,
                        volsecs)
        if new_clusters == clusters:
            return layout
        if i > 10:
            raise _Unsettled(
                f"can't decide how many clusters to use ({clusters}? {new_clusters}?)",
                layout if seen is None or layout.fat_sectors >= seen.fat_sectors else seen,
                min(clusters, new_clusters),
            )
        seen = layout
        clusters = new_clusters
        i += 1


def fit_layout(
    state: Pass, volsecs: int, sector_size: int, cluster: int, fat_bits: int
) -> Layout:
    """dosfs(): the Tryagain loop over FAT widths, then settle_width (our deviation).

    Raises FatError for a volume too big for FAT32 or a count that never settles.
    """
    narrower: Layout | None = None
    while True:
        if fat_bits == 32:
            state.reserved += 1  # for FatInfo (once per pass: see the module doc)
        try:
            layout = _fit_width(state.reserved, volsecs, sector_size, cluster, fat_bits)
        except _Unsettled as err:
            # format gives up here ("can't decide"); we differ (settle_width's docstring)
            threshold = {12: FAT12_MAX_CLUSTERS + 3, 16: FAT16_MAX_CLUSTERS + 3}.get(fat_bits)
            if threshold is not None and err.least >= threshold:
                narrower, fat_bits = err.layout, 2 * fat_bits if fat_bits == 16 else 16
                continue  # every count it tries is past this width: on to the next, as format
            if narrower is None:
                raise FatError(str(err)) from None
            if fat_bits == 32:
                state.reserved -= 1
            return _shortened(narrower, cluster)
        if fat_bits == 12 and layout.clusters >= FAT12_MAX_CLUSTERS + 3:  # 0xff7
            narrower, fat_bits = layout, 16
            continue
        if fat_bits == 16 and layout.clusters >= FAT16_MAX_CLUSTERS + 3:  # 0xfff7
            narrower, fat_bits = layout, 32
            continue
        if fat_bits == 32 and layout.clusters >= 0xFFFFFF7:
            raise FatError(f"filesystem too big ({layout.clusters} clusters)")
        layout = cover_data_area(layout, volsecs, sector_size, cluster)
        if fat_bits == 32 and reader_cluster_count(layout, cluster) > FAT32_MAX_CLUSTERS:
            # deviation: format's test above counts the clusters after the root directory
            # and before cover_data_area grows the FAT; what a reader counts may still pass
            # the 28-bit cluster numbers (with small clusters near 130 GiB)
            raise FatError(f"filesystem too big ({reader_cluster_count(layout, cluster)} "
                           f"clusters; FAT32 holds at most {FAT32_MAX_CLUSTERS})")
        settled = settle_width(layout, narrower, cluster)
        if settled is not layout and layout.fat_bits == 32:
            state.reserved -= 1  # the FAT32 attempt is undone, its FSInfo sector with it
        return settled


def reader_cluster_count(layout: Layout, cluster: int) -> int:
    """The data clusters a reader counts (the spec's CountofClusters) for `layout`."""
    first_data = layout.reserved_sectors + FAT_COUNT * layout.fat_sectors
    if layout.fat_bits != 32:
        first_data += layout.root_sectors
    return (layout.volume_sectors - first_data) // cluster


def width_for(count: int) -> int:
    """The FAT width every reader infers from a cluster count (FAT spec, section 3.5)."""
    if count <= FAT12_MAX_CLUSTERS:
        return 12
    return 16 if count <= FAT16_MAX_CLUSTERS else 32


def settle_width(layout: Layout, narrower: Layout | None, cluster: int) -> Layout:
    """Deviation: make the FAT's entry width the one its cluster count implies.

    format moves to a wider FAT when the narrower one's count passes its
    limit, but the wider FAT takes sectors from the data area: at some sizes
    (4130-4149 sectors with 1-sector clusters, 66071-66640 with `-c 1`,
    8387746-8388226 with the default 128) the count falls back under the
    limit, and every reader (fsck.fat, mtools, 9front's dossrv and 9bootfat)
    then reads a FAT16 as FAT12 or a FAT32 as FAT16; nearby, the wider
    count never settles and format gives up.  In both cases we keep the
    narrower layout format tried first and shorten the volume (the BPB's
    total sectors) to the most clusters that width may hold; the few
    sectors left at the partition's end are unused.
    """
    count = reader_cluster_count(layout, cluster)
    if width_for(count) == layout.fat_bits or narrower is None:
        return layout
    return _shortened(narrower, cluster)


def _shortened(narrower: Layout, cluster: int) -> Layout:
    """`narrower` (FAT12 or FAT16) with as many clusters as its width may hold, no more."""
    limit = FAT12_MAX_CLUSTERS if narrower.fat_bits == 12 else FAT16_MAX_CLUSTERS
    first_data = narrower.reserved_sectors + FAT_COUNT * narrower.fat_sectors
    first_data += narrower.root_sectors
    return narrower.replace(clusters=limit + 2, volume_sectors=first_data + limit * cluster)


def cover_data_area(layout: Layout, volsecs: int, sector_size: int, cluster: int) -> Layout:
    """Deviation: grow a FAT32 FAT that cannot map every cluster of the data area.

    format sizes the FAT for the clusters after its root directory, but on
    FAT32 the root directory is itself in the data area (cluster 2 on), so
    readers count root_sectors/cluster more clusters than the FAT may hold;
    fsck.fat and Linux then refuse the volume.  Where format's FAT is big
    enough we keep its layout; where not, we add FAT sectors until it is.
    """
    if layout.fat_bits != 32:
        return layout
    entries_per_sector = sector_size * 8 // 32
    fat_sectors = layout.fat_sectors
    while fat_sectors * entries_per_sector < 2 + (
        volsecs - layout.reserved_sectors - FAT_COUNT * fat_sectors
    ) // cluster:
        fat_sectors += 1
    if fat_sectors == layout.fat_sectors:
        return layout
    data = layout.reserved_sectors + FAT_COUNT * fat_sectors + layout.root_sectors
    return layout.replace(fat_sectors=fat_sectors, clusters=2 + (volsecs - data) // cluster)
