"""hjfs as a file server: mkfs's plain writes and the server's bulk copy leave the same bytes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.api import Wstat
from imagebuild.fs.hjfs import HjfsVolume, fsck, plan
from imagebuild.fs.hjfs.cons import MKFILE_CONSOLE, console
from imagebuild.fs.hjfs.copy import PlanCopier
from imagebuild.fs.hjfs.layout import Dentry
from imagebuild.fs.hjfs.server import HjfsServer, Node
from imagebuild.fs.hjfs.users import readusers, writeusers
from imagebuild.fs.hjfs.writer import HjfsPlan
from imagebuild.fs.mkfs import BUFLEN, mkfs
from imagebuild.fs.proto import ProtoEntry, read_proto

T = 1_700_000_000
MiB = 1 << 20


class PlainWrites:
    """The hjfs server without its BulkCopy: mkfs falls back to 4088-byte writes."""

    def __init__(self, server: HjfsServer) -> None:
        self.server = server

    def attach(self, user: str) -> None:
        self.server.attach(user)

    def walk(self, path: str) -> Node | None:
        return self.server.walk(path)

    def stat(self, fid: Node) -> Dentry:
        return self.server.stat(fid)

    def create(self, parent: Node, name: str, perm: int) -> Node:
        return self.server.create(parent, name, perm)

    def write(self, fid: Node, offset: int, data: bytes | memoryview) -> None:
        self.server.write(fid, offset, data)

    def wstat(self, fid: Node, change: Wstat) -> None:
        self.server.wstat(fid, change)


def _plain_image(blocks: int, entries: list[ProtoEntry], copier: PlanCopier) -> bytes:
    server = HjfsServer(blocks, T, copier)
    server.ream()
    writeusers(server)
    readusers(server)
    for line in MKFILE_CONSOLE:
        console(server, line)
    mkfs(PlainWrites(server), entries, user="glenda", default_owner=("sys", "sys"), timestamp=T)
    storage = BytesStorage(blocks * 4096)
    HjfsPlan(server, copier).write(BlockDevice(storage, name="fs"))
    return bytes(storage.buffer)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.tuples(st.booleans(), st.integers(1, 5 * BUFLEN)),
                                       min_size=1, max_size=6))
def test_bulk_copy_equals_mkfs_writes(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                      runs: list[tuple[bool, int]]) -> None:
    rng = random.Random(seed)
    src = tmp_path_factory.mktemp("src")
    data = b"".join(bytes(n) if zero else rng.randbytes(n) for zero, n in runs)
    (src / "f").write_bytes(data)
    (src / "g").write_bytes(data[::-1] + bytes(rng.randint(0, 3 * BUFLEN)))
    (src / "empty").write_bytes(b"")
    proto = src.parent / (src.name + ".proto")
    proto.write_text("+\n")
    entries = read_proto([proto], src)
    blocks = 4 * MiB // 4096
    plain = _plain_image(blocks, entries, PlanCopier())
    bulk = BytesStorage(blocks * 4096)
    plan(blocks, entries, timestamp=T).write(BlockDevice(bulk, name="fs"))
    assert plain == bytes(bulk.buffer)
    dev = BlockDevice(BytesStorage(blocks * 4096), name="fs")
    dev.pwrite(plain, 0)
    assert HjfsVolume(dev).read("/f") == data
    assert fsck(dev) == []

