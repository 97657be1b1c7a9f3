"""File systems: FAT (disk/format), hjfs and the shared proto reader (disk/mkfs)."""
