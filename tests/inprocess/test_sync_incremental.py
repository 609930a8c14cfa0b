"""A sync that changes one torrent costs O(changed) work, whatever the library's size.

Two libraries (1,000 and 10,000 torrents) get the same one-torrent changes through the syncer
against the emulator: one added, one renamed (onto another torrent's name, so names collide),
one removed. The SQL statements run and the rows written for each change are counted (the
store's statement trace) and must stay within 2x between the sizes; after each change the tree
and the views must be what a full rebuild gives (a full rebuild then finds nothing to do).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.models import Torrent, TorrentInfo
from rdfs.emulator import Emulator, FileSpec
from rdfs.events import ChangeBus
from rdfs.store.metadata import TORRENTS_INODE, Cache
from rdfs.sync.syncer import Syncer
from rdfs.sync.views import DEFAULT_VIEWS, Views
from rdfs.tree.specs import Namespace

SIZES = (1_000, 10_000)
WITH_FILES = 300  # the newest torrents get their file lists (the others stay pending)


@dataclass
class Library:
    emu: Emulator
    cache: Cache
    syncer: Syncer
    views: Views

    def snapshot(self) -> dict[int, tuple]:
        rows = self.cache.conn.execute("SELECT * FROM entries ORDER BY inode").fetchall()
        return {row[0]: tuple(row) for row in rows}

    async def measured(self, change: Callable[[], Awaitable[None]]) -> tuple[int, int]:
        """(SQL statements, rows written) of ``change`` and the views' update after it."""
        statements: list[str] = []
        written = self.cache.rows_written
        self.cache.trace(statements.append)
        try:
            await change()
            self.views.update()
        finally:
            self.cache.trace(None)
        return len(statements), self.cache.rows_written - written

    async def assert_as_full_rebuild(self) -> None:
        before = self.snapshot()
        assert not await self.syncer.tree.torrent_dirs()  # a full rebuild: nothing to do
        assert not self.views.refresh()
        assert self.snapshot() == before
        nlink = self.cache.entry(TORRENTS_INODE).nlink
        assert nlink == 2 + len(self.cache.shown_torrent_ids())
        assert self.cache.integrity_problems() == []


@pytest.fixture
async def libraries(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[Library]]]:
    """Builds a library of ``n`` torrents in its own emulator and cache."""
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:

        async def build(n: int) -> Library:
            emu = Emulator()
            await nursery.start(emu.serve)
            emu.bulk_add_torrents(n, files_per_torrent=2, file_size=1000)
            emu.add_torrent("Some.Show.S01", [FileSpec("/Some.Show.S01E01.mkv", 1000)])
            rd = await stack.enter_async_context(RDClient(api_url=emu.api_url, auth=StaticToken(emu.token)))
            cache = stack.enter_context(contextlib.closing(Cache(tmp_path / f"{n}.db")))
            bus = ChangeBus(Namespace(cache).path)
            syncer = Syncer(rd, cache, bus=bus, max_delete_fraction=1.0)
            views = Views(cache, DEFAULT_VIEWS, bus)
            bus.subscribe(views.mark_dirty)
            await syncer.sync_once(fill=False)
            for torrent_id in cache.torrents_needing_files()[:WITH_FILES]:
                bus.publish(syncer.tree.store_info(TorrentInfo.from_json(emu.torrent_json(torrent_id))), "sync")
            views.refresh()
            return Library(emu, cache, syncer, views)

        try:
            yield build
        finally:
            nursery.cancel_scope.cancel()


async def one_torrent_changes(lib: Library) -> dict[str, tuple[int, int]]:
    emu, syncer = lib.emu, lib.syncer
    counts: dict[str, tuple[int, int]] = {}

    async def add() -> None:
        added = emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 5000)])
        await syncer.sync_once(fill=False)
        await syncer.ensure_files(added)

    counts["add"] = await lib.measured(add)
    await lib.assert_as_full_rebuild()

    ids = emu.torrent_ids()
    renamed, target = ids[0], ids[1]
    target_name = lib.cache.torrent(target).filename

    async def rename() -> None:
        rec = emu._get(renamed)
        rec.content = dataclasses.replace(rec.content, name=target_name)
        await syncer.sync_once(fill=False)

    counts["rename"] = await lib.measured(rename)
    await lib.assert_as_full_rebuild()
    names = lib.cache.torrent_dir_names([renamed, target])
    first, later = sorted([renamed, target], key=lambda t: (lib.cache.torrent(t).added, t))
    assert names == {first: target_name, later: f"{target_name} [{later}]"}

    async def remove() -> None:
        emu.remove_torrent(target)
        await syncer.sync_once(fill=False)
        await syncer.sync_once(fill=False)  # a removal waits for one more complete listing

    counts["remove"] = await lib.measured(remove)
    await lib.assert_as_full_rebuild()
    assert lib.cache.torrent(target) is None
    assert lib.cache.torrent_dir_names([renamed]) == {renamed: target_name}  # the tag is gone
    return counts


async def test_one_torrent_change_costs_the_same_at_any_size(libraries) -> None:
    small = await one_torrent_changes(await libraries(SIZES[0]))
    big = await one_torrent_changes(await libraries(SIZES[1]))
    print("statements, rows written:", small, big)
    for change, (statements, rows) in small.items():
        big_statements, big_rows = big[change]
        assert big_statements <= 2 * statements, (change, small, big)
        assert big_rows <= 2 * max(rows, 1), (change, small, big)


async def test_a_crash_between_writing_a_torrent_and_its_directory_is_caught_up(libraries) -> None:
    lib = await libraries(20)
    added = lib.emu.add_torrent("Crashed.Before.Its.Dir", [FileSpec("/c.mkv", 10)])
    listed = Torrent.from_json(lib.emu.torrent_json(added))
    lib.syncer.tree.expect([added])
    lib.cache.upsert_torrents([listed])  # ... and the process dies before torrent_dirs
    fresh = Syncer(lib.syncer.client, lib.cache, bus=lib.syncer.bus, max_delete_fraction=1.0)
    assert fresh.tree.behind
    await fresh.sync_once(fill=False)  # the listing finds nothing new: the pending ids catch up
    assert not fresh.tree.behind
    assert lib.cache.torrent_dir_names([added]) == {added: "Crashed.Before.Its.Dir"}
    lib.views.update()
    await lib.assert_as_full_rebuild()
