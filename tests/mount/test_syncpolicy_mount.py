"""Issue 15 through a real mount: hostile listings never empty ``torrents/``; removals are recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import mountutil

LISTS = "GET /torrents"
NO_LIMIT = ("--rate-limit", "100000")  # the file-list fill must not use up the sync's request budget


def status(mounted: mountutil.Mounted) -> dict:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def listed(mounted: mountutil.Mounted) -> set[str]:
    return set(os.listdir(mounted.path / "torrents"))


def wait_listings(control, count: int) -> None:
    """Wait until the mount asked for ``/torrents`` ``count`` more times (so ``count`` syncs ran)."""
    start = control.counters[LISTS]
    mountutil.wait_for(lambda: control.counters[LISTS] >= start + count, timeout=60, what=f"{count} listings")


def test_total_of_one_page_shows_every_torrent(emulator_proc, tmp_path: Path) -> None:
    """X-Total-Count equal to the page size (2,500) for 2,600 torrents: all 2,600 are shown and stay."""
    control = emulator_proc.control
    control.bulk_add_torrents(2600, 1, file_size=1000)
    control.set_faults(list_total="page")
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *NO_LIMIT) as mounted:
        mountutil.wait_for(lambda: len(listed(mounted)) == 2600, timeout=60, what="2600 torrent directories")
        wait_listings(control, 4)
        assert len(listed(mounted)) == 2600
        report = status(mounted)
        assert report["pending_deletions"] == {} and report["removed"]["count"] == 0


def test_half_the_library_missing_is_held(emulator_proc, tmp_path: Path) -> None:
    """Half the torrents vanish from the listings (still upstream): nothing vanishes from the mount."""
    control = emulator_proc.control
    ids = control.bulk_add_torrents(20, 1, file_size=1000)
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: len(listed(mounted)) == 20, what="20 torrent directories")
        before = listed(mounted)
        control.set_faults(list_hidden_ids=ids[:10])
        mountutil.wait_for(lambda: status(mounted)["pending_deletions"] == {"torrents": 10}, what="held removal")
        wait_listings(control, 5)
        assert listed(mounted) == before
        assert status(mounted)["removed"]["count"] == 0
        cli = subprocess.run(
            [sys.executable, "-m", "rdfs", "status", str(mounted.path)], capture_output=True, text=True, timeout=60
        )
        assert cli.returncode == 0 and "held back" in cli.stdout and "'torrents': 10" in cli.stdout
        control.set_faults(list_hidden_ids=[])  # they are back: the held removal is dropped
        mountutil.wait_for(lambda: status(mounted)["pending_deletions"] == {}, what="held removal dropped")
        assert listed(mounted) == before


def test_removal_by_rd_is_recorded(emulator_proc, tmp_path: Path) -> None:
    """One torrent gone from RD's listing: removed after the next listing, recorded for re-adding."""
    control = emulator_proc.control
    ids = control.bulk_add_torrents(5, 2, file_size=1000)
    gone = ids[2]
    info = control.torrent_json(gone)
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: len(listed(mounted)) == 5, what="5 torrent directories")
        mountutil.wait_for(lambda: status(mounted)["files_pending"] == 0, what="file lists")
        control.set_faults(list_hidden_ids=[gone])
        mountutil.wait_for(lambda: info["filename"] not in listed(mounted), what="the removal")
        [entry] = status(mounted)["removed"]["recent"]
        assert (entry["id"], entry["name"], entry["hash"], entry["by"]) == (gone, info["filename"], info["hash"], "rd")
        assert entry["selection"] == [
            {"id": f["id"], "path": f["path"], "bytes": f["bytes"]} for f in info["files"] if f["selected"]
        ]
        cli = subprocess.run(
            [sys.executable, "-m", "rdfs", "status", str(mounted.path)], capture_output=True, text=True, timeout=60
        )
        assert cli.returncode == 0, cli.stderr
        assert "removed     1 torrents" in cli.stdout and info["hash"] in cli.stdout and gone in cli.stdout
        assert gone in control.torrent_ids()  # RD only hid it: the record is what lets a user re-add it
        env = dict(os.environ, RDFS_CONFIG=str(tmp_path / "no-config.toml"))
        removed = subprocess.run(
            [sys.executable, "-m", "rdfs", "removed", "--cache-dir", str(mounted.cache_dir), "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        assert json.loads(removed.stdout) == status(mounted)["removed"]["recent"]
        table = subprocess.run(
            [sys.executable, "-m", "rdfs", "removed", "--cache-dir", str(mounted.cache_dir)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert table.returncode == 0 and gone in table.stdout and info["hash"] in table.stdout
        nothing = subprocess.run(
            [sys.executable, "-m", "rdfs", "removed", "--cache-dir", str(tmp_path / "none")],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert nothing.returncode != 0 and "no rdfs cache" in nothing.stderr and "Traceback" not in nothing.stderr
        errors = [line for line in mounted.log().splitlines() if " ERROR " in line]
        assert errors == []
