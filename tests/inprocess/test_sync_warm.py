"""Issue 18: a warm start and an idle library cost no listing.

A cache holding a complete listing is served by a new Syncer before any API call, and its first
ticks are probes (page 1), not a listing of every page; idle ticks on an unchanged library make
at most one call each. Counted from the emulator's counters; no timing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.emulator import Emulator
from rdfs.store.metadata import TORRENTS_INODE, Cache
from rdfs.sync.listing import ListState
from rdfs.sync.syncer import SWEEP_EVERY, Syncer
from rdfs.tree.specs import Namespace

TORRENTS = 23
PAGE = 5  # 23 torrents: 5 pages of /torrents
LISTS = "GET /torrents"


@dataclass
class Setup:
    emu: Emulator
    rd: RDClient
    path: Path

    def syncer(self, cache: Cache, **options: object) -> Syncer:
        return Syncer(self.rd, cache, page_size=PAGE, **options)  # type: ignore[arg-type]


@pytest.fixture
async def setup(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Setup]:
    emulator.bulk_add_torrents(TORRENTS, files_per_torrent=2, file_size=1000)
    async with RDClient(api_url=emulator.api_url, auth=StaticToken(emulator.token)) as rd:
        yield Setup(emulator, rd, tmp_path / "rdfs.db")


def shown(cache: Cache) -> int:
    return len(Namespace(cache).children(TORRENTS_INODE))


async def test_a_warm_start_serves_the_tree_before_any_api_call(setup: Setup) -> None:
    with contextlib.closing(Cache(setup.path)) as cache:
        await setup.syncer(cache).sync_once()  # a complete listing, every file list
        assert shown(cache) == TORRENTS
    setup.emu.reset_counters()
    with contextlib.closing(Cache(setup.path)) as cache:
        syncer = setup.syncer(cache, interval=600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(syncer.run)
            await trio.testing.wait_all_tasks_blocked()
            assert shown(cache) == TORRENTS
            assert setup.emu.counters["api_total"] == 0  # not one call while the tree is walked
            syncer.trigger()  # a forced sync still lists everything
            while setup.emu.counters[LISTS] < 5:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert shown(cache) == TORRENTS


async def test_idle_ticks_make_one_call_each_and_no_listing(setup: Setup) -> None:
    with contextlib.closing(Cache(setup.path)) as cache:
        await setup.syncer(cache).sync_once()
    for fresh_process in (False, True):  # the same Syncer, then a warm start's new one
        with contextlib.closing(Cache(setup.path)) as cache:
            syncer = setup.syncer(cache)
            if not fresh_process:
                await syncer.sync_once(fill=False)
            setup.emu.reset_counters()
            ticks = 3 * SWEEP_EVERY
            for _ in range(ticks):
                await syncer._tick()
            # One request a tick (page 1, or one swept page): never the 5 pages of a listing.
            assert setup.emu.counters["api_total"] <= ticks
            assert syncer.status()["last_outcome"] == "ok" and shown(cache) == TORRENTS


async def test_a_removal_seen_by_a_warm_probe_is_applied_without_a_listing(setup: Setup) -> None:
    with contextlib.closing(Cache(setup.path)) as cache:
        await setup.syncer(cache).sync_once()
    newest = setup.emu.list_torrents(0, 1, False)[0][0]["id"]
    setup.emu.remove_torrent(newest)
    with contextlib.closing(Cache(setup.path)) as cache:
        syncer = setup.syncer(cache)
        setup.emu.reset_counters()
        await syncer._tick()  # page 1 lost its first id, the total one less: found in the page
        assert setup.emu.counters[LISTS] == 1
        assert cache.torrent(newest) is not None  # held until RD confirms it
        await syncer._tick()  # RD does not know the id any more: removed
        assert cache.torrent(newest) is None and shown(cache) == TORRENTS - 1
        assert setup.emu.counters[LISTS] <= 2 and setup.emu.counters["api_total"] <= 3


async def test_a_listing_hands_over_one_page_at_a_time(setup: Setup) -> None:
    with contextlib.closing(Cache(setup.path)) as cache:
        syncer = setup.syncer(cache)
        sizes: list[int] = []

        async def on_page(items: list[object]) -> None:
            sizes.append(len(items))

        listing = await syncer._list_all(
            lambda n: setup.rd.torrents(page=n, limit=PAGE), on_page=on_page
        )
        assert listing.complete and len(listing.ids) == TORRENTS
        assert sizes == [5, 5, 5, 5, 3] and len(listing.pages) == 5


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "junk",
        {"pages": ["a"], "total": 1},
        {"pages": ["a"], "total": 1, "where": {"x": float("inf")}},
        {"pages": ["a"], "total": 1, "where": {"x": "nan"}},
        {"pages": 5, "total": 1, "where": {}},
    ],
)
def test_a_damaged_stored_listing_state_means_a_listing_is_due(stored) -> None:
    """What the cache holds of the last listing may be damaged: an empty state, never a crash."""
    state = ListState.stored(stored)
    assert not state.listed and state.pages == [] and state.where == {}
