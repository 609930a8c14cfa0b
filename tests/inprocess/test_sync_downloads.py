"""What ``downloads/`` shows (the user's own hoster downloads by default, config ``downloads``),
against the emulator in-process over real HTTP, with real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdfs import config as configuration
from rdfs.cli import build_parser
from rdfs.api.models import Download, Torrent
from rdfs.emulator import Emulator, FileSpec
from rdfs.store.metadata import DOWNLOADS_INODE, Cache
from rdfs.sync.syncer import Syncer
from rdfs.sync.treebuilder import TreeBuilder
from rdfs.tree.specs import Namespace
from tests.inprocess.test_sync import make_client


@pytest.fixture
def cache(tmp_path: Path):
    cache = Cache.open(tmp_path, 4242)
    yield cache
    cache.close()


def shown(cache: Cache) -> list[str]:
    return sorted(n.name for n in Namespace(cache).children(DOWNLOADS_INODE))


async def test_downloads_shows_own_downloads_only(emulator: Emulator, cache: Cache) -> None:
    tid = emulator.add_torrent("Movie", [FileSpec("/m.mkv", 1234)])
    emulator.add_hoster_download(
        "own.iso", 4321, "https://hoster.example/f/abc123", "hoster.example"
    )
    async with make_client(emulator.api_url, emulator.token) as rd:
        syncer = Syncer(rd, cache)
        await syncer.sync_once()
        assert shown(cache) == ["own.iso"]
        link = emulator.torrent_json(tid)["links"][0]
        await rd.unrestrict_link(link)  # what opening the torrent's file does
        await syncer.sync_once()
        assert cache.download_count() == 2
        assert shown(cache) == ["own.iso"]  # the unrestrict stays out of downloads/

        # With downloads = "all", every entry of /downloads shows.
        everything = Syncer(rd, cache, own_downloads=False)
        await everything.sync_once()
        assert shown(cache) == ["m.mkv", "own.iso"]


async def test_a_deleted_torrents_downloads_stay_hidden(emulator: Emulator, cache: Cache) -> None:
    """Its links are no longer cached, but they have the form of RD's torrent links."""
    tid = emulator.add_torrent("Movie", [FileSpec("/m.mkv", 1234)])
    emulator.add_torrent("Other", [FileSpec("/o.mkv", 10)])  # the listing does not turn empty
    emulator.add_hoster_download("own.iso", 4321, "https://hoster.example/f/1", "hoster.example")
    async with make_client(emulator.api_url, emulator.token) as rd:
        await rd.unrestrict_link(emulator.torrent_json(tid)["links"][0])
        syncer = Syncer(rd, cache)
        await syncer.sync_once()
        emulator.remove_torrent(tid)
        await syncer.sync_once()
        await syncer.sync_once()  # a later complete listing confirms the removal
        assert cache.torrent(tid) is None and cache.download_count() == 2
        assert shown(cache) == ["own.iso"]


def _torrent(torrent_id: str, links: tuple[str, ...]) -> Torrent:
    return Torrent(
        id=torrent_id, filename=torrent_id, hash="0" * 40, bytes=1, host="hoster.example",
        split=1, progress=100, status="downloaded", added=None, ended=None, links=links,
    )  # fmt: skip


def _download(download_id: str, link: str) -> Download:
    return Download(
        id=download_id, filename=f"{download_id}.bin", filesize=1, link=link,
        host="hoster.example", download=f"https://dl.example/{download_id}",
    )  # fmt: skip


async def test_downloads_settle_when_a_torrents_links_become_known(cache: Cache) -> None:
    """A torrent link of any form counts once cached; a shown download that a stored file list
    turns out to cover is found by one indexed look-up (the sync then rebuilds downloads/)."""
    tree = TreeBuilder(cache, delete_confirm_seconds=0)
    cache.upsert_downloads([_download("D1", "https://hoster.example/a"), _download("D2", "https://hoster.example/b")])
    cache.upsert_torrents([_torrent("T1", ())])  # links not known yet
    await tree.downloads()
    assert shown(cache) == ["D1.bin", "D2.bin"]
    assert cache.shows_download_of(["https://hoster.example/a"])
    assert not cache.shows_download_of(["https://hoster.example/zzz"])
    cache.upsert_torrents([_torrent("T1", ("https://hoster.example/a",))])
    await tree.downloads()
    assert shown(cache) == ["D2.bin"]
    assert [d.id for d in cache.own_downloads()] == ["D2"]
    everything = TreeBuilder(cache, delete_confirm_seconds=0, own_downloads=False)
    await everything.downloads()
    assert shown(cache) == ["D1.bin", "D2.bin"]


def test_downloads_setting_layers(tmp_path: Path) -> None:
    """file < environment < flag; "own" by default."""
    path = tmp_path / "config.toml"
    path.write_text('downloads = "all"\n')
    assert configuration.load({}, environ={}, config_file=path).downloads == "all"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert configuration.load({}, environ={}, config_file=empty).downloads == "own"
    env = {"RDFS_DOWNLOADS": "own"}
    assert configuration.load({}, environ=env, config_file=path).downloads == "own"
    args = build_parser().parse_args(["mount", "/mnt", "--downloads", "all"])
    assert configuration.load({"downloads": args.downloads}, environ=env, config_file=path).downloads == "all"
