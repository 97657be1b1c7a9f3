"""A gefs reader written apart from imagebuild's, straight from 9front's C sources.

It shares no code with imagebuild.fs.gefs: its own MetroHash64_1 (hash.c),
its own decoding of the superblock (pack.c packsb), arena headers
(packarena), nodes (tree.c getval/getmsg), log blocks (blk.c readblk) and
values (packdval, packtree, lbl2kv).  Every block pointer met is verified
against the hash over its block; the result is a plain dict per dataset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

BS = 16384
MASK = (1 << 64) - 1


def metro64(data: bytes, seed: int = 0x6765) -> int:
    """hash.c metrohash64_1, written out again."""
    k0, k1, k2, k3 = 0xC83A91E1, 0x8648DBDB, 0x7BDEC03B, 0x2F5870A5

    def rot(v: int, r: int) -> int:
        return ((v >> r) | (v << (64 - r))) & MASK

    def u(n: int, at: int) -> int:
        return int.from_bytes(data[at : at + n], "little")

    end = len(data)
    h = ((seed + k2) * k0 + end) & MASK
    p = 0
    if end >= 32:
        v = [h, h, h, h]
        while p <= end - 32:
            v[0] = (rot((v[0] + u(8, p) * k0) & MASK, 29) + v[2]) & MASK
            v[1] = (rot((v[1] + u(8, p + 8) * k1) & MASK, 29) + v[3]) & MASK
            v[2] = (rot((v[2] + u(8, p + 16) * k2) & MASK, 29) + v[0]) & MASK
            v[3] = (rot((v[3] + u(8, p + 24) * k3) & MASK, 29) + v[1]) & MASK
            p += 32
        v[2] ^= rot((((v[0] + v[3]) * k0) + v[1]) & MASK, 33) * k1 & MASK
        v[3] ^= rot((((v[1] + v[2]) * k1) + v[0]) & MASK, 33) * k0 & MASK
        v[0] ^= rot((((v[0] + v[2]) * k0) + v[3]) & MASK, 33) * k1 & MASK
        v[1] ^= rot((((v[1] + v[3]) * k1) + v[2]) & MASK, 33) * k0 & MASK
        h = (h + (v[0] ^ v[1])) & MASK
    if end - p >= 16:
        a = rot((h + u(8, p) * k0) & MASK, 33) * k1 & MASK
        b = rot((h + u(8, p + 8) * k1) & MASK, 33) * k2 & MASK
        a ^= (rot(a * k0 & MASK, 35) + b) & MASK
        b ^= (rot(b * k3 & MASK, 35) + a) & MASK
        h = (h + b) & MASK
        p += 16
    for n, r in ((8, 33), (4, 15), (2, 13), (1, 25)):
        if end - p >= n:
            h = (h + u(n, p) * k3) & MASK
            h ^= rot(h, r) * k1 & MASK
            p += n
    h ^= rot(h, 33)
    h = h * k0 & MASK
    h ^= rot(h, 33)
    return h


@dataclass
class File:
    name: str
    qid: int
    mode: int
    uid: int
    gid: int
    muid: int
    mtime_ns: int
    length: int
    is_dir: bool


class Sliceable(Protocol):
    """What the reader needs of an image: its length and byte ranges (bytes, a file view)."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes: ...


