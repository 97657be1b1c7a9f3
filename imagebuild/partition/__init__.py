"""Partition tables as 9front's disk/mbr, disk/fdisk and disk/prep write them."""
