"""The cache is only a cache: full disk, foreign locks, corruption and other accounts (in process)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rdfs.api.client import RDClient
from rdfs.api.models import Torrent
from rdfs.store.metadata import (
    ACCOUNTS_FILE,
    DB_NAME,
    TORRENTS_INODE,
    Accounts,
    Cache,
    CacheFull,
    CacheLocked,
    CacheUnavailable,
    StoredLink,
)
from rdfs.emulator import Emulator, FileSpec
from rdfs.events import StatusBoard
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace


def torrent(number: int) -> Torrent:
    return Torrent(
        id=f"T{number:012d}",
        filename=f"Torrent {number} " + "x" * 200,
        hash=f"{number:040x}",
        bytes=1000,
        host="real-debrid.com",
        split=2000,
        progress=100.0,
        status="downloaded",
        added=None,
        ended=None,
        links=(f"https://real-debrid.com/d/L{number}",),
    )


def link(number: int) -> StoredLink:
    # (A long URL: it needs pages of its own, so a full database cannot take it.)
    return StoredLink(
        f"https://real-debrid.com/d/L{number}",
        f"https://dl.example/{number}/" + "u" * 8000,
        f"D{number}",
        10,
        2e9,
    )


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    store = Cache.open(tmp_path, 42)
    try:
        yield store
    finally:
        store.close()


def stored_links(path: Path) -> set[str]:
    """The links another connection sees committed in the database."""
    with sqlite3.connect(path) as other:
        return {row[0] for row in other.execute("SELECT hoster_link FROM links")}


def test_full_disk_rolls_back_whole_and_links_wait_in_memory(cache: Cache) -> None:
    cache.upsert_torrents([torrent(0)])
    cache.conn.execute(
        f"PRAGMA max_page_count = {cache.conn.execute('PRAGMA page_count').fetchone()[0]}"
    )
    with pytest.raises(CacheFull):
        cache.upsert_torrents([torrent(n) for n in range(1, 400)])
    assert set(cache.torrent_states()) == {torrent(0).id}  # nothing of the failed batch
    assert not cache.conn.in_transaction
    cache.put_link(link(1))  # a read must not fail because the cache cannot store its link
    assert cache.get_link(link(1).hoster_link) == link(1)
    assert cache.status()["state"] == "disk full" and cache.status()["pending_writes"] == 1
    assert stored_links(cache.path) == set()
    cache.conn.execute("PRAGMA max_page_count = 1000000")  # space freed
    assert cache.flush_pending()
    assert stored_links(cache.path) == {link(1).hoster_link}
    assert cache.status()["state"] == "ok" and cache.status()["pending_writes"] == 0


def test_foreign_write_lock_fails_writes_fast_and_reads_go_on(cache: Cache) -> None:
    cache.upsert_torrents([torrent(0)])
    other = sqlite3.connect(cache.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CacheLocked):
            cache.upsert_torrents([torrent(1)])
        cache.put_link(link(1))
        cache.drop_link(link(0).hoster_link)
        assert cache.get_link(link(1).hoster_link) == link(1)
        assert set(cache.torrent_states()) == {torrent(0).id}  # reads answer during the lock
        assert Namespace(cache).lookup(1, "torrents") is not None
        status = cache.status()
        assert status["state"] == "locked by another process" and status["pending_writes"] == 2
        assert not cache.flush_pending()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert cache.flush_pending()
    assert stored_links(cache.path) == {link(1).hoster_link}
    assert cache.status()["state"] == "ok"


def test_pending_links_are_retried_by_the_background_task(cache: Cache) -> None:
    other = sqlite3.connect(cache.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    cache.put_link(link(7))
    assert cache.status()["pending_writes"] == 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.retry_pending)
            await trio.sleep(0.1)
            other.execute("ROLLBACK")
            with trio.fail_after(30):
                while cache.status()["pending_writes"]:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        other.close()
    assert stored_links(cache.path) == {link(7).hoster_link}


async def test_sync_tick_failing_on_the_cache_is_reported_and_retried(
    emulator: Emulator, rd_client: RDClient, tmp_path: Path
) -> None:
    emulator.add_torrent("Kept Movie", [FileSpec("/kept.mkv", 100)])
    cache = Cache.open(tmp_path, 4242)
    other = sqlite3.connect(cache.path, isolation_level=None)
    try:
        board = StatusBoard()
        syncer = Syncer(rd_client, cache, board=board, interval=0.05)
        board.register("cache", cache.status)
        other.execute("BEGIN EXCLUSIVE")
        async with trio.open_nursery() as nursery:
            await nursery.start(syncer.run)
            with trio.fail_after(30):
                while not any(e["where"] == "cache" for e in syncer.status()["recent_errors"]):
                    await trio.sleep(0.05)
            assert syncer.status()["health"] == "degraded"
            assert board.snapshot()["cache"]["state"] == "locked by another process"
            assert cache.torrent_states() == {}
            other.execute("ROLLBACK")
            with trio.fail_after(30):
                while not Namespace(cache).children(TORRENTS_INODE, limit=10):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert cache.status()["state"] == "ok"
    finally:
        other.close()
        cache.close()


def fill(cache: Cache, count: int = 300) -> None:
    cache.upsert_torrents([torrent(n) for n in range(count)])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_database_is_moved_aside_and_rebuilt(tmp_path: Path, damage: str, caplog) -> None:
    path = tmp_path / "42" / DB_NAME
    if damage == "garbage":
        path.parent.mkdir()
        path.write_bytes(b"this is not an SQLite database\n" * 300)
    else:
        first = Cache.open(tmp_path, 42)
        fill(first)
        first.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    damaged = path.read_bytes()
    caplog.set_level(logging.INFO, logger="rdfs")
    cache = Cache.open(tmp_path, 42)
    try:
        assert cache.torrent_states() == {} and cache.integrity_problems() == []
        cache.upsert_torrents([torrent(1)])  # a working database
    finally:
        cache.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0].getMessage(), warnings
    aside = [p for p in path.parent.iterdir() if p.name.startswith(DB_NAME + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged


def checks_run(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The databases whose integrity check ran, from now on."""
    ran: list[Path] = []
    real = Cache._check_sound

    def spy(self: Cache) -> None:
        ran.append(self.path)
        real(self)

    monkeypatch.setattr(Cache, "_check_sound", spy)
    return ran


