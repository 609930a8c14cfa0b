"""Repair of dead torrents against the emulator: same paths and inodes; an outage repairs nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from rdfs.api.client import RDClient
from rdfs.store.metadata import ROOT_INODE, Cache
from rdfs.emulator import Emulator, FileSpec
from rdfs.data.links import LinkGone, LinkResolver
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.events import ChangeBus, StatusBoard
from rdfs.sync.repair import Repairer, RepairPolicy
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace
from rdfs.sync.views import DEFAULT_VIEWS, Views

ADD = "POST /torrents/addMagnet"


@dataclass
class Env:
    emu: Emulator
    cache: Cache
    syncer: Syncer
    resolver: LinkResolver
    pool: ReaderPool
    views: Views
    repairer: Repairer
    namespace: Namespace


@pytest.fixture
async def env(emulator: Emulator, rd_client: RDClient, cache_db: Cache) -> AsyncIterator[Env]:
    rd, cache = rd_client, cache_db
    async with trio.open_nursery() as nursery:
        bus, board = ChangeBus(Namespace(cache).path), StatusBoard()
        syncer = Syncer(rd, cache, bus=bus, board=board, max_delete_fraction=1.0, keep_dead=True)
        policy = RepairPolicy(enabled=True, confirm_after=0.0, poll=0.01)
        repairer = Repairer(rd, cache, syncer, syncer.tree, bus, policy, board=board)
        resolver = LinkResolver(rd, cache, on_gone=repairer.link_gone)
        pool = ReaderPool(resolver, nursery=nursery)
        views = Views(cache, DEFAULT_VIEWS, bus)
        try:
            yield Env(emulator, cache, syncer, resolver, pool, views, repairer, Namespace(cache))
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


def paths(namespace: Namespace) -> dict[str, int]:
    out: dict[str, int] = {}

    def walk(inode: int, prefix: str) -> None:
        for node in namespace.children(inode):
            if node.name in (".rdfs", "downloads"):
                continue
            out[prefix + node.name] = node.inode
            if node.kind == "dir":
                walk(node.inode, prefix + node.name + "/")

    walk(ROOT_INODE, "")
    return out


async def read_all(env: Env, path: str) -> bytes:
    node = env.namespace.node(paths(env.namespace)[path])
    handle = env.pool.open(FileSource(str(node.inode), node.hoster_link, node.size, node.link_offset, node.name))
    try:
        return await handle.read(0, node.size)
    finally:
        await handle.close()


async def settle(env: Env) -> None:
    await env.syncer.sync_once()
    env.views.refresh()


async def test_dead_torrent_is_repaired_under_the_same_paths_and_inodes(env: Env) -> None:
    files = [FileSpec("/Repair.Me.2020.mkv", 70_000), FileSpec("/Extras/featurette.mkv", 5000), FileSpec("/x.nfo", 9)]
    old_id = env.emu.add_torrent("Repair.Me.2020", files, selected=[1, 2])
    keep_id = env.emu.add_torrent("Healthy.2021", [FileSpec("/Healthy.2021.mkv", 1000)])
    await settle(env)
    before = paths(env.namespace)
    assert "torrents/Repair.Me.2020/Extras/featurette.mkv" in before and "movies/Repair.Me.2020" in before
    expected = await read_all(env, "torrents/Repair.Me.2020/Repair.Me.2020.mkv")

    env.emu.kill_torrent(old_id)
    await settle(env)
    assert paths(env.namespace) == before  # dead, waiting for its repair: nothing vanishes
    env.repairer.policy.enabled = False  # detection and reporting only
    assert await env.repairer.check() == 0
    [reported] = env.repairer.status()["broken"]
    assert reported["id"] == old_id and reported["confirmed"] and "dead" in reported["reason"]
    env.repairer.policy.enabled = True
    assert await env.repairer.check() == 1
    await settle(env)
    assert paths(env.namespace) == before  # same paths, same inodes, in torrents/ and the views
    ids = env.emu.torrent_ids()
    assert old_id not in ids and keep_id in ids and len(ids) == 2
    new_id = next(i for i in ids if i != keep_id)
    assert {f["id"] for f in env.emu.torrent_json(new_id)["files"] if f["selected"]} == {1, 2}
    node = env.namespace.node(before["torrents/Repair.Me.2020/Repair.Me.2020.mkv"])
    assert node.torrent_id == new_id
    assert await read_all(env, "torrents/Repair.Me.2020/Repair.Me.2020.mkv") == expected
    assert await read_all(env, "movies/Repair.Me.2020/Repair.Me.2020.mkv") == expected
    assert env.cache.integrity_problems() == []
    status = env.repairer.status()
    assert status["broken"] == [] and status["repaired"][0]["old"] == old_id

    # It dies again at once: reported, not repaired in a loop.
    env.emu.kill_torrent(new_id)
    await settle(env)
    env.emu.reset_counters()
    assert await env.repairer.check() == 0
    assert env.emu.counters[ADD] == 0
    [broken] = env.repairer.status()["broken"]
    assert broken["id"] == new_id and "loop" in broken["not_repaired"]


async def test_link_refusals_are_confirmed_before_a_repair(env: Env) -> None:
    torrent_id = env.emu.add_torrent("Flaky.2019", [FileSpec("/Flaky.2019.mkv", 4000)])
    await settle(env)
    link = env.emu.torrent_json(torrent_id)["links"][0]
    env.emu.kill_torrent(torrent_id)  # not synced: rdfs still believes it is downloaded
    env.repairer.policy.confirm_after = 3600.0
    with pytest.raises(LinkGone):
        await env.resolver.resolve(link)
    [suspect] = env.repairer.broken.values()
    assert suspect.torrent_id == torrent_id and not suspect.confirmed
    env.emu.reset_counters()
    assert await env.repairer.check() == 0  # a link may recover within minutes: not yet
    assert env.emu.counters[ADD] == 0
    env.repairer.policy.confirm_after = 0.0  # ... the refusal persisted: checked once more, repaired
    assert await env.repairer.check() == 1
    assert env.emu.counters["POST /unrestrict/link"] == 1 and env.emu.counters[ADD] == 1


async def test_outage_does_not_trigger_mass_repair(env: Env) -> None:
    ids = [env.emu.add_torrent(f"Movie.{n}.2020", [FileSpec(f"/Movie.{n}.2020.mkv", 1000 + n)]) for n in range(5)]
    await settle(env)
    for torrent_id in ids:
        env.emu.kill_torrent(torrent_id)
    await settle(env)
    env.emu.reset_counters()
    assert await env.repairer.check() == 0
    assert env.emu.counters[ADD] == 0
    status = env.repairer.status()
    assert status["outage_suspected"] is True
    assert sorted(b["id"] for b in status["broken"]) == sorted(ids)
    assert all(b["not_repaired"] for b in status["broken"])
    # Still nothing after the pause: the same burst is never mass-repaired.
    env.repairer.outage_until = 0.0
    assert await env.repairer.check() == 0 and env.emu.counters[ADD] == 0
