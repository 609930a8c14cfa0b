"""Signals sent to a live `rdfs mount` process, and what a crash leaves behind (issue 14 item 2).

Every signal a user or an init system may send either stops rdfs cleanly (the mountpoint is an
empty directory again, not a mount) or leaves the mount serving; only a process that dies anyway
(SIGKILL, an unexpected error) leaves a stale mount, which answers ENOTCONN and which
`rdfs umount` clears.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from rdfs.fuse.mount import is_fuse_mount
from tests import mountutil

pytestmark = pytest.mark.mount


def rdfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rdfs", *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_exact_bytes(emulator, torrent_id: str, path: Path) -> None:
    assert path.read_bytes() == emulator.control.file_bytes(torrent_id, 1)


def assert_stale(path: Path) -> None:
    """The mount is still there, but nothing answers behind it: ENOTCONN, not an empty directory."""
    assert is_fuse_mount(path)
    with pytest.raises(OSError) as info:
        os.listdir(path)
    assert info.value.errno == errno.ENOTCONN


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_sighup_syncs_now_and_reopens_the_log_file(emulator_proc, tmp_path):
    control = emulator_proc.control
    first = control.add_torrent("Before HUP", [FileSpec("/a.bin", 3000)])
    log_file = tmp_path / "rdfs.log"
    # An hour between syncs: only the SIGHUP can make the next one happen during the test.
    extra = ("--sync-interval", "3600", "--log-file", str(log_file))
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, *extra) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: (torrents / "Before HUP" / "a.bin").exists(), what="first sync")
        mountutil.wait_for(lambda: "sync health: unknown -> ok" in read_log(log_file), what="first sync done")
        listings = control.counters["GET /torrents"]
        assert listings > 0
        second = control.add_torrent("After HUP", [FileSpec("/b.bin", 2000)])
        rotated = tmp_path / "rdfs.log.1"
        log_file.rename(rotated)  # what logrotate does before it sends SIGHUP

        mounted.process.send_signal(signal.SIGHUP)

        mountutil.wait_for(lambda: (torrents / "After HUP").exists(), what="the torrent added before SIGHUP")
        assert control.counters["GET /torrents"] > listings
        assert_exact_bytes(emulator_proc, second, torrents / "After HUP" / "b.bin")
        assert_exact_bytes(emulator_proc, first, torrents / "Before HUP" / "a.bin")
        mountutil.wait_for(lambda: "received SIGHUP: syncing now, log file reopened" in read_log(log_file), what="log")
        assert "received SIGHUP" not in read_log(rotated)
        assert mounted.process.poll() is None and is_fuse_mount(mounted.path)
    assert "Traceback" not in read_log(log_file) + read_log(rotated)


IGNORED = [signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU, signal.SIGRTMIN + 1]


def test_other_signals_are_logged_and_ignored_the_mount_stays(emulator_proc, tmp_path):
    control = emulator_proc.control
    torrent = control.add_torrent("Ignoring", [FileSpec("/c.bin", 200_000)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        path = mounted.path / "torrents" / "Ignoring" / "c.bin"
        mountutil.wait_for(path.exists, what="tree")
        for sig in IGNORED:
            name = "SIGRTMIN+1" if sig == signal.SIGRTMIN + 1 else signal.Signals(sig).name
            mounted.process.send_signal(sig)
            mountutil.wait_for(lambda: f"received {name}: ignored" in mounted.log(), what=f"{name} logged")
            assert mounted.process.poll() is None, mounted.log()
            assert_exact_bytes(emulator_proc, torrent, path)
        # Repeats of one signal within a minute are one log line, not one per signal. Each is
        # followed by a SIGUSR1, whose report shows the loop has handled the signals before it.
        for count in range(1, 5):
            mounted.process.send_signal(signal.SIGUSR2)
            mounted.process.send_signal(signal.SIGUSR1)
            mountutil.wait_for(lambda: mounted.log().count("resources: ") == count, what="the resource report")
            assert_exact_bytes(emulator_proc, torrent, path)
        assert mounted.log().count("received SIGUSR2: ignored") == 1
        assert mounted.process.poll() is None and is_fuse_mount(mounted.path)
        assert_exact_bytes(emulator_proc, torrent, path)
    assert "Traceback" not in mounted.log()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT], ids=lambda s: signal.Signals(s).name)
def test_stop_signals_unmount_cleanly(emulator_proc, tmp_path, sig):
    emulator_proc.control.add_torrent("Stopping", [FileSpec("/d.bin", 100)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Stopping").exists(), what="tree")
        mounted.process.send_signal(sig)
        assert mounted.process.wait(timeout=30) == 0, mounted.log()
        assert not is_fuse_mount(mounted.path)
        assert os.listdir(mounted.path) == []  # an empty directory again, answered by the local disk
        log = mounted.log()
        assert f"received {signal.Signals(sig).name}, unmounting" in log and "unmounted" in log
        assert "Traceback" not in log


def test_sigkill_leaves_a_stale_mount_that_umount_clears(emulator_proc, tmp_path):
    control = emulator_proc.control
    torrent = control.add_torrent("Killed", [FileSpec("/e.bin", 5000)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Killed").exists(), what="tree")
        mounted.process.send_signal(signal.SIGKILL)
        mounted.process.wait(timeout=10)
        assert_stale(mounted.path)
        result = rdfs("umount", str(mounted.path))
        assert result.returncode == 0, result.stderr
        assert not is_fuse_mount(mounted.path) and os.listdir(mounted.path) == []
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as again:
        path = again.path / "torrents" / "Killed" / "e.bin"
        mountutil.wait_for(path.exists, what="tree after the remount")
        assert_exact_bytes(emulator_proc, torrent, path)


# Runs `rdfs mount` with pyfuse3's loop raising once a trigger file appears: an unexpected error
# escaping the FUSE loop, as a handler bug would make it.
CRASHING_MOUNT = textwrap.dedent(
    """
    import os, sys
    import pyfuse3, trio
    real_main = pyfuse3.main
    trigger = os.environ["CRASH_TRIGGER"]

    async def main(*args, **kwargs):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(real_main)
            while not os.path.exists(trigger):
                await trio.sleep(0.02)
            raise RuntimeError("injected failure in the FUSE loop")

    pyfuse3.main = main
    from rdfs.cli import main as cli
    sys.exit(cli(sys.argv[1:]))
    """
)


def test_an_unexpected_error_leaves_the_mount_stale_with_one_log_line(emulator_proc, tmp_path):
    control = emulator_proc.control
    control.add_torrent("Crashing", [FileSpec("/f.bin", 100)])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    trigger = tmp_path / "crash-now"
    env = dict(os.environ, CRASH_TRIGGER=str(trigger), RDFS_CONFIG=str(tmp_path / "none.toml"))
    argv = [
        sys.executable, "-c", CRASHING_MOUNT, "mount", "--foreground", "--api-url", emulator_proc.api_url,
        "--token", emulator_proc.token, "--cache-dir", str(tmp_path / "cache"), str(mountpoint),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        mountutil.wait_for(lambda: (mountpoint / "torrents" / "Crashing").exists(), timeout=30, what="tree")
        trigger.touch()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 3, stderr
        assert_stale(mountpoint)  # never an empty directory a media server would take as "all gone"
        critical = [line for line in stderr.splitlines() if " CRITICAL " in line]
        assert len(critical) == 1, stderr
        assert "RuntimeError: injected failure in the FUSE loop" in critical[0]
        assert f"rdfs umount {mountpoint}" in critical[0]
        assert "Traceback" not in stderr and "unmounted" not in stderr
        result = rdfs("umount", str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert not is_fuse_mount(mountpoint) and os.listdir(mountpoint) == []
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        mountutil.force_unmount(mountpoint)


def unit_commands(key: str) -> list[list[str]]:
    """The command lines of ``key=`` in scripts/rdfs.service, as argv lists."""
    unit = Path(__file__).resolve().parents[2] / "scripts" / "rdfs.service"
    return [line.split("=", 1)[1].split() for line in unit.read_text().splitlines() if line.startswith(key + "=")]


def as_test_argv(command: list[str], home: Path) -> list[str]:
    """A unit command as this test runs it: ``%h`` is the test's home, ``rdfs`` this checkout."""
    argv = [arg.replace("%h", str(home)) for arg in command]
    assert argv[0].lstrip("-") == "rdfs"
    return [sys.executable, "-m", "rdfs", *argv[1:]]


