"""An in-process rdfs for the boundary tests: ``Operations`` on a real cache, namespace, control
layer and reader, synced from the emulator over HTTP on 127.0.0.1 (no kernel mount; s3ql's t3
tests are the model). Requests are made as the kernel would make them, with a request context of
the mount owner or of another user."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import CONTROL_INODE, TORRENTS_INODE, Cache
from rdfs.control.files import Control
from rdfs.emulator import Emulator, FileSpec
from rdfs.fuse.operations import Operations
from rdfs.data.links import LinkResolver
from rdfs.data.reader import ReaderPool
from rdfs.data.streaming import StreamingExtras
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace

OWNER = 1000
OTHER = 2000
NO_WAIT = RetryPolicy(max_retries=0, wait_initial=0, wait_max=0, wait_jitter=0)
MOVIE_SIZE = 300_000


def ctx(uid: int = OWNER) -> Any:
    """A request context as pyfuse3 passes it (only ``uid`` matters to rdfs)."""
    return SimpleNamespace(uid=uid, gid=uid, pid=4242, umask=0o022)


@dataclass
class World:
    emulator: Emulator
    cache: Cache
    ops: Operations
    movie_id: str
    show_id: str

    def torrent_ids(self) -> list[str]:
        return sorted(self.emulator.torrent_ids())

    def inode(self, *path: str) -> int:
        """The inode of ``torrents/<path...>`` (or of a path from the root when it starts with '/')."""
        parent = TORRENTS_INODE
        parts = list(path)
        if parts and parts[0] == "/":
            parent, parts = pyfuse3.ROOT_INODE, parts[1:]
        for name in parts:
            node = self.ops.namespace.lookup(parent, name)
            assert node is not None, (parent, name)
            parent = node.inode
        return parent

    def control_inode(self, name: str) -> int:
        node = self.ops.namespace.lookup(CONTROL_INODE, name)
        assert node is not None, name
        return node.inode


@dataclass(frozen=True)
class Refused:
    """A handler's ``FUSEError``: the errno the kernel would answer."""

    errno: int

    def __repr__(self) -> str:
        return f"Refused({errno.errorcode.get(self.errno, self.errno)})"


async def outcome(call: Awaitable[Any]) -> Any:
    """The handler's answer, or ``Refused(errno)`` for the ``FUSEError`` it raised. Anything else
    leaving a handler would end pyfuse3's loop (and unmount): it propagates and fails the test."""
    try:
        return await call
    except pyfuse3.FUSEError as exc:
        return Refused(exc.errno)


def populate(emulator: Emulator) -> tuple[str, str]:
    movie = emulator.add_torrent("Movie (2024)", [FileSpec("/movie.mkv", MOVIE_SIZE), FileSpec("/Subs/en.srt", 10)])
    show = emulator.add_torrent("Show S01", [FileSpec("/e01.mkv", 5000), FileSpec("/e02.mkv", 0)])
    return movie, show


@contextlib.asynccontextmanager
async def open_world(emulator: Emulator, cache_dir: Path, *, allow_delete: bool = True) -> AsyncIterator[World]:
    """Operations over a synced cache of ``emulator``'s account; everything closed on exit."""
    movie_id, show_id = populate(emulator)
    async with RDClient(
        api_url=emulator.api_url, auth=StaticToken(emulator.token), rate_limit_per_minute=100_000, retry=NO_WAIT
    ) as client:
        cache = Cache.open(cache_dir, 4242)
        try:
            async with trio.open_nursery() as nursery:
                syncer = Syncer(client, cache)
                await syncer.sync_once()
                namespace = Namespace(cache)
                resolver = LinkResolver(client, cache)
                readers = ReaderPool(resolver, nursery=nursery, retries=0)
                control = Control(namespace, syncer, client, cache, allow_delete=allow_delete)
                await nursery.start(control.run)
                ops = Operations(
                    namespace,
                    syncer,
                    readers,
                    control,
                    uid=OWNER,
                    gid=OWNER,
                    allow_delete=allow_delete,
                    extras=StreamingExtras(client, resolver),
                )
                try:
                    yield World(emulator, cache, ops, movie_id, show_id)
                finally:
                    with trio.CancelScope(shield=True):
                        await readers.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            cache.close()


class Listing(list):
    """Stands in for pyfuse3's ReaddirToken: collects what readdir_reply is given."""


