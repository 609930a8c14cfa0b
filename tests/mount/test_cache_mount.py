"""The cache is only a cache, through a real mount: a full disk, a foreign lock, a corrupt
database and a switch of accounts never stop reads or show the wrong tree."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rdfs.store.metadata import DB_NAME
from rdfs.emulator import FileSpec
from tests import mountutil
from tests.conftest import EmulatorProcess, running_emulator

pytestmark = pytest.mark.mount

USER_ID = "4242"  # the emulator's default account


def status(mounted: mountutil.Mounted) -> dict[str, Any]:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def cache_status(mounted: mountutil.Mounted) -> dict[str, Any]:
    return status(mounted)["cache"]


def stored_links(db: Path) -> set[str]:
    """The links committed to the mount's database, as another reader sees them."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT hoster_link FROM links")}


def assert_alive(mounted: mountutil.Mounted) -> None:
    assert mounted.process.poll() is None, mounted.log()
    assert mountutil.is_fuse_mount(mounted.path)
    assert "Traceback" not in mounted.log(), mounted.log()


def add_movie(emu: EmulatorProcess, name: str, count: int = 3) -> str:
    return emu.control.add_torrent(name, [FileSpec(f"/{name}.part{n}.bin", 70_000 + n) for n in range(1, count + 1)])


