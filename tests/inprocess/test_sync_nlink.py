"""The link counts of ``torrents/`` and of the view directories follow every change of a sync.

The store keeps them in step at each write (no recount of a 100,000-entry directory per sync);
a wrong one is visible (``stat -c %h``, and bench-sync counts torrents by it). After each kind of
change (add, rename, a move between views, a removal through rdfs, a removal upstream, a held
directory expiring, a repair's swap) the stored nlink of each of these directories is 2 + its
subdirectories counted one by one, with no full rebuild in between (the views follow with their
incremental update); a full rebuild then heals a count gone wrong.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from rdfs.api.client import RDClient
from rdfs.emulator import Emulator, FileSpec
from rdfs.events import ChangeBus, StatusBoard
from rdfs.store import keys
from rdfs.store.metadata import TORRENTS_INODE, Cache
from rdfs.sync.repair import Repairer, RepairPolicy
from rdfs.sync.syncer import Syncer
from rdfs.sync.views import DEFAULT_VIEWS, Views
from rdfs.tree.specs import Namespace


@dataclass
class Rig:
    emu: Emulator
    cache: Cache
    bus: ChangeBus
    syncer: Syncer
    views: Views
    repairer: Repairer
    namespace: Namespace

    async def tick(self) -> None:
        """A tick of the running mount (no complete listing unless due), the views after it."""
        self.syncer.check_soon()
        await self.syncer.sync_once(full=False, fill=False)
        self.views.update()

    def counted(self) -> dict[str, tuple[int, int]]:
        """(stored nlink, 2 + subdirectories counted one by one) of torrents/ and each view."""
        inodes = {"torrents": TORRENTS_INODE}
        inodes |= {v.path: self.cache.inode_for(keys.view_dir(v.path)) for v in DEFAULT_VIEWS.views}
        out = {}
        for name, inode in inodes.items():
            children = self.namespace.children(inode, limit=100_000)
            out[name] = (
                self.namespace.node(inode).nlink,
                2 + sum(c.kind == "dir" for c in children),
            )
        return out

    def assert_counted(self, **expected: int) -> None:
        counted = self.counted()
        assert all(stored == direct for stored, direct in counted.values()), counted
        assert {name: counted[name][1] - 2 for name in expected} == expected


@pytest.fixture
async def rig(emulator: Emulator, rd_client: RDClient, cache_db: Cache) -> AsyncIterator[Rig]:
    async with trio.open_nursery() as nursery:
        bus = ChangeBus(Namespace(cache_db).path)
        syncer = Syncer(
            rd_client, cache_db, bus=bus, board=StatusBoard(), max_delete_fraction=1.0,
            delete_confirm_seconds=3600, keep_dead=True,
        )  # fmt: skip
        policy = RepairPolicy(enabled=True, confirm_after=0.0, poll=0.01)
        repairer = Repairer(rd_client, cache_db, syncer, syncer.tree, bus, policy)
        views = Views(cache_db, DEFAULT_VIEWS, bus)
        bus.subscribe(views.mark_dirty)
        try:
            yield Rig(emulator, cache_db, bus, syncer, views, repairer, Namespace(cache_db))
        finally:
            nursery.cancel_scope.cancel()


async def test_link_counts_follow_every_change(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    emu, syncer = rig.emu, rig.syncer
    movie = emu.add_torrent("Movie.2020", [FileSpec("/Movie.2020.mkv", 1000)])
    other = emu.add_torrent("Other.Movie.2021", [FileSpec("/Other.Movie.2021.mkv", 1000)])
    show = emu.add_torrent("Some.Show.S01", [FileSpec("/Some.Show.S01E01.mkv", 1000)])
    flipper = emu.add_torrent("Flipper.2019", [FileSpec("/Flipper.2019.mkv", 1000)])
    doomed = emu.add_torrent("Doomed.2018", [FileSpec("/Doomed.2018.mkv", 1000)])
    await syncer.sync_once()
    rig.views.update()
    rig.assert_counted(torrents=5, movies=4, shows=1)

    # Added upstream, then its file list.
    added = emu.add_torrent("Added.Movie.2024", [FileSpec("/Added.Movie.2024.mkv", 5000)])
    await rig.tick()
    await syncer.ensure_files(added)
    rig.views.update()
    rig.assert_counted(torrents=6, movies=5, shows=1)

    # Renamed upstream onto a show's name: its copy moves from movies/ to shows/.
    rec = emu._get(other)
    rec.content = dataclasses.replace(rec.content, name="Other.Show.S02")
    await rig.tick()
    assert rig.namespace.lookup(TORRENTS_INODE, "Other.Show.S02") is not None
    rig.assert_counted(torrents=6, movies=4, shows=2)

    # Deleted through rdfs: the cache's rows go first (with the views' copies), then the tick.
    emu.remove_torrent(added)
    with rig.cache.transaction():
        rig.cache.record_removals([added], by="user", reason="deleted through rdfs")
        rig.bus.publish(rig.cache.delete_torrents([added]), "control")
    rig.assert_counted(torrents=5, movies=3, shows=2)
    syncer.removed([added])
    await rig.tick()
    rig.assert_counted(torrents=5, movies=3, shows=2)

    # Removed upstream: a complete listing misses it, the next one confirms it.
    emu.remove_torrent(doomed)
    for _ in range(2):
        await syncer.sync_once(fill=False)
        rig.views.update()
    assert rig.cache.torrent(doomed) is None
    rig.assert_counted(torrents=4, movies=2, shows=2)

    # Active again: its directory is held, then leaves when the hold runs out.
    emu.set_status(flipper, "downloading", progress=50)
    await syncer.sync_once(fill=False)
    rig.views.update()
    assert syncer.status()["held_directories"] == 1
    rig.assert_counted(torrents=4, movies=2, shows=2)
    syncer.tree.delete_confirm_seconds = 0.0
    await rig.tick()
    assert rig.namespace.lookup(TORRENTS_INODE, "Flipper.2019") is None
    rig.assert_counted(torrents=3, movies=1, shows=2)

    # Dead, then repaired: the replacement takes the old one's place (keys swapped).
    emu.kill_torrent(movie)
    await syncer.sync_once(fill=False)
    rig.views.update()
    rig.assert_counted(torrents=3, movies=1, shows=2)
    assert await rig.repairer.check() == 1
    await syncer.sync_once(fill=False)
    rig.views.update()
    assert movie not in emu.torrent_ids() and rig.cache.torrent(movie) is None
    rig.assert_counted(torrents=3, movies=1, shows=2)
    assert show in emu.torrent_ids()
    # No full rebuild had anything to correct on the way.
    assert not [r for r in caplog.records if "link count" in r.getMessage()]

    # A count gone wrong (an older version, a bug): the full rebuilds heal it.
    counted = [TORRENTS_INODE] + [
        rig.cache.inode_for(keys.view_dir(v.path)) for v in DEFAULT_VIEWS.views
    ]
    with rig.cache.transaction():
        for inode in counted:
            rig.cache.conn.execute("UPDATE entries SET nlink = 99 WHERE inode = ?", (inode,))
    changes = await syncer.tree.torrent_dirs()
    await rig.views.rebuild()
    assert TORRENTS_INODE in changes.inodes
    rig.assert_counted(torrents=3, movies=1, shows=2)
    assert len([r for r in caplog.records if "link count" in r.getMessage()]) == 3