def collect_reply(token: Listing, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
    token.append((name, attr, next_id))
    return True


async def opendir(ops: Operations, inode: int, uid: int = OWNER) -> int | Refused:
    """The handle readdir gets, as the kernel and rdfs's pyfuse3 make it: opendir's, or with
    ``kernel_dir_cache`` (opendir answers ENOSYS) the directory's inode."""
    fh = await outcome(ops.opendir(inode, ctx(uid)))
    if ops.kernel_dir_cache:
        assert fh == Refused(errno.ENOSYS)
        return inode
    return fh  # type: ignore[no-any-return]


async def releasedir(ops: Operations, fh: int) -> None:
    """releasedir, which the kernel sends only when opendir answered a handle."""
    if not ops.kernel_dir_cache:
        await ops.releasedir(fh)


async def listdir(ops: Operations, inode: int, uid: int = OWNER) -> list[bytes] | Refused:
    """opendir + readdir + releasedir as the kernel does (readdir_reply patched by the caller)."""
    fh = await opendir(ops, inode, uid)
    if isinstance(fh, Refused):
        return fh
    token = Listing()
    result = await outcome(ops.readdir(fh, 0, token))
    await releasedir(ops, fh)
    if isinstance(result, Refused):
        return result
    assert [name for name, _, _ in token[:2]] == [b".", b".."]  # every listing has both
    return [name for name, _, _ in token[2:]]


def flags_to_try() -> list[int]:
    """Every open flag the kernel may pass to FUSE open, alone and with each access mode."""
    extra = [
        0, os.O_TRUNC, os.O_APPEND, os.O_DIRECTORY, os.O_NOFOLLOW, os.O_NONBLOCK, os.O_SYNC, os.O_DSYNC,
        os.O_DIRECT, os.O_NOATIME, os.O_LARGEFILE, os.O_CLOEXEC, os.O_PATH, os.O_CREAT, os.O_EXCL,
        os.O_NOCTTY, os.O_ASYNC, os.O_TMPFILE,
    ]  # fmt: skip
    return sorted({mode | flag for mode in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR) for flag in extra})


# Odd arguments the tests pass (names, xattr names, control-file junk, broken .torrent files).

NOT_UTF8 = [b"\xff", b"\xed\xa0\x80", b"caf\xe9", b"\x80abc", b"ok\xc3", b"\xf4\x90\x80\x80", b"\xc0\xaf"]

XATTR_NAMES = [
    b"security.selinux", b"security.capability", b"security.ima", b"system.posix_acl_access",
    b"system.posix_acl_default", b"system.nfs4_acl", b"trusted.overlay.opaque", b"trusted.x",
    b"user.x", b"user.rdfs.nope", b"user.", b"", b"x", b"user." + b"a" * 250, b"user.\xff", b"\xed\xa0\x80",
    b"user.rdfs.torrent_id", b"user.rdfs.file_id", b"user.rdfs.mediainfo", b"user.rdfs.transcode",
]  # fmt: skip

JUNK = [
    b"", b"\n", b"junk\n", b"\xff\xfe\x00\n", b"\xed\xa0\x80\n", b"\x00" * 100, b"magnet:?xt=urn:btih:zz\n",
    b"magnet:?xt=urn:btih:" + b"g" * 40 + b"\n", b"torrents/../..\n", b"torrents/\n", b"downloads/nothing\n",
    b"123456789\n", b"a" * 2_000_000, b"line\r\nline2\r\n", "é\u202e\n".encode(),
]  # fmt: skip

MALFORMED_TORRENTS = [
    b"dli1eei1ee", b"", b"d", b"de", b"le", b"i1e", b"4:spam", b"d4:infoi1ee", b"d4:infod4:name3:abcee",
    b"d4:infod6:lengthi-5e4:name1:xee", b"l" * 5000 + b"e" * 5000, b"d" * 3000, b"i99999999999999999999999999e",
    b"d3:cow3:moo4:spam4:eggse", b"\xff" * 100, b"d8:announce3:abc4:infod4:name" + b"9" * 30 + b":xee",
]  # fmt: skip

def truncate_attr() -> pyfuse3.EntryAttributes:
    """The attributes pyfuse3 passes to setattr for a truncate to 0."""
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 0
    return attr

def truncate_fields() -> SimpleNamespace:
    """What pyfuse3's SetattrFields holds for a truncate (its attributes are read-only)."""
    fields = dict.fromkeys(("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid"), False)
    return SimpleNamespace(update_size=True, **fields)