def read_file(emu: EmulatorProcess, mounted: mountutil.Mounted, name: str, torrent_id: str, file_id: int) -> None:
    path = mounted.path / "torrents" / name / f"{name}.part{file_id}.bin"
    assert path.read_bytes() == emu.control.file_bytes(torrent_id, file_id)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Write zeros into ``directory`` until its file system is full."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError):  # the last partial blocks too
        with open(filler, "ab", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    return filler


def test_full_cache_disk_keeps_the_mount_and_reads(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    movie = add_movie(emulator_proc, "Full Disk Movie")
    hoster_links = emulator_proc.control.torrent_json(movie)["links"]
    with small_tmpfs(tmp_path / "small", "24m") as small:
        cache_dir = small / "cache"
        with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, cache_dir=cache_dir) as mounted:
            folder = mounted.path / "torrents" / "Full Disk Movie"
            mountutil.wait_for(lambda: len(os.listdir(folder)) == 3 if folder.exists() else False, what="the tree")
            read_file(emulator_proc, mounted, "Full Disk Movie", movie, 1)
            filler = fill_up(small)

            read_file(emulator_proc, mounted, "Full Disk Movie", movie, 2)  # a new link: kept in memory
            mountutil.wait_for(lambda: cache_status(mounted)["state"] == "disk full", timeout=60, what="disk full")
            # A sync tick failed on the cache: reported, and the tree is still all there.
            mountutil.wait_for(
                lambda: any(e["where"] == "cache" for e in status(mounted)["recent_errors"]), timeout=60, what="tick"
            )
            assert sorted(os.listdir(folder)) == [f"Full Disk Movie.part{n}.bin" for n in (1, 2, 3)]
            assert os.listdir(mounted.path / "torrents") == ["Full Disk Movie"]
            read_file(emulator_proc, mounted, "Full Disk Movie", movie, 2)
            read_file(emulator_proc, mounted, "Full Disk Movie", movie, 3)
            assert cache_status(mounted)["pending_writes"] >= 1
            assert hoster_links[1] not in stored_links(cache_dir / USER_ID / DB_NAME)

            filler.unlink()  # space freed: the pending writes land
            mountutil.wait_for(
                lambda: (s := cache_status(mounted))["state"] == "ok" and s["pending_writes"] == 0,
                timeout=60,
                what="the pending writes",
            )
            assert set(hoster_links) <= stored_links(cache_dir / USER_ID / DB_NAME)
            assert_alive(mounted)


def test_foreign_write_lock_does_not_freeze_the_mount(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    movie = add_movie(emulator_proc, "Locked Movie")
    hoster_links = emulator_proc.control.torrent_json(movie)["links"]
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        folder = mounted.path / "torrents" / "Locked Movie"
        mountutil.wait_for(lambda: len(os.listdir(folder)) == 3 if folder.exists() else False, what="the tree")
        db = mounted.cache_dir / USER_ID / DB_NAME
        locker = subprocess.Popen(
            ["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert locker.stdin is not None and locker.stdout is not None
            locker.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'held';\n")
            locker.stdin.flush()
            assert locker.stdout.readline().strip() == "held"

            # Lookups, listings and a read of a file never read before all answer during the lock.
            assert sorted(os.listdir(folder)) == [f"Locked Movie.part{n}.bin" for n in (1, 2, 3)]
            assert (folder / "Locked Movie.part1.bin").stat().st_size == 70_001
            read_file(emulator_proc, mounted, "Locked Movie", movie, 1)
            mountutil.wait_for(
                lambda: cache_status(mounted)["state"] == "locked by another process", timeout=60, what="locked"
            )
            assert cache_status(mounted)["pending_writes"] >= 1
            assert hoster_links[0] not in stored_links(db)
            read_file(emulator_proc, mounted, "Locked Movie", movie, 1)  # again: from memory

            locker.stdin.write("ROLLBACK;\n.quit\n")
            locker.stdin.flush()
            assert locker.wait(timeout=30) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
        mountutil.wait_for(
            lambda: (s := cache_status(mounted))["state"] == "ok" and s["pending_writes"] == 0,
            timeout=60,
            what="the pending writes",
        )
        assert hoster_links[0] in stored_links(db)
        assert_alive(mounted)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_moved_aside_and_rebuilt(emulator_proc: EmulatorProcess, tmp_path: Path, damage: str) -> None:
    for number in range(40):
        add_movie(emulator_proc, f"Movie {number:02d}", count=4)
    cache_dir = tmp_path / "cache"
    db = cache_dir / USER_ID / DB_NAME
    if damage == "garbage":
        db.parent.mkdir(parents=True)
        db.write_bytes(os.urandom(64 * 1024))
    else:
        with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, name="first") as mounted:
            mountutil.wait_for(
                lambda: status(mounted)["files_pending"] == 0 and status(mounted)["torrents_with_files"] == 40,
                timeout=60,
                what="the first sync",
            )
        assert not db.with_name(DB_NAME + "-wal").exists()
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    damaged = db.read_bytes()
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: len(os.listdir(mounted.path / "torrents")) == 40, timeout=60, what="the rebuilt tree")
        assert sorted(os.listdir(mounted.path / "torrents" / "Movie 07")) == [f"Movie 07.part{n}.bin" for n in range(1, 5)]
        warnings = [line for line in mounted.log().splitlines() if " WARNING " in line or " ERROR " in line]
        assert len(warnings) == 1 and "is corrupt" in warnings[0], mounted.log()
        assert_alive(mounted)
    aside = [p for p in db.parent.iterdir() if p.name.startswith(DB_NAME + ".corrupt-") and not p.name.endswith("-wal")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged


def test_a_cache_is_shown_only_to_its_own_account(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    account_a = emulator_proc
    add_movie(account_a, "Alpha Movie")
    cache_dir = tmp_path / "cache"
    db_a = cache_dir / USER_ID / DB_NAME
    with mountutil.mount(account_a.api_url, account_a.token, tmp_path, cache_dir=cache_dir, name="a1") as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Alpha Movie").exists(), what="A's tree")
    cache_a = db_a.read_bytes()

    with running_emulator("--user-id", "5151") as account_b:
        add_movie(account_b, "Beta Show")
        with mountutil.mount(account_b.api_url, account_b.token, tmp_path, cache_dir=cache_dir, name="b") as mounted:
            seen: set[str] = set()

            def beta_shown() -> bool:
                seen.update(os.listdir(mounted.path / "torrents"))
                return "Beta Show" in seen

            mountutil.wait_for(beta_shown, what="B's tree")
            assert seen == {"Beta Show"}  # A's torrents never appeared
            assert account_b.control.counters["GET /user"] == 1  # an unknown token: asked whose it is
            assert_alive(mounted)
        assert (cache_dir / "5151" / DB_NAME).exists()
    assert db_a.read_bytes() == cache_a  # A's cache untouched

    account_a.control.reset_counters()
    os.kill(account_a.process.pid, signal.SIGSTOP)  # A's API answers nothing: the tree must come from the cache
    try:
        with mountutil.mount(account_a.api_url, account_a.token, tmp_path, cache_dir=cache_dir, name="a2") as mounted:
            mountutil.wait_for(lambda: (mounted.path / "torrents" / "Alpha Movie").exists(), what="A's warm tree")
            assert os.listdir(mounted.path / "torrents") == ["Alpha Movie"]
            os.kill(account_a.process.pid, signal.SIGCONT)
            assert account_a.control.counters["GET /user"] == 0
            assert_alive(mounted)
    finally:
        os.kill(account_a.process.pid, signal.SIGCONT)


def test_mount_starts_while_another_process_holds_the_lock(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    movie = add_movie(emulator_proc, "Boot Movie")
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, name="first") as mounted:
        # The file list cached too: the warm mount below cannot store one while the lock is held.
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Boot Movie" / "Boot Movie.part3.bin").exists(), what="the tree")
    db = tmp_path / "cache" / USER_ID / DB_NAME
    locker = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdin is not None and locker.stdout is not None
        locker.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'held';\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "held"
        with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
            mountutil.wait_for(lambda: (mounted.path / "torrents" / "Boot Movie").exists(), what="the warm tree")
            read_file(emulator_proc, mounted, "Boot Movie", movie, 3)
            assert cache_status(mounted)["state"] == "locked by another process"
            locker.stdin.write("ROLLBACK;\n.quit\n")
            locker.stdin.flush()
            assert locker.wait(timeout=30) == 0
            mountutil.wait_for(lambda: cache_status(mounted)["pending_writes"] == 0, timeout=60, what="the writes")
            assert_alive(mounted)
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
