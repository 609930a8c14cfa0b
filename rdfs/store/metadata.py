"""The SQLite metadata cache: one database per account, ``<cache_dir>/<user id>/rdfs.db``.

It holds what the API said (torrents, their files, downloads, unrestricted links with expiry),
the sync bookkeeping, and the *materialized tree*: the ``entries`` table has one row per file or
directory of the mount, so FUSE lookup/getattr/readdir are each one indexed query (raw SQL:
:meth:`Cache.entry`, :meth:`Cache.lookup_entry`, :meth:`Cache.child_stats`) and a warm start
shows the whole tree without a single API call. Every statement on this database lives in
:mod:`rdfs.store`; the rest of rdfs calls methods named for what they return.

Inodes are persisted in ``inodes`` keyed by a stable identity (built and read by
:mod:`rdfs.store.keys` only) with AUTOINCREMENT, so the same file keeps its inode across syncs
and restarts and an inode number is never reused. Inodes 1-4 are the fixed top of the tree
(root, ``torrents``, ``downloads``, ``.rdfs``); ``5 .. FIRST_DYNAMIC_INODE-1`` are reserved for
the control layer (allocate them with :meth:`Cache.inode_for` and keys of your own, or use them
as constants).

Every write is a short transaction (WAL, ``synchronous=NORMAL``): a ``kill -9`` at any moment
leaves a consistent database; at worst the last sync step is redone. Bulk writers call the
batch methods repeatedly with ``await trio.sleep(0)`` in between so FUSE requests interleave.

The cache is only a cache. A write that cannot happen now (disk full, another process holding
the write lock, a read-only file) rolls back whole and raises a :class:`CacheUnavailable`
subclass; the sync redoes its step on the next tick. Unrestricted links, which a read needs at
once, never fail: they are kept in memory (``pending``) and written when the database takes
writes again. :meth:`Cache.status` names the problem. A corrupt database is moved aside and
rebuilt (:meth:`Cache.open`); the integrity check is skipped only for a database the last
process closed cleanly and nothing touched since (:meth:`Cache._take_clean_mark`). Which
account's cache a credential may see is told by :class:`Accounts` (salted fingerprints of
credentials, never the credentials).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from rdfs.api.models import Download, Torrent, TorrentFile, TorrentInfo
from rdfs.store import keys
from rdfs.store.accounts import ACCOUNTS_FILE, Accounts
from rdfs.store.errors import (
    CacheCorrupt,
    CacheError,
    CacheFull,
    CacheLocked,
    CacheReadOnly,
    CacheUnavailable,
    classify,
    is_corrupt,
    unavailable,
)
from rdfs.store.records import (
    Changes,
    EntryDiff,
    EntryRow,
    EntrySpec,
    ListedTorrent,
    ShownTorrent,
    StoredEntry,
    StoredLink,
    TorrentState,
    list_key,
    row_key,
)
from rdfs.store.schema import (
    CONTROL_DIR,
    CONTROL_INODE,
    DOWNLOADS_DIR,
    DOWNLOADS_INODE,
    FIRST_DYNAMIC_INODE,
    MIGRATIONS,
    ROOT_INODE,
    SCHEMA_VERSION,
    TORRENTS_DIR,
    TORRENTS_INODE,
)
from rdfs.store.values import chunks, unix_time

# The store's public names stay importable from here (this module is the cache's front door).
__all__ = [
    "ACCOUNTS_FILE",
    "CONTROL_DIR",
    "CONTROL_INODE",
    "DOWNLOADS_DIR",
    "DOWNLOADS_INODE",
    "FIRST_DYNAMIC_INODE",
    "ROOT_INODE",
    "SCHEMA_VERSION",
    "TORRENTS_DIR",
    "TORRENTS_INODE",
    "Accounts",
    "Cache",
    "CacheCorrupt",
    "CacheError",
    "CacheFull",
    "CacheLocked",
    "CacheReadOnly",
    "CacheUnavailable",
    "Changes",
    "ChildStat",
    "EntryDiff",
    "EntryHead",
    "EntryRow",
    "EntrySpec",
    "ListedTorrent",
    "Scope",
    "ShownTorrent",
    "StoredEntry",
    "StoredLink",
    "TorrentState",
    "classify",
    "is_corrupt",
    "list_key",
    "move_aside",
    "row_key",
]

log = logging.getLogger(__name__)

DB_NAME = "rdfs.db"
LAST_ACCOUNT_FILE = "last-account"
# Next to the database: the file identity it had when the last process closed it cleanly.
CLEAN_MARK_SUFFIX = ".clean"

# How long a write on the event loop waits for another process's write lock before it gives up
# (and is retried later). SQLite's usual 5 s froze every FUSE request for that long.
BUSY_TIMEOUT_MS = 100
# Pending link writes are retried this often (doubling up to the maximum while they fail).
RETRY_INITIAL = 1.0
RETRY_MAX = 10.0
# Expired unrestricted links are deleted this often (by the retry task).
PURGE_INTERVAL = 3600.0

# LIKE patterns of the keys of the library views (rdfs.sync.views): their directories, and the
# copies of torrents/ entries shown in them.
_VIEW_DIR_LIKE = keys.VIEW_DIR_PREFIX + "%"
_VIEW_COPY_LIKE = keys.VIEW_COPY_PREFIX + "%"


def _counts_children(key: str) -> bool:
    """Whether the directory of ``key`` is one whose ``nlink`` the store keeps in step with its
    children at every write that adds or removes one (``torrents/`` and the library views:
    directories holding only directories, one per torrent). Counting the 100,000 children of
    ``torrents/`` on every sync was most of the cost of a one-torrent change; the full rebuilds
    still recount them (:meth:`Cache.recount_dirs`)."""
    return key == keys.TORRENTS or keys.is_view_dir(key)


def move_aside(path: Path, reason: str) -> Path:
    """Move a corrupt database (and its WAL) to ``<name>.corrupt-<UTC time>``; ONE warning line."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    os.replace(path, aside)
    with contextlib.suppress(FileNotFoundError):
        os.replace(path.with_name(path.name + "-wal"), aside.with_name(aside.name + "-wal"))
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + "-shm").unlink()  # shared memory index only: rebuilt by SQLite
    log.warning("cache %s is corrupt (%s): kept as %s, rebuilding it", path, reason, aside.name)
    return aside


@dataclass
class WriteHealth:
    """Whether the database takes writes, and what the last failure was (for ``status``)."""

    state: str = "ok"
    last_error: str | None = None
    last_error_time: float | None = None
    failed_writes: int = 0


# What readdir reads per entry: (inode, name, kind, size, mtime, nlink, in a torrent).
ChildStat = tuple[int, str, str, int, float, int, int]
# What opendir reads: (kind, files_pending, torrent_id).
EntryHead = tuple[str, bool, str | None, int]  # kind, files_pending, torrent_id, parent

_ENTRY_SQL = (
    "SELECT e.inode, e.parent, e.name, e.kind, e.size, e.mtime, e.nlink, e.torrent_id, e.file_id, "
    "e.download_id, e.hoster_link, e.link_offset, e.files_pending, t.hash, t.status "
    "FROM entries e LEFT JOIN torrents t ON t.id = e.torrent_id "
)


