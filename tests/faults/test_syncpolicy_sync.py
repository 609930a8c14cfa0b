"""Issue 15, sync side: hostile listings change nothing; deletion is slow and recorded; stalls show.

The Syncer against the emulator's listing faults over real HTTP, with a real SQLite cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from rdfs.api.client import Page, RDClient
from rdfs.api.errors import APIError
from rdfs.store.metadata import TORRENTS_INODE, Cache, CacheError
from rdfs.emulator import Emulator, FileSpec
from rdfs.sync.syncer import MAX_PAGES, Syncer
from rdfs.tree.specs import Namespace

from tests.inprocess.test_sync import make_client, names

LISTS = "GET /torrents"


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[RDClient]:
    async with make_client(emulator.api_url, emulator.token) as rd:
        yield rd


@pytest.fixture
def cache(tmp_path: Path):
    cache = Cache.open(tmp_path, 4242)
    yield cache
    cache.close()


def shown(cache: Cache) -> set[str]:
    return {node.torrent_id for node in Namespace(cache).children(TORRENTS_INODE, limit=100_000)}


@pytest.mark.parametrize("total", ["-1", "0", "page", "garbage"])
async def test_lying_total_lists_everything(emulator: Emulator, client: RDClient, cache: Cache, total: str) -> None:
    """X-Total-Count of -1, 0, the page size or garbage: paging goes on while pages are full."""
    ids = emulator.bulk_add_torrents(12, 1)
    emulator.faults.list_total = total
    syncer = Syncer(client, cache, page_size=5)
    await syncer.sync_once(fill=False)  # a fresh cache: every torrent is shown, not page 1 only
    assert shown(cache) == set(ids)
    assert emulator.counters[LISTS] == 3  # 5 + 5 + 2: the short page ends the listing
    # A warm cache: repeated listings under the lie delete nothing.
    for _ in range(3):
        await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids)
    assert syncer.status()["pending_deletions"] == {} and syncer.status()["removed"]["count"] == 0


async def test_total_smaller_than_seen_is_not_trusted(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    """The listing is exactly two full pages and the total says one page: page 3 (empty) is asked too."""
    ids = emulator.bulk_add_torrents(10, 1)
    emulator.faults.list_total = "page"
    syncer = Syncer(client, cache, page_size=5)
    await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids) and emulator.counters[LISTS] == 3


async def test_ignored_page_is_incomplete_and_bounded(
    emulator: Emulator, client: RDClient, cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """A /torrents that ignores ``page``: one repeated page stops the listing, nothing is deleted."""
    ids = emulator.bulk_add_torrents(12, 1)
    syncer = Syncer(client, cache, page_size=5)
    await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids)
    emulator.faults.list_ignore_page = True
    caplog.set_level(logging.WARNING, logger="rdfs.sync.syncer")
    for _ in range(4):
        before = emulator.counters[LISTS]
        await syncer.sync_once(fill=False)
        assert emulator.counters[LISTS] - before == 2  # page 1, page 2 == page 1: stop
    assert shown(cache) == set(ids)
    status = syncer.status()
    assert status["last_outcome"] == "incomplete listing" and status["health"] == "degraded"
    assert status["pending_deletions"] == {} and status["removed"]["count"] == 0
    warnings = [r.getMessage() for r in caplog.records if "ignores paging" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one warning for the condition, not one per tick
    emulator.faults.list_ignore_page = False
    await syncer.sync_once(fill=False)
    assert syncer.status()["last_outcome"] == "ok"


class EndlessClient:
    """A list endpoint whose every page is full of new ids (and claims ``total``)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.requests = 0

    async def torrents(self, *, page: int, limit: int) -> Page[Any]:
        self.requests += 1
        items = [_Item(f"ID{page:05d}{n:05d}") for n in range(limit)]
        return Page(items, self.total)


class _Item:
    def __init__(self, id: str) -> None:
        self.id = id


@pytest.mark.parametrize(("total", "bound"), [(10, 4), (None, MAX_PAGES), (-1, MAX_PAGES)])
async def test_paging_stops_at_a_bound(cache: Cache, total: int | None, bound: int) -> None:
    """Full pages of new ids forever: the bound derived from the total (or the hard bound) stops it."""
    endless = EndlessClient(total)
    syncer = Syncer(endless, cache, page_size=5)  # type: ignore[arg-type]
    listing = await syncer._list_all(lambda n: endless.torrents(page=n, limit=5))
    assert endless.requests == bound and not listing.complete and "still full pages" in listing.reason


class PagedClient:
    """``pages`` full pages of 5 new ids, then a short one; page ``fail`` answers an error.
    Notes each request as it starts (``started``)."""

    def __init__(self, pages: int, fail: int | None = None) -> None:
        self.pages, self.fail = pages, fail
        self.started: dict[int, trio.Event] = {n: trio.Event() for n in range(1, pages + 2)}

    async def torrents(self, *, page: int, limit: int) -> Page[Any]:
        self.started[page].set()
        await trio.sleep(0)
        if page == self.fail:
            raise APIError(503, None, "service_unavailable", "page refused")
        count = limit if page <= self.pages else 2
        return Page([_Item(f"ID{page:05d}{n:05d}") for n in range(count)], None)


