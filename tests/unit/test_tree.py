"""Naming rules and the namespace built from records (no network)."""

from __future__ import annotations

import random
import unicodedata
from datetime import datetime, timedelta, timezone

import pytest

from rdfs.api.models import Download, Torrent, TorrentFile, TorrentInfo
from rdfs.store.metadata import DOWNLOADS_INODE, ROOT_INODE, TORRENTS_INODE, Cache, Scope
from rdfs.tree.specs import (
    MAX_NAME_BYTES,
    Namespace,
    download_specs,
    safe_name,
    tagged_name,
    torrent_dir_specs,
    torrent_file_specs,
)

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def torrent(tid: str, name: str, *, minutes: int = 0, status: str = "downloaded", links: int = 1) -> Torrent:
    return Torrent(
        id=tid,
        filename=name,
        hash=tid.lower() * 3,
        bytes=1000,
        host="real-debrid.com",
        split=2000,
        progress=100.0,
        status=status,
        added=T0 + timedelta(minutes=minutes),
        links=tuple(f"https://real-debrid.com/d/{tid}{i}" for i in range(links)),
        ended=T0 + timedelta(minutes=minutes + 1),
    )


def info(tid: str, name: str, files: list[tuple[str, int]], *, links: int | None = None) -> TorrentInfo:
    base = torrent(tid, name, links=len(files) if links is None else links)
    fields = {f: getattr(base, f) for f in Torrent.__dataclass_fields__ if f != "raw"}
    return TorrentInfo(
        **fields,
        files=tuple(TorrentFile(id=i + 1, path=path, bytes=size, selected=True) for i, (path, size) in enumerate(files)),
    )


# --- safe names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/b", "a\u2215b"),
        ("a\x00b", "ab"),
        ("tab\there\nnew", "tabherenew"),
        (".", "\uff0e"),
        ("..", "\uff0e\uff0e"),
        ("...", "..."),
        ("", "_"),
        ("\x00", "_"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFD -> NFC
        ("🎬 Film 👨‍👩‍👧.mkv", "🎬 Film 👨‍👩‍👧.mkv"),
        ("bad\ud800surrogate", "badsurrogate"),
    ],
)
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


def test_long_names_keep_extension_and_characters() -> None:
    name = safe_name("é" * 300 + ".mkv")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".mkv")
    assert name.encode().decode() == name  # cut on a character boundary
    emoji = safe_name("🎬" * 100 + ".srt")
    assert len(emoji.encode()) <= MAX_NAME_BYTES and emoji.endswith(".srt")
    directory = safe_name("d" * 300 + ".x", is_dir=True)
    assert len(directory.encode()) == MAX_NAME_BYTES and directory == "d" * 255
    tagged = tagged_name("a" * 300 + ".mkv", "ABCDEFGHIJKLM", is_dir=False)
    assert len(tagged.encode()) <= MAX_NAME_BYTES and tagged.endswith(" [ABCDEFGHIJKLM].mkv")


def test_fallback_for_empty_torrent_name() -> None:
    specs = torrent_dir_specs([torrent("AAAA", "")], set())
    assert specs[0].name == "AAAA"


# --- torrent directories ----------------------------------------------------------------------


def test_duplicate_torrent_names_are_disambiguated_deterministically() -> None:
    torrents = [
        torrent("BBBB", "Caf\u00e9", minutes=2),
        torrent("AAAA", "Caf\u00e9", minutes=1),
        torrent("CCCC", "Caf\u00e9", minutes=3),
        torrent("DDDD", "Cafe\u0301", minutes=4),  # NFD: the same name once normalized
        torrent("EEEE", "Other", minutes=0, status="downloading"),
    ]
    expected = {"AAAA": "Caf\u00e9", "BBBB": "Caf\u00e9 [BBBB]", "CCCC": "Caf\u00e9 [CCCC]", "DDDD": "Caf\u00e9 [DDDD]"}
    for _ in range(5):
        random.shuffle(torrents)
        specs = torrent_dir_specs(torrents, {"AAAA"})
        assert {s.torrent_id: s.name for s in specs} == expected
    pending = {s.torrent_id: s.files_pending for s in torrent_dir_specs(torrents, {"AAAA"})}
    assert pending == {"AAAA": False, "BBBB": True, "CCCC": True, "DDDD": True}


