"""The demo root: generated stand-ins for every input the recipes read.

On a fresh clone there is no built 9front tree, so `./dev build` builds the
default targets from this root instead: the whole pipeline runs and the
images are well-formed, but the kernels and boot programs are stand-ins (the
boot sectors print a message and halt) and the images do not boot 9front.
Every build from it says so, and plan9.ini carries a comment saying so.
"""

from __future__ import annotations

from pathlib import Path

from imagebuild.partition.sector0 import BOOT_AREA, MAGIC_OFFSET
from imagebuild.recipe.load import list_recipes, load_recipe

DEMO_MARKER = ".imagebuild-demo-root"
KERNEL_SIZE = 256 * 1024


def _real_mode_print(message: str, origin: int) -> bytes:
    """16-bit code loaded at 0x7c00 (+origin): print `message` with int 10h, then halt."""
    msg_addr = 0x7C00 + origin + 25
    code = bytes([
        0x31, 0xC0,                                  # xor ax, ax
        0x8E, 0xD8,                                  # mov ds, ax
        0xBE, msg_addr & 0xFF, msg_addr >> 8,        # mov si, msg
        0xFC,                                        # cld
        0xAC,                                        # next: lodsb
        0x08, 0xC0,                                  # or al, al
        0x74, 0x09,                                  # jz halt
        0xB4, 0x0E,                                  # mov ah, 0eh  (teletype output)
        0xBB, 0x07, 0x00,                            # mov bx, 7
        0xCD, 0x10,                                  # int 10h
        0xEB, 0xF2,                                  # jmp next
        0xF4,                                        # halt: hlt
        0xEB, 0xFD,                                  # jmp halt
    ])
    return code + message.encode("ascii") + b"\r\n\0"


# Stand-in for /386/mbr: like 9front's mbr it moves itself to 0x600, finds the
# active partition and chain-loads that partition's first sector (the 9fat boot
# sector with the pbs) to 0x7c00 with an int 13h extended read, so booting a
# demo image exercises the MBR table and the pbs placement.  Assembled by hand:
DEMO_MBR_ORIGIN = 0x600
_DAP, _MSG = 0x5A, 0x6A  # offsets of the disk address packet and the message
DEMO_MBR_CODE = bytes([
    0xFA,                                   # 00 cli
    0x31, 0xC0,                             # 01 xor ax, ax
    0x8E, 0xD0,                             # 03 mov ss, ax
    0xBC, 0x00, 0x7C,                       # 05 mov sp, 7c00h
    0x8E, 0xD8,                             # 08 mov ds, ax
    0x8E, 0xC0,                             # 0a mov es, ax
    0xFB,                                   # 0c sti
    0xFC,                                   # 0d cld
    0xBE, 0x00, 0x7C,                       # 0e mov si, 7c00h
    0xBF, 0x00, 0x06,                       # 11 mov di, 0600h
    0xB9, 0x00, 0x01,                       # 14 mov cx, 256
    0xF3, 0xA5,                             # 17 rep movsw
    0xEA, 0x1E, 0x06, 0x00, 0x00,           # 19 jmp 0000:061e
    0xBE, 0xBE, 0x07,                       # 1e mov si, 07beh (the relocated table)
    0xB9, 0x04, 0x00,                       # 21 mov cx, 4
    0xF6, 0x04, 0x80,                       # 24 find: test byte [si], 80h
    0x75, 0x07,                             # 27 jnz found
    0x83, 0xC6, 0x10,                       # 29 add si, 16
    0xE2, 0xF6,                             # 2c loop find
    0xEB, 0x16,                             # 2e jmp fail
    0x66, 0x8B, 0x44, 0x08,                 # 30 found: mov eax, [si+8] (LBA start)
    0x66, 0xA3, 0x62, 0x06,                 # 34 mov [dap+8], eax
    0xBE, 0x5A, 0x06,                       # 38 mov si, dap
    0xB4, 0x42,                             # 3b mov ah, 42h (dl: the BIOS's drive)
    0xCD, 0x13,                             # 3d int 13h
    0x72, 0x05,                             # 3f jc fail
    0xEA, 0x00, 0x7C, 0x00, 0x00,           # 41 jmp 0000:7c00
    0xBE, 0x6A, 0x06,                       # 46 fail: mov si, msg
    0xAC,                                   # 49 print: lodsb
    0x08, 0xC0,                             # 4a or al, al
    0x74, 0x09,                             # 4c jz halt
    0xB4, 0x0E,                             # 4e mov ah, 0eh
    0xBB, 0x07, 0x00,                       # 50 mov bx, 7
    0xCD, 0x10,                             # 53 int 10h
    0xEB, 0xF2,                             # 55 jmp print
    0xF4,                                   # 57 halt: hlt
    0xEB, 0xFD,                             # 58 jmp halt
    0x10, 0x00, 0x01, 0x00, 0x00, 0x7C, 0x00, 0x00,  # 5a dap: size, 1 sector to 0000:7c00
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  # 62      LBA (filled in above)
])


