"""Fault injection through a real mount: every promise rdfs makes must hold while RD misbehaves.

Each test runs its own emulator process (its faults are its own) and mounts rdfs against it.
Bytes are always compared with the emulator's source; failures must be clean (EIO, a log line)
and must never take the rest of the mount with them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from rdfs.api.ratelimit import MIN_PER_MINUTE, RateLimiter
from rdfs.emulator import FileSpec
from rdfs.fuse.mount import is_fuse_mount
from tests import mountutil

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
FAST = ("--rate-limit", "3000")  # client pacing is not what these tests are about


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def source_sha256(control, torrent_id: str, file_id: int, size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, 8 * MiB):
        digest.update(control.file_bytes(torrent_id, file_id, offset, min(8 * MiB, size - offset)))
    return digest.hexdigest()


def status(mounted: mountutil.Mounted) -> dict:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def snapshot(root: Path) -> dict[str, int]:
    """Every entry under ``root``: relative path -> size (-1 for directories)."""
    found = {}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = -1 if path.is_dir() else path.stat().st_size
    return found


def selected_files(control, torrent_id: str) -> list[dict]:
    return [f for f in control.torrent_json(torrent_id)["files"] if f["selected"]]


def assert_torrent_exact(control, torrents_dir: Path, torrent_id: str) -> int:
    info = control.torrent_json(torrent_id)
    checked = 0
    for f in selected_files(control, torrent_id):
        path = torrents_dir / info["filename"] / f["path"].lstrip("/")
        assert sha256_of(path) == source_sha256(control, torrent_id, f["id"], f["bytes"]), path
        checked += 1
    return checked


def cli_umount(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdfs", "umount", str(path)], capture_output=True, text=True)


@pytest.mark.mount
def test_dropped_bodies_and_api_503s_every_byte_exact(emulator_proc, tmp_path):
    """30% of download bodies cut mid-way and 20% of API requests answered 503: all bytes exact."""
    control = emulator_proc.control
    ids = [
        control.add_torrent(
            f"Drop {n}", [FileSpec(f"/d{n}.bin", (n + 1) * MiB + n), FileSpec(f"/sub/e{n}.bin", 2 * MiB - n)]
        )
        for n in range(6)
    ]
    control.set_faults(download_drop_rate=0.3, api_error_rate=0.2, api_error_status=503)
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 6, what="all torrents")
        checked = sum(assert_torrent_exact(control, torrents, torrent_id) for torrent_id in ids)
        assert mounted.process.poll() is None
    counters = control.counters
    assert checked == 12
    assert counters["download_drops"] > 0 and counters["injected_errors"] > 0, counters


@pytest.mark.mount
def test_links_expiring_mid_stream(emulator_proc, tmp_path):
    """Download URLs expire while a file streams (with drops forcing new connections): exact."""
    control = emulator_proc.control
    size = 16 * MiB + 7
    torrent_id = control.add_torrent("Expiring", [FileSpec("/e.bin", size)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        path = mounted.path / "torrents" / "Expiring" / "e.bin"
        mountutil.wait_for(path.exists, what="file")
        control.reset_counters()
        control.set_faults(download_drop_rate=0.3)
        with open(path, "rb") as f:
            # Seeks far apart: each needs a new request, each after the URLs expired again.
            for offset in (12 * MiB, 4 * MiB, 9 * MiB):
                control.expire_links()
                f.seek(offset)
                assert f.read(100_000) == control.file_bytes(torrent_id, 1, offset, 100_000)
            f.seek(0)
            data = bytearray()
            while chunk := f.read(MiB):
                data += chunk
                if len(data) % (4 * MiB) == 0:
                    control.expire_links()
        assert bytes(data) == control.file_bytes(torrent_id, 1, 0, size)
        counters = control.counters
        assert counters["download_refused"] >= 2  # the server refused expired URLs (the 2nd and 3rd seek)
        assert counters["POST /unrestrict/link"] >= 3  # ... and rdfs unrestricted the link again


@pytest.mark.mount
def test_torrent_dead_mid_read_fails_cleanly(emulator_proc, tmp_path):
    """A torrent dying mid-read: EIO for its file (logged), every other file unaffected."""
    control = emulator_proc.control
    size = 40 * MiB
    doomed = control.add_torrent("Doomed", [FileSpec("/d.bin", size)])
    healthy = control.add_torrent("Healthy", [FileSpec("/h.bin", 6 * MiB)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: {"Doomed", "Healthy"} <= set(os.listdir(torrents)), what="torrents")
        healthy_handle = open(torrents / "Healthy" / "h.bin", "rb")
        try:
            healthy_head = healthy_handle.read(MiB)
            with open(torrents / "Doomed" / "d.bin", "rb") as f:
                assert f.read(MiB) == control.file_bytes(doomed, 1, 0, MiB)
                control.kill_torrent(doomed)
                # Bytes already on their way may still arrive; a new request meets the dead torrent.
                with pytest.raises(OSError) as failure:
                    os.pread(f.fileno(), 65536, 30 * MiB)
                assert failure.value.errno == errno.EIO
                with pytest.raises(OSError):
                    os.pread(f.fileno(), 65536, 20 * MiB)  # and keeps failing, without hanging
            # The other torrent, already open and opened anew, reads on.
            assert healthy_head + healthy_handle.read() == control.file_bytes(healthy, 1)
        finally:
            healthy_handle.close()
        assert sha256_of(torrents / "Healthy" / "h.bin") == source_sha256(control, healthy, 1, 6 * MiB)
        mountutil.wait_for(lambda: "Doomed" not in os.listdir(torrents), what="dead torrent leaves the tree")
        assert "Healthy" in os.listdir(torrents)
        assert mounted.process.poll() is None
        log = mounted.log()
        assert "read of d.bin failed" in log and "is gone" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.mount
def test_api_outage_keeps_tree_and_cached_links(emulator_proc, tmp_path):
    """RD's API down for the whole second mount: the cached tree stays, cached links stream."""
    control = emulator_proc.control
    ids = [
        control.add_torrent("Outage A", [FileSpec("/a1.bin", 3 * MiB), FileSpec("/a2.bin", 2 * MiB + 9)]),
        control.add_torrent("Outage B", [FileSpec("/b.bin", 4 * MiB + 1)]),
    ]
    cache_dir = tmp_path / "cache"
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: {"Outage A", "Outage B"} <= set(os.listdir(torrents)), what="torrents")
        before = snapshot(torrents)
        for path in (p for p in torrents.rglob("*") if p.is_file()):
            with open(path, "rb") as f:
                assert f.read(4096)  # resolves (and stores) every link
    control.set_faults(api_down=True)
    control.reset_counters()
    with mountutil.mount(
        emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir, name="mnt2"
    ) as mounted:
        torrents = mounted.path / "torrents"
        assert snapshot(torrents) == before
        checked = sum(assert_torrent_exact(control, torrents, torrent_id) for torrent_id in ids)
        assert checked == 3
        # Sync retries a 503 with backoff (~20 s) before it calls the API unreachable.
        report = mountutil.wait_for(
            lambda: (s := status(mounted))["health"] in ("unavailable", "degraded") and s,
            timeout=90,
            what="outage in status",
        )
        assert report["api"]["reachable"] is False
        assert report["torrents_known"] == 2 and report["recent_errors"]
        assert snapshot(torrents) == before  # several failed syncs later, nothing was dropped
        assert "sync health:" in mounted.log()
    counters = control.counters
    assert counters["api_answered"] == 0 and counters["api_total"] > 0  # RD never answered
    assert counters["download_requests"] > 0


