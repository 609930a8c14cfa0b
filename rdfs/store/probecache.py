"""A persistent, bounded cache of the head and tail blocks of files: what media scanners read.

Plex, Jellyfin and Kodi probe every file of a library (ffprobe reads the head and, for an MP4
with its index at the end, the tail) and do it again on every rescan. This cache keeps the
blocks of the first ``head_bytes`` and the last ``tail_bytes`` of every file read through the
mount in one SQLite database, so a rescan of an unchanged library is served from disk: no
unrestrict, no request to a download server.

A file is identified by what its bytes are, not by its inode: ``hoster link, offset inside the
link's content, size``; RD content behind a hoster link never changes. The total size is bounded
(``max_bytes``): the files used least recently are evicted whole. The database holds no secret
(no download URL), only file content.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rdfs.store.errors import classify

if TYPE_CHECKING:
    from rdfs.config import Config
    from rdfs.store.metadata import Cache

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DB_NAME = "probe.db"
DEFAULT_MAX_BYTES = 4096 * MiB
DEFAULT_HEAD_BYTES = 32 * MiB
DEFAULT_TAIL_BYTES = 16 * MiB
# How long the event loop's connection waits for another process's lock (see rdfs.store.metadata).
BUSY_TIMEOUT_MS = 100
# Eviction frees down to this fraction of max_bytes, so it does not run on every store.
_EVICT_TO = 0.9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file  TEXT PRIMARY KEY,  -- identity: hoster link, offset in the link's content, size
    bytes INTEGER NOT NULL,  -- bytes of this file's blocks stored
    used  REAL NOT NULL      -- UNIX time of the last open (eviction order)
);
CREATE INDEX IF NOT EXISTS files_used ON files(used);
CREATE TABLE IF NOT EXISTS blocks (
    file TEXT NOT NULL,      -- files.file
    idx  INTEGER NOT NULL,   -- block index inside the file (offset // block size)
    data BLOB NOT NULL,      -- the block's bytes (the last block of a file may be short)
    PRIMARY KEY (file, idx)
);
"""


def file_key(hoster_link: str, offset: int, size: int) -> str:
    """The identity of a file's bytes (stable across syncs, restarts and renames)."""
    return f"{hoster_link}#{offset}#{size}"