async def test_next_page_is_requested_while_a_page_is_stored(cache: Cache) -> None:
    """Storing page n waits for page n + 1's request to start (it would wait forever if paging
    were serial); the pages are stored in listing order all the same."""
    client = PagedClient(3)
    syncer = Syncer(client, cache, page_size=5)  # type: ignore[arg-type]
    stored: list[str] = []

    async def store(items: list[Any]) -> None:
        number = int(items[0].id[2:7])
        if number <= client.pages:
            with trio.fail_after(30):  # a hang guard, not a timing
                await client.started[number + 1].wait()
        stored.extend(item.id for item in items)

    listing = await syncer._list_all(lambda n: client.torrents(page=n, limit=5), on_page=store)
    assert listing.complete and stored == list(listing.ids) and len(stored) == 17


async def test_listing_errors_are_raised_as_they_are(cache: Cache) -> None:
    """A failed request for the next page comes after the current page is stored; a failed
    store ends the listing: neither is wrapped in an exception group."""
    client = PagedClient(3, fail=2)
    syncer = Syncer(client, cache, page_size=5)  # type: ignore[arg-type]
    stored: list[str] = []

    async def store(items: list[Any]) -> None:
        await trio.sleep(0)
        stored.extend(item.id for item in items)

    with pytest.raises(APIError):
        await syncer._list_all(lambda n: client.torrents(page=n, limit=5), on_page=store)
    assert len(stored) == 5

    async def broken(items: list[Any]) -> None:
        raise CacheError("disk full")

    client = PagedClient(3)
    with pytest.raises(CacheError):
        await syncer._list_all(lambda n: client.torrents(page=n, limit=5), on_page=broken)
    assert not client.started[3].is_set()


@pytest.mark.parametrize("fraction", [0.15, 0.5])
async def test_loss_is_held_for_the_confirmation_time_then_recorded(
    emulator: Emulator, client: RDClient, cache: Cache, fraction: float
) -> None:
    ids = emulator.bulk_add_torrents(40, 2)
    confirm = 3.0
    syncer = Syncer(client, cache, delete_confirm_seconds=confirm)
    await syncer.sync_once()
    hidden = ids[: int(len(ids) * fraction)]
    infos = {tid: emulator.torrent_json(tid) for tid in hidden}
    emulator.faults.list_hidden_ids = tuple(hidden)
    started = time.monotonic()
    listings = 0
    while shown(cache) == set(ids):
        await syncer.sync_once(fill=False)
        listings += 1
        assert syncer.status()["removed"]["count"] == 0 or shown(cache) != set(ids)
        assert time.monotonic() - started < 60, "the held removal was never applied"
        await trio.sleep(0.2)
    assert time.monotonic() - started >= confirm  # not before the confirmation time
    assert listings >= 2  # a second listing alone did not confirm it
    assert shown(cache) == set(ids) - set(hidden)
    assert {tid: emulator.torrent_json(tid)["hash"] for tid in hidden}  # still upstream (hidden only)
    status = syncer.status()
    assert status["pending_deletions"] == {} and status["removed"]["count"] == len(hidden)
    record = {r["id"]: r for r in status["removed"]["recent"]}
    assert set(record) == set(hidden)
    for tid, info in infos.items():
        entry = record[tid]
        assert (entry["name"], entry["hash"], entry["bytes"], entry["by"]) == (
            info["filename"], info["hash"], info["bytes"], "rd"
        )  # fmt: skip
        assert entry["selection"] == [
            {"id": f["id"], "path": f["path"], "bytes": f["bytes"]} for f in info["files"] if f["selected"]
        ]


async def test_small_removal_waits_one_listing(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    ids = emulator.bulk_add_torrents(10, 1)
    syncer = Syncer(client, cache, delete_confirm_seconds=3600)
    await syncer.sync_once()
    emulator.faults.list_hidden_ids = (ids[3],)
    await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids) and syncer.status()["pending_deletions"] == {"torrents": 1}
    await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids) - {ids[3]}
    assert [r["id"] for r in cache.removals()] == [ids[3]]


