"""ISO 9660 images as 9front's disk/mk9660 writes them (-c9j, El Torito -B and -E), and a reader.

Modules, one per on-disk record, each used by both the writer and the reader:
voldesc (volume descriptors and their dates), dirrec (directory records),
sysuse (mk9660's Plan 9 system-use field), pathtable (path table records),
eltorito (boot record and boot catalog); names holds mk9660's name rules
(8.3 conformance, Joliet, the conform map, its sort orders); writer.py is
mk9660's main loop over proto entries, reader.py reads images back.
"""