class Gefs:
    """Decode a whole gefs image (bytes), checking every pointer's hash on the way."""

    def __init__(self, img: Sliceable) -> None:
        self.img = img
        self.pointers_checked = 0
        sb = img[:BS]
        assert sb[:8] == b"gefs9.00", sb[:8]
        (self.blksz, self.bufspc, self.narena, self.snapht, snapaddr, snaphash,
         _dlhd, _dlhh, _dltl, _dlth, self.flag, self.nextqid, self.nextgen,
         self.qgen) = struct.unpack_from(">IIIIqQqQqQQQQQ", sb, 8)
        p = 8 + 4 * 4 + 8 * 10
        self.arenas = [struct.unpack_from(">qQ", sb, p + 16 * i) for i in range(self.narena)]
        p += 16 * self.narena
        assert struct.unpack_from(">Q", sb, p)[0] == metro64(sb[:p]), "superblock hash"
        assert img[len(img) - len(img) % BS - BS:][:BS] == sb, "backup superblock"
        for addr, h in self.arenas:
            assert metro64(self.blk(addr)) == h, f"arena header {addr:#x}"
        self.snap = self.tree(snapaddr, snaphash, self.snapht)

    def blk(self, addr: int) -> bytes:
        return self.img[addr : addr + BS]

    def ptr(self, raw: bytes) -> bytes:
        addr, h, _gen = struct.unpack(">qQq", raw[:24])
        b = self.blk(addr)
        assert metro64(b) == h, f"block {addr:#x}: hash mismatch"
        self.pointers_checked += 1
        return b

    def tree(self, addr: int, h: int, ht: int) -> dict[bytes, bytes]:
        return self._node(struct.pack(">qQq", addr, h, 0), ht)

    def _node(self, raw: bytes, ht: int) -> dict[bytes, bytes]:
        b = self.ptr(raw)
        kind = struct.unpack_from(">H", b)[0]
        if kind == 2:  # Tleaf: nval valsz, data at 6
            assert ht == 1
            nval, _ = struct.unpack_from(">HH", b, 2)
            return dict(self._vals(b, 6, nval))
        assert kind == 1 and ht > 1, kind  # Tpivot: nval valsz nbuf bufsz, data at 10
        nval, _, nbuf, _ = struct.unpack_from(">HHHH", b, 2)
        out: dict[bytes, bytes] = {}
        keys = []
        for k, v in self._vals(b, 10, nval):
            keys.append(k)
            sub = self._node(v, ht - 1)
            assert min(sub) >= k
            out.update(sub)
        assert keys == sorted(keys)
        assert nbuf == 0, "no buffered messages expected in a written image"
        return out

    @staticmethod
    def _vals(b: bytes, data: int, nval: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(nval):
            o = struct.unpack_from(">H", b, data + 2 * i)[0] + data
            nk = struct.unpack_from(">H", b, o)[0]
            k = b[o + 2 : o + 2 + nk]
            nv = struct.unpack_from(">H", b, o + 2 + nk)[0]
            out.append((k, b[o + 4 + nk : o + 4 + nk + nv]))
        keys = [k for k, _ in out]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        return out

    def labels(self) -> dict[str, tuple[int, int]]:
        out = {}
        for k, v in self.snap.items():
            if k[0] == 3:
                assert v[0] == 4 and len(v) == 13
                out[k[1:].decode()] = struct.unpack(">qI", v[1:])
        return out

    def dataset(self, label: str) -> dict[bytes, bytes]:
        gen, _ = self.labels()[label]
        rec = self.snap[b"\x04" + struct.pack(">q", gen)]
        _nref, _nlbl, ht, _flag, g, _pred, _succ, _base = struct.unpack_from(">iiiIqqqq", rec)
        assert g == gen
        addr, h, _ = struct.unpack_from(">qQq", rec, 48)
        return self.tree(addr, h, ht)

    def files(self, label: str = "main", *, data: bool = True) -> dict[str, tuple[File, bytes]]:
        """Every path of the dataset with its File and, unless `data` is False, its bytes."""
        kvs = self.dataset(label)
        ents: dict[int, list[tuple[str, File]]] = {}
        root = None
        for k, v in kvs.items():
            if k[0] != 1:
                continue
            up = struct.unpack(">q", k[1:9])[0]
            n = struct.unpack(">H", k[9:11])[0]
            name = k[11 : 11 + n].decode("utf-8", "surrogateescape")
            (_flag, qid, _vers, qtype, mode, _atime, mtime, length, uid, gid,
             muid) = struct.unpack(">QqIBIqqQiii", v)
            f = File(name, qid, mode, uid, gid, muid, mtime, length, bool(qtype & 0x80))
            if up == -1:
                root = f
            else:
                ents.setdefault(up, []).append((name, f))
        assert root is not None
        out: dict[str, tuple[File, bytes]] = {}
        todo = [("/", root)]
        while todo:
            path, f = todo.pop()
            body = b""
            if not f.is_dir:
                if data:
                    body = self.read(kvs, f)
            else:
                up = kvs.get(b"\x02" + struct.pack(">q", f.qid))
                assert up is not None, f"{path}: no Kup backlink"
                for name, c in ents.get(f.qid, []):
                    todo.append(((path.rstrip("/") + "/" + name), c))
            out[path] = (f, body)
        return out

    def read(self, kvs: dict[bytes, bytes], f: File) -> bytes:
        """The bytes of file `f` of the dataset whose tree is `kvs`: its Kdat blocks, holes
        as zeros."""
        parts = []
        for off in range(0, f.length, BS):
            v = kvs.get(b"\x00" + struct.pack(">qQ", f.qid, off))
            n = min(BS, f.length - off)
            parts.append(bytes(n) if v is None else self.ptr(v)[:n])
        return b"".join(parts)

    def users(self) -> dict[int, str]:
        f = self.files("adm")["/users"][1].decode()
        return {int(line.split(":")[0]): line.split(":")[1] for line in f.splitlines() if line}