def test_the_systemd_unit_restarts_on_failure_and_clears_a_stale_mount_first(emulator_proc, tmp_path):
    """What systemd does after rdfs died: ExecStartPre (allowed to fail: '-') clears the stale
    mount, then ExecStart mounts again; with nothing mounted, ExecStartPre's failure is ignored."""
    unit = (Path(__file__).resolve().parents[2] / "scripts" / "rdfs.service").read_text()
    assert "\nRestart=on-failure\n" in unit
    (pre,) = unit_commands("ExecStartPre")
    (start,) = unit_commands("ExecStart")
    (stop,) = unit_commands("ExecStop")
    assert pre[0].startswith("-") and "--foreground" in start
    torrent = emulator_proc.control.add_torrent("Restarted", [FileSpec("/r.bin", 7000)])
    home = tmp_path
    (home / "RealDebrid").mkdir()
    env = dict(os.environ, RDFS_API_URL=emulator_proc.api_url, RD_API_TOKEN=emulator_proc.token,
               RDFS_CONFIG=str(tmp_path / "none.toml"), RDFS_CACHE_DIR=str(tmp_path / "cache"),
               RDFS_SYNC_INTERVAL="1")  # fmt: skip
    mountpoint = home / "RealDebrid"
    process: subprocess.Popen | None = None
    try:
        for _ in range(2):  # the first start has nothing to clear; the second a stale mount
            subprocess.run(as_test_argv(pre, home), env=env, capture_output=True, timeout=60)
            assert not is_fuse_mount(mountpoint) and os.listdir(mountpoint) == []
            process = subprocess.Popen(as_test_argv(start, home), env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
            path = mountpoint / "torrents" / "Restarted" / "r.bin"
            mountutil.wait_for(path.exists, timeout=30, what="the unit's mount")
            assert path.read_bytes() == emulator_proc.control.file_bytes(torrent, 1)
            process.kill()  # rdfs dies: systemd restarts it (Restart=on-failure)
            process.wait(timeout=10)
            assert_stale(mountpoint)
        subprocess.run(as_test_argv(pre, home), env=env, capture_output=True, timeout=60)
        assert not is_fuse_mount(mountpoint)
        # ExecStop on a live mount: a clean unmount, after which rdfs exits 0 (not restarted).
        process = subprocess.Popen(as_test_argv(start, home), env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        mountutil.wait_for(lambda: is_fuse_mount(mountpoint), timeout=30, what="the mount")
        assert subprocess.run(as_test_argv(stop, home), env=env, capture_output=True, timeout=60).returncode == 0
        assert process.wait(timeout=30) == 0
        assert not is_fuse_mount(mountpoint) and os.listdir(mountpoint) == []
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        mountutil.force_unmount(mountpoint)
