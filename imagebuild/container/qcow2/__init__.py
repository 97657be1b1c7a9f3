"""The QCOW2 engine (QEMU docs/interop/qcow2.txt)."""
