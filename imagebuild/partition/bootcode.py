"""Our own default master boot program: the bytes `disk/mbr` writes when given no -m file.

9front's disk/mbr carries a small program that says the disc is not bootable
and reboots after a key.  Those bytes are 9front's code, so imagebuild
carries this one instead, written for imagebuild; it is the one intended byte
difference from an image 9front's tools would write (docs/layout.md).  It
fills the same place: the first 446 bytes of sector 0, before the partition
table, which disk/mbr leaves alone.

16-bit real mode; the BIOS loads sector 0 at physical 0x7C00 and jumps there
(with CS:IP either 0000:7C00 or 07C0:0000, so we use only relative jumps and
DS = 0 with absolute offsets).

    off  bytes      instruction            why
    00   FA         cli                    no interrupts while the stack moves
    01   31 C0      xor  ax, ax
    03   8E D8      mov  ds, ax            DS = 0: the message at 0:7C28
    05   8E C0      mov  es, ax
    07   8E D0      mov  ss, ax
    09   BC 00 7C   mov  sp, 0x7C00        stack grows down below the program
    0C   FB         sti
    0D   FC         cld                    lodsb counts upwards
    0E   BE 28 7C   mov  si, 0x7C28        the message
  print:
    11   AC         lodsb                  al = next character
    12   84 C0      test al, al
    14   74 09      jz   wait              NUL ends the message (-> 1F)
    16   B4 0E      mov  ah, 0x0E          int 10h AH=0Eh: teletype output
    18   BB 07 00   mov  bx, 0x0007        page 0, light grey
    1B   CD 10      int  0x10
    1D   EB F2      jmp  print             (-> 11)
  wait:
    1F   31 C0      xor  ax, ax            int 16h AH=00h: wait for a key
    21   CD 16      int  0x16
    23   CD 19      int  0x19              bootstrap loader: try booting again
  hang:
    25   F4         hlt                    if int 19h ever returns
    26   EB FD      jmp  hang              (-> 25)
    28   "Not a bootable disc.\\r\\nPress a key to reboot.\\r\\n" 00
"""

from __future__ import annotations

from imagebuild.partition.sector0 import BOOT_AREA

LOAD_ADDRESS = 0x7C00

PROGRAM = bytes.fromhex(
    "fa"  # cli
    "31c0"  # xor ax, ax
    "8ed8"  # mov ds, ax
    "8ec0"  # mov es, ax
    "8ed0"  # mov ss, ax
    "bc007c"  # mov sp, 0x7c00
    "fb"  # sti
    "fc"  # cld
    "be287c"  # mov si, 0x7c28
    "ac"  # print: lodsb
    "84c0"  # test al, al
    "7409"  # jz wait
    "b40e"  # mov ah, 0x0e
    "bb0700"  # mov bx, 0x0007
    "cd10"  # int 0x10
    "ebf2"  # jmp print
    "31c0"  # wait: xor ax, ax
    "cd16"  # int 0x16
    "cd19"  # int 0x19
    "f4"  # hang: hlt
    "ebfd"  # jmp hang
)
MESSAGE = b"Not a bootable disc.\r\nPress a key to reboot.\r\n\0"
MESSAGE_OFFSET = 0x28

assert len(PROGRAM) == MESSAGE_OFFSET  # the `mov si` above points here
assert PROGRAM[0x0F:0x11] == (LOAD_ADDRESS + MESSAGE_OFFSET).to_bytes(2, "little")

# The 446 bytes disk/mbr copies over the start of sector 0 when no -m file is given.
DEFAULT_MBR = (PROGRAM + MESSAGE).ljust(BOOT_AREA, b"\0")

assert len(DEFAULT_MBR) == BOOT_AREA
