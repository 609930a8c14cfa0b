"""The SQLite cache: schema, accounts, links, inodes and entry diffs (real files in tmp_path)."""

from __future__ import annotations

import sqlite3

import pytest

from rdfs.store.metadata import (
    CONTROL_INODE,
    DOWNLOADS_INODE,
    FIRST_DYNAMIC_INODE,
    ROOT_INODE,
    SCHEMA_VERSION,
    TORRENTS_INODE,
    Cache,
    CacheError,
    EntrySpec,
    Scope,
    StoredLink,
)
from rdfs.tree.specs import Namespace, torrent_dir_specs, torrent_file_specs
from tests.unit.test_tree import info


@pytest.fixture
def cache(tmp_path):
    cache = Cache.open(tmp_path, 42)
    yield cache
    cache.close()


def test_new_cache_layout_and_pragmas(tmp_path, cache: Cache) -> None:
    assert cache.path == tmp_path / "42" / "rdfs.db"
    assert cache.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cache.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert cache.get_meta("user_id") == "42"
    fixed = cache.conn.execute("SELECT inode, parent, name FROM entries ORDER BY inode").fetchall()
    assert fixed == [
        (ROOT_INODE, 0, ""),
        (TORRENTS_INODE, ROOT_INODE, "torrents"),
        (DOWNLOADS_INODE, ROOT_INODE, "downloads"),
        (CONTROL_INODE, ROOT_INODE, ".rdfs"),
    ]
    assert cache.inode_for("x:first") == FIRST_DYNAMIC_INODE
    assert cache.integrity_problems() == []
    # Every lookup path has an index.
    plans = {
        "SELECT * FROM entries WHERE parent = 2 AND name = 'x'": "entries_name",
        "SELECT * FROM entries WHERE parent = 2 AND inode > 5 ORDER BY inode": "entries_parent_inode",
        "SELECT * FROM entries WHERE torrent_id = 'x'": "entries_torrent",
        "SELECT * FROM entries WHERE hoster_link = 'x'": "entries_link",
        "SELECT * FROM inodes WHERE key = 'x'": "sqlite_autoindex_inodes_1",
    }
    for sql, index in plans.items():
        plan = " ".join(row[-1] for row in cache.conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert index in plan, (sql, plan)


def test_warm_start_finds_last_account(tmp_path) -> None:
    assert Cache.open_warm(tmp_path) is None
    Cache.open(tmp_path, 1).close()
    second = Cache.open(tmp_path, 2)
    second.inode_for("keep")
    second.close()
    warm = Cache.open_warm(tmp_path)
    assert warm is not None and warm.user_id == "2" and warm.path == tmp_path / "2" / "rdfs.db"
    assert warm.inode_for("keep") == FIRST_DYNAMIC_INODE
    warm.close()


def test_refuses_other_account_and_newer_schema(tmp_path, cache: Cache) -> None:
    with pytest.raises(CacheError):
        Cache(cache.path, user_id="43")
    with cache.transaction():
        cache.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(CacheError, match="schema version"):
        Cache(cache.path)


def test_links_round_trip_and_expiry(cache: Cache) -> None:
    link = StoredLink("https://real-debrid.com/d/AAA", "https://dl/x.mkv", "DL1", 1234, 1000.0)
    assert cache.get_link(link.hoster_link) is None
    cache.put_link(link)
    assert cache.get_link(link.hoster_link) == link
    newer = StoredLink(link.hoster_link, "https://dl/y.mkv", "DL2", 1234, 5000.0)
    cache.put_link(newer)
    assert cache.get_link(link.hoster_link) == newer
    assert cache.purge_expired_links(now=6000.0) == 1
    assert cache.get_link(link.hoster_link) is None
    cache.put_link(link)
    cache.drop_link(link.hoster_link)
    assert cache.get_link(link.hoster_link) is None


def test_put_link_fixes_rar_volume_size(cache: Cache) -> None:
    record = info("PPPP", "Packed", [("/a", 5), ("/b", 6)], links=1)
    cache.upsert_torrents([record])
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), torrent_dir_specs([record], set())))
    cache.store_info(record, torrent_file_specs(record))
    ns = Namespace(cache)
    volume = ns.lookup(ns.lookup(TORRENTS_INODE, "Packed").inode, "Packed.rar")
    assert volume.size == record.bytes
    cache.put_link(StoredLink(record.links[0], "https://dl/p.rar", "D", 999, 1e12))
    assert ns.node(volume.inode).size == 999
    # A later rebuild of the torrent keeps the learnt size.
    cache.store_info(record, torrent_file_specs(record, cache.link_sizes(record.links)))
    assert ns.node(volume.inode).size == 999