def demo_mbr() -> bytes:
    """Stand-in for /386/mbr: 446 bytes of chain loader, no partition table."""
    assert len(DEMO_MBR_CODE) == _MSG and DEMO_MBR_CODE[_DAP] == 0x10
    message = b"imagebuild demo mbr: no active partition or read error\r\n\0"
    return (DEMO_MBR_CODE + message).ljust(BOOT_AREA, b"\0")


DEMO_PBS_MESSAGE = "imagebuild demo pbs: loading 9bootfat"
DEMO_PBS_FAILED = "imagebuild demo pbs: no 9bootfat"
DEMO_9BOOTFAT_MESSAGE = "imagebuild demo 9bootfat: loaded by the pbs"

# Stand-in for /386/pbs, code from 0x5a (after the BPB), assembled from:
#   cli; ds=es=ss=0; sp=7c00h; sti; cld; [590h]=dl; print msg
#   cx=[7c11h] (root entries); jz fail (FAT32); [598h]=(cx+15)/16 (root sectors)
#   eax=[7c16h]*[7c10h]+[7c0eh]+[7c1ch] (FATs*FAT size+reserved+hidden); [594h]=eax
#   for each root sector ebx: read it to 600h; for each 32-byte entry si:
#     [si]==0: fail; 11 bytes == "9BOOTFAT   ": found
#   found: cx=min((size+511)/512, 64); eax=([si+26]-2)*[7c0dh]+[594h]+[598h]
#          read cx sectors to 0000:8000; dl=[590h]; jmp 0000:8000
#   fail: print nomsg; hlt
#   read: int 13h ah=42h with the packet at 580h; jc fail
# so booting a demo disk shows mbr -> pbs -> 9bootfat the way 9front's pbs goes
# (a FAT12/16 root, a contiguous file; 9front's pbs also walks the FAT chain).
_PBS_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfbfc8816"
    "9005be7e7de8f2008b0e117c85c90f84"
    "b00083c10fc1e904890e9805660fb706"
    "167c660fb60e107c66f7e1660fb70e0e"
    "7c6601c86603061c7c66a394056631db"
    "3b1e9805737c66a194056601d8b90100"
    "bf0006e87500be0006803c00746456bf"
    "737db90b00f3a65e740d83c62081fe00"
    "0872e66643ebc9668b441c6605ff0100"
    "0066c1e8096683f840760666b8400000"
    "0050660fb7441a6683e802660fb60e0d"
    "7c66f7e16603069405660fb70e980566"
    "01c859bf0080e812008a169005ea0080"
    "0000bea67de83200f4ebfdc706800510"
    "00890e8205893e8405c7068605000066"
    "a3880566c7068c0500000000be80058a"
    "169005b442cd1372c9c3ac08c07409b4"
    "0ebb0700cd10ebf2c3"
)
_PBS_NAME, _PBS_MSG, _PBS_NOMSG = 0x7D73, 0x7D7E, 0x7DA6  # addresses the code uses