@pytest.mark.slow
@pytest.mark.mount
def test_rate_limit_30_per_minute_find_and_head_reads(emulator_proc, tmp_path):
    """RD lowers the limit to 30 requests a minute during a library scan: no read fails."""
    control = emulator_proc.control
    ids = [
        control.add_torrent(f"Limited {n:02d}", [FileSpec(f"/l{n}a.mkv", MiB + n), FileSpec(f"/l{n}b.mkv", 2 * MiB)])
        for n in range(12)
    ]
    control.set_faults(rate_limit_per_minute=30)
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 12, timeout=120, what="every torrent listed")
        found = subprocess.run(["find", str(torrents), "-type", "f"], capture_output=True, text=True, check=True)
        files = sorted(found.stdout.splitlines())
        assert len(files) == 24, files
        by_name = {}
        for torrent_id in ids:
            info = control.torrent_json(torrent_id)
            for f in info["files"]:
                by_name[str(torrents / info["filename"] / f["path"].lstrip("/"))] = (torrent_id, f["id"])
        for name in files:
            with open(name, "rb") as f:
                head = f.read(64 * 1024)
            torrent_id, file_id = by_name[name]
            assert head == control.file_bytes(torrent_id, file_id, 0, 64 * 1024), name
    assert control.counters["rate_limited"] > 0  # the limit was hit, and coped with


