"""Image containers: raw files and QCOW2."""
