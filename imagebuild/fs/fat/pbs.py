"""Our default partition boot program: what `format -d` installs when no `-b` is given.

disk/format carries a built-in program for this case; its bytes are 9front's
code, so imagebuild writes its own.  It does what a boot sector of a
non-system disk is expected to do: say so, wait for a key, and reboot.

format installs a boot program by copying its first three bytes (the jump)
and its bytes from 0x3E (the end of the FAT12/16 BPB) up to its length; the
BPB between is format's.  A FAT32 BPB runs on to 0x5A, so this program jumps
to 0x5A, as 9front's /386/pbs does, and keeps its bytes 0x3E..0x59 zero: on
FAT12/16 they are written as zeros, on FAT32 the BPB overwrites them (the
FAT32 volume id and reserved bytes that format leaves to the boot program
therefore come out zero).

Hand-assembled 16-bit real-mode code; the BIOS loads the sector at 0000:7C00
(some at 07C0:0000, hence the far jump that normalises CS):

    addr  bytes           instruction
    0000  EB 58           jmp short 0x5A
    0002  90              nop
    0003  ..              (BPB, filled in by format)
    005A  FA              cli
    005B  31 C0           xor ax, ax
    005D  8E D8           mov ds, ax
    005F  8E D0           mov ss, ax
    0061  BC 00 7C        mov sp, 0x7C00          ; stack below the boot sector
    0064  FB              sti
    0065  EA 6A 7C 00 00  jmp 0x0000:0x7C6A       ; CS:IP = 0000:7C6A (next instruction)
    006A  FC              cld
    006B  BE 85 7C        mov si, 0x7C85          ; the message
    006E  AC              lodsb                   ; .print: al = [ds:si++]
    006F  84 C0           test al, al
    0071  74 09           jz 0x7C                 ; NUL: done
    0073  B4 0E           mov ah, 0x0E            ; BIOS teletype output
    0075  BB 07 00        mov bx, 0x0007          ; page 0, light grey
    0078  CD 10           int 0x10
    007A  EB F2           jmp short 0x6E          ; .print
    007C  31 C0           xor ax, ax              ; .key: BIOS read keystroke
    007E  CD 16           int 0x16
    0080  EA 00 00 FF FF  jmp 0xFFFF:0x0000       ; the reset vector: reboot
    0085  "This is not a bootable disc.\\r\\nPress a key to reboot.\\r\\n\\0"

The program is DEFAULT_PBS[:len(DEFAULT_PBS)], shorter than the 510 bytes
format allows; the boot signature 0x55AA is format's to write.
"""

from __future__ import annotations

LOAD_ADDRESS = 0x7C00
CODE_START = 0x5A  # after the FAT32 BPB (format.c's Dosboot32 is 0x5A bytes)
MESSAGE = b"This is not a bootable disc.\r\nPress a key to reboot.\r\n\x00"

_JUMP = bytes([0xEB, CODE_START - 2, 0x90])
_CODE = bytes.fromhex(
    "fa"  # 5a cli
    "31c0"  # 5b xor ax, ax
    "8ed8"  # 5d mov ds, ax
    "8ed0"  # 5f mov ss, ax
    "bc007c"  # 61 mov sp, 0x7c00
    "fb"  # 64 sti
    "ea6a7c0000"  # 65 jmp 0000:7c6a
    "fc"  # 6a cld
    "be857c"  # 6b mov si, 0x7c85
    "ac"  # 6e lodsb
    "84c0"  # 6f test al, al
    "7409"  # 71 jz 0x7c
    "b40e"  # 73 mov ah, 0x0e
    "bb0700"  # 75 mov bx, 0x0007
    "cd10"  # 78 int 0x10
    "ebf2"  # 7a jmp 0x6e
    "31c0"  # 7c xor ax, ax
    "cd16"  # 7e int 0x16
    "ea0000ffff"  # 80 jmp ffff:0000
)
MESSAGE_OFFSET = CODE_START + len(_CODE)

DEFAULT_PBS = _JUMP + bytes(CODE_START - len(_JUMP)) + _CODE + MESSAGE

assert MESSAGE_OFFSET == 0x85 and len(DEFAULT_PBS) <= 510