async def test_held_removal_dropped_when_ids_come_back(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    ids = emulator.bulk_add_torrents(20, 1)
    syncer = Syncer(client, cache, delete_confirm_seconds=0.5)
    await syncer.sync_once()
    emulator.faults.list_hidden_ids = tuple(ids[:10])
    await syncer.sync_once(fill=False)
    emulator.faults.list_hidden_ids = ()
    await trio.sleep(1.0)  # past the confirmation time: only a listing still missing them would count
    await syncer.sync_once(fill=False)
    await syncer.sync_once(fill=False)
    assert shown(cache) == set(ids) and syncer.status()["pending_deletions"] == {}
    assert cache.removal_count() == 0


async def test_flipping_torrent_keeps_its_directory(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    flip = emulator.add_torrent("Flipper", [FileSpec("/f.mkv", 100)])
    emulator.add_torrent("Steady", [FileSpec("/s.mkv", 100)])
    syncer = Syncer(client, cache, delete_confirm_seconds=3600)
    await syncer.sync_once()
    ns = Namespace(cache)
    directory = ns.lookup(TORRENTS_INODE, "Flipper").inode
    for _ in range(3):
        emulator.set_status(flip, "downloading", progress=50)
        await syncer.sync_once()
        node = ns.lookup(TORRENTS_INODE, "Flipper")
        assert node is not None and node.inode == directory
        assert [n.name for n in ns.children(directory)] == ["f.mkv"]
        emulator.set_status(flip, "downloaded")
        await syncer.sync_once()
        assert ns.lookup(TORRENTS_INODE, "Flipper").inode == directory
    # Still not downloaded after the hold time: the directory goes (the torrent is not removed).
    emulator.set_status(flip, "downloading", progress=50)
    await syncer.sync_once()
    assert syncer.status()["held_directories"] == 1
    syncer.tree.delete_confirm_seconds = 0.0  # the hold ran out
    await syncer.sync_once(full=False)
    assert sorted(names(ns, TORRENTS_INODE)) == ["Steady"]
    assert cache.torrent(flip) is not None and cache.removal_count() == 0


async def test_drip_server_marks_the_sync_stalled(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    """A listing sent one byte at a time: status says stalled, the tick is abandoned, later ticks run."""
    ids = emulator.bulk_add_torrents(5, 1)
    syncer = Syncer(client, cache, interval=0.2, stall_after=0.5, tick_timeout=2.0)
    await syncer.sync_once()
    emulator.faults.list_drip_seconds = 0.05  # a listing of ~1.5 KB takes over a minute
    ids.append(emulator.add_torrent("New", [FileSpec("/n.mkv", 10)]))  # page 1 changes: no 304
    async with trio.open_nursery() as nursery:
        await nursery.start(syncer.run)
        with trio.fail_after(30):
            while syncer.status()["health"] != "stalled":
                await trio.sleep(0.05)
            assert syncer.status()["stalled_for"] >= 0.5
            while not str(cache.get_state("last_outcome")).startswith("stalled"):
                await trio.sleep(0.05)
            emulator.faults.list_drip_seconds = 0.0
            while syncer.status()["health"] != "ok":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert shown(cache) == set(ids)
    assert any("did not finish" in e["error"] for e in syncer.status()["recent_errors"])


def test_policy_options_follow_the_config() -> None:
    from rdfs.config import Config, ConfigError
    from rdfs.sync.syncer import policy_options

    options = policy_options(Config(delete_confirm_minutes=2, small_removal=5, sync_stall_minutes=1))
    assert options["delete_confirm_seconds"] == 120 and options["small_removal"] == 5
    assert (options["stall_after"], options["tick_timeout"]) == (60, 180)
    for bad in ({"delete_confirm_minutes": -1}, {"small_removal": -1}, {"sync_stall_minutes": 0}):
        with pytest.raises(ConfigError):
            Config(**bad)


async def test_user_removal_is_recorded(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    """What control.py calls before forgetting a torrent the user deleted."""
    tid = emulator.add_torrent("Mine", [FileSpec("/a.mkv", 10), FileSpec("/b.nfo", 1)], selected=[1])
    await Syncer(client, cache).sync_once()
    with cache.transaction():
        assert cache.record_removals([tid, "UNKNOWNID"], by="user", reason="deleted through .rdfs/delete") == 1
        cache.delete_torrents([tid])
    [entry] = cache.removals()
    assert (entry["id"], entry["name"], entry["by"]) == (tid, "a.mkv", "user")
    assert entry["selection"] == [{"id": 1, "path": "/a.mkv", "bytes": 10}]


async def test_outage_warns_once_not_every_tick(
    emulator: Emulator, client: RDClient, cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.bulk_add_torrents(3, 1)
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    caplog.set_level(logging.INFO, logger="rdfs.sync.syncer")
    emulator.faults.api_down = True
    for _ in range(4):
        await syncer.sync_once(fill=False)
    emulator.faults.api_down = False
    await syncer.sync_once(fill=False)
    sync_warnings = [r for r in caplog.records if r.name == "rdfs.sync.syncer" and r.levelno >= logging.WARNING]
    assert len(sync_warnings) == 1 and "failed" in sync_warnings[0].getMessage()
    assert any(r.getMessage() == "sync: back to normal" for r in caplog.records)
    assert syncer.status()["health"] == "ok"
