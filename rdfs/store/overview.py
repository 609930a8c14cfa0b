"""What is in a metadata cache, for ``rdfs cache``: its tables, their rows, its size on disk.

Read-only introspection through sqlite-utils (table listing and counts); nothing here runs on a
hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from rdfs.store.metadata import Cache


@dataclass(frozen=True, slots=True)
class CacheOverview:
    path: Path
    user_id: str | None
    schema_version: int
    file_bytes: int  # the database, its WAL and shared-memory index
    tables: dict[str, int]  # table name -> rows (SQLite's internal tables left out)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "user_id": self.user_id,
            "schema_version": self.schema_version,
            "file_bytes": self.file_bytes,
            "tables": self.tables,
        }


def overview(cache: Cache) -> CacheOverview:
    """Count the rows of every table of ``cache`` (a full scan each: seconds at most)."""
    db = sqlite_utils.Database(cache.conn, recursive_triggers=False, execute_plugins=False)
    tables = {
        name: db.table(name).count for name in db.table_names() if not name.startswith("sqlite_")
    }
    files = [cache.path, *(cache.path.with_name(cache.path.name + s) for s in ("-wal", "-shm"))]
    return CacheOverview(
        path=cache.path,
        user_id=cache.user_id,
        schema_version=int(cache.get_meta("schema_version") or 0),
        file_bytes=sum(f.stat().st_size for f in files if f.exists()),
        tables=tables,
    )
