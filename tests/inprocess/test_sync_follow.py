"""Issue 18: one torrent added or removed costs a bounded number of API calls, not a listing.

The same changes at 50 and 500 torrents (pages of 10: 5 and 50 pages) against the emulator:
a torrent added on top, one deleted through rdfs, one removed elsewhere deep in the list. The
API calls are counted by the emulator; afterwards the syncer's cached order is RD's order and the
tree shows exactly RD's torrents. The removal rules still hold: a torrent found missing is
deleted only once RD confirms it, and kept when RD still knows it. No timing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.emulator import Emulator, FileSpec
from rdfs.store.metadata import TORRENTS_INODE, Cache
from rdfs.sync.listing import ListState
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace

PAGE = 10
LISTS = "GET /torrents"


@dataclass
class Library:
    emu: Emulator
    rd: RDClient
    cache: Cache
    syncer: Syncer

    def calls(self) -> int:
        return self.emu.counters["api_total"]

    def assert_in_step(self) -> None:
        """The cached order is RD's, the tree shows RD's torrents (and nothing is held)."""
        ids = self.emu.torrent_ids()
        assert self.syncer._lists["torrents"].order == ids
        assert self.syncer._lists["torrents"].total == len(ids)
        assert set(self.cache.torrent_ids()) == set(ids)
        assert len(Namespace(self.cache).children(TORRENTS_INODE)) == len(ids)


@pytest.fixture
async def libraries(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[Library]]]:
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:

        async def build(n: int) -> Library:
            emu = Emulator()
            await nursery.start(emu.serve)
            emu.bulk_add_torrents(n, files_per_torrent=1, file_size=1000)
            rd = await stack.enter_async_context(
                RDClient(api_url=emu.api_url, auth=StaticToken(emu.token))
            )
            cache = stack.enter_context(contextlib.closing(Cache(tmp_path / f"{n}.db")))
            syncer = Syncer(rd, cache, page_size=PAGE, max_delete_fraction=1.0)
            await syncer.sync_once(fill=False)
            await syncer.sync_once(full=False, fill=False)  # an idle probe: the ETags are known
            emu.reset_counters()
            return Library(emu, rd, cache, syncer)

        try:
            yield build
        finally:
            nursery.cancel_scope.cancel()


async def add_on_top(lib: Library) -> int:
    before = lib.calls()
    added = lib.emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 10)])
    lib.syncer.check_soon()
    await lib.syncer.sync_once(full=False, fill=False)
    assert lib.cache.torrent(added) is not None
    lib.assert_in_step()
    return lib.calls() - before


async def delete_through_rdfs(lib: Library) -> int:
    """What ``.rdfs`` does for an ``rm``: RD's DELETE, the cache's rows, then the syncer."""
    gone = lib.emu.torrent_ids()[3]
    await lib.rd.delete_torrent(gone)
    with lib.cache.transaction():
        lib.cache.record_removals([gone], by="user", reason="deleted through rdfs")
        lib.cache.delete_torrents([gone])
    before = lib.calls()
    lib.syncer.removed([gone])
    await lib.syncer.sync_once(full=False, fill=False)
    lib.assert_in_step()
    return lib.calls() - before


async def remove_deep(lib: Library) -> int:
    """Removed elsewhere, half-way down: the sweep of the list's tail finds it."""
    gone = lib.emu.torrent_ids()[len(lib.emu.torrent_ids()) // 2]
    lib.emu.remove_torrent(gone)
    before = lib.calls()
    assert await lib.syncer._check_tail()  # the sweep's turn for the tail: no listing
    assert lib.cache.torrent(gone) is not None  # held: missing once, not confirmed yet
    await lib.syncer.sync_once(full=False, fill=False)  # RD confirms: it does not know the id
    assert lib.cache.torrent(gone) is None
    assert lib.cache.removals(1)[0]["id"] == gone
    lib.assert_in_step()
    return lib.calls() - before


async def test_one_torrent_changes_cost_calls_independent_of_the_library(libraries) -> None:
    small, big = await libraries(50), await libraries(500)
    for change in (add_on_top, delete_through_rdfs):
        calls = await change(small), await change(big)
        print(change.__name__, calls)
        assert calls[0] == calls[1] and calls[1] <= 2, (change.__name__, calls)
    for lib in (small, big):
        calls = await remove_deep(lib)
        print("deep removal calls", len(lib.emu.torrent_ids()), calls)
        assert calls <= math.log2(len(lib.emu.torrent_ids())) + 4, calls
    assert small.emu.counters[LISTS] < 20 and big.emu.counters[LISTS] < 20  # never 50 pages


async def test_a_followed_change_is_stored_for_a_warm_start_by_a_later_tick(libraries) -> None:
    lib = await libraries(50)
    await add_on_top(lib)
    await lib.syncer.sync_once(full=False, fill=False)
    # Until it is saved the stored state asks for a listing: a restart never trusts a stale one.
    assert not ListState.stored(lib.cache.get_state("listing:torrents")).listed
    lib.syncer.save_every = 0.0
    await lib.syncer.sync_once(full=False, fill=False)
    stored = ListState.stored(lib.cache.get_state("listing:torrents"))
    assert stored.listed and stored.order == lib.emu.torrent_ids()


async def test_a_torrent_found_missing_that_rd_still_knows_is_kept(libraries) -> None:
    """An id left out of listings (RD's glitch) is located, but RD answers for it: not deleted."""
    lib = await libraries(50)
    hidden = lib.emu.torrent_ids()[25]
    lib.emu.faults.list_hidden_ids = (hidden,)
    assert await lib.syncer._check_window(20, PAGE)
    await lib.syncer.sync_once(full=False, fill=False)  # asks RD, which knows it: a listing
    assert lib.cache.torrent(hidden) is not None


async def test_adds_mixed_with_another_change_fall_back_to_a_listing(libraries) -> None:
    lib = await libraries(50)
    lib.emu.remove_torrent(lib.emu.torrent_ids()[0])
    lib.emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 10)])
    lib.emu.add_torrent("Added.Movie.2025", [FileSpec("/Added.Movie.2025.mkv", 10)])
    lib.syncer.check_soon()
    await lib.syncer.sync_once(full=False, fill=False)  # total +1, but not one add on top
    assert lib.emu.counters[LISTS] >= 5  # every page
    await lib.syncer.sync_once(fill=False)  # the removal waits for one more complete listing
    lib.assert_in_step()