class Cache:
    """The per-account metadata database. Not thread-safe: use it from the trio thread only.

    Writes run on the event loop thread, like the reads, with a short busy timeout
    (``BUSY_TIMEOUT_MS``) rather than in a worker thread: the hot lookup paths are synchronous
    SQL on this connection and see every committed write at once, a sync step's read-diff-write
    needs no cross-thread ordering, and WAL readers never wait for a writer. What a lock held by
    another process costs is then one short wait per failed write, after which the write is
    retried later (the next sync tick, or :meth:`retry_pending` for links) instead of holding
    every FUSE request for SQLite's default five seconds.
    """

    def __init__(self, path: Path, user_id: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.health = WriteHealth()
        # Unrestricted links (None: a deletion) and markers not yet written, served from here
        # meanwhile.
        self._pending_links: dict[str, StoredLink | None] = {}
        self._pending_meta: dict[str, str] = {}
        # Whether SQLite reported the database corrupt during this run (no clean mark then).
        self._damaged = False
        closed_cleanly = self._take_clean_mark()
        conn = sqlite3.connect(str(self.path), isolation_level=None, cached_statements=256)
        try:
            self.conn = conn
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # The WAL shrinks back after each checkpoint: on a full disk the next write fails at
            # once (and is reported) instead of whenever the WAL's slack happens to run out.
            self.conn.execute("PRAGMA journal_size_limit=0")
            if closed_cleanly:
                log.debug("cache %s was closed cleanly: no integrity check", self.path)
            else:
                self._check_sound()
            self._migrate()
        except BaseException:
            conn.close()
            raise
        if user_id is not None:
            stored = self.get_meta("user_id")
            if stored is None:
                with self.transaction():
                    self.set_meta("user_id", str(user_id))
            elif stored != str(user_id):
                raise CacheError(f"{self.path} belongs to account {stored}, not {user_id}")
        self.user_id = self.get_meta("user_id")

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, cache_dir: Path | str, user_id: int | str) -> Cache:
        """Open (creating it if needed) the account's database and remember it for warm starts.

        A corrupt database (not SQLite, truncated, failing SQLite's quick check) is moved aside
        with one warning line and rebuilt empty: the next sync fills it from the API.
        """
        cache_dir = Path(cache_dir)
        path = cache_dir / str(user_id) / DB_NAME
        try:
            cache = cls(path, user_id=str(user_id))
        except (sqlite3.DatabaseError, CacheCorrupt) as exc:
            if not (isinstance(exc, CacheCorrupt) or is_corrupt(exc)):
                raise CacheError(f"cannot open the cache {path}: {exc}") from None
            move_aside(path, str(exc))
            cache = cls(path, user_id=str(user_id))
        marker = cache_dir / LAST_ACCOUNT_FILE
        tmp = marker.with_suffix(".tmp")
        try:
            tmp.write_text(f"{user_id}\n")
            os.replace(tmp, marker)
        except OSError as exc:  # only a hint for tools: a full disk must not stop the mount
            log.debug("cannot write %s: %s", marker, exc)
        return cache

    @classmethod
    def last_account(cls, cache_dir: Path | str) -> str | None:
        """The user id of the last account opened under ``cache_dir`` (no API call needed)."""
        try:
            text = (Path(cache_dir) / LAST_ACCOUNT_FILE).read_text().strip()
        except OSError:
            return None
        return text or None

    @classmethod
    def open_warm(cls, cache_dir: Path | str) -> Cache | None:
        """The last-used account's cache if it exists, for tools without a credential.

        A mount does not use this: it opens the cache of the account its credential belongs to
        (:class:`Accounts`), never merely the last one used.
        """
        user_id = cls.last_account(cache_dir)
        if user_id is None or not (Path(cache_dir) / user_id / DB_NAME).exists():
            return None
        return cls.open(cache_dir, user_id)

    def close(self) -> None:
        if self.pending_writes and not self.flush_pending():
            log.warning(
                "cache: %d pending writes could not be saved (%s)",
                self.pending_writes,
                self.health.state,
            )
        self.conn.close()
        self._put_clean_mark()

    def _check_sound(self) -> None:
        """Raise :class:`CacheCorrupt` unless SQLite's quick check passes (truncated file, torn
        pages).

        Reads every page once (half a second at 100,000 torrents) so that a damaged cache is
        rebuilt at mount time instead of failing lookups later. It runs unless the database is
        provably the one a previous process left sound (:meth:`_take_clean_mark`).
        """
        rows = [row[0] for row in self.conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            raise CacheCorrupt("; ".join(str(r) for r in rows))

    @property
    def _clean_mark(self) -> Path:
        return self.path.with_name(self.path.name + CLEAN_MARK_SUFFIX)

    def _identity(self) -> dict[str, int] | None:
        """What tells this database file apart from any changed version of it: the file (device,
        inode) and its size, mtime and ctime in nanoseconds. Any write, truncation, replacement
        or even ``touch`` changes the ctime, which no user can set back; None without a file."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return {
            "dev": st.st_dev,
            "ino": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
        }

    def _take_clean_mark(self) -> bool:
        """Whether the last process closed this database cleanly and nothing changed it since;
        the mark is removed either way (before this process writes anything), so a crash of
        this run leaves none and the next start runs the integrity check.

        The guarantee of the corrupt-cache policy, a damaged cache is never served as truth,
        stays without the check: the mark is written only by :meth:`close` when this process
        opened a sound database (checked, or itself clean), SQLite reported no corruption since,
        and the last connection's close checkpointed the whole WAL into the file and deleted it.
        SQLite's own writes keep a sound database sound, so the file was sound when the mark was
        written; a matching mark (same file, size, mtime and ctime, no WAL or rollback journal
        beside it) means not one byte changed through the filesystem since. Damage from outside
        (truncation, garbage, another file put in its place, a crash mid-write) changes the
        identity or leaves a WAL, and the check runs as before. Only damage below the
        filesystem (bad sectors under an unchanged file) escapes, as it escapes a check of a
        file that changes afterwards; SQLite reports such pages as corrupt when read.
        """
        mark = self._clean_mark
        try:
            recorded = json.loads(mark.read_text())
        except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON, too deep
            recorded = None
        try:
            mark.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a mark that cannot be removed would outlive a crash
            log.debug("cannot remove %s: %s", mark, exc)
            return False
        leftovers = (self.path.with_name(self.path.name + s) for s in ("-wal", "-journal"))
        if recorded is None or any(p.exists() for p in leftovers):
            return False
        return bool(recorded == self._identity())

    def _put_clean_mark(self) -> None:
        """After the connection closed: mark the database as left sound (see
        :meth:`_take_clean_mark`), unless SQLite reported it corrupt during the run or another
        connection still holds it (the WAL is still there)."""
        if self._damaged or self.path.with_name(self.path.name + "-wal").exists():
            return
        identity = self._identity()
        if identity is None:
            return
        mark = self._clean_mark
        tmp = mark.with_name(mark.name + ".tmp")
        try:
            tmp.write_text(json.dumps(identity))
            os.replace(tmp, mark)
        except OSError as exc:  # the next start runs the integrity check, nothing worse
            log.debug("cannot write %s: %s", mark, exc)

    def _migrate(self) -> None:
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        version = int(self.get_meta("schema_version") or 0) if has_meta else 0
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{self.path} has schema version {version}; this rdfs knows up to {SCHEMA_VERSION}"
            )
        for number in range(version, SCHEMA_VERSION):
            # executescript runs the whole migration and its version bump as one transaction.
            self.conn.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n"
                "INSERT OR REPLACE INTO meta (key, value) "
                f"VALUES ('schema_version', '{number + 1}');\nCOMMIT;"
            )
            log.info("cache %s migrated to schema version %d", self.path, number + 1)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write; nested use joins the outer transaction.

        It commits whole or rolls back whole. An SQLite failure (also of the COMMIT) becomes a
        :class:`CacheUnavailable` subclass and is noted in :meth:`status`.
        """
        if self.conn.in_transaction:
            yield
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._rollback()
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if not unavailable(exc):
                raise  # a constraint or a bug: not the cache's state
            raise self._failed(exc) from None
        self._succeeded()

    def _rollback(self) -> None:
        # SQLite may have rolled back by itself (e.g. on SQLITE_FULL): nothing left to undo then.
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _failed(self, exc: sqlite3.Error) -> CacheUnavailable:
        error = classify(exc)
        health = self.health
        health.failed_writes += 1
        health.last_error, health.last_error_time = f"{error.state}: {exc}", time.time()
        self._damaged = self._damaged or isinstance(error, CacheCorrupt)
        if health.state != error.state:
            log.warning(
                "cache %s: %s (%s); reads go on, writes are retried", self.path, error.state, exc
            )
            health.state = error.state
        return error

    def _succeeded(self) -> None:
        if self.health.state != "ok":
            log.info("cache %s takes writes again", self.path)
            self.health.state = "ok"

    def status(self) -> dict[str, Any]:
        """The "cache" section of the mount's status."""
        return {
            "state": self.health.state,
            "pending_writes": self.pending_writes,
            "failed_writes": self.health.failed_writes,
            "last_error": self.health.last_error,
            "last_error_time": self.health.last_error_time,
        }

    def _write_soon(self) -> None:
        """Write what is pending now, unless the last write failed: then :meth:`retry_pending`
        does, backing off, so that a media scan opening many files during a foreign lock does
        not wait out the busy timeout once per file."""
        if self.health.state == "ok":
            self.flush_pending()

    @property
    def pending_writes(self) -> int:
        return len(self._pending_links) + len(self._pending_meta)

    def flush_pending(self) -> bool:
        """Write the pending links and markers in one transaction; False (still pending) if it
        failed."""
        if not self.pending_writes or self.conn.in_transaction:
            return not self.pending_writes
        links, meta = dict(self._pending_links), dict(self._pending_meta)
        try:
            with self.transaction():
                for hoster_link, link in links.items():
                    if link is None:
                        self.conn.execute("DELETE FROM links WHERE hoster_link = ?", (hoster_link,))
                    else:
                        self._write_link(link)
                self.conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items()
                )
        except CacheUnavailable:
            return False
        # (Synchronous: nothing changed the pending writes in between.)
        self._pending_links.clear()
        self._pending_meta.clear()
        return True

    async def retry_pending(
        self,
        *,
        purge_every: float = PURGE_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run forever: write what is pending once the database takes writes again (backing off),
        and forget expired links every ``purge_every`` seconds."""
        task_status.started()
        wait = RETRY_INITIAL
        next_purge = trio.current_time() + purge_every
        while True:
            await trio.sleep(wait)
            if trio.current_time() >= next_purge:
                next_purge = trio.current_time() + purge_every
                self._purge_quietly()
            if not self.pending_writes:
                wait = RETRY_INITIAL
            elif self.flush_pending():
                log.info("cache: pending writes saved")
                wait = RETRY_INITIAL
            else:
                wait = min(RETRY_MAX, wait * 2)

    # --- meta and sync state ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        if key in self._pending_meta:
            return self._pending_meta[key]
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a marker; outside a transaction it never fails (it waits in memory like a link)."""
        if self.conn.in_transaction:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )
            if key in self._pending_meta:  # what get_meta answers stays the latest value
                self._pending_meta[key] = value
            return
        self._pending_meta[key] = value
        self._write_soon()

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)",
                (key, json.dumps(value)),
            )

    # --- unrestricted links (the data path) ---------------------------------------------------

    def get_link(self, hoster_link: str) -> StoredLink | None:
        """The stored link, or None; never fails (a database that cannot be read knows no link:
        the data path unrestricts again rather than failing the read)."""
        if hoster_link in self._pending_links:
            return self._pending_links[hoster_link]
        try:
            row = self.conn.execute(
                "SELECT hoster_link, url, download_id, filesize, expires_at FROM links WHERE "
                "hoster_link = ?",
                (hoster_link,),
            ).fetchone()
        except sqlite3.Error as exc:
            if not unavailable(exc):
                raise
            self._failed(exc)
            return None
        return StoredLink(*row) if row else None

    def put_link(self, link: StoredLink) -> None:
        """Store an unrestricted link; never fails (kept in memory until the database takes it)."""
        self._pending_links[link.hoster_link] = link
        self._write_soon()

    def _write_link(self, link: StoredLink) -> None:
        """A RAR volume's size is only known from here: fix its entry too."""
        self.conn.execute(
            "INSERT OR REPLACE INTO links (hoster_link, url, download_id, filesize, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (link.hoster_link, link.url, link.download_id, link.filesize, link.expires_at),
        )
        if link.filesize > 0:
            # (Files inside an archive read the same link at an offset: their size is their own.)
            self.conn.execute(
                "UPDATE entries SET size = ? WHERE hoster_link = ? AND file_id IS NULL AND "
                "link_offset = 0 "
                "AND torrent_id IS NOT NULL AND kind = 'file' AND size != ?",
                (link.filesize, link.hoster_link, link.filesize),
            )

    def drop_link(self, hoster_link: str) -> None:
        """Forget a link; never fails (the deletion waits in memory like :meth:`put_link`)."""
        self._pending_links[hoster_link] = None
        self._write_soon()

    def link_sizes(self, hoster_links: Iterable[str]) -> dict[str, int]:
        """Known sizes of links (from earlier unrestricts), for RAR volumes."""
        sizes: dict[str, int] = {}
        wanted = list(hoster_links)
        for chunk in chunks(wanted):
            marks = ",".join("?" * len(chunk))
            for link, size in self.conn.execute(
                f"SELECT hoster_link, filesize FROM links WHERE hoster_link IN ({marks}) AND "
                "filesize > 0",
                chunk,
            ):
                sizes[link] = size
        for link in wanted:
            pending = self._pending_links.get(link)
            if pending is not None and pending.filesize > 0:
                sizes[link] = pending.filesize
        return sizes

    # --- RAR archives of packed torrents --------------------------------------------------------

    def archives_to_index(self) -> list[tuple[str, str]]:
        """(torrent id, link) of shown single-archive packed torrents whose members are unknown."""
        rows = self.conn.execute(
            "SELECT t.id, t.links FROM torrents t WHERE t.status = 'downloaded' AND t.info_key IS "
            "NOT NULL "
            "AND json_array_length(t.links) = 1 "
            "AND (SELECT count(*) FROM files f WHERE f.torrent_id = t.id AND f.selected) > 1 "
            "AND NOT EXISTS (SELECT 1 FROM archives a WHERE a.hoster_link = json_extract(t.links, "
            "'$[0]')) ORDER BY t.added DESC"
        )
        return [(torrent_id, json.loads(links)[0]) for torrent_id, links in rows]

    def put_archive(
        self, hoster_link: str, members: list[dict[str, Any]] | None, error: str | None = None
    ) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO archives (hoster_link, members, error, indexed) VALUES "
                "(?, ?, ?, ?)",
                (hoster_link, None if members is None else json.dumps(members), error, time.time()),
            )

    def archive_members(self, hoster_links: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The listed members of the archives behind ``hoster_links`` (indexed without error)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for link in hoster_links:
            row = self.conn.execute(
                "SELECT members FROM archives WHERE hoster_link = ? AND members IS NOT NULL",
                (link,),
            ).fetchone()
            if row is not None:
                found[link] = json.loads(row[0])
        return found

    def purge_expired_links(self, now: float | None = None) -> int:
        """Delete the stored links expired at ``now`` (default: the current time); how many."""
        when = time.time() if now is None else now
        with self.transaction():
            cursor = self.conn.execute("DELETE FROM links WHERE expires_at <= ?", (when,))
        return cursor.rowcount

    def _purge_quietly(self) -> None:
        """:meth:`purge_expired_links` for the retry task: a failure waits for the next round."""
        try:
            purged = self.purge_expired_links()
        except CacheUnavailable as exc:
            log.debug("cache: expired links not purged now (%s)", exc)
            return
        if purged:
            log.info("cache: %d expired links purged", purged)

    # --- torrents ---------------------------------------------------------------------------

    def torrent_states(self) -> dict[str, TorrentState]:
        return {
            row[0]: TorrentState(*row)
            for row in self.conn.execute(
                "SELECT id, status, row_key, list_key, info_key FROM torrents"
            )
        }

    def torrent_states_of(self, torrent_ids: Iterable[str]) -> dict[str, TorrentState]:
        """``torrent_states`` of these ids only (those cached): a listing compares page by page."""
        states: dict[str, TorrentState] = {}
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                "SELECT id, status, row_key, list_key, info_key FROM torrents "
                f"WHERE id IN ({marks})",
                chunk,
            ):
                states[row[0]] = TorrentState(*row)
        return states

    def torrent_ids(self) -> set[str]:
        """Every cached torrent's id."""
        return {row[0] for row in self.conn.execute("SELECT id FROM torrents")}

    def upsert_torrents(self, torrents: Sequence[Torrent]) -> None:
        """Store listed torrents (one transaction: pass batches). Keeps their stored files."""
        rows = [
            (
                t.id,
                t.filename,
                t.hash,
                t.bytes,
                t.host,
                t.split,
                t.progress,
                t.status,
                unix_time(t.added),
                unix_time(t.ended),
                json.dumps(list(t.links)),
                row_key(t, listed),
                listed,
            )
            for t in torrents
            for listed in (list_key(t),)
        ]
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO torrents (id, filename, hash, bytes, host, split, progress, status, "
                "added, ended, "
                "links, row_key, list_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET filename = excluded.filename, hash = "
                "excluded.hash, "
                "bytes = excluded.bytes, host = excluded.host, split = excluded.split, "
                "progress = excluded.progress, status = excluded.status, added = excluded.added, "
                "ended = excluded.ended, links = excluded.links, row_key = excluded.row_key, "
                "list_key = excluded.list_key",
                rows,
            )

    def torrent(self, torrent_id: str) -> Torrent | None:
        row = self.conn.execute(
            f"SELECT {_TORRENT_COLUMNS} FROM torrents WHERE id = ?", (torrent_id,)
        ).fetchone()
        return _torrent(row) if row else None

    def torrents(self, status: str | None = None) -> list[Torrent]:
        """Cached torrents (as listed; without files), newest first."""
        if status is None:
            rows = self.conn.execute(
                f"SELECT {_TORRENT_COLUMNS} FROM torrents ORDER BY added DESC, id"
            )
        else:
            rows = self.conn.execute(
                f"SELECT {_TORRENT_COLUMNS} FROM torrents WHERE status = ? ORDER BY added DESC, id",
                (status,),
            )
        return [_torrent(row) for row in rows]

    def shown_torrents(self, statuses: Sequence[str] = ("downloaded",)) -> list[ListedTorrent]:
        """The downloaded torrents (those in ``statuses``), with what their directories need."""
        marks = ",".join("?" * len(statuses))
        return [
            ListedTorrent(*row)
            for row in self.conn.execute(
                "SELECT id, filename, status, added, ended FROM torrents WHERE status IN "
                f"({marks})",
                tuple(statuses),
            )
        ]

    def torrents_with_status(self, statuses: Collection[str]) -> list[str]:
        """Ids of the cached torrents whose status is one of ``statuses``."""
        wanted = tuple(statuses)
        marks = ",".join("?" * len(wanted))
        sql = f"SELECT id FROM torrents WHERE status IN ({marks}) ORDER BY added DESC, id"
        return [row[0] for row in self.conn.execute(sql, wanted)]

    def swap_torrent(self, old_id: str, new: Torrent) -> None:
        """Put the torrent ``new`` in the place of ``old_id`` (a repair), in one transaction.

        Every inode key of the old torrent (its directory, files, subdirectories, RAR volumes and
        members, and their copies in the views) is renamed to the new id, so every path keeps
        its inode and name; its entries point to the new torrent; the old torrent's rows go.
        A failure rolls everything back. The caller rebuilds the new torrent's files after it.
        """
        with self.transaction():
            rows = self.conn.execute(
                "SELECT inode, key FROM inodes WHERE key LIKE ?", (f"%:{old_id}%",)
            ).fetchall()
            for inode, key in rows:
                renamed = keys.renamed_torrent(key, old_id, new.id)
                if renamed != key:
                    # A key of the new torrent allocated meanwhile (never shown) gives way.
                    self.conn.execute("DELETE FROM inodes WHERE key = ?", (renamed,))
                    self.conn.execute("UPDATE inodes SET key = ? WHERE inode = ?", (renamed, inode))
            self.conn.execute(
                "UPDATE entries SET torrent_id = ? WHERE torrent_id = ?", (new.id, old_id)
            )
            self.upsert_torrents([new])
            self.conn.execute("DELETE FROM files WHERE torrent_id = ?", (old_id,))
            self.conn.execute("DELETE FROM torrents WHERE id = ?", (old_id,))

    def torrents_with_files(self) -> set[str]:
        return {
            row[0]
            for row in self.conn.execute("SELECT id FROM torrents WHERE info_key IS NOT NULL")
        }

    def torrents_needing_files(self) -> list[str]:
        """Downloaded torrents whose file list is missing or older than their listing, newest
        first."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT id FROM torrents WHERE status = 'downloaded' "
                "AND (info_key IS NULL OR info_key != list_key) ORDER BY added DESC, id"
            )
        ]

    def has_files(self, torrent_id: str) -> bool:
        row = self.conn.execute(
            "SELECT info_key IS NOT NULL FROM torrents WHERE id = ?", (torrent_id,)
        ).fetchone()
        return bool(row and row[0])

    def files_of(self, torrent_id: str) -> TorrentInfo | None:
        """A cached torrent with its stored files, rebuilt as a ``TorrentInfo``."""
        torrent = self.torrent(torrent_id)
        if torrent is None or not self.has_files(torrent_id):
            return None
        files = tuple(
            TorrentFile(id=fid, path=path, bytes=size, selected=bool(selected))
            for fid, path, size, selected in self.conn.execute(
                "SELECT file_id, path, bytes, selected FROM files WHERE torrent_id = ? ORDER BY "
                "file_id",
                (torrent_id,),
            )
        )
        fields = {f: getattr(torrent, f) for f in Torrent.__dataclass_fields__ if f != "raw"}
        return TorrentInfo(**fields, files=files)

    def store_info(self, info: TorrentInfo, specs: Sequence[EntrySpec]) -> Changes:
        """Store a torrent's files and its subtree of entries in one transaction.

        ``specs`` is the torrent's whole subtree below its directory (built by
        :mod:`rdfs.tree.specs`).
        The listing's fields are refreshed from ``info`` as well, so info and listing agree.
        """
        with self.transaction():
            self.upsert_torrents([info])
            selected = info.selected_files
            packed = len(info.links) < len(selected)
            link_of = {
                f.id: info.links[i]
                for i, f in enumerate(selected)
                if not packed and i < len(info.links)
            }
            self.conn.execute("DELETE FROM files WHERE torrent_id = ?", (info.id,))
            self.conn.executemany(
                "INSERT INTO files (torrent_id, file_id, path, bytes, selected, link) VALUES (?, "
                "?, ?, ?, ?, ?)",
                [
                    (info.id, f.id, f.path, f.bytes, int(f.selected), link_of.get(f.id))
                    for f in info.files
                ],
            )
            self.conn.execute(
                "UPDATE torrents SET info_key = list_key, info_error = NULL WHERE id = ?",
                (info.id,),
            )
            if not self.conn.execute(
                "SELECT 1 FROM entries WHERE parent = ? AND torrent_id = ?",
                (TORRENTS_INODE, info.id),
            ).fetchone():
                # Not shown (not downloaded): the subtree is built when its directory appears.
                return Changes()
            changes = self.apply_diff(self.diff_entries(Scope.torrent_files(info.id), specs))
            # The torrent directory itself stops being "pending".
            nlink = 2 + sum(
                1 for s in specs if s.kind == "dir" and s.parent_key == keys.torrent(info.id)
            )
            cursor = self.conn.execute(
                "UPDATE entries SET files_pending = 0, nlink = ? WHERE parent = ? AND torrent_id "
                "= ? "
                "AND (files_pending != 0 OR nlink != ?) RETURNING inode",
                (nlink, TORRENTS_INODE, info.id, nlink),
            )
            changes.inodes.update(row[0] for row in cursor.fetchall())
            if changes:
                changes.torrents.add(info.id)
        return changes

    def set_info_error(self, torrent_id: str, error: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE torrents SET info_error = ? WHERE id = ?", (error, torrent_id)
            )

    def delete_torrents(self, torrent_ids: Sequence[str]) -> Changes:
        """Forget torrents gone upstream: their rows, files and entries (one transaction)."""
        changes = Changes()
        with self.transaction():
            for chunk in chunks(list(torrent_ids)):
                marks = ",".join("?" * len(chunk))
                for parent, name, inode in self.conn.execute(
                    f"DELETE FROM entries WHERE torrent_id IN ({marks}) "
                    "RETURNING parent, name, inode",
                    chunk,
                ).fetchall():
                    changes.entries.add((parent, name))
                    changes.named.add((parent, name, inode))
                    changes.dirs.add(parent)
                self.conn.execute(f"DELETE FROM files WHERE torrent_id IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM torrents WHERE id IN ({marks})", chunk)
            self._count_left(changes)
        changes.torrents.update(torrent_ids)
        return changes

    def _count_left(self, changes: Changes) -> None:
        """Lower the ``nlink`` of the counted directories (``_counts_children``) by the entries
        deleted from them (``changes.named``: what a deletion returned). The parents that are
        still there are ``torrents/`` and the views (a torrent's own directories went with it)."""
        deleted = {inode for _parent, _name, inode in changes.named}
        parents = {parent for parent, _name, _inode in changes.named} - deleted
        counted: set[int] = set()
        for chunk in chunks(sorted(parents)):
            marks = ",".join("?" * len(chunk))
            counted.update(
                inode
                for inode, key in self.conn.execute(
                    f"SELECT inode, key FROM inodes WHERE inode IN ({marks})", chunk
                )
                if _counts_children(key)
            )
        deltas: dict[int, int] = {}
        for parent, _name, _inode in changes.named:
            if parent in counted:
                deltas[parent] = deltas.get(parent, 0) - 1
        self._add_children(deltas, changes)

    def _add_children(self, deltas: dict[int, int], changes: Changes) -> None:
        """Add to the ``nlink`` of directories the change in their number of children."""
        rows = [(delta, inode) for inode, delta in deltas.items() if delta]
        if rows:
            self.conn.executemany("UPDATE entries SET nlink = nlink + ? WHERE inode = ?", rows)
            changes.inodes.update(inode for _delta, inode in rows)

    def torrent_counts(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT count(*), sum(status = 'downloaded'), sum(info_key IS NOT NULL), "
            "sum(status = 'downloaded' AND info_key IS NULL) FROM torrents"
        ).fetchone()
        return {
            "torrents": row[0] or 0,
            "downloaded": row[1] or 0,
            "with_files": row[2] or 0,
            "files_pending": row[3] or 0,
        }

    def active_torrents(self) -> list[Torrent]:
        """Torrents neither downloaded nor failed (still moving), newest first."""
        return [
            _torrent(row)
            for row in self.conn.execute(
                f"SELECT {_TORRENT_COLUMNS} FROM torrents WHERE status IN "
                "('magnet_conversion', 'waiting_files_selection', 'queued', 'downloading', "
                "'compressing', "
                "'uploading') ORDER BY added DESC, id"
            )
        ]

    # --- downloads --------------------------------------------------------------------------

    def download_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM downloads")}

    def download_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM downloads").fetchone()[0]

    def upsert_downloads(self, downloads: Sequence[Download]) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO downloads (id, filename, filesize, link, host, download, "
                "mime_type, "
                "generated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.id,
                        d.filename,
                        d.filesize,
                        d.link,
                        d.host,
                        d.download,
                        d.mime_type,
                        unix_time(d.generated),
                    )
                    for d in downloads
                ],
            )

    def delete_downloads(self, download_ids: Sequence[str]) -> None:
        with self.transaction():
            for chunk in chunks(list(download_ids)):
                marks = ",".join("?" * len(chunk))
                self.conn.execute(f"DELETE FROM downloads WHERE id IN ({marks})", chunk)

    def downloads(self) -> list[Download]:
        return [
            _download(row)
            for row in self.conn.execute(f"SELECT {_DOWNLOAD_COLUMNS} FROM downloads")
        ]

    def own_downloads(self) -> list[Download]:
        """The user's own hoster downloads: the downloads whose hoster link is none of a cached
        torrent's links, nor has the form of one (RD's ``https://real-debrid.com/d/<id>``: the
        torrent may be gone, or another client unrestricted a truncated id). So not the
        unrestricts made for torrent files, by rdfs or anyone else.

        One statement: SQLite builds the set of torrent links once (an uncorrelated ``IN``)."""
        return [
            _download(row)
            for row in self.conn.execute(
                f"SELECT {_DOWNLOAD_COLUMNS} FROM downloads WHERE link NOT LIKE ? AND link NOT IN "
                "(SELECT j.value FROM torrents t, json_each(t.links) j WHERE j.type = 'text')",
                (TORRENT_LINK_LIKE,),
            )
        ]

    def shows_download_of(self, hoster_links: Sequence[str]) -> bool:
        """Whether ``downloads/`` shows a download of one of ``hoster_links`` (indexed)."""
        for chunk in chunks(list(hoster_links)):
            marks = ",".join("?" * len(chunk))
            if self.conn.execute(
                f"SELECT 1 FROM entries WHERE hoster_link IN ({marks}) AND parent = ? LIMIT 1",
                (*chunk, DOWNLOADS_INODE),
            ).fetchone():
                return True
        return False

    # --- the namespace: FUSE's reads, one indexed statement each (no helper library here) ----

    def entry(self, inode: int) -> EntryRow | None:
        """The entry with this inode (getattr)."""
        row = self.conn.execute(_ENTRY_SQL + "WHERE e.inode = ?", (inode,)).fetchone()
        return EntryRow._make(row) if row else None

    def lookup_entry(self, parent: int, name: str) -> EntryRow | None:
        """The entry called exactly ``name`` in the directory ``parent`` (lookup)."""
        row = self.conn.execute(
            _ENTRY_SQL + "WHERE e.parent = ? AND e.name = ?", (parent, name)
        ).fetchone()
        return EntryRow._make(row) if row else None

    def child_entries(
        self, parent: int, offset: int = 0, limit: int = 1000, *, after: int | None = None
    ) -> list[EntryRow]:
        """A page of a directory's entries (readdir): in name order skipping ``offset``, or with
        ``after`` (an inode) in inode order after it."""
        if after is not None:
            rows = self.conn.execute(
                _ENTRY_SQL + "WHERE e.parent = ? AND e.inode > ? ORDER BY e.inode LIMIT ?",
                (parent, after, limit),
            )
        else:
            rows = self.conn.execute(
                _ENTRY_SQL + "WHERE e.parent = ? ORDER BY e.name LIMIT ? OFFSET ?",
                (parent, limit, offset),
            )
        return [EntryRow._make(row) for row in rows]

    def child_stats(self, parent: int, after: int, limit: int) -> list[ChildStat]:
        """A page of a directory's entries in inode order after ``after``, as plain tuples of
        what a readdirplus answer needs (no join, no row object: readdir's per-entry cost)."""
        return self.conn.execute(
            "SELECT inode, name, kind, size, mtime, nlink, torrent_id IS NOT NULL FROM entries "
            "WHERE parent = ? AND inode > ? ORDER BY inode LIMIT ?",
            (parent, after, limit),
        ).fetchall()

    def entry_stat(self, inode: int) -> ChildStat | None:
        """One entry as :meth:`child_stats` gives it (getattr's common case), None if unknown."""
        row: ChildStat | None = self.conn.execute(
            "SELECT inode, name, kind, size, mtime, nlink, torrent_id IS NOT NULL FROM entries "
            "WHERE inode = ?",
            (inode,),
        ).fetchone()
        return row

    def entry_head(self, inode: int) -> EntryHead | None:
        """(kind, files_pending, torrent_id, parent) of an entry (a listing's start), None if
        the inode is unknown."""
        row = self.conn.execute(
            "SELECT kind, files_pending, torrent_id, parent FROM entries WHERE inode = ?", (inode,)
        ).fetchone()
        return (row[0], bool(row[1]), row[2], row[3]) if row else None

    def entry_place(self, inode: int) -> tuple[int, str] | None:
        """(parent inode, name) of an entry, None if the inode is unknown."""
        row = self.conn.execute(
            "SELECT parent, name FROM entries WHERE inode = ?", (inode,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def entry_totals(self) -> tuple[int, int]:
        """(number of entries, bytes of their sizes)."""
        # total() is a float sum: sizes near 2^63 never overflow it (sum() would raise).
        count, size = self.conn.execute(
            "SELECT count(*), total(CASE WHEN size > 0 THEN size ELSE 0 END) FROM entries"
        ).fetchone()
        return count, int(size)

    def torrent_for_link(self, hoster_link: str) -> str | None:
        """The id of a torrent one of whose entries reads ``hoster_link``, None if none does."""
        row = self.conn.execute(
            "SELECT torrent_id FROM entries WHERE hoster_link = ? AND torrent_id IS NOT NULL "
            "LIMIT 1",
            (hoster_link,),
        ).fetchone()
        return row[0] if row else None

    def shown_torrent_facts(self) -> list[ShownTorrent]:
        """Id, name, size and time added of the torrents that have a directory in ``torrents/``."""
        rows = self.conn.execute(
            "SELECT e.torrent_id, t.filename, t.bytes, t.added FROM entries e "
            "JOIN torrents t ON t.id = e.torrent_id WHERE e.parent = ?",
            (TORRENTS_INODE,),
        )
        return [ShownTorrent._make(row) for row in rows]

    # --- inodes and entries -----------------------------------------------------------------

    def inode_for(self, key: str) -> int:
        """The persistent inode of ``key``, allocated on first use (never reused)."""
        return self._inodes([key])[key]

    def _inodes(self, keys: Iterable[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, int] = {}
        for chunk in chunks(wanted):
            marks = ",".join("?" * len(chunk))
            found.update(
                self.conn.execute(f"SELECT key, inode FROM inodes WHERE key IN ({marks})", chunk)
            )
        missing = [k for k in wanted if k not in found]
        if (
            missing
        ):  # (known keys need no write: they are looked up while the database is locked too)
            with self.transaction():
                # In order (AUTOINCREMENT numbers them so); a key another process added since the
                # read above keeps its inode. One statement per batch, not two per key.
                self.conn.executemany(
                    "INSERT INTO inodes (key) VALUES (?) ON CONFLICT (key) DO NOTHING",
                    [(key,) for key in missing],
                )
                for chunk in chunks(missing):
                    marks = ",".join("?" * len(chunk))
                    found.update(
                        self.conn.execute(
                            f"SELECT key, inode FROM inodes WHERE key IN ({marks})", chunk
                        )
                    )
        return found

    def diff_entries(self, scope: Scope, specs: Sequence[EntrySpec]) -> EntryDiff:
        """Compare the stored entries of ``scope`` with the wanted ones (reads only)."""
        existing: dict[str, StoredEntry] = {}
        rows = self.conn.execute(
            "SELECT e.inode, e.parent, i.key, p.key, e.name, e.kind, e.size, e.mtime, e.nlink, "
            "e.torrent_id, "
            "e.file_id, e.download_id, e.hoster_link, e.link_offset, e.files_pending "
            "FROM entries e JOIN inodes i ON i.inode = e.inode JOIN inodes p ON p.inode = e.parent "
            f"WHERE {scope.where}",
            scope.params,
        )
        for row in rows:
            existing[row[2]] = StoredEntry(row[0], row[1], row[2], tuple(row[3:]))
        wanted = {s.key: s for s in specs}
        diff = EntryDiff(existing=existing)
        diff.remove = [e for key, e in existing.items() if key not in wanted]
        diff.upsert = [
            s for key, s in wanted.items() if key not in existing or existing[key].row != s.row()
        ]
        return diff

    def apply_diff(self, diff: EntryDiff) -> Changes:
        """Apply a diff in one transaction. Callers with big diffs use :meth:`diff_batches`."""
        changes = Changes()
        with self.transaction():
            self._remove_entries(diff.remove, changes)
            self._upsert_entries(diff.upsert, diff.existing, changes)
        return changes

    def diff_batches(self, diff: EntryDiff, size: int = 500) -> Iterator[Changes]:
        """Apply a diff as several short transactions (removals first), yielding after each.

        Every intermediate state is a valid tree, so a crash between batches is harmless: the
        next sync computes the diff again from what is stored.
        """
        for removed in chunks(diff.remove, size):
            changes = Changes()
            with self.transaction():
                self._remove_entries(removed, changes)
            yield changes
        for upserted in chunks(diff.upsert, size):
            changes = Changes()
            with self.transaction():
                self._upsert_entries(upserted, diff.existing, changes)
            yield changes

    def _remove_entries(self, stored: Sequence[StoredEntry], changes: Changes) -> None:
        deltas: dict[int, int] = {}
        for entry in stored:
            if _counts_children(entry.parent_key):
                deltas[entry.parent] = deltas.get(entry.parent, 0) - 1
            # Removing a directory removes what is below it (a torrent's subtree goes with it).
            if keys.is_torrent_dir(entry.key):
                # (Its copies in the views go with the views' own refresh, which reports them.)
                below = self.conn.execute(
                    "DELETE FROM entries WHERE torrent_id = ? AND inode != ? AND NOT EXISTS "
                    "(SELECT 1 FROM inodes i "
                    f"WHERE i.inode = entries.inode AND i.key LIKE '{_VIEW_COPY_LIKE}') RETURNING "
                    "inode",
                    (entry.torrent_id, entry.inode),
                ).fetchall()
                changes.inodes.update(row[0] for row in below)
            self.conn.execute("DELETE FROM entries WHERE inode = ?", (entry.inode,))
            changes.entries.add((entry.parent, entry.name))
            changes.named.add((entry.parent, entry.name, entry.inode))
            changes.dirs.add(entry.parent)
            if entry.torrent_id is not None:
                changes.torrents.add(entry.torrent_id)
        self._add_children(deltas, changes)

    def _upsert_entries(
        self, specs: Sequence[EntrySpec], existing: dict[str, StoredEntry], changes: Changes
    ) -> None:
        inodes = self._inodes([k for s in specs for k in (s.key, s.parent_key)])
        placed = [(spec, inodes[spec.key], inodes[spec.parent_key]) for spec in specs]
        # A name can be taken by an entry that a later batch renames (a swap): move it aside.
        # All at once before the writes: an entry of this batch moved aside gets its own name
        # from its write below; the names of a batch are distinct.
        self.conn.executemany(
            "UPDATE entries SET name = name || ' [~' || inode || ']' WHERE parent = ? AND "
            "name = ? AND inode != ?",
            [(parent, spec.name, inode) for spec, inode, parent in placed],
        )
        self.conn.executemany(
            "INSERT INTO entries (inode, parent, name, kind, size, mtime, nlink, torrent_id, "
            "file_id, "
            "download_id, hoster_link, link_offset, files_pending) VALUES (?, ?, ?, ?, ?, ?, "
            "?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (inode) DO UPDATE SET parent = excluded.parent, name = excluded.name, "
            "kind = excluded.kind, size = excluded.size, mtime = excluded.mtime, nlink = "
            "excluded.nlink, "
            "torrent_id = excluded.torrent_id, file_id = excluded.file_id, download_id = "
            "excluded.download_id, "
            "hoster_link = excluded.hoster_link, link_offset = excluded.link_offset, "
            "files_pending = excluded.files_pending",
            [
                (
                    inode,
                    parent,
                    spec.name,
                    spec.kind,
                    spec.size,
                    spec.mtime,
                    spec.nlink,
                    spec.torrent_id,
                    spec.file_id,
                    spec.download_id,
                    spec.hoster_link,
                    spec.link_offset,
                    int(spec.files_pending),
                )
                for spec, inode, parent in placed
            ],
        )
        # The counted directories follow their children, unless written here (with their count).
        written = {spec.key for spec in specs}
        deltas: dict[int, int] = {}
        for spec, inode, parent in placed:
            old = existing.get(spec.key)
            if old is None or old.parent != parent:
                if _counts_children(spec.parent_key) and spec.parent_key not in written:
                    deltas[parent] = deltas.get(parent, 0) + 1
                if (
                    old is not None
                    and _counts_children(old.parent_key)
                    and old.parent_key not in written
                ):
                    deltas[old.parent] = deltas.get(old.parent, 0) - 1
            if spec.torrent_id is not None:
                changes.torrents.add(spec.torrent_id)
            if old is None:
                changes.entries.add((parent, spec.name))
                changes.named.add((parent, spec.name, inode))
                changes.dirs.add(parent)
            else:
                changes.inodes.add(inode)
                if (old.parent, old.name) != (parent, spec.name):
                    changes.entries.update({(old.parent, old.name), (parent, spec.name)})
                    changes.named.update(
                        {(old.parent, old.name, inode), (parent, spec.name, inode)}
                    )
                    changes.dirs.update({old.parent, parent})
        self._add_children(deltas, changes)

    def torrent_entries(self, torrent_ids: Collection[str] | None = None) -> list[EntrySpec]:
        """Every entry of ``torrents/`` below the top (torrent directories and their subtrees);
        only those of ``torrent_ids`` when given."""
        sql = (
            "SELECT i.key, p.key, e.name, e.kind, e.size, e.mtime, e.nlink, e.torrent_id, "
            "e.file_id, e.download_id, e.hoster_link, e.link_offset, e.files_pending "
            "FROM entries e JOIN inodes i ON i.inode = e.inode JOIN inodes p ON p.inode = e.parent "
            f"WHERE e.torrent_id IS NOT NULL AND i.key NOT LIKE '{_VIEW_COPY_LIKE}'"
        )
        if torrent_ids is None:
            rows: list[Any] = self.conn.execute(sql).fetchall()
        else:
            rows = []
            for chunk in chunks(list(torrent_ids)):
                marks = ",".join("?" * len(chunk))
                rows += self.conn.execute(f"{sql} AND e.torrent_id IN ({marks})", chunk)
        return [
            EntrySpec(
                key=row[0], parent_key=row[1], name=row[2], kind=row[3], size=row[4],
                mtime=row[5], nlink=row[6], torrent_id=row[7], file_id=row[8],
                download_id=row[9], hoster_link=row[10], link_offset=row[11],
                files_pending=bool(row[12]),
            )
            for row in rows
        ]  # fmt: skip

    def subdir_counts(self) -> dict[str, int]:
        """Subdirectories directly inside each torrent directory (for its ``nlink``)."""
        return dict(
            self.conn.execute(
                "SELECT c.torrent_id, count(*) FROM entries c JOIN entries p ON p.inode = c.parent "
                "WHERE c.kind = 'dir' AND p.parent = ? GROUP BY c.torrent_id",
                (TORRENTS_INODE,),
            )
        )

    # --- what an incremental rebuild of torrents/ and the views reads (changed torrents only) --

    def torrent_dir_names(self, torrent_ids: Iterable[str]) -> dict[str, str]:
        """The names of these torrents' directories in ``torrents/`` (of those shown)."""
        names: dict[str, str] = {}
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            names.update(
                self.conn.execute(
                    # (+parent: the torrent index, not every entry of torrents/)
                    "SELECT torrent_id, name FROM entries WHERE +parent = ? "
                    f"AND torrent_id IN ({marks})",
                    (TORRENTS_INODE, *chunk),
                )
            )
        return names

    def torrent_dirs_named(self, low: str, high: str) -> list[tuple[str, str]]:
        """(torrent id, name) of the directories of ``torrents/`` whose names sort from ``low``
        (included) to ``high`` (excluded): a range of the ``(parent, name)`` index."""
        return self.conn.execute(
            "SELECT torrent_id, name FROM entries WHERE parent = ? AND name >= ? AND name < ? "
            "AND torrent_id IS NOT NULL",
            (TORRENTS_INODE, low, high),
        ).fetchall()

    def torrents_with_files_among(self, torrent_ids: Iterable[str]) -> set[str]:
        """Which of these torrents have their file list cached."""
        found: set[str] = set()
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self.conn.execute(
                    f"SELECT id FROM torrents WHERE info_key IS NOT NULL AND id IN ({marks})",
                    chunk,
                )
            )
        return found

    def subdir_counts_of(self, torrent_ids: Iterable[str]) -> dict[str, int]:
        """:meth:`subdir_counts` for these torrents only."""
        counts: dict[str, int] = {}
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            counts.update(
                self.conn.execute(
                    "SELECT c.torrent_id, count(*) FROM entries c "
                    "JOIN entries p ON p.inode = c.parent "
                    f"WHERE c.torrent_id IN ({marks}) AND c.kind = 'dir' AND p.parent = ? "
                    "GROUP BY c.torrent_id",
                    (*chunk, TORRENTS_INODE),
                )
            )
        return counts

    def shown_torrent_facts_of(self, torrent_ids: Iterable[str]) -> list[ShownTorrent]:
        """:meth:`shown_torrent_facts` for these torrents only."""
        facts: list[ShownTorrent] = []
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            facts += [
                ShownTorrent._make(row)
                for row in self.conn.execute(
                    "SELECT e.torrent_id, t.filename, t.bytes, t.added FROM entries e "
                    "JOIN torrents t ON t.id = e.torrent_id "
                    f"WHERE +e.parent = ? AND e.torrent_id IN ({marks})",
                    (TORRENTS_INODE, *chunk),
                )
            ]
        return facts

    def recount_dirs(self, inode: int) -> bool:
        """Count again the children of a directory that holds only directories (``torrents/``,
        a view) and correct its ``nlink``: the full rebuilds do, to heal a count gone wrong
        (the writes keep it in step, see ``_counts_children``). Counted on the ``(parent,
        name)`` index alone, no row read. Whether the entry changed."""
        with self.transaction():
            return bool(
                self.conn.execute(
                    "UPDATE entries SET nlink = counted.n FROM (SELECT 2 + count(*) AS n FROM "
                    "entries WHERE parent = ?1) AS counted WHERE inode = ?1 "
                    "AND nlink != counted.n RETURNING inode",
                    (inode,),
                ).fetchall()
            )

    def touch_dir(self, inode: int, mtime: float) -> None:
        """Set a directory's mtime (its children changed)."""
        with self.transaction():
            self.conn.execute("UPDATE entries SET mtime = ? WHERE inode = ?", (mtime, inode))

    def trace(self, callback: Callable[[str], object] | None) -> None:
        """Call ``callback`` with every SQL statement run from now on (None: stop); for tests
        and benchmarks that count the work of an operation."""
        self.conn.set_trace_callback(callback)

    @property
    def rows_written(self) -> int:
        """Rows inserted, updated or deleted through this connection since it opened."""
        return self.conn.total_changes

    def refresh_dir(self, inode: int, mtime: float | None = None) -> None:
        """Recount a directory's ``nlink`` (and set its mtime) after its children changed."""
        with self.transaction():
            subdirs = self.conn.execute(
                "SELECT count(*) FROM entries WHERE parent = ? AND kind = 'dir'", (inode,)
            ).fetchone()[0]
            if mtime is None:
                self.conn.execute(
                    "UPDATE entries SET nlink = ? WHERE inode = ?", (2 + subdirs, inode)
                )
            else:
                self.conn.execute(
                    "UPDATE entries SET nlink = ?, mtime = ? WHERE inode = ?",
                    (2 + subdirs, mtime, inode),
                )

    def integrity_problems(self) -> list[str]:
        """SQLite's integrity check plus the tree's invariants; empty when all is well."""
        problems = [row[0] for row in self.conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        checks = {
            "entry without inode": "SELECT count(*) FROM entries e "
            "LEFT JOIN inodes i USING (inode) WHERE i.key IS NULL",
            "entry whose parent is missing": "SELECT count(*) FROM entries e "
            "LEFT JOIN entries p ON p.inode = e.parent WHERE p.inode IS NULL AND e.inode != 1",
            "entry whose parent is a file": "SELECT count(*) FROM entries e "
            "JOIN entries p ON p.inode = e.parent WHERE p.kind != 'dir'",
            "torrent entry without torrent": "SELECT count(*) FROM entries e "
            "LEFT JOIN torrents t ON t.id = e.torrent_id "
            "WHERE e.torrent_id IS NOT NULL AND t.id IS NULL",
            "files without torrent": "SELECT count(*) FROM files f "
            "LEFT JOIN torrents t ON t.id = f.torrent_id WHERE t.id IS NULL",
            "unsafe name": "SELECT count(*) FROM entries WHERE inode != 1 AND ("
            "name IN ('', '.', '..') OR instr(name, '/') > 0 OR instr(name, char(0)) > 0 "
            "OR length(CAST(name AS BLOB)) > 255)",
        }
        for label, sql in checks.items():
            count = self.conn.execute(sql).fetchone()[0]
            if count:
                problems.append(f"{count} {label}")
        return problems

    # --- removal record and shown torrents (the sync's deletion policy) ----------------------

    def record_removals(self, torrent_ids: Sequence[str], *, by: str, reason: str) -> int:
        """Write cached torrents about to be deleted to the removal record; returns how many.

        Call it before ``delete_torrents`` (in the same transaction): it reads the torrents' rows
        and selected files. ``by`` is ``"rd"`` or ``"user"``. Unknown ids are skipped.
        """
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            found = self.conn.execute(
                "SELECT id, filename, hash, bytes, info_key IS NOT NULL FROM torrents WHERE id "
                f"IN ({marks})",
                chunk,
            ).fetchall()
            for torrent_id, name, info_hash, size, has_files in found:
                selection = None
                if has_files:
                    selection = json.dumps(
                        self.conn.execute(
                            "SELECT file_id, path, bytes FROM files WHERE torrent_id = ? AND "
                            "selected ORDER BY file_id",
                            (torrent_id,),
                        ).fetchall()
                    )
                rows.append((now, torrent_id, name, info_hash, size, selection, by, reason))
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO removals (time, id, name, hash, bytes, selection, by, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        if rows:
            log.info("removal record: %d torrents removed (%s: %s)", len(rows), by, reason)
        return len(rows)

    def removals(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The removal record, newest first (``selection``: the selected files, None if unknown)."""
        rows = self.conn.execute(
            "SELECT time, id, name, hash, bytes, selection, by, reason FROM removals "
            "ORDER BY seq DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [
            {
                "time": when, "id": torrent_id, "name": name, "hash": info_hash, "bytes": size,
                "selection": None if selection is None else [
                    {"id": fid, "path": path, "bytes": fsize}
                    for fid, path, fsize in json.loads(selection)
                ],
                "by": by, "reason": reason,
            }
            for when, torrent_id, name, info_hash, size, selection, by, reason in rows
        ]  # fmt: skip

    def removal_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM removals").fetchone()[0]

    def shown_torrent_ids(self) -> set[str]:
        """Torrents that have a directory in ``torrents/`` now."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT torrent_id FROM entries WHERE parent = ? AND torrent_id IS NOT NULL",
                (TORRENTS_INODE,),
            )
        }

    def view_copy_torrent_ids(self) -> set[str]:
        """Torrents that have copies in the library views."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT e.torrent_id FROM entries e JOIN inodes i ON i.inode = e.inode "
                f"WHERE e.torrent_id IS NOT NULL AND i.key LIKE '{_VIEW_COPY_LIKE}'"
            )
        }

    def listed_torrents(self, torrent_ids: Iterable[str]) -> list[ListedTorrent]:
        """``shown_torrents``'s columns for the given cached torrents, whatever their status."""
        out: list[ListedTorrent] = []
        for chunk in chunks(list(torrent_ids)):
            marks = ",".join("?" * len(chunk))
            out += [
                ListedTorrent(*row)
                for row in self.conn.execute(
                    "SELECT id, filename, status, added, ended FROM torrents WHERE id IN "
                    f"({marks})",
                    chunk,
                )
            ]
        return out


class Scope:
    """Which stored entries a diff covers."""

    def __init__(self, where: str, params: tuple[Any, ...]) -> None:
        self.where = where
        self.params = params

    @classmethod
    def torrent_dirs(cls) -> Scope:
        return cls("e.parent = ?", (TORRENTS_INODE,))

    @classmethod
    def torrent_files(cls, torrent_id: str) -> Scope:
        return cls(
            f"e.torrent_id = ? AND e.parent != ? AND i.key NOT LIKE '{_VIEW_COPY_LIKE}'",
            (torrent_id, TORRENTS_INODE),
        )

    @classmethod
    def torrent_dirs_of(cls, torrent_ids: Sequence[str]) -> Scope:
        """The directories of these torrents in ``torrents/`` (at most ``IN_CHUNK`` ids)."""
        marks = ",".join("?" * len(torrent_ids))
        # (+e.parent: the torrent index, not every entry of torrents/)
        return cls(f"+e.parent = ? AND e.torrent_id IN ({marks})", (TORRENTS_INODE, *torrent_ids))

    @classmethod
    def view_copies_of(cls, torrent_ids: Sequence[str]) -> Scope:
        """The copies of these torrents' entries in the views (at most ``IN_CHUNK`` ids)."""
        marks = ",".join("?" * len(torrent_ids))
        return cls(
            f"e.torrent_id IN ({marks}) AND i.key LIKE '{_VIEW_COPY_LIKE}'", tuple(torrent_ids)
        )

    @classmethod
    def view_dirs(cls) -> Scope:
        """The top directories of the library views."""
        return cls(f"i.key LIKE '{_VIEW_DIR_LIKE}'", ())

    @classmethod
    def views(cls) -> Scope:
        """The library views: their top directories and the copies of torrents inside them."""
        return cls(f"i.key LIKE '{_VIEW_COPY_LIKE}' OR i.key LIKE '{_VIEW_DIR_LIKE}'", ())

    @classmethod
    def downloads(cls) -> Scope:
        return cls("e.parent = ?", (DOWNLOADS_INODE,))

    @classmethod
    def control_files(cls) -> Scope:
        return cls("e.parent = ?", (CONTROL_INODE,))


# The form of a torrent's hoster links on RD (LIKE: ASCII case-insensitive, http or https).
TORRENT_LINK_LIKE = "http%://real-debrid.com/d/%"
_DOWNLOAD_COLUMNS = "id, filename, filesize, link, host, download, mime_type, generated"
_TORRENT_COLUMNS = "id, filename, hash, bytes, host, split, progress, status, added, ended, links"


def _when(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _torrent(row: Sequence[Any]) -> Torrent:
    return Torrent(
        id=row[0],
        filename=row[1],
        hash=row[2],
        bytes=row[3],
        host=row[4],
        split=row[5],
        progress=row[6],
        status=row[7],
        added=_when(row[8]),
        ended=_when(row[9]),
        links=tuple(json.loads(row[10])),
    )


def _download(row: Sequence[Any]) -> Download:
    return Download(
        id=row[0],
        filename=row[1],
        filesize=row[2],
        link=row[3],
        host=row[4],
        download=row[5],
        mime_type=row[6],
        generated=_when(row[7]),
    )
