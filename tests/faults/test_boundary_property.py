"""A property over the whole handler surface (hypothesis): whatever sequence of requests the kernel
passes, with whatever arguments, only ``FUSEError`` leaves a handler, the account is unchanged and
the filesystem answers right afterwards (exact bytes)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdfs.store.metadata import CONTROL_INODE, TORRENTS_INODE
from rdfs.emulator import Emulator
from tests.boundary_world import (
    JUNK,
    MALFORMED_TORRENTS,
    NOT_UTF8,
    XATTR_NAMES,
    OTHER,
    OWNER,
    Refused,
    World,
    collect_reply,
    ctx,
    flags_to_try,
    open_world,
    opendir,
    outcome,
    releasedir,
    truncate_attr,
    truncate_fields,
)

NAMES = [b"Movie (2024)", b"Show S01", b"movie.mkv", b"Subs", b"en.srt", b"add", b"status", b".", b"..", b"x.torrent"]
names = st.one_of(
    st.sampled_from(NAMES + NOT_UTF8 + [b"n" * 255, b"n" * 256, b"x" * 4096]),
    st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b),
)
inodes = st.one_of(st.tuples(st.just("known"), st.integers(0, 63)), st.tuples(st.just("raw"), st.integers(0, 2**64 - 1)))
handles = st.one_of(st.tuples(st.just("open"), st.integers(0, 15)), st.tuples(st.just("raw"), st.integers(0, 2**64 - 1)))
offsets = st.one_of(st.sampled_from([0, 1, 4095, 299_999, 300_000, 2**31, 2**62, 2**63 - 1]), st.integers(0, 2**63 - 1))
sizes = st.one_of(st.sampled_from([0, 1, 4096, 131072, 1 << 20]), st.integers(0, 1 << 20))
flags = st.one_of(st.sampled_from(flags_to_try()), st.integers(0, 2**32 - 1))
data = st.one_of(st.sampled_from(JUNK[:-3] + MALFORMED_TORRENTS), st.binary(max_size=2000))
users = st.sampled_from([OWNER, OWNER, OTHER, 0])

steps = st.one_of(
    st.tuples(st.just("lookup"), inodes, names, users),
    st.tuples(st.just("getattr"), inodes, users),
    st.tuples(st.just("truncate"), inodes, users),
    st.tuples(st.just("listdir"), inodes, offsets),
    st.tuples(st.just("open"), inodes, flags, users),
    st.tuples(st.just("read"), handles, offsets, sizes),
    st.tuples(st.just("write"), handles, offsets, data),
    st.tuples(st.just("flush"), handles),
    st.tuples(st.just("release"), handles),
    st.tuples(st.just("create"), inodes, names, flags, users),
    st.tuples(st.just("unlink"), inodes, names, users),
    st.tuples(st.just("rmdir"), inodes, names, users),
    st.tuples(st.just("mkdir"), inodes, names, users),
    st.tuples(st.just("rename"), inodes, names, inodes, names),
    st.tuples(st.just("getxattr"), inodes, st.one_of(st.sampled_from(XATTR_NAMES), st.binary(max_size=300)), users),
    st.tuples(st.just("listxattr"), inodes),
    st.tuples(st.just("setxattr"), inodes, st.sampled_from(XATTR_NAMES), data),
    st.tuples(st.just("removexattr"), inodes, st.sampled_from(XATTR_NAMES)),
    st.tuples(st.just("statfs"), users),
    st.tuples(st.just("forget"), inodes, st.integers(0, 2**64 - 1)),
    st.tuples(st.just("fsync"), handles),
    st.tuples(st.just("readlink"), inodes),
    st.tuples(st.just("access"), inodes, st.integers(0, 7)),
)


class Runner:
    """Turns drawn steps into handler calls on a world; remembers inodes and handles it saw."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.ops = world.ops
        self.inodes = [pyfuse3.ROOT_INODE, TORRENTS_INODE, 3, CONTROL_INODE]
        self.inodes += [n.inode for n in self.ops.namespace.children(TORRENTS_INODE)]
        self.handles: list[int] = []

    def inode(self, ref: tuple[str, int]) -> int:
        kind, value = ref
        return self.inodes[value % len(self.inodes)] if kind == "known" else value

    def fh(self, ref: tuple[str, int]) -> int:
        kind, value = ref
        if kind == "open" and self.handles:
            return self.handles[value % len(self.handles)]
        return value

    def seen(self, answer: Any) -> None:
        if isinstance(answer, pyfuse3.EntryAttributes) and answer.st_ino not in self.inodes:
            self.inodes.append(answer.st_ino)
        elif isinstance(answer, pyfuse3.FileInfo):
            self.handles.append(answer.fh)
        elif isinstance(answer, tuple) and answer and isinstance(answer[0], pyfuse3.FileInfo):
            self.handles.append(answer[0].fh)
            self.seen(answer[1])

    async def run(self, step: tuple) -> Any:
        ops, op, args = self.ops, step[0], step[1:]
        if op == "lookup":
            call = ops.lookup(self.inode(args[0]), args[1], ctx(args[2]))
        elif op == "getattr":
            call = ops.getattr(self.inode(args[0]), ctx(args[1]))
        elif op == "truncate":
            call = ops.setattr(self.inode(args[0]), truncate_attr(), truncate_fields(), None, ctx(args[1]))
        elif op == "listdir":
            return await self.listdir(self.inode(args[0]), args[1])
        elif op == "open":
            call = ops.open(self.inode(args[0]), args[1], ctx(args[2]))
        elif op == "read":
            call = ops.read(self.fh(args[0]), args[1], args[2])
        elif op == "write":
            call = ops.write(self.fh(args[0]), args[1], args[2])
        elif op in ("flush", "fsync"):
            call = ops.flush(self.fh(args[0])) if op == "flush" else ops.fsync(self.fh(args[0]), False)
        elif op == "release":
            fh = self.fh(args[0])
            if fh in self.handles:
                self.handles.remove(fh)
            call = ops.release(fh)
        elif op == "create":
            call = ops.create(self.inode(args[0]), args[1], 0o644, args[2], ctx(args[3]))
        elif op in ("unlink", "rmdir"):
            call = getattr(ops, op)(self.inode(args[0]), args[1], ctx(args[2]))
        elif op == "mkdir":
            call = ops.mkdir(self.inode(args[0]), args[1], 0o755, ctx(args[2]))
        elif op == "rename":
            call = ops.rename(self.inode(args[0]), args[1], self.inode(args[2]), args[3], 0, ctx())
        elif op == "getxattr":
            call = ops.getxattr(self.inode(args[0]), args[1], ctx(args[2]))
        elif op == "listxattr":
            call = ops.listxattr(self.inode(args[0]), ctx())
        elif op == "setxattr":
            call = ops.setxattr(self.inode(args[0]), args[1], args[2], ctx())
        elif op == "removexattr":
            call = ops.removexattr(self.inode(args[0]), args[1], ctx())
        elif op == "statfs":
            call = ops.statfs(ctx(args[0]))
        elif op == "forget":
            call = ops.forget([(self.inode(args[0]), args[1])])
        elif op == "readlink":
            call = ops.readlink(self.inode(args[0]), ctx())
        else:
            call = ops.access(self.inode(args[0]), args[1], ctx())
        answer = await outcome(call)
        self.seen(answer)
        return answer

    async def listdir(self, inode: int, start: int) -> Any:
        fh = await opendir(self.ops, inode)
        if isinstance(fh, Refused):
            return fh
        token: list = []
        answer = await outcome(self.ops.readdir(fh, start, token))
        for _, attr, _ in token:
            self.seen(attr)
        await releasedir(self.ops, fh)
        return answer

    async def close_all(self) -> None:
        for fh in list(self.handles):
            await outcome(self.ops.release(fh))
        self.handles.clear()


async def check_steps(drawn: list[tuple], cache_dir: Path) -> None:
    emulator = Emulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        async with open_world(emulator, cache_dir, allow_delete=False) as world:
            before = world.torrent_ids()
            runner = Runner(world)
            for step in drawn:
                with trio.fail_after(30):  # a handler that hangs is a failure too
                    await runner.run(step)
            await runner.close_all()
            # The filesystem still answers, with the right bytes, and the account is as it was.
            assert world.torrent_ids() == before
            assert world.ops.open_files == 0
            movie = await world.ops.lookup(world.inode("Movie (2024)"), b"movie.mkv", ctx())
            fh = (await world.ops.open(movie.st_ino, os.O_RDONLY, ctx())).fh
            assert await world.ops.read(fh, 12345, 1000) == emulator.file_bytes(world.movie_id, 1, 12345, 1000)
            await world.ops.release(fh)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(240)
@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=st.lists(steps, min_size=1, max_size=40))
def test_only_fuse_errors_leave_any_handler(drawn: list[tuple]) -> None:
    original = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = collect_reply
    logging.getLogger("rdfs").setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            trio.run(check_steps, drawn, Path(cache_dir))
    finally:
        pyfuse3.readdir_reply = original