def demo_pbs() -> bytes:
    """Stand-in for /386/pbs: jump over a FAT32-sized BPB, code at 0x5a that loads 9bootfat."""
    jump = bytes([0xEB, 0x58, 0x90])  # jmp 0x5a; nop
    msg = DEMO_PBS_MESSAGE.encode() + b"\r\n\0"
    nomsg = DEMO_PBS_FAILED.encode() + b"\r\n\0"
    body = jump.ljust(0x5A, b"\0") + _PBS_CODE
    assert 0x7C00 + len(body) == _PBS_NAME
    body += b"9BOOTFAT   "
    assert 0x7C00 + len(body) == _PBS_MSG
    body += msg
    assert 0x7C00 + len(body) == _PBS_NOMSG
    return (body + nomsg).ljust(MAGIC_OFFSET, b"\0")


def _pic_print(message: str) -> bytes:
    """16-bit code run from any address of segment 0: print `message`, halt.
    xor ax,ax; mov ds,ax; call 1f; 1: pop si; add si,msg-1b; cld; then as _real_mode_print."""
    head = bytes.fromhex("31c08ed8e800005e81c61700fc")
    loop = bytes.fromhex("ac08c07409b40ebb0700cd10ebf2f4ebfd")
    return head + loop + message.encode("ascii") + b"\r\n\0"


