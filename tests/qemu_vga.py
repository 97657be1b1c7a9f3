"""Boot a disk image under QEMU (SeaBIOS) and read the VGA text screen through the monitor."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tests.conftest import needs

VGA_TEXT = 0xB8000
VGA_BYTES = 80 * 25 * 2

needs_qemu = needs("qemu-system-x86_64", "qemu-system-i386")


def screen_text(dump: Path) -> str:
    """The characters of an 80x25 text screen dump (every other byte is an attribute)."""
    data = dump.read_bytes() if dump.exists() else b""
    chars = bytes(data[0::2]).decode("cp437", errors="replace")
    return "\n".join(chars[i : i + 80].rstrip() for i in range(0, len(chars), 80))


class BootedQemu:
    """A QEMU booting `image` read-only (-snapshot), driven through its monitor on stdin."""

    def __init__(self, image: Path, fmt: str, dump: Path,
                 system: str = "qemu-system-x86_64") -> None:
        self.dump = dump
        self.process = subprocess.Popen(
            [system, "-snapshot",
             # fmt "cdrom": the image as a CD, booted through El Torito
             *(["-cdrom", str(image), "-boot", "d"] if fmt == "cdrom"
               else ["-drive", f"file={image},format={fmt}"]),
             "-display", "none", "-monitor", "stdio", "-nodefaults", "-vga", "std",
             "-net", "none", "-m", "64"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True,
        )

    def monitor(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def screen(self) -> str:
        self.dump.unlink(missing_ok=True)
        self.monitor(f'pmemsave {VGA_TEXT:#x} {VGA_BYTES} "{self.dump}"')
        time.sleep(0.5)
        return screen_text(self.dump)

    def wait_for(self, done: Callable[[str], bool], seconds: float = 30) -> str:
        """Poll the screen until `done(text)`; the last text either way."""
        deadline = time.monotonic() + seconds
        text = self.screen()
        while not done(text) and time.monotonic() < deadline:
            text = self.screen()
        return text

    def __enter__(self) -> BootedQemu:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.process.kill()
        self.process.wait()


def boot_until(image: Path, fmt: str, needle: str, dump: Path, seconds: float = 30) -> str:
    """Boot `image` and poll the screen until `needle` shows (or time runs out)."""
    with BootedQemu(image, fmt, dump) as qemu:
        return qemu.wait_for(lambda text: needle in text, seconds)
