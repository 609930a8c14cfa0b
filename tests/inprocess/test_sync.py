"""The sync task against the emulator over real HTTP on 127.0.0.1, with real SQLite files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import DOWNLOADS_INODE, TORRENTS_INODE, Cache
from rdfs.emulator import Emulator, FileSpec
from rdfs.events import ChangeBus, TreeChange
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace

NO_WAIT = RetryPolicy(max_retries=1, wait_initial=0, wait_max=0, wait_jitter=0)
_REPO = Path(__file__).resolve().parents[2]


class RecordingClient(RDClient):
    """The real client, remembering which torrents' info it requested, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.info_ids: list[str] = []

    async def torrent_info(self, id: str):
        self.info_ids.append(id)
        return await super().torrent_info(id)


def make_client(api_url: str, token: str) -> RecordingClient:
    return RecordingClient(api_url=api_url, auth=StaticToken(token), rate_limit_per_minute=100_000, retry=NO_WAIT)


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[RDClient]:
    async with make_client(emulator.api_url, emulator.token) as rd:
        yield rd


@pytest.fixture
def cache(tmp_path: Path):
    cache = Cache.open(tmp_path, 4242)
    yield cache
    cache.close()


def names(ns: Namespace, inode: int) -> list[str]:
    return [n.name for n in ns.children(inode)]


def tree(ns: Namespace, inode: int = 1) -> dict[str, int]:
    """Every path below ``inode`` with its inode."""
    out: dict[str, int] = {}
    for node in ns.children(inode, limit=100_000):
        path = ns.path(node.inode)
        out[path] = node.inode
        if node.kind == "dir":
            out.update(tree(ns, node.inode))
    return out


def api_calls(emu: Emulator) -> int:
    return emu.counters["api_total"]


