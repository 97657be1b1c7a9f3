"""Boot a disk image under QEMU (SeaBIOS) and read the VGA text screen through the monitor."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

VGA_TEXT = 0xB8000
VGA_BYTES = 80 * 25 * 2

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"
)


def screen_text(dump: Path) -> str:
    """The characters of an 80x25 text screen dump (every other byte is an attribute)."""
    data = dump.read_bytes() if dump.exists() else b""
    chars = bytes(data[0::2]).decode("cp437", errors="replace")
    return "\n".join(chars[i : i + 80].rstrip() for i in range(0, len(chars), 80))


def boot_until(image: Path, fmt: str, needle: str, dump: Path, seconds: float = 30) -> str:
    """Boot `image` read-only (-snapshot) and poll the screen until `needle` shows."""
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-snapshot", "-drive", f"file={image},format={fmt}",
         "-display", "none", "-monitor", "stdio", "-nodefaults", "-vga", "std",
         "-net", "none", "-m", "64"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    assert qemu.stdin is not None
    text = ""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dump.unlink(missing_ok=True)
            qemu.stdin.write(f'pmemsave {VGA_TEXT:#x} {VGA_BYTES} "{dump}"\n')
            qemu.stdin.flush()
            time.sleep(0.5)
            text = screen_text(dump)
            if needle in text:
                break
    finally:
        qemu.kill()
        qemu.wait()
    return text
