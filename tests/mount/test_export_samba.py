"""A household export: the mount shared by a real Samba server (smbd) and read with its real
client (smbclient) on loopback, the way README's "Sharing the mount" section sets it up.

smbd reaches the mount as the guest account (nobody), so the mount needs ``--allow-other``. The
share is read-only: a deletion from the network is refused and the torrent stays upstream.
scripts/test installs samba and smbclient (Debian's packages)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount

MiB = 1024 * 1024
SHARE = "rd"

SMB_CONF = """\
[global]
  server role = standalone server
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  map to guest = Bad User
  guest account = nobody
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  private dir = {state}/private
  lock directory = {state}/lock
  state directory = {state}/state
  cache directory = {state}/cache
  pid directory = {state}/pid
  ncalrpc dir = {state}/ncalrpc
  log file = {state}/smbd.log
  # rdfs keeps no DOS attributes: Samba derives them from the mode
  store dos attributes = no
  ea support = no

[{share}]
  path = {mount}
  read only = yes
  guest ok = yes
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def samba(mount: Path, state: Path) -> Iterator[int]:
    """smbd sharing ``mount`` as ``rd`` on a loopback port; stopped on exit."""
    smbd = shutil.which("smbd") or "/usr/sbin/smbd"
    assert Path(smbd).exists() and shutil.which("smbclient"), "scripts/test installs samba and smbclient"
    port = free_port()
    for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    conf = state / "smb.conf"
    conf.write_text(SMB_CONF.format(port=port, state=state, share=SHARE, mount=mount))
    # In a session of its own (it signals its whole process group when it stops), which it must
    # not try to make again (--no-process-group).
    process = subprocess.Popen(
        [smbd, "--foreground", "--no-process-group", f"--configfile={conf}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (state / "smbd.log").read_text() if (state / "smbd.log").exists() else ""
                    raise AssertionError(f"smbd did not listen (exit {process.poll()}):\n{log}") from None
                time.sleep(0.1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # smbd and the server processes it forked
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def smbclient(port: int, command: str) -> subprocess.CompletedProcess[str]:
    """One smbclient session as a guest: its output and exit status, never raising."""
    return subprocess.run(
        ["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(port), "-N", "-m", "SMB3", "-c", command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is root's alone): smbd reaches
    the mount as nobody."""
    base = Path(tempfile.mkdtemp(prefix="rdfs-samba-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_samba_serves_the_library_read_only(emulator_proc, open_base, tmp_path) -> None:
    control = emulator_proc.control
    movie = control.add_torrent(
        "Shared Movie (2019)", [FileSpec("/Shared.Movie.2019.1080p.mkv", 12 * MiB), FileSpec("/Sample/sample.mkv", MiB)]
    )
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, open_base, "--allow-other") as mounted:
        folder = mounted.path / "torrents" / "Shared Movie (2019)"
        mountutil.wait_for((folder / "Shared.Movie.2019.1080p.mkv").exists, timeout=30, what="the first sync")
        mountutil.wait_for(
            lambda: (mounted.path / "movies").exists() and any((mounted.path / "movies").iterdir()),
            timeout=30, what="the movies view",
        )  # fmt: skip
        with samba(mounted.path, tmp_path / "samba") as port:
            top = smbclient(port, "ls")
            assert top.returncode == 0, top.stdout + top.stderr
            for name in ("torrents", "movies", "shows", "downloads"):
                assert f"  {name}" in top.stdout, top.stdout

            listing = smbclient(port, 'cd "torrents/Shared Movie (2019)"; ls')
            assert "Shared.Movie.2019.1080p.mkv" in listing.stdout and str(12 * MiB) in listing.stdout, listing.stdout

            sent_before = control.counters["download_bytes"]
            local = tmp_path / "copy.mkv"
            got = smbclient(port, f'get "torrents/Shared Movie (2019)/Shared.Movie.2019.1080p.mkv" "{local}"')
            assert got.returncode == 0, got.stdout + got.stderr
            assert local.read_bytes() == control.file_bytes(movie, 1, 0, 12 * MiB)
            sent = control.counters["download_bytes"] - sent_before
            # smbd reads ahead in parallel, and two streams overlap: 1.06-1.17x measured. The bound
            # is the one every client pattern has (README, Performance).
            reads = json.loads((mounted.path / ".rdfs" / "status").read_text())["reads"]
            assert sent <= 12 * MiB * 1.3, f"{sent} bytes sent for a 12 MiB copy; reads: {reads}"

            # The share is read-only: a deletion from the network is refused, and changes nothing.
            refused = smbclient(port, 'cd "torrents/Shared Movie (2019)"; del Shared.Movie.2019.1080p.mkv')
            assert "NT_STATUS_ACCESS_DENIED" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
            assert movie in control.torrent_ids()
            assert (folder / "Shared.Movie.2019.1080p.mkv").stat().st_size == 12 * MiB
        mountutil.check_log(mounted)