async def test_initial_sync_builds_the_tree(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    movie = emulator.add_torrent(
        "Movie (2020)", [FileSpec("/Movie.2020.mkv", 5000), FileSpec("/Subs/en.srt", 10)], added="2024-01-01T00:00:00Z"
    )
    newer = emulator.add_torrent("Movie (2020)", [FileSpec("/Other.mkv", 7)], added="2024-02-01T00:00:00Z")
    emulator.add_torrent("Busy", [FileSpec("/b.mkv", 1)], status="downloading")
    packed = emulator.add_torrent("Album", [FileSpec("/1.flac", 50), FileSpec("/info.nfo", 1)], packed=True)
    changes: list[TreeChange] = []
    bus = ChangeBus(Namespace(cache).path)
    bus.subscribe(changes.append)
    syncer = Syncer(client, cache, bus=bus)
    await syncer.sync_once()
    ns = Namespace(cache)
    assert sorted(names(ns, TORRENTS_INODE)) == sorted(["Movie (2020)", f"Movie (2020) [{newer}]", "Album"])
    movie_dir = ns.lookup(TORRENTS_INODE, "Movie (2020)")
    assert movie_dir.torrent_id == movie and not movie_dir.files_pending
    mkv = ns.lookup(movie_dir.inode, "Movie.2020.mkv")
    info = emulator.torrent_json(movie)
    assert mkv.size == 5000 and mkv.hoster_link == info["links"][0]
    assert ns.lookup(ns.lookup(movie_dir.inode, "Subs").inode, "en.srt").hoster_link == info["links"][1]
    album = ns.lookup(TORRENTS_INODE, "Album")
    assert album.torrent_id == packed and names(ns, album.inode) == ["Album.rar"]
    status = syncer.status()
    assert status["health"] == "ok" and status["torrents_known"] == 4 and status["files_pending"] == 0
    assert [t["status"] for t in status["in_progress"]] == ["downloading"]
    assert any("torrents" in c.paths for c in changes)
    assert cache.integrity_problems() == []


async def test_incremental_changes_keep_inodes(emulator: Emulator, client: RDClient, cache: Cache, tmp_path) -> None:
    keep = emulator.add_torrent("Keep", [FileSpec("/k.mkv", 10)])
    gone = emulator.add_torrent("Gone", [FileSpec("/g.mkv", 10)])
    emulator.bulk_add_torrents(8, 1)
    busy = emulator.add_torrent("Busy", [FileSpec("/b.mkv", 10)], status="downloading")
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    ns = Namespace(cache)
    before = tree(ns)
    assert "torrents/Busy" not in before and "torrents/Keep/k.mkv" in before
    emulator.remove_torrent(gone)
    emulator.set_status(busy, "downloaded")
    new = emulator.add_torrent("New", [FileSpec("/n.mkv", 10)])
    await syncer.sync_once(full=False)  # the page-1 probe notices the change
    await syncer.sync_once(full=False)  # a removal waits for one more complete listing
    after = tree(ns)
    assert "torrents/Gone" not in after and "torrents/Gone/g.mkv" not in after
    assert after["torrents/Busy/b.mkv"] and after["torrents/New/n.mkv"]
    shared = set(before) & set(after)
    assert shared and all(before[p] == after[p] for p in shared)
    assert cache.torrent(gone) is None and cache.has_files(new)
    assert after["torrents/Keep/k.mkv"] == before["torrents/Keep/k.mkv"]
    # The same inodes after reopening the cache and syncing again.
    cache.close()
    reopened = Cache.open(tmp_path, 4242)
    try:
        await Syncer(client, reopened).sync_once()
        assert tree(Namespace(reopened)) == after
        assert reopened.torrent(keep) is not None
    finally:
        reopened.close()


async def test_unchanged_sync_costs_at_most_two_calls(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    emulator.bulk_add_torrents(30, 2)
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    for _ in range(2 * 4):  # two full rotations of probes and sweeps
        before = api_calls(emulator)
        await syncer.sync_once(full=False, fill=False)
        assert api_calls(emulator) - before <= 1
    assert client.stats.not_modified >= 6
    before = api_calls(emulator)
    await syncer.sync_once(full=True, fill=True)  # complete listings: one page each
    assert api_calls(emulator) - before == 2


async def test_progress_of_active_torrents_is_followed(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    busy = emulator.add_torrent("Busy", [FileSpec("/b.mkv", 10)], status="downloading")
    emulator.set_status(busy, "downloading", progress=10)
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    emulator.set_status(busy, "downloading", progress=55)
    await syncer.sync_once(full=False)
    assert [t["progress"] for t in syncer.status()["in_progress"]] == [55]
    emulator.set_status(busy, "downloaded")
    await syncer.sync_once(full=False)
    assert syncer.status()["in_progress"] == []
    assert Namespace(cache).lookup(TORRENTS_INODE, "Busy") is not None


async def test_downloads_are_listed(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    tid = emulator.add_torrent("Movie", [FileSpec("/m.mkv", 1234)])
    link = emulator.torrent_json(tid)["links"][0]
    await client.unrestrict_link(link)
    await client.unrestrict_link(link)  # a second entry for the same link
    await Syncer(client, cache, own_downloads=False).sync_once()  # downloads = "all"
    ns = Namespace(cache)
    entries = ns.children(DOWNLOADS_INODE)
    assert [(n.name, n.size, n.hoster_link) for n in entries] == [("m.mkv", 1234, link)]
    assert entries[0].xattrs["user.rdfs.link"] == link


async def test_outage_and_empty_lists_delete_nothing(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    emulator.bulk_add_torrents(10, 2)
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    ns = Namespace(cache)
    before = tree(ns)
    emulator.faults.api_down = True
    await syncer.sync_once()
    assert tree(ns) == before
    status = syncer.status()
    assert status["health"] == "unavailable" and status["recent_errors"]
    assert status["last_outcome"].startswith("failed")
    emulator.faults.api_down = False
    emulator.faults.empty_lists = True
    for _ in range(3):
        await syncer.sync_once()
    assert tree(ns) == before
    assert any("empty listing" in e["error"] for e in syncer.status()["recent_errors"])
    emulator.faults.empty_lists = False
    emulator.faults.api_error_rate = 0.5
    for _ in range(4):
        await syncer.sync_once()
    assert set(before) <= set(tree(ns))
    assert cache.integrity_problems() == []


async def test_short_listing_deletes_nothing(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    emulator.bulk_add_torrents(12, 1)
    syncer = Syncer(client, cache, page_size=5)
    await syncer.sync_once()
    assert len(names(Namespace(cache), TORRENTS_INODE)) == 12
    emulator.faults.api_error_rate = 1.0  # every request fails: pages 2-3 never arrive
    await syncer.sync_once()
    emulator.faults.api_error_rate = 0.0
    assert len(names(Namespace(cache), TORRENTS_INODE)) == 12


async def test_mass_deletion_waits_for_confirmation(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    ids = emulator.bulk_add_torrents(10, 1)
    syncer = Syncer(client, cache, max_delete_fraction=0.2, delete_confirm_seconds=3600)
    await syncer.sync_once()
    ns = Namespace(cache)
    emulator.remove_torrent(ids[0])  # a small removal: applied by the next listing
    await syncer.sync_once()
    assert len(names(ns, TORRENTS_INODE)) == 10
    await syncer.sync_once()
    assert len(names(ns, TORRENTS_INODE)) == 9
    for tid in ids[1:6]:  # 5 of 9: held back until they stayed missing for the confirmation time
        emulator.remove_torrent(tid)
    await syncer.sync_once()
    await syncer.sync_once()
    assert len(names(ns, TORRENTS_INODE)) == 9
    assert syncer.status()["pending_deletions"] == {"torrents": 5}
    syncer.delete_confirm_seconds = 0  # the confirmation time has passed
    await syncer.sync_once(full=False)
    assert len(names(ns, TORRENTS_INODE)) == 4
    assert syncer.status()["pending_deletions"] == {}


async def test_held_deletion_is_dropped_when_items_come_back(emulator: Emulator, client: RDClient, cache: Cache) -> None:
    emulator.bulk_add_torrents(4, 1)
    syncer = Syncer(client, cache)
    await syncer.sync_once()
    emulator.faults.empty_lists = True
    await syncer.sync_once()
    emulator.faults.empty_lists = False
    await syncer.sync_once()
    assert len(names(Namespace(cache), TORRENTS_INODE)) == 4 and syncer.status()["pending_deletions"] == {}


async def test_ensure_files_jumps_the_queue(emulator: Emulator, cache: Cache) -> None:
    ids = emulator.bulk_add_torrents(150, 1)  # oldest first: the fill reaches ids[0] last
    async with make_client(emulator.api_url, emulator.token) as rd:
        syncer = Syncer(rd, cache, info_concurrency=2, interval=3600)
        ns = Namespace(cache)
        async with trio.open_nursery() as nursery:
            await nursery.start(syncer.run)
            while len(names(ns, TORRENTS_INODE)) < 150:  # every directory is listed first
                await trio.sleep(0.01)
            emulator.faults.api_latency = 0.02
            while emulator.counters["GET /torrents/info"] < 4:
                await trio.sleep(0.01)
            target = ids[0]
            assert ns.lookup(TORRENTS_INODE, f"Bulk.Release.{1:06d}").files_pending
            waiters = [False, False]

            async def wait(i: int) -> None:
                await syncer.ensure_files(target)
                waiters[i] = True

            async with trio.open_nursery() as inner:
                inner.start_soon(wait, 0)
                inner.start_soon(wait, 1)
            assert waiters == [True, True] and cache.has_files(target)
            assert not ns.lookup(TORRENTS_INODE, f"Bulk.Release.{1:06d}").files_pending
            nursery.cancel_scope.cancel()
    # Asked once for both waiters, long before the background fill (newest first) would have.
    assert rd.info_ids.count(target) == 1
    assert rd.info_ids.index(target) < 20, rd.info_ids.index(target)


async def test_warm_restart_shows_tree_without_api_calls(emulator: Emulator, tmp_path) -> None:
    emulator.bulk_add_torrents(20, 3)
    async with make_client(emulator.api_url, emulator.token) as rd:
        first = Cache.open(tmp_path, 4242)
        await Syncer(rd, first).sync_once()
        expected = tree(Namespace(first))
        first.close()
    emulator.counters.clear()
    warm = Cache.open_warm(tmp_path)
    assert warm is not None
    try:
        async with make_client(emulator.api_url, emulator.token) as rd:
            syncer = Syncer(rd, warm, interval=3600)
            async with trio.open_nursery() as nursery:
                await nursery.start(syncer.run)
                assert api_calls(emulator) == 0
                assert tree(Namespace(warm)) == expected
                nursery.cancel_scope.cancel()
    finally:
        warm.close()


_KILL_SCRIPT = """
import sys, trio
from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import Cache
from rdfs.sync.syncer import Syncer

async def main():
    cache = Cache.open(sys.argv[1], 4242)
    async with RDClient(api_url=sys.argv[2], auth=StaticToken(sys.argv[3]), rate_limit_per_minute=100000,
                        retry=RetryPolicy(max_retries=1, wait_initial=0, wait_max=0, wait_jitter=0)) as rd:
        await Syncer(rd, cache, info_concurrency=4, batch_size=50).sync_once()

trio.run(main)
"""


def test_kill_9_mid_sync_leaves_a_consistent_cache(emulator_proc, tmp_path) -> None:
    control = emulator_proc.control
    control.bulk_add_torrents(400, 3)
    control.set_faults(api_latency=0.005)
    process = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), emulator_proc.api_url, emulator_proc.token],
        cwd=_REPO,
        env={**os.environ, "PYTHONPATH": str(_REPO)},
    )
    db = tmp_path / "4242" / "rdfs.db"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.exists():
                with sqlite3.connect(db, timeout=5) as conn:
                    try:
                        done = conn.execute("SELECT count(*) FROM torrents WHERE info_key IS NOT NULL").fetchone()[0]
                    except sqlite3.OperationalError:  # schema not created yet
                        done = 0
                if done >= 20:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the sync made no progress")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    control.set_faults(api_latency=0.0)
    cache = Cache.open_warm(tmp_path)
    try:
        assert cache.integrity_problems() == []
        counts = cache.torrent_counts()
        assert 20 <= counts["with_files"] < 400
        ns = Namespace(cache)
        shown = ns.children(TORRENTS_INODE, limit=1000)
        # Every torrent dir is either pending or has its files; never half of a torrent.
        for node in shown:
            files = ns.children(node.inode)
            assert node.files_pending == (len(files) == 0)
            assert len(files) in (0, 3)

        async def finish() -> None:
            async with make_client(emulator_proc.api_url, emulator_proc.token) as rd:
                await Syncer(rd, cache).sync_once()

        trio.run(finish)
        assert cache.integrity_problems() == []
        assert cache.torrent_counts()["with_files"] == 400
        assert len(ns.children(TORRENTS_INODE, limit=1000)) == 400
    finally:
        cache.close()