def test_a_cleanly_closed_cache_opens_without_the_integrity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = checks_run(monkeypatch)
    first = Cache.open(tmp_path, 42)
    fill(first, 20)
    first.close()
    assert len(ran) == 1  # a new database: checked
    second = Cache.open(tmp_path, 42)
    try:
        assert len(ran) == 1 and len(second.torrent_states()) == 20
        # The mark is gone while the cache is open: a crash now leaves none behind.
        assert not [p for p in second.path.parent.iterdir() if p.name.endswith(".clean")]
    finally:
        second.close()
    Cache.open(tmp_path, 42).close()
    assert len(ran) == 1


def test_a_cache_not_closed_cleanly_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = checks_run(monkeypatch)
    crashed = Cache.open(tmp_path, 42)
    fill(crashed, 20)  # never closed: a crash (its WAL stays behind)
    again = Cache.open(tmp_path, 42)
    again.close()
    crashed.conn.close()
    assert len(ran) == 2
    still_open = Cache.open(tmp_path, 42)
    other = Cache.open(tmp_path, 42)
    other.close()  # not the last connection: the WAL stays, no mark
    Cache.open(tmp_path, 42).close()
    still_open.close()
    assert len(ran) == 5


def test_a_cache_changed_after_a_clean_close_is_checked_and_never_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Damage of the same size (a page overwritten in place) after a clean close: the file is
    not the one that was marked clean, so the check runs and the cache is rebuilt."""
    ran = checks_run(monkeypatch)
    first = Cache.open(tmp_path, 42)
    fill(first)
    root = first.conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'torrents'"
    ).fetchone()[0]
    page_size = first.conn.execute("PRAGMA page_size").fetchone()[0]
    first.close()
    path = first.path
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    assert path.stat().st_size == size
    caplog.set_level(logging.INFO, logger="rdfs")
    cache = Cache.open(tmp_path, 42)
    try:
        assert len(ran) == 3 and cache.torrent_states() == {}  # checked, moved aside, rebuilt
    finally:
        cache.close()
    assert [p for p in path.parent.iterdir() if p.name.startswith(DB_NAME + ".corrupt-")]


@pytest.mark.parametrize(
    "mark",
    [b"", b"\xff\xfe not text", b"[" * 100_000, b"[1, 2]", b'{"size": Infinity}', b"null"],
    ids=["empty", "not-utf8", "too-deep", "a-list", "infinity", "null"],
)
def test_a_damaged_clean_mark_means_the_check_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mark: bytes
) -> None:
    first = Cache.open(tmp_path, 42)
    fill(first, 5)
    first.close()
    marks = [p for p in first.path.parent.iterdir() if p.name.endswith(".clean")]
    assert len(marks) == 1
    marks[0].write_bytes(mark)
    ran = checks_run(monkeypatch)
    cache = Cache.open(tmp_path, 42)
    try:
        assert ran == [cache.path] and len(cache.torrent_states()) == 5
    finally:
        cache.close()


def test_a_cache_found_corrupt_while_open_is_checked_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Cache.open(tmp_path, 42).close()
    ran = checks_run(monkeypatch)
    cache = Cache.open(tmp_path, 42)
    cache.put_link(link(1))
    root = cache.conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'links'").fetchone()[
        0
    ]
    page_size = cache.conn.execute("PRAGMA page_size").fetchone()[0]
    cache.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(cache.path, "r+b") as f:  # damaged under the running cache, seen by a read
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    cache.conn.execute("PRAGMA shrink_memory")
    assert cache.get_link(link(1).hoster_link) is None and cache.status()["state"] == "corrupt"
    cache.close()
    assert len(ran) == 0
    Cache.open(tmp_path, 42).close()
    assert len(ran) == 2  # checked: corrupt, so moved aside, and the new one checked too
    assert [
        p for p in tmp_path.joinpath("42").iterdir() if p.name.startswith(DB_NAME + ".corrupt-")
    ]


def test_accounts_know_credentials_by_salted_fingerprint_only(tmp_path: Path) -> None:
    token_a, token_b = b"token\0AAAASECRETAAAA", b"token\0BBBBSECRETBBBB"
    accounts = Accounts(tmp_path)
    assert accounts.user_for(token_a) is None
    accounts.remember(token_a, "1")
    again = Accounts(tmp_path)
    assert again.user_for(token_a) == "1" and again.user_for(token_b) is None
    text = (tmp_path / ACCOUNTS_FILE).read_text()
    assert "SECRET" not in text
    elsewhere = Accounts(tmp_path / "other")
    elsewhere.remember(token_a, "1")
    assert elsewhere.fingerprint(token_a) != again.fingerprint(
        token_a
    )  # salted per cache directory


def test_unreadable_accounts_file_means_asking_again(tmp_path: Path, caplog) -> None:
    (tmp_path / ACCOUNTS_FILE).write_bytes(b"\xff{not json")
    accounts = Accounts(tmp_path)
    assert accounts.user_for(b"token\0x") is None
    accounts.remember(b"token\0x", "9")
    assert Accounts(tmp_path).user_for(b"token\0x") == "9"


async def test_tick_failing_between_torrents_and_directories_still_shows_them(
    emulator: Emulator, rd_client: RDClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torrents stored, their directories not (the disk filled in between): the tree must follow."""
    for number in range(3):
        emulator.add_torrent(f"Movie {number}", [FileSpec(f"/m{number}.mkv", 100)])
    cache = Cache.open(tmp_path, 4242)
    real = cache.diff_batches
    failures = []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise CacheFull("database or disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "diff_batches", failing_once)
    try:
        syncer = Syncer(rd_client, cache, interval=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(syncer.run)
            with trio.fail_after(30):
                while len(Namespace(cache).children(TORRENTS_INODE, limit=10)) < 3:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert failures and len(cache.torrent_states()) == 3
    finally:
        cache.close()


async def test_credential_identity_tells_logins_apart_not_access_tokens() -> None:
    from rdfs.api.auth import Credentials, OAuthSession, StaticToken
    from rdfs.credentials import identity

    def oauth(refresh: str, access: str) -> OAuthSession:
        return OAuthSession(Credentials("CLIENT", "SECRET", access, refresh, 0.0))

    assert await identity(StaticToken("AAA")) != await identity(StaticToken("BBB"))
    assert await identity(oauth("R1", "A1")) == await identity(
        oauth("R1", "A2")
    )  # an hourly refresh
    assert await identity(oauth("R1", "A1")) != await identity(oauth("R2", "A1"))  # another login
    assert await identity(StaticToken("R1")) != await identity(oauth("R1", "R1"))


def test_read_only_database_is_named_in_status(cache: Cache) -> None:
    cache.conn.execute(
        "PRAGMA query_only = 1"
    )  # what SQLite says for a read-only file (root ignores modes)
    with pytest.raises(CacheUnavailable):
        cache.upsert_torrents([torrent(1)])
    cache.put_link(link(1))
    assert cache.get_link(link(1).hoster_link) == link(1)
    assert cache.status()["state"] == "read-only" and cache.status()["pending_writes"] == 1
    cache.conn.execute("PRAGMA query_only = 0")
    assert cache.flush_pending() and stored_links(cache.path) == {link(1).hoster_link}


def test_corrupt_probe_cache_is_moved_aside_and_rebuilt(cache: Cache, caplog) -> None:
    from types import SimpleNamespace

    from rdfs.store.probecache import DB_NAME as PROBE_DB
    from rdfs.store.probecache import open_probe_cache

    path = cache.path.parent / PROBE_DB
    path.write_bytes(b"\x00garbage" * 4096)
    config = SimpleNamespace(probe_cache_mb=16, probe_head_mb=1, probe_tail_mb=1)
    probe = open_probe_cache(config, cache)  # type: ignore[arg-type]
    assert probe is not None
    try:
        probe.put("file", 0, b"block")
        assert probe.get("file", 0) == b"block"
    finally:
        probe.close()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(PROBE_DB + ".corrupt-")]
    assert [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "corrupt" in r.getMessage()
    ]


def test_link_store_never_fails_a_read_on_a_damaged_database(cache: Cache) -> None:
    cache.put_link(link(1))
    root = cache.conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'links'").fetchone()[
        0
    ]
    page_size = cache.conn.execute("PRAGMA page_size").fetchone()[0]
    cache.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(
        cache.path, "r+b"
    ) as f:  # the links table's pages are damaged under the running cache
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    cache.conn.execute("PRAGMA shrink_memory")
    assert cache.get_link(link(1).hoster_link) is None
    assert cache.status()["state"] == "corrupt"


def test_a_failed_commit_leaves_no_transaction_open(cache: Cache) -> None:
    """A COMMIT that fails keeps SQLite's transaction open: later writes must not join it."""
    cache.conn.execute("PRAGMA foreign_keys = ON")
    cache.conn.execute("CREATE TABLE parent_t (id INTEGER PRIMARY KEY)")
    cache.conn.execute(
        "CREATE TABLE child_t (p INTEGER REFERENCES parent_t (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError):
        with cache.transaction():
            cache.inode_for("t:doomed")
            cache.conn.execute("INSERT INTO child_t VALUES (1)")  # checked at COMMIT only
    assert not cache.conn.in_transaction
    cache.inode_for("t:later")
    with sqlite3.connect(cache.path) as other:
        keys = {row[0] for row in other.execute("SELECT key FROM inodes")}
    assert "t:later" in keys and "t:doomed" not in keys
