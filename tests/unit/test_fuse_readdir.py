"""Readdir as the kernel makes it: a listing in several answers of limited size, each resumed
after the last entry taken (issue 18: one statement serves many answers, none per entry)."""

from __future__ import annotations

import math

import pyfuse3
import pytest

from rdfs.events import TreeChange
from rdfs.fuse import operations
from rdfs.store.metadata import TORRENTS_INODE
from tests.boundary_world import open_world, opendir, releasedir

TORRENTS = 250
PAGE = 100  # READDIR_PAGE here: torrents/ is more than two pages


class Answer(list):
    """Stands in for a ReaddirToken whose buffer takes ``room`` entries."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room


def limited_reply(token: Answer, name: bytes, attrs: pyfuse3.EntryAttributes, next_id: int) -> bool:
    if len(token) >= token.room:
        return False
    token.append((name, attrs.st_ino, next_id))
    return True


@pytest.fixture(params=[True, False], ids=["kernel-dir-cache", "handles"])
async def world(emulator, tmp_path, monkeypatch, request):  # type: ignore[no-untyped-def]
    """Both ways of listing: by inode (rdfs's pyfuse3) and by handle (stock pyfuse3)."""
    monkeypatch.setattr(pyfuse3, "readdir_reply", limited_reply)
    monkeypatch.setattr(operations, "READDIR_PAGE", PAGE)
    emulator.bulk_add_torrents(TORRENTS, 1)
    async with open_world(emulator, tmp_path) as w:
        w.ops.kernel_dir_cache = request.param
        yield w


async def read_all(ops, fh: int, room: int, between=None) -> list[tuple[bytes, int, int]]:  # type: ignore[no-untyped-def]
    """Answers until an empty one, each resumed after the last entry taken, like the kernel."""
    taken: list[tuple[bytes, int, int]] = []
    offset = 0
    while True:
        answer = Answer(room)
        await ops.readdir(fh, offset, answer)
        if not answer:
            return taken
        taken += answer
        offset = answer[-1][2]
        if between is not None:
            between()


def statements(cache) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    cache.conn.set_trace_callback(seen.append)
    return seen


async def test_a_listing_in_small_answers_reads_each_page_once(world) -> None:  # type: ignore[no-untyped-def]
    ops = world.ops
    expected = [
        (n.name.encode(), n.inode)
        for n in ops.namespace.children(TORRENTS_INODE, after=0, limit=10**6)
    ]
    assert len(expected) > 2 * PAGE
    seen = statements(world.cache)
    fh = await opendir(ops, TORRENTS_INODE)
    taken = await read_all(ops, fh, room=37)
    await releasedir(ops, fh)
    world.cache.conn.set_trace_callback(None)
    dots, taken = taken[:2], taken[2:]
    assert [(name, next_id) for name, _, next_id in dots] == [(b".", 1), (b"..", 2)]
    assert [(name, inode) for name, inode, _ in taken] == expected  # each once, in inode order
    assert [inode + 2 for _, inode, _ in taken] == [next_id for _, _, next_id in taken]
    # One statement to check the directory and one per page: none per answer, none for the
    # closing one.
    assert len(seen) == 1 + math.ceil((len(expected) + 1) / PAGE)
    assert all(ops.held.count(inode) == 1 for _, inode in expected)


async def test_a_change_between_answers_is_read_again(world) -> None:  # type: ignore[no-untyped-def]
    ops = world.ops
    listing = ops.namespace.children(TORRENTS_INODE, after=0, limit=10**6)
    late = listing[PAGE - 1]  # read into the handle with the first answer's page, then removed
    fh = await opendir(ops, TORRENTS_INODE)
    answers = 0

    def remove_late() -> None:
        nonlocal answers
        answers += 1
        if answers == 1:
            world.cache.conn.execute("DELETE FROM entries WHERE inode = ?", (late.inode,))
            ops.invalidate(TreeChange(entries=[(TORRENTS_INODE, late.name)], inodes=[], paths=[]))

    taken = await read_all(ops, fh, room=PAGE // 2, between=remove_late)
    assert [inode for _, inode, _ in taken[2:]] == [n.inode for n in listing if n != late]
    # A listing started again on the same handle (rewinddir) reads the store again.
    world.cache.conn.execute("DELETE FROM entries WHERE inode = ?", (listing[0].inode,))
    again = await read_all(ops, fh, room=10**6)
    await releasedir(ops, fh)
    assert [inode for _, inode, _ in again[2:]] == [n.inode for n in listing[1:] if n != late]
