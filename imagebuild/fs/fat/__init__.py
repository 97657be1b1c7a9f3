"""FAT as 9front's disk/format writes it, and a reader."""