def _wait_dead(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def _integrity(cache_dir: Path) -> list[str]:
    results = []
    for db in cache_dir.glob("*/rdfs.db"):
        with sqlite3.connect(db) as connection:
            results.append(connection.execute("PRAGMA integrity_check").fetchone()[0])
    return results


@pytest.mark.mount
def test_kill9_during_reads_umount_and_warm_remount(emulator_proc, tmp_path):
    """kill -9 while files stream; ``rdfs umount`` clears the stale mount; the same cache shows
    the whole tree again before the (slow on purpose) API answered anything."""
    control = emulator_proc.control
    control.bulk_add_torrents(8, files_per_torrent=3, file_size=4 * MiB)
    cache_dir = tmp_path / "cache"
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 8, what="torrents")
        before = snapshot(torrents)
        assert sum(1 for size in before.values() if size >= 0) == 24
        control.set_faults(download_bytes_per_second=256 * 1024)
        readers = [
            subprocess.Popen(["cat", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for p in sorted(torrents.rglob("*.mkv"))[:6]
        ]
        try:
            mountutil.wait_for(lambda: control.counters["download_bytes"] > MiB, what="reads under way")
            _wait_dead(mounted.process)
            for reader in readers:
                reader.wait(timeout=15)  # a read on a dead mount fails, it does not hang
        finally:
            for reader in readers:
                if reader.poll() is None:
                    reader.kill()
                    reader.wait()
                reader.stderr.close()
        assert all(reader.returncode != 0 for reader in readers)
        assert is_fuse_mount(mounted.path)
        with pytest.raises(OSError) as stale:
            os.listdir(mounted.path)
        assert stale.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        result = cli_umount(mounted.path)
        assert result.returncode == 0, result.stderr
        assert not is_fuse_mount(mounted.path) and os.listdir(mounted.path) == []
    assert _integrity(cache_dir) == ["ok"]
    control.set_faults(download_bytes_per_second=None, api_latency=20.0)
    control.reset_counters()
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir) as mounted:
        assert snapshot(mounted.path / "torrents") == before
        assert control.counters["api_answered"] == 0  # the tree came from the cache alone
        control.set_faults(api_latency=0.0)


@pytest.mark.mount
def test_kill9_during_sync_then_remount_completes(emulator_proc, tmp_path):
    """kill -9 in the middle of the first sync: the cache survives and the next mount finishes."""
    control = emulator_proc.control
    ids = control.bulk_add_torrents(60, files_per_torrent=2, file_size=1000)
    control.set_faults(api_latency=0.1)
    cache_dir = tmp_path / "cache"
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir) as mounted:
        mountutil.wait_for(
            lambda: control.counters["GET /torrents/info"] >= 8, what="file lists being fetched"
        )
        assert control.counters["GET /torrents/info"] < 60  # still syncing
        _wait_dead(mounted.process)
        assert cli_umount(mounted.path).returncode == 0
        assert not is_fuse_mount(mounted.path)
    assert _integrity(cache_dir) == ["ok"]
    control.set_faults(api_latency=0.0)
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST, cache_dir=cache_dir) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 60, what="every torrent")
        tree = snapshot(torrents)
        expected = {}
        for torrent_id in ids:
            info = control.torrent_json(torrent_id)
            expected[info["filename"]] = -1
            for f in info["files"]:
                expected[f"{info['filename']}/{f['path'].lstrip('/')}"] = f["bytes"]
        assert tree == expected
        info = control.torrent_json(ids[0])
        path = torrents / info["filename"] / info["files"][1]["path"].lstrip("/")
        assert path.read_bytes() == control.file_bytes(ids[0], 2)


async def test_pace_adapts_to_a_lower_rd_limit(autojump_clock: trio.testing.MockClock) -> None:
    """After 429s the client slows down below RD's limit (refused requests count on RD, so a
    client keeping its pace would never get through), then creeps back up on successes."""
    limiter = RateLimiter(per_minute=240)
    limiter.penalize(0.5)
    assert limiter.per_minute == 120
    for _ in range(10):
        limiter.penalize(0.0)
    assert limiter.per_minute == MIN_PER_MINUTE
    start = trio.current_time()
    sent = 0
    while trio.current_time() - start < 60:
        await limiter.acquire()
        sent += 1
    assert sent <= MIN_PER_MINUTE + 1  # one full minute at the lowered pace
    for _ in range(500):
        limiter.succeeded()
    assert limiter.per_minute == 240  # never above what was configured


@pytest.mark.slow
@pytest.mark.mount
def test_soak_one_minute(tmp_path):
    """``scripts/soak --duration 60``: mixed load with faults on, then consistency and leak checks."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak"), "--duration", "60", "--json", "--keep", str(tmp_path / "soak")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["checks"] == dict.fromkeys(report["checks"], True), json.dumps(report, indent=1)[:6000]
    assert report["work"]["reads"] > 50 and report["emulator"]["download_drops"] > 0
    assert result.returncode == 0
