"""Block devices: sector views of a storage and partfs's table of partitions."""
