"""The FUSE loop of rdfs's pyfuse3 (patches/pyfuse3-busy-poll.patch): a request whose handler
does not suspend is answered by the task that read it, which then polls for the next request
(``busy_poll_us``) before it sleeps. A program that asks without pause must not starve the rest
of the mount: a media read that waits on the network still completes, with its exact bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdfs.config import Config
from rdfs.emulator import FileSpec
from rdfs.fuse import mount as fuse_mount
from tests import mountutil

pytestmark = pytest.mark.mount

MiB = 1024 * 1024

# Looks up names that do not exist, without pause, until the stop file appears: each lookup
# reaches rdfs (an ENOENT is not cached) and is answered from the store without suspending.
STORM = """
import os, sys
top, stop = sys.argv[1], sys.argv[2]
asked = 0
while not os.path.exists(stop):
    for _ in range(200):
        try:
            os.stat(f"{top}/missing-{asked}")
        except FileNotFoundError:
            pass
        asked += 1
print(asked)
"""


# A pyfuse3 file system that queues many invalidate_entry_async() calls, stops and closes, then
# lives on a little, as rdfs does after unmounting (patches/pyfuse3-close-notify.patch).
NOTIFY_AT_CLOSE = """
import logging, sys, time
import pyfuse3, trio
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=rdfs-notify-test"})
async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        await trio.sleep(0.2)
        for i in range(100_000):
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, f"gone-{i}".encode(), ignore_enoent=True)
        pyfuse3.terminate()
trio.run(main)
pyfuse3.close()
time.sleep(0.5)
print("closed")
"""


def fuse_status(mounted: mountutil.Mounted) -> dict:  # type: ignore[type-arg]
    return json.loads((mounted.path / ".rdfs" / "status").read_text())["fuse"]


def test_a_read_completes_while_another_program_asks_without_pause(emulator_proc, tmp_path) -> None:
    control = emulator_proc.control
    movie = control.add_torrent("Storm Movie (2022)", [FileSpec("/Storm.Movie.2022.mkv", 24 * MiB)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        torrents = mounted.path / "torrents"
        path = torrents / "Storm Movie (2022)" / "Storm.Movie.2022.mkv"
        mountutil.wait_for(path.exists, timeout=30, what="the first sync")
        polling = fuse_status(mounted)["busy_poll_us"]
        assert polling == (100 if len(os.sched_getaffinity(0)) > 1 else 0)

        stop = tmp_path / "stop-storm"
        # Several at once, so that a request is always queued when one is answered.
        storms = [
            subprocess.Popen(
                [sys.executable, "-c", STORM, str(torrents / f"{n}"), str(stop)], stdout=subprocess.PIPE, text=True
            )
            for n in range(8)
        ]
        try:
            mountutil.wait_for(
                lambda: fuse_status(mounted)["requests"].get("lookup", 0) > 2000, what="the storm"
            )
            before = fuse_status(mounted)["requests"]["lookup"]
            # One request at a time, each block waiting on the emulator's socket: only trio's
            # scheduler wakes it, which a loop answering the storm inline must still let run.
            fd = os.open(path, os.O_RDONLY)
            try:
                data = b"".join(os.pread(fd, 64 * 1024, offset) for offset in range(0, 24 * MiB, 64 * 1024))
            finally:
                os.close(fd)
            during = fuse_status(mounted)["requests"]["lookup"] - before
            assert all(storm.poll() is None for storm in storms), "a storm ended before the read did"
        finally:
            stop.touch()
            asked = sum(int(storm.communicate(timeout=30)[0]) for storm in storms)
        assert data == control.file_bytes(movie, 1, 0, 24 * MiB)
        assert during > 0 and asked > during
        mountutil.check_log(mounted)


def test_busy_polling_is_off_on_one_cpu_when_zero_and_on_stock_pyfuse3(monkeypatch) -> None:
    assert fuse_mount.BUSY_POLL, "scripts/bootstrap builds pyfuse3 with patches/pyfuse3-busy-poll.patch"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert fuse_mount._fuse_loop_args(Config()) == {"busy_poll_ns": 100_000}
    assert fuse_mount._fuse_loop_args(Config(busy_poll_us=0)) == {}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert fuse_mount._fuse_loop_args(Config()) == {}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(fuse_mount, "BUSY_POLL", False)  # a stock pyfuse3: main() takes no such argument
    assert fuse_mount._fuse_loop_args(Config()) == {}


def test_busy_polling_off_still_serves(emulator_proc, tmp_path) -> None:
    control = emulator_proc.control
    movie = control.add_torrent("Quiet Movie (2021)", [FileSpec("/Quiet.Movie.2021.mkv", 3 * MiB)])
    env = {"RDFS_BUSY_POLL_US": "0"}
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, env=env) as mounted:
        path = mounted.path / "torrents" / "Quiet Movie (2021)" / "Quiet.Movie.2021.mkv"
        mountutil.wait_for(path.exists, timeout=30, what="the first sync")
        assert fuse_status(mounted)["busy_poll_us"] == 0
        assert Path(path).read_bytes() == control.file_bytes(movie, 1, 0, 3 * MiB)
        mountutil.check_log(mounted)


def test_invalidations_queued_at_close_are_dropped_not_sent_to_a_closed_session(tmp_path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        run = subprocess.run(
            [sys.executable, "-c", NOTIFY_AT_CLOSE, str(mountpoint)], capture_output=True, text=True, timeout=120
        )
    finally:
        mountutil.force_unmount(mountpoint)
    assert run.returncode == 0 and run.stdout.endswith("closed\n"), run.stdout[-2000:] + run.stderr[-2000:]
    assert "Failed to submit" not in run.stdout, run.stdout[:2000]
