"""The store's own jobs: the stable keys, the repair swap, expired links purged by its retry task."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

import pytest
import trio

from rdfs.store import keys
from rdfs.store.metadata import Cache, Scope, StoredLink
from rdfs.tree.specs import torrent_dir_specs, torrent_file_specs
from tests.unit.test_tree import info

OLD, NEW = "OLDTORRENT234", "NEWTORRENT567"


@pytest.fixture
def cache(tmp_path):
    cache = Cache.open(tmp_path, 42)
    yield cache
    cache.close()


def test_keys_are_built_and_read_in_one_place() -> None:
    assert keys.torrent(OLD) == f"t:{OLD}" and keys.is_torrent_dir(keys.torrent(OLD))
    assert keys.torrent_file(OLD, 3) == f"f:{OLD}:3"
    assert keys.torrent_dir(OLD, "Season 1/x:y") == f"dir:{OLD}:Season 1/x:y"
    assert keys.is_rar_volume(keys.rar_volume(OLD, 0))
    assert keys.is_archive_member(keys.archive_member(OLD, "a/b.mkv"))
    assert keys.download("D1") == "d:D1" and keys.control("add") == "ctl:add"
    assert keys.is_view_dir(keys.view_dir("movies"))
    assert not keys.is_view_dir(keys.view_copy("movies", keys.torrent(OLD)))
    assert not keys.is_torrent_dir(keys.view_copy("movies", keys.torrent(OLD)))


@pytest.mark.parametrize(
    ("key", "renamed"),
    [
        (f"t:{OLD}", f"t:{NEW}"),
        (f"f:{OLD}:12", f"f:{NEW}:12"),
        (f"dir:{OLD}:Season 1", f"dir:{NEW}:Season 1"),
        (f"r:{OLD}:0", f"r:{NEW}:0"),
        (f"a:{OLD}:dir/{OLD}:x.mkv", f"a:{NEW}:dir/{OLD}:x.mkv"),  # the member's name stays
        (f"v:movies:dir:{OLD}:S1", f"v:movies:dir:{NEW}:S1"),
        (f"t:{OLD}X", f"t:{OLD}X"),  # another torrent whose id starts alike
        (f"d:{OLD}", f"d:{OLD}"),  # a download is not a torrent
    ],
)
def test_renamed_torrent_touches_only_the_torrent_id(key: str, renamed: str) -> None:
    assert keys.renamed_torrent(key, OLD, NEW) == renamed


def _show(cache: Cache, tid: str) -> dict[str, int]:
    """Store a two-file torrent with a subdirectory and a view copy; its keys -> inodes."""
    full = info(tid, "Show", [("/Season 1/E01.mkv", 10), ("/Season 1/E02.mkv", 20)])
    cache.upsert_torrents([full])
    cache.apply_diff(cache.diff_entries(Scope.torrent_dirs(), torrent_dir_specs([full], {tid})))
    cache.store_info(full, torrent_file_specs(full))
    cache.inode_for(keys.view_copy("shows", keys.torrent(tid)))
    return _inodes_of(cache, tid)


def _inodes_of(cache: Cache, tid: str) -> dict[str, int]:
    sql = "SELECT key, inode FROM inodes WHERE key LIKE '%:' || ? || '%'"
    return dict(cache.conn.execute(sql, (tid,)))


def test_swap_torrent_keeps_every_inode_and_path(cache: Cache) -> None:
    before = _show(cache, OLD)
    assert len(before) == 5  # directory, subdirectory, two files, the view's copy
    new = info(NEW, "Show", [("/Season 1/E01.mkv", 10), ("/Season 1/E02.mkv", 20)])
    cache.swap_torrent(OLD, new)
    after = _inodes_of(cache, NEW)
    assert after == {keys.renamed_torrent(k, OLD, NEW): inode for k, inode in before.items()}
    assert cache.torrent(OLD) is None and cache.torrent(NEW) is not None
    assert _inodes_of(cache, OLD) == {}
    entry = cache.entry(before[keys.torrent_file(OLD, 1)])
    assert entry is not None and entry.torrent_id == NEW and entry.name == "E01.mkv"


def test_swap_torrent_failing_changes_nothing(cache: Cache, monkeypatch) -> None:
    before = _show(cache, OLD)

    def broken(torrents) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(cache, "upsert_torrents", broken)
    with pytest.raises(sqlite3.OperationalError):
        cache.swap_torrent(OLD, info(NEW, "Show", [("/Season 1/E01.mkv", 10)]))
    assert _inodes_of(cache, OLD) == before
    assert cache.torrent(OLD) is not None and cache.torrents_with_status(["downloaded"]) == [OLD]
    assert cache.torrent_for_link(info(OLD, "Show", [("/a", 1)]).links[0]) == OLD


def _expired(number: int) -> StoredLink:
    return StoredLink(
        f"https://real-debrid.com/d/{number}", "https://dl/x", "DL", 5, time.time() - 1
    )


async def test_the_retry_task_purges_expired_links(cache: Cache, autojump_clock) -> None:
    cache.put_link(_expired(1))
    fresh = replace(_expired(2), expires_at=time.time() + 3600)
    cache.put_link(fresh)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: cache.retry_pending(purge_every=60.0))
        await trio.sleep(30)
        assert cache.get_link(_expired(1).hoster_link) is not None  # not yet
        await trio.sleep(40)
        assert cache.get_link(_expired(1).hoster_link) is None
        assert cache.get_link(fresh.hoster_link) == fresh
        nursery.cancel_scope.cancel()


async def test_a_purge_the_database_refuses_waits_for_the_next_round(
    cache: Cache, autojump_clock
) -> None:
    cache.put_link(_expired(3))
    other = sqlite3.connect(cache.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: cache.retry_pending(purge_every=60.0))
            await trio.sleep(70)
            assert cache.get_link(_expired(3).hoster_link) is not None
            other.execute("ROLLBACK")
            await trio.sleep(60)
            assert cache.get_link(_expired(3).hoster_link) is None
            nursery.cancel_scope.cancel()
    finally:
        other.close()


def test_fingerprints_encode_exactly_as_json_dumps() -> None:
    """Stored fingerprints are compared with new ones: the fast encoder must give json.dumps's
    text for every value a listed torrent has, or every torrent would look changed."""
    import json

    from hypothesis import given
    from hypothesis import strategies as st

    from rdfs.store.records import _json

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)

    @given(st.lists(values, max_size=8))
    def same(value: list[object]) -> None:
        assert _json(value) == json.dumps(value)

    same()
    assert _json(["Fïlm \u2028 \"x\"\n", 2**70, 1e-7, float("nan"), None]) == json.dumps(
        ["Fïlm \u2028 \"x\"\n", 2**70, 1e-7, float("nan"), None]
    )