async def test_an_add_seen_first_by_the_sweep_of_the_tail_is_followed_from_the_head(
    libraries,
) -> None:
    lib = await libraries(50)
    added = lib.emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 10)])
    assert await lib.syncer._check_tail()  # the tail moved by one, the total grew: the head
    assert lib.cache.torrent(added) is not None
    assert lib.emu.counters[LISTS] == 2
    lib.assert_in_step()


async def test_a_followed_change_is_stored_when_the_sync_task_ends(libraries) -> None:
    lib = await libraries(50)
    added = lib.emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 10)])
    async with trio.open_nursery() as nursery:
        await nursery.start(lib.syncer.run)
        lib.syncer.check_soon()
        # The follow is done once the cached order has the new torrent (its row is stored first).
        while added not in lib.syncer._lists["torrents"].order:
            await trio.sleep(0.01)
        assert lib.cache.torrent(added) is not None
        nursery.cancel_scope.cancel()
    stored = ListState.stored(lib.cache.get_state("listing:torrents"))
    assert stored.listed and stored.order == lib.emu.torrent_ids()


async def test_removals_one_after_the_other_are_each_followed(libraries) -> None:
    """The binary search's requests come back 304 the second time (RD's cached headers carry an
    earlier total): still followed, never a listing."""
    lib = await libraries(50)
    for gone in lib.emu.torrent_ids()[25:28]:
        lib.emu.remove_torrent(gone)
        assert await lib.syncer._check_tail()
        await lib.syncer.sync_once(full=False, fill=False)
        assert lib.cache.torrent(gone) is None
        lib.assert_in_step()
    assert lib.emu.counters[LISTS] < 3 * (math.log2(50) + 3)  # never the 5 pages of a listing
