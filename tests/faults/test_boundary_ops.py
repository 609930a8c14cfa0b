"""Every ``Operations`` handler with odd arguments, in process (no kernel): only ``FUSEError``
leaves a handler, each with the errno the README's table names, and nothing changes upstream."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pyfuse3
import pytest
import trio

from rdfs.api.errors import NetworkError
from rdfs.store.metadata import CONTROL_INODE, DOWNLOADS_INODE, TORRENTS_INODE
from rdfs.fuse.operations import Operations
from rdfs.outcome import FsError
from rdfs.events import TreeChange
from tests.boundary_world import (
    JUNK,
    MALFORMED_TORRENTS,
    NOT_UTF8,
    XATTR_NAMES,
    truncate_attr,
    truncate_fields,
    MOVIE_SIZE,
    OTHER,
    OWNER,
    Refused,
    World,
    collect_reply,
    ctx,
    flags_to_try,
    listdir,
    open_world,
    outcome,
)

ENOENT, ENAMETOOLONG, EROFS, EACCES, EINVAL, EIO = (
    Refused(errno.ENOENT), Refused(errno.ENAMETOOLONG), Refused(errno.EROFS), Refused(errno.EACCES),
    Refused(errno.EINVAL), Refused(errno.EIO),
)  # fmt: skip
ENOATTR = Refused(pyfuse3.ENOATTR)
NAME_255 = b"n" * 255


@pytest.fixture
async def world(emulator, tmp_path, monkeypatch):
    monkeypatch.setattr(pyfuse3, "readdir_reply", collect_reply)
    async with open_world(emulator, tmp_path) as w:
        yield w


@pytest.fixture
def errors(caplog):
    """ERROR records of rdfs: an odd argument must be answered by a rule, not by the catch-all."""
    caplog.set_level(logging.INFO, logger="rdfs")
    return lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]


def parents(w: World) -> list[int]:
    return [pyfuse3.ROOT_INODE, TORRENTS_INODE, DOWNLOADS_INODE, CONTROL_INODE, w.inode("Movie (2024)")]


async def test_names_that_cannot_exist(world: World, errors) -> None:
    ops, before = world.ops, world.torrent_ids()
    for parent in parents(world):
        for name in NOT_UTF8 + [NAME_255, b"x" * 200 + "é".encode() * 27]:
            assert await outcome(ops.lookup(parent, name, ctx())) == ENOENT, (parent, name)
            assert await outcome(ops.unlink(parent, name, ctx())) == ENOENT, (parent, name)
            assert await outcome(ops.rmdir(parent, name, ctx())) == ENOENT, (parent, name)
        for name in (b"n" * 256, b"\xff" * 256, b"x" * 4096):
            for call in (ops.lookup, ops.unlink, ops.rmdir):
                assert await outcome(call(parent, name, ctx())) == ENAMETOOLONG, (call, parent, len(name))
            for call in (ops.mkdir(parent, name, 0o755, ctx()), ops.symlink(parent, name, b"t", ctx())):
                assert await outcome(call) == EROFS
    # Creating: only .rdfs/ takes files, and there a name that is not UTF-8 is refused as such.
    for name in NOT_UTF8:
        assert await outcome(ops.create(CONTROL_INODE, name + b".torrent", 0o644, os.O_WRONLY, ctx())) == EINVAL
        assert await outcome(ops.create(TORRENTS_INODE, name, 0o644, os.O_WRONLY, ctx())) == EROFS
        assert await outcome(ops.mknod(TORRENTS_INODE, name, 0o644, 0, ctx())) == EROFS
        assert await outcome(ops.rename(TORRENTS_INODE, name, TORRENTS_INODE, b"x", 0, ctx())) == EROFS
        assert await outcome(ops.link(world.inode("Movie (2024)", "movie.mkv"), TORRENTS_INODE, name, ctx())) == EROFS
    assert await outcome(ops.create(CONTROL_INODE, b"x" * 250 + b".torrent", 0o644, os.O_WRONLY, ctx())) == ENAMETOOLONG
    # The tree is intact and answers as before; nothing changed upstream; no catch-all was needed.
    movie = await ops.lookup(TORRENTS_INODE, "Movie (2024)".encode(), ctx())
    assert stat.S_ISDIR(movie.st_mode)
    assert world.torrent_ids() == before
    assert errors() == []


async def test_bad_inodes(world: World, errors) -> None:
    ops = world.ops
    for inode in (0, 999, 10**9, 2**63 - 1, 2**63, 2**64 - 1):
        assert await outcome(ops.getattr(inode, ctx())) == ENOENT, inode
        assert await outcome(ops.lookup(inode, b"x", ctx())) in (ENOENT,), inode
        assert await listdir(ops, inode) == ENOENT
        assert await outcome(ops.open(inode, os.O_RDONLY, ctx())) == ENOENT
        assert await outcome(ops.getxattr(inode, b"user.x", ctx())) == ENOENT
        assert await outcome(ops.unlink(inode, b"x", ctx())) == ENOENT
    for fh in (0, 12345, 2**64 - 1):
        assert await outcome(ops.read(fh, 0, 4096)) == Refused(errno.EBADF)
        assert await outcome(ops.write(fh, 0, b"x")) == EROFS
        assert await outcome(ops.flush(fh)) is None
        assert await outcome(ops.release(fh)) is None
    await ops.forget([(2**64 - 1, 1), (5, 10**9)])
    assert errors() == []


async def test_every_open_flag(world: World, errors) -> None:
    ops = world.ops
    movie = world.inode("Movie (2024)", "movie.mkv")
    writing = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
    for flags in flags_to_try():
        answer = await outcome(ops.open(movie, flags, ctx()))
        if flags & writing:
            assert answer == EROFS, hex(flags)
        else:
            assert isinstance(answer, pyfuse3.FileInfo), hex(flags)
            assert await ops.read(answer.fh, 0, 16) == world.emulator.file_bytes(world.movie_id, 1, 0, 16)
            await ops.release(answer.fh)
        for directory in (TORRENTS_INODE, world.inode("Movie (2024)")):
            assert await outcome(ops.open(directory, flags, ctx())) == Refused(errno.EISDIR)
        status = world.control_inode("status")
        answer = await outcome(ops.open(status, flags, ctx()))
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):  # status cannot be written nor truncated
            assert answer == EACCES, hex(flags)
        else:
            assert isinstance(answer, pyfuse3.FileInfo), hex(flags)
            await ops.release(answer.fh)
    assert ops.open_files == 0
    assert errors() == []


async def test_offsets_and_sizes(world: World, errors) -> None:
    ops, emulator = world.ops, world.emulator
    for name, file_id, size in (("movie.mkv", 1, MOVIE_SIZE), ("Subs", 2, 10)):
        path = ("Movie (2024)", name) if name != "Subs" else ("Movie (2024)", "Subs", "en.srt")
        fh = (await ops.open(world.inode(*path), os.O_RDONLY, ctx())).fh
        for off in (0, 1, size - 1, size, size + 1, 2**31, 2**32 + 5, 2**62, 2**63 - 1):
            for length in (0, 1, 4096, 131072, 2**31 - 1):
                want = emulator.file_bytes(world.movie_id, file_id, off, max(0, min(length, size - off)))
                got = await outcome(ops.read(fh, off, length))
                assert bytes(got) == (want if off < size else b""), (name, off, length)
        await ops.release(fh)
    empty = world.inode("Show S01", "e02.mkv")
    fh = (await ops.open(empty, os.O_RDONLY, ctx())).fh
    assert await ops.read(fh, 0, 4096) == b"" and await ops.read(fh, 2**62, 1) == b""
    await ops.release(fh)
    status = (await ops.open(world.control_inode("status"), os.O_RDONLY, ctx())).fh
    assert (await ops.read(status, 0, 1 << 20)).startswith(b"{")
    assert await ops.read(status, 2**62, 4096) == b""
    await ops.release(status)
    assert errors() == []


async def test_xattr_names_in_every_namespace(world: World, errors) -> None:
    ops = world.ops
    nodes = [pyfuse3.ROOT_INODE, TORRENTS_INODE, CONTROL_INODE, world.control_inode("add")]
    nodes += [world.inode("Movie (2024)"), world.inode("Movie (2024)", "movie.mkv")]
    for inode in nodes:
        listed = await ops.listxattr(inode, ctx())
        for name in XATTR_NAMES + listed:
            answer = await outcome(ops.getxattr(inode, name, ctx()))
            if name in listed:
                assert isinstance(answer, bytes) and answer, (inode, name)
            else:
                assert answer == ENOATTR or isinstance(answer, bytes), (inode, name, answer)
            assert await outcome(ops.setxattr(inode, name, b"v", ctx())) == EROFS
            assert await outcome(ops.removexattr(inode, name, ctx())) == EROFS
    torrent_id = await ops.getxattr(world.inode("Movie (2024)"), b"user.rdfs.torrent_id", ctx())
    assert torrent_id.decode() == world.movie_id
    assert errors() == []


async def test_junk_into_every_control_file(world: World, errors) -> None:
    ops, before = world.ops, world.torrent_ids()
    for name in ("add", "delete", "refresh", "status"):
        inode = world.control_inode(name)
        for junk in JUNK:
            for off in (0, 7, 2**62):
                opened = await outcome(ops.open(inode, os.O_WRONLY | os.O_TRUNC, ctx()))
                if name == "status":
                    assert opened == EACCES
                    continue
                assert await outcome(ops.setattr(inode, truncate_attr(), truncate_fields(), opened.fh, ctx())) != EIO
                wrote = await outcome(ops.write(opened.fh, off, junk))
                assert wrote in (len(junk), EINVAL), (name, junk[:40], wrote)
                assert await outcome(ops.flush(opened.fh)) in (None, EINVAL), (name, junk[:40])
                assert await outcome(ops.release(opened.fh)) is None
    assert world.torrent_ids() == before
    assert ops.open_files == 0
    assert errors() == []


async def test_malformed_torrent_uploads(world: World, errors) -> None:
    ops, before = world.ops, world.torrent_ids()
    for index, data in enumerate(MALFORMED_TORRENTS):
        info, attrs = await ops.create(CONTROL_INODE, f"bad{index}.torrent".encode(), 0o644, os.O_WRONLY, ctx())
        assert attrs.st_size == 0
        assert await outcome(ops.write(info.fh, 0, data)) == len(data)
        assert await outcome(ops.flush(info.fh)) in (None, EINVAL, EIO), data[:40]
        assert await outcome(ops.release(info.fh)) is None
    # Offsets past the upload bound and at 2^62.
    info, _ = await ops.create(CONTROL_INODE, b"far.torrent", 0o644, os.O_WRONLY, ctx())
    assert await outcome(ops.write(info.fh, 2**62, b"x")) == Refused(errno.EFBIG)
    await outcome(ops.release(info.fh))
    assert world.torrent_ids() == before
    assert ops.open_files == 0


async def test_odd_attributes_in_the_store_never_fail_stat(world: World, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rdfs")
    ops = world.ops
    movie = world.inode("Movie (2024)", "movie.mkv")
    # (size stored, size shown), (mtime stored, mtime shown in ns; None: clamped to a late date)
    cases = [
        ((-5, 0), (-1e12, 0)),
        ((2**63 - 1, 2**63 - 1), (float("inf"), None)),
        (("abc", 0), (1e300, None)),
        ((1.5e300, 0), ("yesterday", 0)),
        ((-(2**63), 0), (-0.5, 0)),
        ((7, 7), (-float("inf"), 0)),
    ]
    for (size, want_size), (mtime, want_mtime) in cases:
        world.cache.conn.execute("UPDATE entries SET size = ?, mtime = ? WHERE inode = ?", (size, mtime, movie))
        caplog.clear()
        for _ in range(3):
            attrs = await ops.getattr(movie, ctx())
            assert attrs.st_size == want_size, size
            assert attrs.st_blocks * 512 >= attrs.st_size
            if want_mtime is not None:
                assert attrs.st_mtime_ns == want_mtime
            else:
                assert 0 < attrs.st_mtime_ns < 2**63
        (await outcome(ops.lookup(world.inode("Movie (2024)"), b"movie.mkv", ctx()))).st_ino == movie
        assert isinstance(await listdir(ops, world.inode("Movie (2024)")), list)
        assert await outcome(ops.statfs(ctx())) != EIO
    # Logged, but once per inode, not once per stat.
    assert sum("inode %d" % movie in r.getMessage() for r in caplog.records) <= 1
    world.ops._warned.clear()
    world.cache.conn.execute("UPDATE entries SET size = -1 WHERE inode = ?", (movie,))
    caplog.clear()
    await ops.getattr(movie, ctx())
    await ops.getattr(movie, ctx())
    assert [r.levelname for r in caplog.records if "size -1" in r.getMessage()] == ["WARNING"]


async def test_directory_modes_let_the_owner_work(world: World, emulator, tmp_path) -> None:
    ops = world.ops
    root = await ops.getattr(pyfuse3.ROOT_INODE, ctx())
    assert stat.S_IMODE(root.st_mode) == 0o555 and root.st_uid == OWNER and root.st_gid == OWNER
    assert stat.S_IMODE((await ops.getattr(CONTROL_INODE, ctx())).st_mode) == 0o755
    for inode in (TORRENTS_INODE, DOWNLOADS_INODE, world.inode("Movie (2024)"), world.inode("Movie (2024)", "Subs")):
        assert stat.S_IMODE((await ops.getattr(inode, ctx())).st_mode) == 0o755  # --allow-delete: rm -r works
    media = await ops.getattr(world.inode("Movie (2024)", "movie.mkv"), ctx())
    assert stat.S_IMODE(media.st_mode) == 0o444
    for name, mode in (("add", 0o644), ("delete", 0o644), ("refresh", 0o644), ("status", 0o444)):
        assert stat.S_IMODE((await ops.getattr(world.control_inode(name), ctx())).st_mode) == mode


async def test_without_allow_delete_the_tree_is_read_only(emulator, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pyfuse3, "readdir_reply", collect_reply)
    async with open_world(emulator, tmp_path, allow_delete=False) as w:
        for inode in (TORRENTS_INODE, DOWNLOADS_INODE, w.inode("Movie (2024)")):
            assert stat.S_IMODE((await w.ops.getattr(inode, ctx())).st_mode) == 0o555
        assert stat.S_IMODE((await w.ops.getattr(CONTROL_INODE, ctx())).st_mode) == 0o755
        before = w.torrent_ids()
        assert await outcome(w.ops.rmdir(TORRENTS_INODE, "Movie (2024)".encode(), ctx())) == Refused(errno.EPERM)
        assert w.torrent_ids() == before


async def test_other_users_read_only_and_spend_no_api_call(world: World, errors) -> None:
    ops, emulator, before = world.ops, world.emulator, world.torrent_ids()
    movie = world.inode("Movie (2024)", "movie.mkv")
    # Reading media and listings works for them.
    assert b"movie.mkv" in await listdir(ops, world.inode("Movie (2024)"), OTHER)
    fh = (await ops.open(movie, os.O_RDONLY, ctx(OTHER))).fh
    assert await ops.read(fh, 1000, 5000) == emulator.file_bytes(world.movie_id, 1, 1000, 5000)
    await ops.release(fh)
    assert (await ops.getxattr(movie, b"user.rdfs.file_id", ctx(OTHER))) == b"1"
    emulator.counters.clear()
    # Anything else is refused, before any API call.
    for name in ("add", "delete", "refresh", "status"):
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_WRONLY | os.O_TRUNC, os.O_RDWR):
            assert await outcome(ops.open(world.control_inode(name), flags, ctx(OTHER))) == EACCES, (name, flags)
        assert await outcome(ops.setattr(world.control_inode(name), truncate_attr(), truncate_fields(), None, ctx(OTHER))) in (
            EACCES,
            EROFS,
        )
    assert await outcome(ops.create(CONTROL_INODE, b"x.torrent", 0o644, os.O_WRONLY, ctx(OTHER))) == EACCES
    assert await outcome(ops.rmdir(TORRENTS_INODE, "Movie (2024)".encode(), ctx(OTHER))) == EACCES
    assert await outcome(ops.unlink(world.inode("Movie (2024)"), b"movie.mkv", ctx(OTHER))) == EACCES
    for xattr in (b"user.rdfs.transcode", b"user.rdfs.mediainfo"):
        assert await outcome(ops.getxattr(movie, xattr, ctx(OTHER))) == EACCES
    assert sum(emulator.counters.values()) == 0, emulator.counters
    assert world.torrent_ids() == before
    # Root is not "another user" (it bypasses the modes anyway).
    assert isinstance(await outcome(ops.open(world.control_inode("refresh"), os.O_WRONLY, ctx(0))), pyfuse3.FileInfo)
    assert errors() == []


async def test_only_what_the_kernel_holds_is_invalidated(world: World, monkeypatch, caplog) -> None:
    """An entry can be in the kernel's cache only under a directory it holds: entries under others
    (a sync removing thousands of torrents nobody listed) send nothing; under a held directory they
    are sent (``ignore_enoent``: those the kernel did not cache are dropped silently)."""
    ops = world.ops
    entries, inodes = [], []
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", lambda parent, name, **kw: entries.append((parent, name)))
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda inode, **kw: inodes.append(inode))
    ops.init()
    movie_dir = await ops.lookup(TORRENTS_INODE, "Movie (2024)".encode(), ctx())
    gone = [(777_777, f"Gone {i}") for i in range(5000)]  # under a directory the kernel never held
    change = TreeChange(
        entries=gone + [(movie_dir.st_ino, "movie.mkv")], inodes=[TORRENTS_INODE, movie_dir.st_ino, 777_777], paths=[]
    )
    ops.invalidate(change)
    assert entries == [(movie_dir.st_ino, b"movie.mkv")]
    assert inodes == [movie_dir.st_ino]  # TORRENTS_INODE was never looked up in this test
    # Once the kernel forgot it, nothing is sent for it any more, and nothing is kept for it.
    await ops.forget([(movie_dir.st_ino, 1)])
    entries.clear(), inodes.clear()
    ops.invalidate(change)
    assert entries == [] and inodes == []
    assert len(ops.held) == 0 and ops.held.stat(movie_dir.st_ino) is None


async def test_new_names_under_a_held_directory_send_nothing(world: World, monkeypatch) -> None:
    """A sync adding entries under a directory the kernel holds (the views filling ``movies/``)
    queues no notification: the kernel can only cache a name it looked up, and these name inodes
    it does not hold. A name whose old inode it holds (gone, renamed, or reused by a new entry)
    is sent. (A flood of needless notifications raced the unmount: pyfuse3 sends them from its
    own thread, and one left in its queue at ``close`` failed with EINVAL.)"""
    ops = world.ops
    entries: list[tuple[int, bytes]] = []
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", lambda parent, name, **kw: entries.append((parent, name)))
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda inode, **kw: None)
    ops.init()
    movie_dir = (await ops.lookup(TORRENTS_INODE, "Movie (2024)".encode(), ctx())).st_ino
    movie = (await ops.lookup(movie_dir, b"movie.mkv", ctx())).st_ino
    added = [(movie_dir, f"new {i}.mkv", 900_000 + i) for i in range(1000)]
    change = TreeChange(
        entries=[(p, n) for p, n, _ in added] + [(movie_dir, "movie.mkv"), (movie_dir, "unknown")],
        inodes=[],
        paths=[],
        # movie.mkv's name now points to a new inode, but the kernel holds the old one.
        named=added + [(movie_dir, "movie.mkv", movie), (movie_dir, "movie.mkv", 999_999)],
    )
    ops.invalidate(change)
    # The held old inode is sent; an entry the store said nothing about is sent to be safe.
    assert sorted(entries) == [(movie_dir, b"movie.mkv"), (movie_dir, b"unknown")]


async def test_the_boundary_maps_every_outcome(world: World, caplog, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG, logger="rdfs")
    ops, namespace = world.ops, world.ops.namespace
    movie = world.inode("Movie (2024)", "movie.mkv")

    def failing(exc: BaseException):
        def node(inode: int):
            raise exc

        return node

    cases = [
        (FsError(errno.EPERM, "not yours"), Refused(errno.EPERM), None),
        (NetworkError("connection reset", reached=False), EIO, logging.WARNING),
        (sqlite3.OperationalError("database or disk is full"), EIO, logging.ERROR),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), EIO, logging.ERROR),
        (TypeError("'int' object is not subscriptable"), EIO, logging.ERROR),
        (ExceptionGroup("many", [ValueError("a"), KeyError("b")]), EIO, logging.ERROR),
    ]
    for exc, answer, level in cases:
        monkeypatch.setattr(namespace, "node", failing(exc))
        monkeypatch.setattr(namespace, "stat_row", failing(exc))  # getattr's first read
        caplog.clear()
        assert await outcome(ops.getattr(movie, ctx())) == answer, exc
        logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
        if level is None:
            assert logged == []
        else:
            (record,) = logged  # once, with its context
            assert record.levelno == level and f"getattr" in record.getMessage()
            assert f"inode {movie}" in record.getMessage()
            assert (record.exc_info is not None) == (level == logging.ERROR)
    # What is not an Exception is not the boundary's to answer: cancellation and ^C propagate.
    for exc in (KeyboardInterrupt(), SystemExit(1), BaseExceptionGroup("c", [KeyboardInterrupt()])):
        monkeypatch.setattr(namespace, "node", failing(exc))
        monkeypatch.setattr(namespace, "stat_row", failing(exc))
        with pytest.raises(type(exc)):
            await ops.getattr(movie, ctx())


async def test_cancellation_propagates_through_a_handler(world: World, monkeypatch) -> None:
    ops = world.ops
    movie = world.inode("Movie (2024)", "movie.mkv")
    fh = (await ops.open(movie, os.O_RDONLY, ctx())).fh
    opened = ops._open[fh]

    async def slow_read(off: int, size: int) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(opened.handle, "read", slow_read)
    with trio.move_on_after(0.05) as scope:
        await ops.read(fh, 0, 10)
    assert scope.cancelled_caught  # trio.Cancelled went through the boundary untouched
    monkeypatch.undo()
    await ops.release(fh)


def test_every_pyfuse3_handler_passes_the_boundary() -> None:
    import inspect

    handlers = [n for n, v in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(v)]
    assert "lookup" in handlers and "create" in handlers
    for name in handlers:
        assert hasattr(getattr(Operations, name), "__wrapped__"), name


# --- the README's errno table, walked row by row ------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def errno_table() -> list[tuple[str, str, str]]:
    """(operation, condition, errno) of each row of the table in "Errors and permissions"."""
    text = README.read_text()
    section = text.split("\n## Errors and permissions\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) == 3 and cells[0] != "operation" and not set(cells[0]) <= set("-"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def expected(cell: str) -> Refused | None:
    """The errno a row names (its first word), or None for "no error"."""
    word = cell.split()[0].strip("`,")
    if word == "no":
        return None
    return ENOATTR if word == "ENOATTR" else Refused(getattr(errno, word))


async def _names_absent(w: World) -> list:
    ops = w.ops
    out = [await outcome(ops.getattr(424242, ctx())), await outcome(ops.lookup(TORRENTS_INODE, b"nope", ctx()))]
    for name in (b"\xff", b"\xed\xa0\x80", b"nope"):
        for call in (ops.lookup, ops.unlink, ops.rmdir):
            out.append(await outcome(call(TORRENTS_INODE, name, ctx())))
    return out


async def _too_long(w: World) -> list:
    ops, name = w.ops, b"x" * 256
    out = [await outcome(call(TORRENTS_INODE, name, ctx())) for call in (w.ops.lookup, w.ops.unlink, w.ops.rmdir)]
    for parent in (CONTROL_INODE, TORRENTS_INODE):
        out.append(await outcome(ops.create(parent, name[:-8] + b".torrent", 0o644, os.O_WRONLY, ctx())))
    return out


async def _xattr_absent(w: World) -> list:
    movie = w.inode("Movie (2024)", "movie.mkv")
    names = [b"security.selinux", b"system.posix_acl_access", b"trusted.x", b"user.x", b"user.\xff"]
    return [await outcome(w.ops.getxattr(movie, name, ctx())) for name in names]


async def _xattr_write(w: World) -> list:
    movie = w.inode("Movie (2024)", "movie.mkv")
    return [
        await outcome(w.ops.setxattr(movie, b"user.x", b"1", ctx())),
        await outcome(w.ops.removexattr(movie, b"user.rdfs.file_id", ctx())),
    ]


async def _changes_outside_control(w: World) -> list:
    ops, movie = w.ops, w.inode("Movie (2024)", "movie.mkv")
    return [
        await outcome(ops.create(TORRENTS_INODE, b"x.torrent", 0o644, os.O_WRONLY, ctx())),
        await outcome(ops.create(CONTROL_INODE, b"notes.txt", 0o644, os.O_WRONLY, ctx())),
        await outcome(ops.create(CONTROL_INODE, b"add", 0o644, os.O_WRONLY, ctx())),
        await outcome(ops.mkdir(CONTROL_INODE, b"d", 0o755, ctx())),
        await outcome(ops.mknod(TORRENTS_INODE, b"n", 0o644, 0, ctx())),
        await outcome(ops.symlink(TORRENTS_INODE, b"s", b"/etc", ctx())),
        await outcome(ops.link(movie, TORRENTS_INODE, b"l", ctx())),
        await outcome(ops.rename(TORRENTS_INODE, "Movie (2024)".encode(), TORRENTS_INODE, b"r", 0, ctx())),
    ]


async def _create_not_utf8(w: World) -> list:
    return [await outcome(w.ops.create(CONTROL_INODE, b"\xff.torrent", 0o644, os.O_WRONLY, ctx()))]


async def _open_media_writing(w: World) -> list:
    movie = w.inode("Movie (2024)", "movie.mkv")
    flags = (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND)
    return [await outcome(w.ops.open(movie, f, ctx())) for f in flags]


async def _open_dir(w: World) -> list:
    return [await outcome(w.ops.open(i, os.O_RDONLY, ctx())) for i in (TORRENTS_INODE, w.inode("Movie (2024)"))]


async def _open_status_writing(w: World) -> list:
    status = w.control_inode("status")
    return [await outcome(w.ops.open(status, f, ctx())) for f in (os.O_WRONLY, os.O_RDWR)]


async def _read_past_end(w: World) -> list:
    fh = (await w.ops.open(w.inode("Movie (2024)", "movie.mkv"), os.O_RDONLY, ctx())).fh
    out = [await outcome(w.ops.read(fh, off, n)) for off, n in ((MOVIE_SIZE, 10), (2**62, 4096), (2**63 - 1, 1), (0, 0))]
    await w.ops.release(fh)
    assert out == [b""] * 4
    return [None]


async def _write_bad_line(w: World) -> list:
    out = []
    for name in ("add", "delete"):
        fh = (await w.ops.open(w.control_inode(name), os.O_WRONLY, ctx())).fh
        out.append(await outcome(w.ops.write(fh, 0, b"not a magnet or a path\n")))
        await w.ops.release(fh)
    return out


async def _write_upload_too_big(w: World) -> list:
    info, _ = await w.ops.create(CONTROL_INODE, b"big.torrent", 0o644, os.O_WRONLY, ctx())
    answer = await outcome(w.ops.write(info.fh, 16 * 1024 * 1024, b"d"))
    await w.ops.release(info.fh)
    return [answer]


async def _remove_without_allow_delete(w: World) -> list:
    w.ops.allow_delete = False
    try:
        return [
            await outcome(w.ops.rmdir(TORRENTS_INODE, "Movie (2024)".encode(), ctx())),
            await outcome(w.ops.unlink(w.inode("Movie (2024)"), b"movie.mkv", ctx())),
        ]
    finally:
        w.ops.allow_delete = True


async def _other_user(w: World) -> list:
    ops, movie = w.ops, w.inode("Movie (2024)", "movie.mkv")
    out = [await outcome(ops.open(w.control_inode(n), os.O_RDONLY, ctx(OTHER))) for n in ("add", "status")]
    out.append(await outcome(ops.create(CONTROL_INODE, b"x.torrent", 0o644, os.O_WRONLY, ctx(OTHER))))
    out.append(await outcome(ops.unlink(w.inode("Movie (2024)"), b"movie.mkv", ctx(OTHER))))
    out.append(await outcome(ops.rmdir(TORRENTS_INODE, "Movie (2024)".encode(), ctx(OTHER))))
    for name in (b"user.rdfs.transcode", b"user.rdfs.mediainfo"):
        out.append(await outcome(ops.getxattr(movie, name, ctx(OTHER))))
    return out


async def _failing_store(w: World, exc: Exception) -> list:
    namespace = w.ops.namespace
    original = namespace.node, namespace.stat_row

    def node(inode: int):
        raise exc

    namespace.node = namespace.stat_row = node  # type: ignore[method-assign]
    try:
        return [await outcome(w.ops.getattr(w.inode("Movie (2024)", "movie.mkv"), ctx()))]
    finally:
        namespace.node, namespace.stat_row = original  # type: ignore[method-assign]


async def _rd_failed(w: World) -> list:
    answers = await _failing_store(w, NetworkError("connection reset", reached=False))
    # And for real: RD says the torrent is dead; the read fails, the next file reads on.
    w.emulator.kill_torrent(w.show_id)
    fh = (await w.ops.open(w.inode("Show S01", "e01.mkv"), os.O_RDONLY, ctx())).fh
    answers.append(await outcome(w.ops.read(fh, 0, 100)))
    await w.ops.release(fh)
    return answers


async def _unexpected(w: World) -> list:
    return await _failing_store(w, sqlite3.DatabaseError("database disk image is malformed"))


TABLE_SCENARIOS = {
    ("`lookup`, `getattr`, `unlink`, `rmdir`", "ENOENT"): _names_absent,
    ("`lookup`, `unlink`, `rmdir`, `create`", "ENAMETOOLONG"): _too_long,
    ("`getxattr`", "ENOATTR"): _xattr_absent,
    ("`setxattr`, `removexattr`", "EROFS"): _xattr_write,
    ("`create`, `mkdir`, `mknod`, `symlink`, `link`, `rename`", "EROFS"): _changes_outside_control,
    ("`create`", "EINVAL"): _create_not_utf8,
    ("`open`", "EROFS"): _open_media_writing,
    ("`open`", "EISDIR"): _open_dir,
    ("`open`", "EACCES"): _open_status_writing,
    ("`read`", "no"): _read_past_end,
    ("`write`", "EINVAL"): _write_bad_line,
    ("`write`", "EFBIG"): _write_upload_too_big,
    ("`unlink`, `rmdir`", "EPERM"): _remove_without_allow_delete,
    (
        "`open` of `.rdfs/*`, `create`, `unlink`, `rmdir`, `getxattr` of `user.rdfs.transcode` or `user.rdfs.mediainfo`",
        "EACCES",
    ): _other_user,
    ("any", "EIO"): None,  # two rows: told apart by their condition below
}


async def test_the_readme_errno_table(world: World, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rdfs")
    rows = errno_table()
    assert len(rows) >= 15
    seen = set()
    for operation, condition, cell in rows:
        key = (operation, cell.split()[0].strip("`,"))
        assert key in TABLE_SCENARIOS, f"README row without a scenario here: {key}"
        seen.add(key)
        scenario = TABLE_SCENARIOS[key]
        if key == ("any", "EIO"):
            scenario = _rd_failed if "Real-Debrid" in condition else _unexpected
            level = logging.WARNING if "Real-Debrid" in condition else logging.ERROR
        caplog.clear()
        answers = await scenario(world)
        assert answers and all(a == expected(cell) for a in answers), (operation, condition, answers)
        if key == ("any", "EIO"):
            assert any(r.levelno == level for r in caplog.records), condition
    assert seen == set(TABLE_SCENARIOS), f"scenarios without a README row: {set(TABLE_SCENARIOS) - seen}"


async def test_a_repeated_failure_logs_one_traceback(world: World, caplog, monkeypatch) -> None:
    caplog.set_level(logging.WARNING, logger="rdfs")
    ops = world.ops

    def node(inode: int):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ops.namespace, "node", node)
    monkeypatch.setattr(ops.namespace, "stat_row", node)
    for inode in range(1000, 1050):
        assert await outcome(ops.getattr(inode, ctx())) == EIO
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 50 and all(f"inode {1000 + i}" in r.getMessage() for i, r in enumerate(records))
    assert [r.exc_info is not None for r in records] == [True] + [False] * 49
    assert "database or disk is full" in records[-1].getMessage()