def test_adding_a_newer_duplicate_does_not_rename_the_older() -> None:
    before = torrent_dir_specs([torrent("AAAA", "Show", minutes=1)], set())
    after = torrent_dir_specs([torrent("AAAA", "Show", minutes=1), torrent("ZZZZ", "Show", minutes=9)], set())
    assert before[0].name == "Show"
    assert {s.torrent_id: s.name for s in after} == {"AAAA": "Show", "ZZZZ": "Show [ZZZZ]"}


# --- files inside a torrent -------------------------------------------------------------------


def test_file_tree_paths_links_and_collisions() -> None:
    record = info(
        "TTTT",
        "Pack",
        [
            ("/Season 1/E01.mkv", 10),
            ("/Season 1/E02.mkv", 20),
            ("/Season 1/../E01.mkv", 30),  # ".." component is made safe, never a traversal
            ("/Cafe\u0301/x.srt", 1),
            ("/Caf\u00e9/y.srt", 2),  # NFD and NFC directories merge
            ("/dup.txt", 3),
            ("/dup.txt\x00", 4),  # same name after cleaning: disambiguated with the file id
        ],
    )
    specs = torrent_file_specs(record)
    by_key = {s.key: s for s in specs}
    names = {(s.parent_key, s.name) for s in specs}
    assert len(names) == len(specs)  # unique per directory
    assert by_key["dir:TTTT:Season 1"].parent_key == "t:TTTT"
    assert by_key["f:TTTT:1"].parent_key == "dir:TTTT:Season 1" and by_key["f:TTTT:1"].name == "E01.mkv"
    assert by_key["f:TTTT:2"].hoster_link == "https://real-debrid.com/d/TTTT1"
    assert by_key["dir:TTTT:Season 1/\uff0e\uff0e"].name == "\uff0e\uff0e"
    assert by_key["f:TTTT:4"].parent_key == by_key["f:TTTT:5"].parent_key == "dir:TTTT:Caf\u00e9"
    assert by_key["f:TTTT:6"].name == "dup.txt" and by_key["f:TTTT:7"].name == "dup [7].txt"
    assert by_key["dir:TTTT:Season 1"].nlink == 3  # "." + ".." + the ".." subdirectory
    assert specs == torrent_file_specs(record)  # deterministic


def test_unselected_files_are_hidden_and_links_follow_selected_order() -> None:
    base = info("TTTT", "T", [("/a", 1), ("/b", 2), ("/c", 3)], links=2)
    files = (base.files[0], TorrentFile(id=2, path="/b", bytes=2, selected=False), base.files[2])
    record = TorrentInfo(**{f: getattr(base, f) for f in TorrentInfo.__dataclass_fields__ if f not in ("raw", "files")}, files=files)
    specs = {s.name: s for s in torrent_file_specs(record)}
    assert set(specs) == {"a", "c"}
    assert specs["a"].hoster_link.endswith("TTTT0") and specs["c"].hoster_link.endswith("TTTT1")


def test_packed_torrent_shows_rar_volumes() -> None:
    one = torrent_file_specs(info("PPPP", "Album", [("/1.flac", 5), ("/2.flac", 6), ("/info.nfo", 1)], links=1))
    assert [(s.name, s.size) for s in one] == [("Album.rar", 1000)]
    many = torrent_file_specs(
        info("PPPP", "Big", [(f"/{i}.bin", 5) for i in range(12)], links=10),
        {"https://real-debrid.com/d/PPPP3": 777},
    )
    assert [s.name for s in many][:2] == ["Big.part01.rar", "Big.part02.rar"]
    assert many[3].size == 777 and many[0].size == 0


# --- downloads ----------------------------------------------------------------------------------


def download(did: str, name: str, link: str, minutes: int) -> Download:
    return Download(
        id=did, filename=name, filesize=10, link=link, host="h", download=f"https://x/{did}", generated=T0 + timedelta(minutes=minutes)
    )


def test_downloads_one_per_link_and_disambiguated() -> None:
    items = [
        download("D2", "a.mkv", "https://real-debrid.com/d/L1", 2),
        download("D1", "a.mkv", "https://real-debrid.com/d/L1", 1),
        download("D3", "a.mkv", "https://real-debrid.com/d/L2", 3),
        download("D4", "b/c.mkv", "https://real-debrid.com/d/L3", 4),
    ]
    specs = {s.download_id: s.name for s in download_specs(items)}
    assert specs == {"D1": "a.mkv", "D3": "a [D3].mkv", "D4": "b\u2215c.mkv"}
    assert specs == {s.download_id: s.name for s in download_specs(reversed(items))}


# --- the namespace over a real cache ------------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    cache = Cache.open(tmp_path, 7)
    yield cache
    cache.close()


