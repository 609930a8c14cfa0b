"""What the FUSE adapter keeps per inode: the kernel's lookup counts and the stat last answered,
nothing in proportion to what was walked once the kernel forgets (issue 18). In-process, with the
requests made as the kernel makes them (each readdirplus entry and each lookup is one lookup)."""

from __future__ import annotations

import collections
import errno
import stat

import pyfuse3
import pytest

from rdfs.fuse.held import DENSE_LIMIT, HeldInodes, Stat
from rdfs.store.metadata import TORRENTS_INODE
from tests.boundary_world import (
    Listing,
    Refused,
    collect_reply,
    ctx,
    open_world,
    opendir,
    outcome,
    releasedir,
)

TORRENTS = 1_500  # x 3 files: ~6,000 entries with their directories


def test_counts_and_stats_of_held_inodes() -> None:
    held = HeldInodes()
    first, second = Stat(stat.S_IFDIR | 0o555, 2, 0, 5), Stat(stat.S_IFREG | 0o444, 1, 10, 7)
    held.looked_up(7, first)
    held.looked_up(7, second)
    held.looked_up(DENSE_LIMIT + 5, first)  # far past the dense range: kept aside, same rules
    assert len(held) == 2 and 7 in held and held.count(7) == 2 and held.stat(7) == second
    assert held.count(DENSE_LIMIT + 5) == 1 and held.stat(DENSE_LIMIT + 5) == first
    assert held.nbytes() < 100_000  # the arrays grow to the highest dense inode held, not past
    held.answered(8, first)  # never looked up: nothing kept
    assert 8 not in held and held.stat(8) is None
    assert held.forget(7, 1) == 1 and held.stat(7) == second
    assert held.forget(7, 5) == 0 and held.stat(7) is None and 7 not in held
    assert held.forget(DENSE_LIMIT + 5, 1) == 0 and len(held) == 0
    assert held.forget(123, 1) == 0 and len(held) == 0  # a forget of nothing held changes nothing


@pytest.fixture
async def world(emulator, tmp_path, monkeypatch):
    monkeypatch.setattr(pyfuse3, "readdir_reply", collect_reply)
    emulator.bulk_add_torrents(TORRENTS, 3)
    async with open_world(emulator, tmp_path) as w:
        yield w


def per_inode_containers(ops) -> int:  # type: ignore[no-untyped-def]
    """Items in every container the adapter holds, but the held-inode table."""
    return sum(len(v) for v in vars(ops).values() if isinstance(v, (dict, set, list)))


async def test_a_full_walk_keeps_only_the_kernels_lookup_counts(world) -> None:  # type: ignore[no-untyped-def]
    ops = world.ops
    kernel: collections.Counter[int] = collections.Counter()  # what the kernel holds
    before = per_inode_containers(ops)
    pending, walked = [pyfuse3.ROOT_INODE], 0
    while pending:  # find + stat: readdirplus of every directory, then a lookup of every entry
        parent = pending.pop()
        fh = await opendir(ops, parent)
        token = Listing()
        await ops.readdir(fh, 0, token)
        if token:  # the kernel's closing readdir, answered empty
            closing = Listing()
            await ops.readdir(fh, token[-1][2], closing)
            assert closing == []
        await releasedir(ops, fh)
        assert [name for name, _, _ in token[:2]] == [b".", b".."]
        for name, attrs, _ in token[2:]:  # the kernel takes no lookup of "." and ".."
            kernel[attrs.st_ino] += 1  # readdirplus: the kernel took the entry
            looked = await ops.lookup(parent, name, ctx())
            kernel[looked.st_ino] += 1
            assert looked.st_ino == attrs.st_ino and looked.st_size == attrs.st_size
            if stat.S_ISDIR(attrs.st_mode):
                pending.append(attrs.st_ino)
            walked += 1
    assert walked > 4 * TORRENTS
    assert len(ops.held) == len(kernel)
    assert all(ops.held.count(inode) == count for inode, count in kernel.items())
    # Nothing else grew per entry: names, nodes and xattrs are read from the store when asked.
    assert per_inode_containers(ops) <= before + 10
    assert ops.held.nbytes() <= 2 * 26 * (max(kernel) + 1024)
    await ops.forget(list(kernel.items()))
    assert len(ops.held) == 0 and all(ops.held.stat(inode) is None for inode in kernel)
    assert per_inode_containers(ops) <= before + 10


async def test_removed_upstream_while_held_answers_until_forgotten(world) -> None:  # type: ignore[no-untyped-def]
    ops = world.ops
    movie_dir = await ops.lookup(TORRENTS_INODE, b"Movie (2024)", ctx())
    movie = await ops.lookup(movie_dir.st_ino, b"movie.mkv", ctx())
    subs = await ops.lookup(movie_dir.st_ino, b"Subs", ctx())
    world.emulator.remove_torrent(world.movie_id)
    for _ in range(2):  # a removal is applied once a second complete listing confirms it
        await ops.files.sync_once()
    assert ops.namespace.node(movie_dir.st_ino) is None  # gone from the store
    for before in (movie_dir, movie, subs):
        after = await ops.getattr(before.st_ino, ctx())
        assert (after.st_mode, after.st_size, after.st_nlink, after.st_mtime_ns) == (
            before.st_mode,
            before.st_size,
            before.st_nlink,
            before.st_mtime_ns,
        )
    fh = await opendir(ops, movie_dir.st_ino)  # a shell's cwd in it: empty, no error
    token = Listing()
    await ops.readdir(fh, 0, token)
    assert [name for name, _, _ in token] == [b".", b".."]
    await ops.forget([(movie_dir.st_ino, 1), (movie.st_ino, 1), (subs.st_ino, 1)])
    for gone in (movie_dir, movie, subs):
        assert await outcome(ops.getattr(gone.st_ino, ctx())) == Refused(errno.ENOENT)
    assert len(ops.held) == 0