@dataclass
class ProbeStats:
    hits: int = 0  # blocks served from disk
    stored: int = 0  # blocks written
    evicted_files: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ProbeCache:
    """``blocks(key)``, ``get(key, index)``, ``put(key, index, data)``; bounded by ``max_bytes``."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        head_bytes: int = DEFAULT_HEAD_BYTES,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.stats = ProbeStats()
        # The event loop's connection waits briefly for a lock (it only marks files as used); the
        # writer, in a worker thread, may wait longer.
        self.conn = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self.size = self.conn.execute("SELECT coalesce(sum(bytes), 0) FROM files").fetchone()[0]
        except BaseException:
            self.conn.close()
            raise
        # Writes go through their own connection, usable from a worker thread (WAL: the reads on
        # ``conn`` go on meanwhile); the lock keeps one writer at a time.
        self._writer = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False
        )
        self._write_lock = threading.Lock()

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        self.conn.close()

    def wants(self, file_size: int, start: int, length: int) -> bool:
        """Whether the ``length`` bytes at ``start`` of a ``file_size``-byte file (a block: the
        cache stores what its callers deliver, by index) lie in its head or tail."""
        if self.max_bytes <= 0:
            return False
        return start < self.head_bytes or start + length > file_size - self.tail_bytes

    def blocks(self, key: str) -> set[int]:
        """The stored block indices of a file; marks the file as just used."""
        indices = {
            row[0] for row in self.conn.execute("SELECT idx FROM blocks WHERE file = ?", (key,))
        }
        if indices:
            try:
                self.conn.execute("UPDATE files SET used = ? WHERE file = ?", (time.time(), key))
            except sqlite3.OperationalError as exc:
                # full, locked, read-only: only the eviction order suffers
                log.debug("probe cache: cannot mark %d blocks as used: %s", len(indices), exc)
        return indices

    def get(self, key: str, index: int) -> bytes | None:
        row = self.conn.execute(
            "SELECT data FROM blocks WHERE file = ? AND idx = ?", (key, index)
        ).fetchone()
        if row is None:
            return None
        self.stats.hits += 1
        return bytes(row[0])

    def put(self, key: str, index: int, data: bytes | memoryview) -> None:
        """Store one block (replacing an equal one is harmless); evicts old files when full."""
        self.put_batch({key: {index: data}})

    def put_batch(self, batch: Mapping[str, Mapping[int, bytes | memoryview]]) -> None:
        """Store blocks of several files in one transaction; evicts old files when full.

        Safe to call from a worker thread (the reader pool does, so a disk write never holds up a
        read). A write the disk refuses rolls back and raises :class:`CacheUnavailable`.
        """
        try:
            self._put_batch(batch)
        except sqlite3.Error as exc:
            raise classify(exc) from exc

    def _put_batch(self, batch: Mapping[str, Mapping[int, bytes | memoryview]]) -> None:
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                grown_total = stored = 0
                now = time.time()
                for key, blocks in batch.items():
                    grown = 0
                    for index, data in blocks.items():
                        old = db.execute(
                            "SELECT length(data) FROM blocks WHERE file = ? AND idx = ?",
                            (key, index),
                        ).fetchone()
                        grown += len(data) - (old[0] if old else 0)
                        db.execute(
                            "INSERT OR REPLACE INTO blocks (file, idx, data) VALUES (?, ?, ?)",
                            (key, index, data),
                        )
                    db.execute(
                        "INSERT INTO files (file, bytes, used) VALUES (?, ?, ?) ON CONFLICT (file) "
                        "DO UPDATE SET bytes = bytes + excluded.bytes, used = excluded.used",
                        (key, grown, now),
                    )
                    grown_total += grown
                    stored += len(blocks)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            self.size += grown_total
            self.stats.stored += stored
            if self.size > self.max_bytes:
                self._evict(keep=set(batch))

    def _evict(self, keep: set[str]) -> None:
        target = int(self.max_bytes * _EVICT_TO)
        db = self._writer
        victims = db.execute("SELECT file, bytes FROM files ORDER BY used").fetchall()
        db.execute("BEGIN IMMEDIATE")
        try:
            for file, size in victims:
                if self.size <= target:
                    break
                if file in keep:
                    continue
                db.execute("DELETE FROM blocks WHERE file = ?", (file,))
                db.execute("DELETE FROM files WHERE file = ?", (file,))
                self.size -= size
                self.stats.evicted_files += 1
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        log.debug("probe cache: evicted down to %d bytes", self.size)

    def status(self) -> dict[str, int]:
        files = self.conn.execute("SELECT count(*) FROM files").fetchone()[0]
        return {
            "files": files,
            "bytes": self.size,
            "max_bytes": self.max_bytes,
            **self.stats.as_dict(),
        }


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself (e.g. on SQLITE_FULL): nothing left to undo then.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def open_probe_cache(config: Config, cache: Cache) -> ProbeCache | None:
    """The account's probe cache (``<cache dir>/<user id>/probe.db``), or None when disabled.

    It is only a cache: a corrupt file is moved aside and rebuilt; one that cannot be opened
    (full disk, read-only directory) costs the probe cache for this mount, never the mount.
    """
    from rdfs.store.metadata import is_corrupt, move_aside

    if config.probe_cache_mb <= 0:
        return None
    path = cache.path.parent / DB_NAME

    def make() -> ProbeCache:
        return ProbeCache(
            path,
            max_bytes=config.probe_cache_mb * MiB,
            head_bytes=config.probe_head_mb * MiB,
            tail_bytes=config.probe_tail_mb * MiB,
        )

    try:
        try:
            return make()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            move_aside(path, str(exc))
            return make()
    except (sqlite3.Error, OSError) as exc:
        log.warning("probe cache %s unavailable for this mount: %s", path, exc)
        return None