def _stand_in(path: str, size: int) -> bytes:
    """Deterministic filler named after the file it stands in for."""
    import hashlib

    header = f"imagebuild demo stand-in for {path}; not the real file\n".encode()
    out = bytearray(header)
    block = hashlib.sha256(path.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


# Our own small protos in the dist protos' places, listing the demo tree below
# (the real distproto lists the whole distribution).
DEMO_DISTPROTO = """\
mode=ug+rw
mode=o-w
uid=sys
gid=sys
adm\td775 adm adm
\tuid=adm
\tgid=adm
\ttimezone\td775
\t\t*
cfg\td775
lib\td775
\t*
\tndb\td775
\t\t*
rc\td775
\t+
$objtype\td775
\t*
\tbin\td775
\t\t+
mail\td775 upas upas
\tuid=upas
\tgid=upas
\tlib\td775
\t\t*
usr\td775
\tglenda\td775 glenda glenda
\t\tuid=glenda
\t\tgid=glenda
\t\tlib\td775
\t\t\t*
\t\ttmp\td775
"""
DEMO_BOOTPROTO = """\
uid=sys
gid=sys
386\td775
\t9bootfat\t664
\t9boothyb\t664
\t9bootiso\t664
\t9bootpxe\t664
\tefiboot.fat\t664
\tbootia32.efi\t664
\tbootx64.efi\t664
\tmbr\t664
\tpbs\t664
cfg\td775
\tplan9.ini\t664
"""
OBJTYPES = ("386", "amd64", "arm", "arm64")


DEMO_9BOOTISO_MESSAGE = "imagebuild demo 9bootiso: El Torito loaded this stand-in"
DEMO_9BOOTHYB_MESSAGE = "imagebuild demo 9boothyb: the ESP's 9bootfat stand-in"
DEMO_EFI_FILES = ("386/bootia32.efi", "386/bootx64.efi")


def demo_9bootiso() -> bytes:
    """Stand-in for /386/9bootiso: no-emulation boot code run at 0x7c00 that prints and halts;
    as long as the real one (over the 2 KiB the BIOS loads), so the catalog says 4 sectors."""
    code = _real_mode_print(DEMO_9BOOTISO_MESSAGE, 0)
    return code + _stand_in("386/9bootiso", 32 * 1024 - len(code))


def demo_9boothyb() -> bytes:
    """Stand-in for /386/9boothyb (9bootfat on the hybrid ESP): the demo pbs loads it at
    0000:8000; it prints and halts."""
    code = _pic_print(DEMO_9BOOTHYB_MESSAGE)
    return code + _stand_in("386/9boothyb", 32 * 1024 - len(code))


def demo_9bootfat() -> bytes:
    """Stand-in for /386/9bootfat: loaded by the demo pbs, prints and halts."""
    code = _pic_print(DEMO_9BOOTFAT_MESSAGE)
    return code + _stand_in("386/9bootfat", 32 * 1024 - len(code))


def demo_efiboot_fat(efi_files: dict[str, bytes]) -> bytes:
    """Stand-in for /386/efiboot.fat: 1 MiB `disk/format -xd -t hard` holding
    efi/boot/boot*.efi, as sys/src/boot/efi/mkfile makes it."""
    from imagebuild.disk.device import BlockDevice, BytesStorage
    from imagebuild.fs.fat.format import format_fat
    from imagebuild.fs.fat.tree import add_tree

    storage = BytesStorage(1 << 20)
    device = BlockDevice(storage)
    format_fat(device, [], xflag=True, disk_type="hard", timestamp=0)
    add_tree(device, [("efi/boot/" + p.rsplit("/", 1)[-1], efi_files[p])
                      for p in sorted(efi_files)], timestamp=0)
    return storage.pread(storage.size, 0)


def demo_tree() -> dict[str, bytes]:
    """A small stand-in distribution for the fs partition, with the dirs `mk binds` binds."""
    text = "# imagebuild demo stand-in: {}\n".format
    files = {
        "sys/lib/sysconfig/proto/distproto": DEMO_DISTPROTO.encode(),
        "sys/lib/sysconfig/proto/9bootproto": DEMO_BOOTPROTO.encode(),
        "adm/timezone/GMT": b"GMT 0 GMT 0\n",
        "sys/lib/dist/adm/timezone/local": b"GMT 0 GMT 0\n",
        "sys/lib/dist/cfg/plan9.ini": text("plan9.ini").encode() + b"bootfile=9pc64\n",
        "sys/lib/dist/mail/lib/remotemail": text("remotemail").encode(),
        "sys/lib/dist/ndb/local": text("ndb").encode() + b"sys=demo ether=000000000000\n",
        "sys/lib/dist/usr/glenda/lib/profile": text("profile").encode(),
        "sys/lib/dist/usr/glenda/tmp/.placeholder": b"",
        "lib/words": b"".join(w.encode() + b"\n" for w in ("glenda", "plan", "nine", "front")),
        "lib/ndb/common": text("ndb common").encode(),
        "mail/README": text("mail spool; only mail/lib is copied").encode(),
        "rc/bin/hello": b"#!/bin/rc\necho hello from the demo root\n",
        "rc/lib/rcmain": text("rcmain").encode(),
        "rc/lib/empty": b"",
    }
    for objtype in OBJTYPES:
        for name in ("echo", "cat", "rc"):
            files[f"{objtype}/bin/{name}"] = _stand_in(f"{objtype}/bin/{name}", 12 * 1024)
    files["amd64/bin/big"] = _stand_in("amd64/bin/big", 300 * 1024 + 7)
    efi = {p: b"MZ" + _stand_in(p, 8 * 1024 - 2) for p in DEMO_EFI_FILES}
    files.update(efi)
    files["386/9bootpxe"] = _stand_in("386/9bootpxe", 32 * 1024)
    files["386/9bootfat"] = demo_9bootfat()
    files["386/9bootiso"] = demo_9bootiso()
    files["386/9boothyb"] = demo_9boothyb()
    files["386/efiboot.fat"] = demo_efiboot_fat(efi)
    return files


def demo_files() -> dict[str, bytes]:
    """Root-relative path -> content, for every input of every recipe and the fs tree."""
    files: dict[str, bytes] = demo_tree()
    for name in list_recipes():
        recipe = load_recipe(name)
        for path in recipe.root_inputs():
            if path in files:
                continue
            if path == "386/mbr":
                files[path] = demo_mbr()
            elif path == "386/pbs":
                files[path] = demo_pbs()
            elif path in recipe.kernels:
                files[path] = _stand_in(path, KERNEL_SIZE)
            elif path.endswith(".scr"):
                files[path] = f"# imagebuild demo stand-in for {path}\n".encode()
            else:
                files[path] = _stand_in(path, 4096 if "9boot" not in path else 32 * 1024)
    return files


def make_demo_root(root: Path) -> Path:
    """Write the demo root (only files whose content changed, so doit sees no change)."""
    wanted = demo_files()
    wanted[DEMO_MARKER] = b"This directory is imagebuild's generated demo root.\n"
    for rel, data in wanted.items():
        path = root / rel
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return root


def is_demo_root(root: Path) -> bool:
    """True when `root` is a generated demo root (it carries the marker file)."""
    return (root / DEMO_MARKER).is_file()