def build(cache: Cache, torrents: list[Torrent], infos: list[TorrentInfo]) -> None:
    cache.upsert_torrents(torrents)
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), torrent_dir_specs(torrents, set())))
    for record in infos:
        cache.store_info(record, torrent_file_specs(record))


def test_namespace_lookup_children_and_xattrs(cache: Cache) -> None:
    record = info("TTTT", "Show", [("/S1/E1.mkv", 11), ("/S1/E2.mkv", 22), ("/readme.txt", 3)])
    build(cache, [torrent("TTTT", "Show"), torrent("UUUU", "Later", minutes=5)], [record])
    ns = Namespace(cache)
    root = ns.node(ROOT_INODE)
    assert root is not None and root.kind == "dir" and root.parent == 0
    assert [n.name for n in ns.children(ROOT_INODE)] == [".rdfs", "downloads", "torrents"]
    assert ns.lookup(ROOT_INODE, "torrents").inode == TORRENTS_INODE
    assert ns.lookup(ROOT_INODE, "downloads").inode == DOWNLOADS_INODE
    show = ns.lookup(TORRENTS_INODE, "Show")
    assert show is not None and not show.files_pending and show.nlink == 3
    later = ns.lookup(TORRENTS_INODE, "Later")
    assert later is not None and later.files_pending
    season = ns.lookup(show.inode, "S1")
    episode = ns.lookup(season.inode, "E2.mkv")
    assert episode.size == 22 and episode.kind == "file" and episode.nlink == 1
    assert episode.xattrs == {
        "user.rdfs.torrent_id": "TTTT",
        "user.rdfs.hash": "tttt" * 3,
        "user.rdfs.status": "downloaded",
        "user.rdfs.file_id": "2",
        "user.rdfs.link": "https://real-debrid.com/d/TTTT1",
    }
    assert episode.mtime == (T0 + timedelta(minutes=1)).timestamp()
    assert ns.path(episode.inode) == "torrents/Show/S1/E2.mkv"
    assert ns.node(episode.inode) == episode
    # NFD lookups find the NFC name; missing names give None.
    assert ns.lookup(show.inode, "readme.txt") is not None
    assert ns.lookup(show.inode, "nope") is None
    # Paging by name offset and by inode cursor cover every child exactly once.
    assert [n.name for n in ns.children(TORRENTS_INODE, 0, 1)] + [
        n.name for n in ns.children(TORRENTS_INODE, 1, 1)
    ] == ["Later", "Show"]
    first = ns.children(show.inode, limit=1, after=0)
    rest = ns.children(show.inode, limit=10, after=first[0].inode)
    assert sorted(n.name for n in first + rest) == ["S1", "readme.txt"]
    totals = ns.totals()
    assert totals.bytes == 36 and totals.entries == 4 + 2 + 4


def test_nfd_lookup_finds_nfc_name(cache: Cache) -> None:
    record = info("TTTT", "Caf\u00e9", [("/x", 1)])
    build(cache, [torrent("TTTT", "Caf\u00e9")], [record])
    ns = Namespace(cache)
    assert ns.lookup(TORRENTS_INODE, unicodedata.normalize("NFD", "Caf\u00e9")) is not None


def test_same_records_give_same_tree_and_inodes_on_rebuild(tmp_path) -> None:
    torrents = [torrent(f"T{i:03d}", f"Name {i % 3}", minutes=i) for i in range(12)]
    infos = [info(t.id, t.filename, [("/a/b.mkv", 1), ("/c.txt", 2)]) for t in torrents]

    def snapshot(cache: Cache) -> set[tuple]:
        return set(cache.conn.execute("SELECT inode, parent, name, kind, size FROM entries"))

    first = Cache.open(tmp_path / "one", 1)
    build(first, torrents, infos)
    second = Cache.open(tmp_path / "two", 1)
    build(second, list(reversed(torrents)), list(reversed(infos)))
    names_first = {(p, n) for _, p, n, _, _ in snapshot(first)}
    paths = lambda c: sorted(Namespace(c).path(i) for i, *_ in snapshot(c))  # noqa: E731
    assert paths(first) == paths(second)
    # A rebuild of the same cache keeps every inode.
    before = snapshot(first)
    build(first, torrents, infos)
    assert snapshot(first) == before and {(p, n) for _, p, n, _, _ in before} == names_first
    assert first.integrity_problems() == [] and second.integrity_problems() == []
    first.close()
    second.close()
