"""MetroHash64 (variant 1), the checksum of every gefs block and log body.

gefs's hash.c carries J. Andrew Rogers's metrohash64_1 and calls it with the
seed 0x6765 ('ge'): `blkhash()` over a whole 16 KiB block, `bufhash()` over a
log block's entries and over the packed superblock.  Words are read
little-endian (the C reads them through u64int pointers on little-endian
machines, and the reference test vectors assume that).

Reference: metrohash64.cpp (MetroHash64 v1), its testvector.h (seed 0 and 1
over a 63-byte key); gefs hash.c bufhash(), blkhash().
"""

from __future__ import annotations

import struct
import sys

SEED = 0x6765  # hash.c: metrohash64_1(src, len, 0x6765)

_K0 = 0xC83A91E1
_K1 = 0x8648DBDB
_K2 = 0x7BDEC03B
_K3 = 0x2F5870A5
_M = 0xFFFFFFFFFFFFFFFF


def _rotr(v: int, k: int) -> int:
    return ((v >> k) | (v << (64 - k))) & _M


def metrohash64_1(data: bytes | bytearray | memoryview, seed: int = SEED) -> int:
    """The 64-bit MetroHash64_1 of `data` with `seed`, as an unsigned int."""
    buf = bytes(data)
    n = len(buf)
    h = (((seed + _K2) * _K0) + n) & _M
    pos = 0
    if n >= 32:
        nblk = n // 32
        words = struct.unpack_from(f"<{nblk * 4}Q", buf, 0)
        v0 = v1 = v2 = v3 = h
        m = _M
        for i in range(0, nblk * 4, 4):
            v0 = (v0 + words[i] * _K0) & m
            v0 = (((v0 >> 29) | (v0 << 35)) + v2) & m
            v1 = (v1 + words[i + 1] * _K1) & m
            v1 = (((v1 >> 29) | (v1 << 35)) + v3) & m
            v2 = (v2 + words[i + 2] * _K2) & m
            v2 = (((v2 >> 29) | (v2 << 35)) + v0) & m
            v3 = (v3 + words[i + 3] * _K3) & m
            v3 = (((v3 >> 29) | (v3 << 35)) + v1) & m
        pos = nblk * 32
        t = (((v0 + v3) * _K0) + v1) & _M
        v2 ^= (_rotr(t, 33) * _K1) & _M
        t = (((v1 + v2) * _K1) + v0) & _M
        v3 ^= (_rotr(t, 33) * _K0) & _M
        t = (((v0 + v2) * _K0) + v3) & _M
        v0 ^= (_rotr(t, 33) * _K1) & _M
        t = (((v1 + v3) * _K1) + v2) & _M
        v1 ^= (_rotr(t, 33) * _K0) & _M
        h = (h + (v0 ^ v1)) & _M
    if n - pos >= 16:
        a, b = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        v0 = (h + a * _K0) & _M
        v0 = (_rotr(v0, 33) * _K1) & _M
        v1 = (h + b * _K1) & _M
        v1 = (_rotr(v1, 33) * _K2) & _M
        v0 ^= (_rotr((v0 * _K0) & _M, 35) + v1) & _M
        v1 ^= (_rotr((v1 * _K3) & _M, 35) + v0) & _M
        h = (h + v1) & _M
    if n - pos >= 8:
        (a,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        h = (h + a * _K3) & _M
        h ^= (_rotr(h, 33) * _K1) & _M
    if n - pos >= 4:
        (a,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        h = (h + a * _K3) & _M
        h ^= (_rotr(h, 15) * _K1) & _M
    if n - pos >= 2:
        (a,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        h = (h + a * _K3) & _M
        h ^= (_rotr(h, 13) * _K1) & _M
    if n - pos >= 1:
        h = (h + buf[pos] * _K3) & _M
        h ^= (_rotr(h, 25) * _K1) & _M
    h ^= _rotr(h, 33)
    h = (h * _K0) & _M
    h ^= _rotr(h, 33)
    return h


def bufhash(data: bytes | bytearray | memoryview) -> int:
    """hash.c bufhash(): log bodies and the packed superblock."""
    return metrohash64_1(data, SEED)


def blkhash(block: bytes | bytearray | memoryview) -> int:
    """hash.c blkhash(): a whole block, the hash a Bptr carries."""
    return metrohash64_1(block, SEED)


def blkhash_many(blocks: list[bytes]) -> list[int]:
    """blkhash() of many whole blocks at once, the same values as one at a time.

    MetroHash's four lanes are computed for every block together: lane
    values of all blocks are packed into one integer, 128 bits apart, so
    that additions, constant multiplications, rotations and xors act on
    every block in one Python operation (the lanes never carry into each
    other: sums stay under 2**65 and products under 2**96).
    """
    from array import array

    n = len(blocks)
    if n < 4 or sys.byteorder != "little":
        return [blkhash(b) for b in blocks]
    size = len(blocks[0])
    if size % 32 or any(len(b) != size for b in blocks):
        return [blkhash(b) for b in blocks]
    nwords = size // 8
    words = array("Q")
    words.frombytes(b"".join(blocks))
    spread = array("Q", bytes(16 * n))
    rep = sum(1 << (128 * i) for i in range(n))
    m = _M * rep

    def column(j: int) -> int:
        spread[0::2] = words[j::nwords]
        return int.from_bytes(spread.tobytes(), "little")

    def rot(v: int, k: int) -> int:
        return ((v >> k) | (v << (64 - k))) & m

    h = ((((SEED + _K2) * _K0) + size) & _M) * rep
    v0 = v1 = v2 = v3 = h
    k0, k1, k2, k3 = _K0, _K1, _K2, _K3
    for j in range(0, nwords, 4):
        v0 = (v0 + column(j) * k0) & m
        v0 = ((((v0 >> 29) | (v0 << 35)) & m) + v2) & m
        v1 = (v1 + column(j + 1) * k1) & m
        v1 = ((((v1 >> 29) | (v1 << 35)) & m) + v3) & m
        v2 = (v2 + column(j + 2) * k2) & m
        v2 = ((((v2 >> 29) | (v2 << 35)) & m) + v0) & m
        v3 = (v3 + column(j + 3) * k3) & m
        v3 = ((((v3 >> 29) | (v3 << 35)) & m) + v1) & m
    t = (((v0 + v3) & m) * k0 + v1) & m
    v2 ^= (rot(t, 33) * k1) & m
    t = (((v1 + v2) & m) * k1 + v0) & m
    v3 ^= (rot(t, 33) * k0) & m
    t = (((v0 + v2) & m) * k0 + v3) & m
    v0 ^= (rot(t, 33) * k1) & m
    t = (((v1 + v3) & m) * k1 + v2) & m
    v1 ^= (rot(t, 33) * k0) & m
    h = (h + (v0 ^ v1)) & m
    h ^= rot(h, 33)
    h = (h * k0) & m
    h ^= rot(h, 33)
    out = array("Q")
    out.frombytes(h.to_bytes(16 * n, "little"))
    return list(out[0::2])
