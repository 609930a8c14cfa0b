"""``rdfs cache``: what the metadata cache holds, read without the API (a real cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rdfs.store.metadata import SCHEMA_VERSION, Cache, StoredLink
from tests.unit.test_tree import torrent


def rdfs_cache(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RD_", "RDFS_"))}
    env.update(RDFS_CONFIG=str(tmp_path / "none.toml"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    command = [sys.executable, "-m", "rdfs", "cache", "--cache-dir", str(tmp_path / "cache"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_cache_command_counts_every_table(tmp_path: Path) -> None:
    cache = Cache.open(tmp_path / "cache", 42)
    cache.upsert_torrents([torrent(f"T{i}", f"name {i}") for i in range(3)])
    cache.put_link(StoredLink("https://real-debrid.com/d/A", "https://dl/a", "D", 1, 9e9))
    cache.close()

    result = rdfs_cache(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["user_id"] == "42" and report["schema_version"] == SCHEMA_VERSION
    assert report["path"] == str(tmp_path / "cache" / "42" / "rdfs.db")
    assert report["file_bytes"] >= (tmp_path / "cache" / "42" / "rdfs.db").stat().st_size > 0
    assert report["tables"]["torrents"] == 3 and report["tables"]["links"] == 1
    assert report["tables"]["entries"] == 4  # the fixed top of the tree
    assert report["tables"]["files"] == 0 and "sqlite_sequence" not in report["tables"]

    text = rdfs_cache(tmp_path)
    assert text.returncode == 0, text.stderr
    header, columns, *lines = text.stdout.splitlines()
    assert "account 42" in header and f"schema version {SCHEMA_VERSION}" in header
    assert columns.split() == ["table", "rows"]
    assert {line.split()[0]: int(line.split()[1]) for line in lines} == report["tables"]


def test_cache_command_without_a_cache_says_so(tmp_path: Path) -> None:
    result = rdfs_cache(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("rdfs: error: no rdfs cache in ")
