"""Hostile downloads through a real mount (issue 15): servers that drip, refuse, encode, redirect
to hosts that do not exist, and an RD behind a failing gateway.

Each test runs its own emulator (its faults are its own) and mounts rdfs against it; the mount
runs the real deadlines (``rdfs.data.download.STALL_TIMEOUT`` ...). Failures must be EIO for the
file concerned, the mount stays up, other files read their exact bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rdfs.data.download import READ_STALL_TIMEOUT
from rdfs.emulator import Emulator, FileSpec
from rdfs.emulator.model import Refusal
from rdfs.store.metadata import Cache, StoredLink
from rdfs.store.probecache import file_key
from tests import mountutil

pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB
UNRESTRICT = "POST /unrestrict/link"
FAST = ("--rate-limit", "3000")


def status(mounted: mountutil.Mounted) -> dict[str, Any]:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def pread(path: Path, offset: int, size: int) -> bytes | int:
    """The bytes read, or the errno of the failure."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return exc.errno or -1
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_a_dripping_download_fails_eio_within_the_stated_bound(emulator_proc, tmp_path):
    control = emulator_proc.control
    drip_id = control.add_torrent("Drip", [FileSpec("/drip.bin", 4 * MiB)])
    good_id = control.add_torrent("Good", [FileSpec("/good.bin", 3 * MiB + 5)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 2, what="both torrents")
        drip_path = torrents / "Drip" / "drip.bin"
        control.set_faults(download_drip_interval=2.0)  # one byte every 2 s: never a block
        result: list[bytes | int] = []
        reader = threading.Thread(
            target=lambda: result.append(pread(drip_path, MiB, 64 * KiB)), daemon=True
        )
        reader.start()
        # While that read hangs on the server, the mount answers and says what is going on.
        mountutil.wait_for(
            lambda: status(mounted)["reads"]["stalls"] >= 1,
            timeout=4 * READ_STALL_TIMEOUT,
            what="the stall in status",
        )
        assert sorted(os.listdir(torrents)) == ["Drip", "Good"]
        reader.join(8 * READ_STALL_TIMEOUT)  # generous: the bound is READ_STALL_TIMEOUT
        assert not reader.is_alive(), "the read never failed"
        assert result == [errno.EIO]
        assert control.counters["download_drip_bytes"] > 0
        reads = status(mounted)["reads"]
        assert reads["stalls"] >= 2 and reads["stalled"] >= 1 and reads["stalling"] == 0, reads
        assert reads["last_stall"]["file"] == "drip.bin" and reads["last_stall"]["gave_up"], reads
        control.set_faults(download_drip_interval=0.0)
        assert file_sha256(torrents / "Good" / "good.bin") == sha256(control.file_bytes(good_id, 1))
        assert pread(drip_path, MiB, 64 * KiB) == control.file_bytes(drip_id, 1, MiB, 64 * KiB)
        assert mounted.process.poll() is None


@pytest.mark.parametrize("status_code", [403, 200])  # 200: RD's HTML "no longer valid" page
def test_a_server_refusing_every_link_costs_at_most_two_unrestricts(
    emulator_proc, tmp_path, status_code
):
    control = emulator_proc.control
    control.add_torrent("Refused", [FileSpec("/refused.bin", MiB)])
    good_id = control.add_torrent("Good", [FileSpec("/good.bin", MiB)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 2, what="both torrents")
        control.reset_counters()
        control.set_faults(download_error_rate=1.0, download_error_status=status_code)
        outcomes = [
            pread(torrents / "Refused" / "refused.bin", n * 64 * KiB, 4096) for n in range(10)
        ]
        assert outcomes == [errno.EIO] * 10
        assert control.counters[UNRESTRICT] <= 2, control.counters
        control.set_faults(download_error_rate=0.0)
        assert pread(torrents / "Good" / "good.bin", 0, 4096) == control.file_bytes(
            good_id, 1, 0, 4096
        )
        assert mounted.process.poll() is None


def test_gzip_encoded_downloads_are_never_served_nor_cached(emulator_proc, tmp_path):
    control = emulator_proc.control
    zipped_id = control.add_torrent("Zipped", [FileSpec("/zipped.bin", 2 * MiB)])
    plain_id = control.add_torrent("Plain", [FileSpec("/plain.bin", 2 * MiB)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: len(os.listdir(torrents)) == 2, what="both torrents")
        control.set_faults(download_content_encoding="gzip")
        truth = control.file_bytes(zipped_id, 1, 0, 64 * KiB)
        outcome = pread(torrents / "Zipped" / "zipped.bin", 0, 64 * KiB)
        assert outcome == errno.EIO or outcome == truth  # never the gzip bytes
        assert control.counters["download_encoded"] >= 1
        control.set_faults(download_content_encoding=None)
        # A head read that does go to the probe cache: once it is there, the batch before it was
        # too.
        assert pread(torrents / "Plain" / "plain.bin", 0, 64 * KiB) == control.file_bytes(
            plain_id, 1, 0, 64 * KiB
        )
        probe_db = next(mounted.cache_dir.glob("*/probe.db"))

        def stored(torrent_id: str, size: int) -> int:
            key = file_key(control.torrent_json(torrent_id)["links"][0], 0, size)
            with sqlite3.connect(f"file:{probe_db}?mode=ro", uri=True) as db:
                return db.execute("SELECT count(*) FROM blocks WHERE file = ?", (key,)).fetchone()[
                    0
                ]

        mountutil.wait_for(
            lambda: stored(plain_id, 2 * MiB) > 0, what="the plain head in the probe cache"
        )
        assert stored(zipped_id, 2 * MiB) == 0
        assert pread(torrents / "Zipped" / "zipped.bin", 0, 64 * KiB) == truth
        assert mounted.process.poll() is None


def test_gateway_502_on_unrestrict_is_waited_out_not_a_verdict(emulator_proc, tmp_path):
    control = emulator_proc.control
    torrent_id = control.add_torrent("Behind Gateway", [FileSpec("/g.bin", 2 * MiB)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *FAST) as mounted:
        path = mounted.path / "torrents" / "Behind Gateway" / "g.bin"
        mountutil.wait_for(path.exists, what="the file")
        control.reset_counters()
        control.set_faults(
            api_error_rate=1.0, api_error_status=502
        )  # an HTML 502 page, no error_code
        result: list[bytes | int] = []
        reader = threading.Thread(
            target=lambda: result.append(pread(path, MiB, 64 * KiB)), daemon=True
        )
        reader.start()
        try:
            mountutil.wait_for(
                lambda: control.counters[UNRESTRICT] >= 2,
                timeout=60,
                what="unrestricts hitting 502s",
            )
        finally:
            control.set_faults(api_error_rate=0.0)
        reader.join(120)
        assert not reader.is_alive()
        assert result == [control.file_bytes(torrent_id, 1, MiB, 64 * KiB)]
        assert pread(path, 0, 4096) == control.file_bytes(torrent_id, 1, 0, 4096)
        repair = status(mounted)["repair"]
        assert repair["broken"] == [], repair
        assert "is gone" not in mounted.log()
        assert mounted.process.poll() is None


# --- bad URLs: the emulator runs in the test's trio loop, so its unrestrict answer can be edited


def serve_bad_url(emu: Emulator, hoster_link: str, url: str) -> Callable[[], None]:
    """Unrestricts of ``hoster_link`` answer ``url``; returns the undo."""
    unrestrict = emu.unrestrict

    def bad(link: str):  # type: ignore[no-untyped-def]
        entry = unrestrict(link)
        if link == hoster_link:
            entry.download = url
        return entry

    emu.unrestrict = bad  # type: ignore[method-assign]
    return lambda: setattr(emu, "unrestrict", unrestrict)


@pytest.mark.parametrize(
    "bad_url", ["http://b\u00e4d host.example/d/x/bad.bin", "http://[::1/d/x/bad.bin"]
)
async def test_bad_download_urls_fail_that_file_and_survive_a_restart(
    emulator: Emulator, tmp_path: Path, bad_url: str
):
    bad_id = emulator.add_torrent("Bad", [FileSpec("/bad.bin", MiB)])
    good_id = emulator.add_torrent("Good", [FileSpec("/good.bin", MiB)])
    bad_link = emulator.torrent_json(bad_id)["links"][0]
    bad_truth = emulator.file_bytes(bad_id, 1, 0, 4096)
    good_truth = emulator.file_bytes(good_id, 1, 0, 4096)
    undo = serve_bad_url(emulator, bad_link, bad_url)

    def first_mount() -> None:
        with mountutil.mount(emulator.api_url, emulator.token, tmp_path, *FAST) as mounted:
            torrents = mounted.path / "torrents"
            mountutil.wait_for(lambda: len(os.listdir(torrents)) == 2, what="both torrents")
            assert [pread(torrents / "Bad" / "bad.bin", 0, 4096) for _ in range(3)] == [
                errno.EIO
            ] * 3
            assert pread(torrents / "Good" / "good.bin", 0, 4096) == good_truth
            # A redirect to a host that cannot exist fails that read, and only it.
            emulator.faults.download_redirect_location = bad_url
            assert pread(torrents / "Good" / "good.bin", 200 * KiB, 4096) == errno.EIO
            emulator.faults.download_redirect_location = None
            assert pread(torrents / "Good" / "good.bin", 200 * KiB, 4096) == emulator.file_bytes(
                good_id, 1, 200 * KiB, 4096
            )
            assert mounted.process.poll() is None

    await trio.to_thread.run_sync(first_mount)
    assert emulator.counters[UNRESTRICT] == 2  # one per file: the bad answer was remembered
    undo()
    # An earlier version persisted such URLs: put one in the store, as it would have.
    db_path = next(tmp_path.glob("cache/*/rdfs.db"))
    store = Cache(db_path)
    try:
        assert store.get_link(bad_link) is None  # this version did not persist it
        store.put_link(StoredLink(bad_link, bad_url, "OLD", MiB, time.time() + 3600))
    finally:
        store.close()

    def second_mount() -> None:
        with mountutil.mount(
            emulator.api_url, emulator.token, tmp_path, *FAST, name="mnt2"
        ) as mounted:
            path = mounted.path / "torrents" / "Bad" / "bad.bin"
            mountutil.wait_for(path.exists, what="the file")
            assert (
                pread(path, 0, 4096) == bad_truth
            )  # the stored URL was refused, a fresh one works
            assert mounted.process.poll() is None

    await trio.to_thread.run_sync(second_mount)
    store = Cache(db_path)
    try:
        stored = store.get_link(bad_link)
        assert stored is not None and stored.download_id != "OLD"
    finally:
        store.close()


async def test_infringing_file_on_unrestrict_fails_that_file_once_for_all(
    emulator: Emulator, tmp_path: Path
):
    banned_id = emulator.add_torrent("Banned", [FileSpec("/banned.bin", MiB)])
    good_id = emulator.add_torrent("Fine", [FileSpec("/fine.bin", MiB)])
    banned_link = emulator.torrent_json(banned_id)["links"][0]
    good_truth = emulator.file_bytes(good_id, 1, 0, 4096)
    unrestrict = emulator.unrestrict

    def refusing(link: str):  # type: ignore[no-untyped-def]
        if link == banned_link:
            raise Refusal("infringing_file")  # 451, error_code 35
        return unrestrict(link)

    emulator.unrestrict = refusing  # type: ignore[method-assign]

    def body() -> dict[str, Any]:
        with mountutil.mount(emulator.api_url, emulator.token, tmp_path, *FAST) as mounted:
            torrents = mounted.path / "torrents"
            mountutil.wait_for(lambda: len(os.listdir(torrents)) == 2, what="both torrents")
            emulator.reset_counters()
            assert [
                pread(torrents / "Banned" / "banned.bin", n * 4096, 4096) for n in range(5)
            ] == [errno.EIO] * 5
            assert emulator.counters[UNRESTRICT] == 1  # a definite answer: remembered
            assert pread(torrents / "Fine" / "fine.bin", 0, 4096) == good_truth
            assert mounted.process.poll() is None
            return status(mounted)["repair"]

    repair = await trio.to_thread.run_sync(body)
    assert [b["id"] for b in repair["broken"]] == [
        banned_id
    ]  # RD's verdict on the file does reach repair
