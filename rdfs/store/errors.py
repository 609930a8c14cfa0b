"""What an SQLite failure means for the cache: one exception class per state of the file."""

from __future__ import annotations

import sqlite3


class CacheError(Exception):
    """The cache database cannot be used (e.g. written by a newer rdfs)."""


class CacheUnavailable(CacheError):
    """A write could not be done now and was rolled back whole; it can be tried again later.

    ``state`` is what :meth:`Cache.status` shows: "disk full", "locked by another process",
    "read-only", "corrupt" or "error".
    """

    state = "error"


class CacheFull(CacheUnavailable):
    state = "disk full"


class CacheLocked(CacheUnavailable):
    state = "locked by another process"


class CacheReadOnly(CacheUnavailable):
    state = "read-only"


class CacheCorrupt(CacheUnavailable):
    state = "corrupt"


# SQLite primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
_ERRORS: dict[int, type[CacheUnavailable]] = {
    _SQLITE_BUSY: CacheLocked,
    _SQLITE_LOCKED: CacheLocked,
    _SQLITE_READONLY: CacheReadOnly,
    _SQLITE_FULL: CacheFull,
    _SQLITE_CORRUPT: CacheCorrupt,
    _SQLITE_NOTADB: CacheCorrupt,
}


def classify(exc: sqlite3.Error) -> CacheUnavailable:
    """The :class:`CacheUnavailable` saying what an SQLite error means for the cache (one line)."""
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _ERRORS.get(code & 0xFF, CacheUnavailable) if isinstance(code, int) else CacheUnavailable
    return kind(str(exc))


def unavailable(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error is about the database file's state (not a constraint or a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (*_ERRORS, _SQLITE_IOERR, _SQLITE_CANTOPEN)


def is_corrupt(exc: BaseException) -> bool:
    """Whether an error opening a database says the file is not a (sound) SQLite database."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and isinstance(code, int)
        and code & 0xFF
        in (
            _SQLITE_CORRUPT,
            _SQLITE_NOTADB,
        )
    )