def test_inodes_are_stable_and_never_reused(tmp_path, cache: Cache) -> None:
    a, b = cache.inode_for("t:A"), cache.inode_for("t:B")
    assert cache.inode_for("t:A") == a and b == a + 1
    spec = EntrySpec(key="t:A", parent_key="top:torrents", name="A", kind="dir", torrent_id="A")
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), [spec]))
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), []))  # removed
    assert cache.inode_for("t:C") == b + 1  # A's number is not handed out again
    cache.close()
    reopened = Cache.open(tmp_path, 42)
    assert reopened.inode_for("t:A") == a and reopened.inode_for("t:D") == b + 2
    reopened.close()


def test_diff_renames_swaps_and_reports_changes(cache: Cache) -> None:
    def spec(key: str, name: str, size: int = 0) -> EntrySpec:
        return EntrySpec(key=key, parent_key="top:downloads", name=name, kind="file", size=size, download_id=key)

    first = cache.apply_diff(cache.diff_entries(Scope.downloads(), [spec("d:1", "one"), spec("d:2", "two")]))
    one, two = cache.inode_for("d:1"), cache.inode_for("d:2")
    assert first.entries == {(DOWNLOADS_INODE, "one"), (DOWNLOADS_INODE, "two")}
    # Swapping names across several batches never breaks UNIQUE(parent, name).
    diff = cache.diff_entries(Scope.downloads(), [spec("d:1", "two"), spec("d:2", "one", size=5)])
    steps = list(cache.diff_batches(diff, size=1))
    assert len(steps) == 2
    rows = dict(cache.conn.execute("SELECT inode, name FROM entries WHERE parent = ?", (DOWNLOADS_INODE,)))
    assert rows == {one: "two", two: "one"}
    assert cache.conn.execute("SELECT size FROM entries WHERE inode = ?", (two,)).fetchone() == (5,)
    # Nothing to do when nothing changed.
    assert not cache.diff_entries(Scope.downloads(), [spec("d:1", "two"), spec("d:2", "one", size=5)])
    assert cache.integrity_problems() == []


def test_deleting_a_torrent_removes_rows_files_and_subtree(cache: Cache) -> None:
    record = info("TTTT", "Show", [("/S1/E1.mkv", 1), ("/S1/E2.mkv", 2)])
    cache.upsert_torrents([record])
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), torrent_dir_specs([record], set())))
    cache.store_info(record, torrent_file_specs(record))
    assert cache.has_files("TTTT") and cache.files_of("TTTT").files == record.files
    changes = cache.delete_torrents(["TTTT"])
    assert (TORRENTS_INODE, "Show") in changes.entries
    assert cache.conn.execute("SELECT count(*) FROM entries WHERE torrent_id = 'TTTT'").fetchone() == (0,)
    assert cache.conn.execute("SELECT count(*) FROM files").fetchone() == (0,)
    assert cache.torrent("TTTT") is None
    assert cache.integrity_problems() == []


def test_failed_transaction_rolls_back(cache: Cache) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        with cache.transaction():
            cache.inode_for("t:rolled-back")
            cache.conn.execute("INSERT INTO entries (inode, parent, name, kind, size, mtime, nlink) "
                               "VALUES (5000, 2, 'torrents', 'dir', 0, 0, 2)")
            cache.conn.execute("INSERT INTO entries (inode, parent, name, kind, size, mtime, nlink) "
                               "VALUES (5001, 2, 'torrents', 'dir', 0, 0, 2)")
    assert cache.conn.execute("SELECT count(*) FROM inodes WHERE key = 't:rolled-back'").fetchone() == (0,)
    assert cache.conn.execute("SELECT count(*) FROM entries WHERE inode >= 5000").fetchone() == (0,)


def test_sync_state_round_trip(tmp_path, cache: Cache) -> None:
    cache.set_state("pending_deletions", {"torrents": ["A", "B"]})
    cache.close()
    reopened = Cache.open(tmp_path, 42)
    assert reopened.get_state("pending_deletions") == {"torrents": ["A", "B"]}
    assert reopened.get_state("missing", 3) == 3
    reopened.close()
