"""Library views: classification rules, junk hiding, and the view directories in the tree and the mount."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.store.metadata import ROOT_INODE, Cache
from rdfs.emulator import Emulator, FileSpec
from rdfs.events import ChangeBus, TreeChange
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace
from rdfs.sync.views import (
    DEFAULT_VIEWS,
    TorrentFacts,
    View,
    Views,
    ViewsConfig,
    ViewsError,
    classify,
    has_episodes,
    parse_views,
)
from tests import mountutil

GiB = 1024**3


def facts(name: str, files: tuple[str, ...] = (), size: int = GiB, added: float | None = None) -> TorrentFacts:
    return TorrentFacts("ID", name, size, added, files)


@pytest.mark.parametrize(
    ("name", "files", "show"),
    [
        ("Some.Show.S01E02.1080p.WEB", ("Some.Show.S01E02.mkv",), True),
        ("Some Show Season 2", ("a.mkv",), True),
        ("Some.Show.S03.Complete", ("a.mkv",), True),
        ("Pack", ("show.1x05.avi",), True),
        ("Big.Movie.2019.2160p.UHD", ("Big.Movie.2019.2160p.UHD.mkv",), False),
        ("Se7en.1995.1080p", ("Se7en.1995.1080p.mkv",), False),
        ("Blade.Runner.2049.2017", ("Blade.Runner.2049.mkv",), False),
    ],
)
def test_default_classifier(name: str, files: tuple[str, ...], show: bool) -> None:
    assert has_episodes(facts(name, files)) is show
    [view] = classify(DEFAULT_VIEWS, facts(name, files), time.time())
    assert view.path == ("shows" if show else "movies")


def test_rules_and_groups_first_match_wins() -> None:
    config = parse_views(
        {
            "dir": [
                {"path": "shows", "has_episodes": True},
                {"path": "movies"},
                {"path": "4k", "group": "quality", "name": "(?i)2160p"},
                {"path": "big", "group": "quality", "min_size_gb": 30},
                {"path": "docs", "group": "kind", "file": r"(?i)\.pdf$"},
                {"path": "recent", "group": "age", "added_within_days": 2},
            ]
        }
    )
    now = time.time()
    uhd = facts("Big.Movie.2160p", ("m.mkv",), size=40 * GiB, added=now - 3600)
    assert [v.path for v in classify(config, uhd, now)] == ["movies", "4k", "recent"]
    big = facts("Other.Movie.1080p", ("m.mkv", "book.PDF"), size=40 * GiB, added=now - 10 * 86400)
    assert [v.path for v in classify(config, big, now)] == ["movies", "big", "docs"]
    small_show = facts("Show.S01E01", ("e.mkv",), size=GiB)
    assert [v.path for v in classify(config, small_show, now)] == ["shows"]


@pytest.mark.parametrize(
    "table",
    [
        {"dir": [{"path": "torrents"}]},
        {"dir": [{"path": "a"}, {"path": "a"}]},
        {"dir": [{"path": "a", "name": "("}]},
        {"dir": [{"path": "a", "min_size_gb": "big"}]},
        {"dir": [{"path": "a", "colour": "red"}]},
    ],
)
def test_bad_configs_are_refused(table: dict) -> None:
    with pytest.raises(ViewsError):
        parse_views(table)


@pytest.fixture
async def synced(emulator: Emulator, tmp_path: Path) -> AsyncIterator[tuple[Emulator, Cache, Syncer]]:
    cache = Cache(tmp_path / "rdfs.db")
    try:
        async with RDClient(api_url=emulator.api_url, auth=StaticToken(emulator.token)) as rd:
            yield emulator, cache, Syncer(rd, cache, max_delete_fraction=1.0)
    finally:
        cache.close()


def listing(namespace: Namespace, inode: int, prefix: str = "") -> dict[str, int]:
    out = {}
    for node in namespace.children(inode):
        out[prefix + node.name] = node.inode
        if node.kind == "dir":
            out.update(listing(namespace, node.inode, prefix + node.name + "/"))
    return out


async def test_views_in_the_tree(synced) -> None:
    emu, cache, syncer = synced
    emu.add_torrent(
        "Great.Movie.2020.1080p",
        [FileSpec("/Great.Movie.2020.1080p.mkv", 5000), FileSpec("/Sample/great-sample.mkv", 100),
         FileSpec("/RARBG.txt", 10), FileSpec("/Subs/en.srt", 50)],
    )  # fmt: skip
    show = emu.add_torrent("Nice.Show.S02", [FileSpec(f"/Nice.Show.S02E0{i}.mkv", 1000 + i) for i in (1, 2)])
    await syncer.sync_once()
    published: list[TreeChange] = []
    bus = ChangeBus(Namespace(cache).path)
    bus.subscribe(published.append)
    views = Views(cache, DEFAULT_VIEWS, bus)
    views.refresh()
    namespace = Namespace(cache)
    top = {node.name for node in namespace.children(ROOT_INODE)}
    assert {"movies", "shows", "torrents"} <= top
    movies = listing(namespace, namespace.lookup(ROOT_INODE, "movies").inode)
    assert sorted(movies) == [
        "Great.Movie.2020.1080p",
        "Great.Movie.2020.1080p/Great.Movie.2020.1080p.mkv",
        "Great.Movie.2020.1080p/Subs",
        "Great.Movie.2020.1080p/Subs/en.srt",
    ]
    shows = listing(namespace, namespace.lookup(ROOT_INODE, "shows").inode)
    assert sorted(shows) == ["Nice.Show.S02", "Nice.Show.S02/Nice.Show.S02E01.mkv", "Nice.Show.S02/Nice.Show.S02E02.mkv"]
    original = namespace.lookup(namespace.lookup(2, "Nice.Show.S02").inode, "Nice.Show.S02E01.mkv")
    copy = namespace.node(shows["Nice.Show.S02/Nice.Show.S02E01.mkv"])
    assert copy.inode != original.inode
    assert (copy.size, copy.hoster_link, copy.link_offset) == (original.size, original.hoster_link, original.link_offset)
    assert published and published[0].origin == "views"
    assert not views.refresh()  # nothing changed: nothing written
    assert cache.integrity_problems() == []
    # The torrent goes away upstream: it leaves its view too; inodes of the others stay.
    emu.remove_torrent(show)
    await syncer.sync_once()
    await syncer.sync_once()  # a removal waits for one more complete listing
    views.refresh()
    assert listing(namespace, namespace.lookup(ROOT_INODE, "shows").inode) == {}
    assert listing(namespace, namespace.lookup(ROOT_INODE, "movies").inode) == movies
    assert cache.integrity_problems() == []


@pytest.mark.mount
def test_views_through_the_mount(emulator_proc, tmp_path: Path) -> None:
    control = emulator_proc.control
    movie = control.add_torrent("Film.2021.2160p", [FileSpec("/Film.2021.2160p.mkv", 70_000), FileSpec("/film.nfo", 9)])
    control.add_torrent("Series.S01E01.720p", [FileSpec("/Series.S01E01.720p.mkv", 3000)])
    (tmp_path / "no-config.toml").write_text(
        'sync_interval = 1\n\n[views]\n\n[[views.dir]]\npath = "tv"\nhas_episodes = true\n\n'
        '[[views.dir]]\npath = "films"\n\n[[views.dir]]\npath = "uhd"\ngroup = "quality"\nname = "2160p"\n'
    )
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        root = mounted.path
        wanted = root / "films" / "Film.2021.2160p" / "Film.2021.2160p.mkv"
        mountutil.wait_for(wanted.exists, timeout=20, what="view entry")
        assert {"tv", "films", "uhd", "torrents"} <= set(os.listdir(root))
        assert os.listdir(root / "films" / "Film.2021.2160p") == ["Film.2021.2160p.mkv"]  # .nfo hidden
        assert os.listdir(root / "uhd") == ["Film.2021.2160p"]
        mountutil.wait_for(lambda: os.listdir(root / "tv") == ["Series.S01E01.720p"], what="tv view")
        assert wanted.read_bytes() == control.file_bytes(movie, 1)
        assert os.stat(wanted).st_ino != os.stat(root / "torrents" / "Film.2021.2160p" / "Film.2021.2160p.mkv").st_ino


async def test_warm_start_skips_recompute_only_when_views_are_current(synced) -> None:
    emu, cache, syncer = synced
    emu.add_torrent("Some.Film.2019", [FileSpec("/Some.Film.2019.mkv", 5000)])
    await syncer.sync_once()
    views = Views(cache, DEFAULT_VIEWS)
    assert not views.current  # never computed
    views.refresh()
    assert views.current and Views(cache, DEFAULT_VIEWS).current  # a restart finds them current
    other = ViewsConfig(views=(View(path="all"),), junk=DEFAULT_VIEWS.junk)
    assert not Views(cache, other).current  # a changed configuration recomputes
    syncer.bus.subscribe(views.mark_dirty)
    emu.add_torrent("Other.Film.2021", [FileSpec("/Other.Film.2021.mkv", 10)])
    await syncer.sync_once()
    assert not Views(cache, DEFAULT_VIEWS).current  # torrents/ changed since: recompute at start
    views.refresh()
    assert Views(cache, DEFAULT_VIEWS).current


async def test_the_stepped_rebuild_writes_what_a_full_refresh_would(synced, monkeypatch) -> None:
    """``rebuild`` (the mount's full recompute, a chunk of torrents at a time) ends where ``refresh``
    would: a refresh after it writes nothing, also after a torrent left and after the configuration
    changed (a view dropped, a view added)."""
    monkeypatch.setattr("rdfs.sync.views.IN_CHUNK", 2)  # several steps for a few torrents
    emu, cache, syncer = synced
    ids = [
        emu.add_torrent(f"Film.{n}.2020", [FileSpec(f"/Film.{n}.2020.mkv", 5000 + n)])
        for n in range(5)
    ]
    ids += [
        emu.add_torrent(f"Show.{n}.S01", [FileSpec(f"/Show.{n}.S01E01.mkv", 900)]) for n in range(3)
    ]
    await syncer.sync_once()
    published: list[TreeChange] = []
    bus = ChangeBus(Namespace(cache).path)
    bus.subscribe(published.append)
    views = Views(cache, DEFAULT_VIEWS, bus)
    assert not views.current
    await views.rebuild()
    assert views.current and len(published) >= 4  # published step by step
    assert not views.refresh() and cache.integrity_problems() == []
    namespace = Namespace(cache)
    assert len(namespace.children(namespace.lookup(ROOT_INODE, "movies").inode)) == 5
    assert cache.entry(namespace.lookup(ROOT_INODE, "shows").inode).nlink == 2 + 3

    emu.remove_torrent(ids[0])
    await syncer.sync_once()
    await syncer.sync_once()  # a removal waits for one more complete listing
    await views.rebuild()
    assert not views.refresh() and cache.integrity_problems() == []
    assert len(namespace.children(namespace.lookup(ROOT_INODE, "movies").inode)) == 4

    other = ViewsConfig(views=(View(path="all"),), junk=DEFAULT_VIEWS.junk)
    changed = Views(cache, other, bus)
    assert not changed.current
    await changed.rebuild()
    assert changed.current and not changed.refresh() and cache.integrity_problems() == []
    top = {node.name for node in namespace.children(ROOT_INODE)}
    assert "all" in top and "movies" not in top and "shows" not in top
    assert len(namespace.children(namespace.lookup(ROOT_INODE, "all").inode)) == 7
