"""`rdfs mount` / `rdfs umount` as a user runs them: daemon mode, clear errors, stale mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rdfs.emulator import FileSpec
from rdfs.fuse.mount import is_fuse_mount
from tests import mountutil

pytestmark = pytest.mark.mount


def rdfs(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rdfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rdfs: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_daemon_mode_mounts_and_umount_stops_it(emulator_proc, tmp_path):
    emulator_proc.control.add_torrent("Daemon Test", [FileSpec("/d.bin", 4096)])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {"RDFS_API_URL": emulator_proc.api_url, "RD_API_TOKEN": "", "RDFS_CONFIG": str(tmp_path / "none.toml")}
    try:
        token = emulator_proc.token
        result = rdfs("mount", "--token", token, "--cache-dir", str(tmp_path / "cache"), str(mountpoint), env=env)
        assert result.returncode == 0, result.stderr
        assert is_fuse_mount(mountpoint)
        # The daemon got the token through its environment, not a command line others can read.
        daemons = [p for p in psutil.process_iter(["cmdline"]) if str(mountpoint) in " ".join(p.info["cmdline"] or [])]
        assert daemons and not any(token in " ".join(p.info["cmdline"]) for p in daemons)
        mountutil.wait_for(lambda: (mountpoint / "torrents" / "Daemon Test" / "d.bin").exists(), what="file")
        data = (mountpoint / "torrents" / "Daemon Test" / "d.bin").read_bytes()
        assert data == emulator_proc.control.file_bytes(emulator_proc.control.torrent_ids()[0], 1)
        assert emulator_proc.token not in (tmp_path / "cache" / "rdfs.log").read_text()
        umount = rdfs("umount", str(mountpoint))
        assert umount.returncode == 0, umount.stderr
        assert not is_fuse_mount(mountpoint)
    finally:
        mountutil.force_unmount(mountpoint)


def test_bad_mountpoints_get_one_line_errors(emulator_proc, tmp_path):
    env = {"RD_API_TOKEN": emulator_proc.token, "RDFS_API_URL": emulator_proc.api_url, "RDFS_CONFIG": str(tmp_path / "none.toml")}
    assert_one_line_error(rdfs("mount", "-f", str(tmp_path / "missing"), env=env), "does not exist")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    assert_one_line_error(rdfs("mount", "-f", str(busy), env=env), "not empty")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(rdfs("mount", "-f", str(tmp_path / "file"), env=env), "not a directory")
    assert_one_line_error(rdfs("umount", str(busy)), "not a FUSE mount")


def test_not_logged_in_is_one_line(tmp_path):
    (tmp_path / "mnt").mkdir()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "RD_API_TOKEN": "", "RDFS_CONFIG": str(tmp_path / "none.toml")}
    assert_one_line_error(rdfs("mount", "-f", str(tmp_path / "mnt"), env=env), "not logged in", "rdfs login")


def test_stale_mount_is_explained_and_cleared(emulator_proc, tmp_path):
    emulator_proc.control.add_torrent("Stale", [FileSpec("/s.bin", 10)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Stale").exists(), what="tree")
        mounted.process.send_signal(signal.SIGKILL)
        mounted.process.wait(timeout=10)
        with pytest.raises(OSError):
            os.listdir(mounted.path)  # ENOTCONN: the process behind the mount is gone
        env = {"RD_API_TOKEN": emulator_proc.token, "RDFS_API_URL": emulator_proc.api_url, "RDFS_CONFIG": str(tmp_path / "none.toml")}
        assert_one_line_error(rdfs("mount", "-f", str(mounted.path), env=env), "stale", "rdfs umount")
        result = rdfs("umount", str(mounted.path))
        assert result.returncode == 0, result.stderr
        assert not is_fuse_mount(mounted.path) and os.listdir(mounted.path) == []


def test_listing_and_stat_never_unrestrict_or_download(emulator_proc, tmp_path):
    control = emulator_proc.control
    for i in range(5):
        control.add_torrent(f"Listed {i}", [FileSpec(f"/e{j}.mkv", 1000 + j) for j in range(4)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: len(os.listdir(mounted.path / "torrents")) == 5, what="tree")
        files = subprocess.run(["find", str(mounted.path), "-type", "f"], capture_output=True, text=True, check=True)
        paths = [Path(line) for line in files.stdout.splitlines() if "/torrents/" in line]
        assert len(paths) == 20
        subprocess.run(["ls", "-lR", str(mounted.path)], capture_output=True, check=True)
        sizes = sorted(p.stat().st_size for p in paths)
        assert sizes == sorted(1000 + j for _ in range(5) for j in range(4))
        for p in paths:
            os.listxattr(p)
        counters = control.counters
        assert counters.get("POST /unrestrict/link", 0) == 0
        assert counters.get("download_requests", 0) == 0


def test_dead_torrent_gives_eio_and_others_still_read(emulator_proc, tmp_path):
    control = emulator_proc.control
    dead = control.add_torrent("Doomed", [FileSpec("/x.bin", 4096)])
    alive = control.add_torrent("Fine", [FileSpec("/y.bin", 4096)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        doomed = mounted.path / "torrents" / "Doomed" / "x.bin"
        mountutil.wait_for(doomed.exists, what="tree")
        control.kill_torrent(dead)
        with pytest.raises(OSError) as info:
            doomed.read_bytes()
        assert info.value.errno == 5  # EIO
        assert (mounted.path / "torrents" / "Fine" / "y.bin").read_bytes() == control.file_bytes(alive, 1)
        assert "x.bin" in mounted.log() and "link gone" in mounted.log()


def test_ctrl_c_pressed_twice_unmounts_cleanly(emulator_proc, tmp_path):
    """Ctrl-C reaches every process of the terminal's group, and users press it twice: a second
    SIGINT while rdfs unmounts is logged, not raised in the middle of the cleanup. Start-up logs
    no error either (views published before the kernel's INIT used to fail to invalidate)."""
    emulator_proc.control.add_torrent("Some Movie (2020)", [FileSpec("/Some.Movie.2020.mkv", 1000)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: os.listdir(mounted.path / "movies"), what="the movies view")
        mounted.process.send_signal(signal.SIGINT)
        mountutil.wait_for(lambda: "received SIGINT" in mounted.log(), interval=0.001, what="the first SIGINT")
        mounted.process.send_signal(signal.SIGINT)
        assert mounted.process.wait(timeout=15) == 0, mounted.log()
        assert not is_fuse_mount(mounted.path)
        log = mounted.log()
        assert "Traceback" not in log and "KeyboardInterrupt" not in log and " ERROR " not in log, log
