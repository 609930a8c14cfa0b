"""Background tasks never end the mount (issue 14 item 2), in-process: `mount.run` serves a real
FUSE mount in the test's trio loop, against the in-process emulator; the test's file accesses run
in worker threads (they are answered by the loop)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rdfs.fuse import mount
from rdfs.config import Config
from rdfs.emulator import Emulator, FileSpec
from rdfs.fuse.mount import is_fuse_mount
from rdfs.sync.syncer import Syncer
from rdfs.sync.views import Views
from tests import mountutil

pytestmark = pytest.mark.mount


async def wait_for(predicate, what: str, timeout: float = 20.0) -> object:
    """Poll a blocking ``predicate`` in a thread (it may touch the mount) until it is truthy."""
    with trio.move_on_after(timeout):
        while True:
            result = await trio.to_thread.run_sync(predicate)
            if result:
                return result
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def mounted(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Path]:
    """``mount.run`` in a task; stopped with a real SIGTERM (a clean unmount), checked unmounted."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = Config(
        api_url=emulator.api_url, oauth_url=emulator.oauth_url, token=emulator.token,
        cache_dir=tmp_path / "cache", sync_interval=1.0, config_path=tmp_path / "none.toml",
    )  # fmt: skip
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mount.run, config, mountpoint)
            await wait_for(lambda: is_fuse_mount(mountpoint), "the mount")
            try:
                yield mountpoint
            finally:
                # run() handles SIGTERM while it runs: a clean unmount, as for a user's kill.
                assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
                signal.raise_signal(signal.SIGTERM)
        assert not is_fuse_mount(mountpoint)
    finally:
        mountutil.force_unmount(mountpoint)


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch):
    monkeypatch.setattr(mount, "RESTART_DELAYS", (0.05, 0.2))


async def test_a_failing_task_is_logged_once_restarted_and_the_mount_answers(emulator, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rdfs")
    torrent = emulator.add_torrent("Supervised Movie (2021)", [FileSpec("/Supervised.Movie.2021.mkv", 50_000)])
    real_run = Views.run
    calls = 0

    async def failing_run(self: Views, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("views bug")
        await real_run(self, **kwargs)

    monkeypatch.setattr(Views, "run", failing_run)
    async with mounted(emulator, tmp_path) as mnt:
        path = mnt / "torrents" / "Supervised Movie (2021)" / "Supervised.Movie.2021.mkv"
        await wait_for(path.exists, "the tree")
        await wait_for(lambda: calls >= 4, "the views task restarted")
        assert await trio.to_thread.run_sync(path.read_bytes) == emulator.file_bytes(torrent, 1)
        # The restarted task does its work: the movies view appears.
        await wait_for(lambda: (mnt / "movies").exists() and list((mnt / "movies").iterdir()), "the movies view")
        status = json.loads(await trio.to_thread.run_sync((mnt / ".rdfs" / "status").read_text))
        assert status["background_tasks"]["views"]["restarts"] == 3
        assert status["background_tasks"]["views"]["last_error"] == "RuntimeError: views bug"
    failures = [r for r in caplog.records if "background task views failed" in r.getMessage()]
    assert len(failures) == 3
    assert [r.levelname for r in failures] == ["ERROR", "WARNING", "WARNING"]
    assert failures[0].exc_info is not None and all(r.exc_info is None for r in failures[1:])
    assert "unmounted" in caplog.text


async def test_sync_failing_before_it_started_still_lets_the_mount_serve(emulator, tmp_path, monkeypatch):
    torrent = emulator.add_torrent("Late Sync", [FileSpec("/late.bin", 20_000)])
    real_run = Syncer.run
    calls = 0

    async def failing_run(self: Syncer, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("cache unreadable for a moment")
        await real_run(self, task_status=task_status)

    monkeypatch.setattr(Syncer, "run", failing_run)
    async with mounted(emulator, tmp_path) as mnt:
        path = mnt / "torrents" / "Late Sync" / "late.bin"
        await wait_for(path.exists, "the tree, synced by the restarted task")
        assert calls == 2
        assert await trio.to_thread.run_sync(path.read_bytes) == emulator.file_bytes(torrent, 1)


async def test_a_task_that_returns_is_not_restarted():
    supervisor = mount.Supervisor()
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    with trio.fail_after(5):
        await supervisor.run("once", once)
    assert runs == 1 and supervisor.status() == {}
