"""Control files behave like files, through a real FUSE mount against the emulator (issue 14, item 4)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from rdfs.control.files import MAX_UPLOAD_BYTES, UPLOAD_MEMORY
from tests import mountutil
from tests.mount.test_control import fake_hash, hashes, make_torrent

pytestmark = pytest.mark.mount

ARGS = ("--sync-interval", "600", "--rate-limit", "100000")


@pytest.fixture(scope="module")
def mnt(emulator_module, tmp_path_factory):
    base = tmp_path_factory.mktemp("control_mount")
    with mountutil.mount(emulator_module.api_url, emulator_module.token, base, *ARGS) as mounted:
        mountutil.wait_for(lambda: (mounted.path / ".rdfs" / "status").exists(), what="control files")
        yield mounted
        assert mounted.process.poll() is None, mounted.log()  # every test left the mount alive
        assert "Traceback" not in mounted.log(), mounted.log()


@pytest.fixture
def account(emulator_module):
    return emulator_module.control


def status(mounted) -> dict:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def finished(mounted) -> int:
    return status(mounted)["queue"]["finished"]


def run_sentinel(mounted, account) -> None:
    """Add one fresh hash and wait until it is in the account.

    The worker runs batches in the order they were queued, and the kernel sends a close's
    release before the next open, so once the sentinel is added every earlier batch has run."""
    sentinel = fake_hash(f"sentinel {os.urandom(8).hex()}")
    fd = os.open(mounted.path / ".rdfs" / "add", os.O_WRONLY)
    os.write(fd, f"{sentinel}\n".encode())
    os.close(fd)
    mountutil.wait_for(lambda: sentinel in hashes(account), timeout=60, what="the sentinel batch")


def test_the_ten_byte_torrent_that_killed_the_mount_is_refused(mnt, account, tmp_path):
    before = sorted(account.torrent_ids())
    source = tmp_path / "crash.torrent"
    source.write_bytes(b"dli1eei1ee")
    result = subprocess.run(["cp", str(source), str(mnt.path / ".rdfs/")], capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    assert mnt.process.poll() is None
    assert sorted(os.listdir(mnt.path / ".rdfs")) == ["add", "delete", "refresh", "status"]
    run_sentinel(mnt, account)
    assert set(before) <= set(account.torrent_ids()) and len(account.torrent_ids()) == len(before) + 1
    assert any("not a string" in e["error"] for e in status(mnt)["recent_errors"])


def test_printf_with_a_bad_line_adds_none_of_the_batch(mnt, account):
    h1, h3 = fake_hash("printf one"), fake_hash("printf three")
    shell = subprocess.run(
        ["bash", "-c", f"printf '{h1}\\njunk\\n{h3}\\n' > '{mnt.path}/.rdfs/add'"], capture_output=True, text=True
    )
    assert shell.returncode != 0 and "Invalid argument" in shell.stderr
    # The same, one write() per line, made explicit: the bad line's write and every later one fail.
    fd = os.open(mnt.path / ".rdfs" / "add", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, f"{h1}\n".encode())
        for line in (b"junk\n", f"{h3}\n".encode()):
            with pytest.raises(OSError) as caught:
                os.write(fd, line)
            assert caught.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError) as caught:
            os.close(fd)
        assert caught.value.errno == errno.EINVAL
    run_sentinel(mnt, account)
    assert not {h1, h3} & hashes(account).keys()


def test_closing_a_duplicate_neither_cuts_a_line_nor_submits(mnt, account):
    wanted = fake_hash("dup close")
    done = finished(mnt)
    fd = os.open(mnt.path / ".rdfs" / "add", os.O_WRONLY)
    try:
        os.write(fd, wanted[:20].encode())
        os.close(os.dup(fd))  # flush: no error, the half line stays
        os.write(fd, f"{wanted[20:]}\n".encode())
        os.close(os.dup(fd))
        # Nothing is queued before the last close (flush is synchronous with close).
        report = status(mnt)
        assert report["queue"]["batches"] == 0 and report["queue"]["finished"] == done
    finally:
        os.close(fd)
    mountutil.wait_for(lambda: wanted in hashes(account), timeout=60, what="the batch after the last close")
    assert finished(mnt) == done + 1
    assert status(mnt)["recent_actions"][-1]["items"][0]["hash"] == wanted


def test_an_upload_reopened_with_o_trunc_holds_only_the_new_bytes(mnt, account, tmp_path):
    data, info_hash = make_torrent("Reopened Upload")
    target = mnt.path / ".rdfs" / "reopened.torrent"
    first = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(first, b"j" * (len(data) + 1000))
        second = os.open(target, os.O_WRONLY | os.O_TRUNC)
        try:
            assert os.fstat(second).st_size == 0
            os.write(second, data)
        finally:
            os.close(second)
        assert target.read_bytes() == data  # the bytes the upload holds, compared with the source
    finally:
        os.close(first)
    mountutil.wait_for(lambda: info_hash in hashes(account), timeout=60, what="the upload to be added")
    assert not target.exists()
    # truncate(2) of an open upload cuts it too.
    data, info_hash = make_torrent("Truncated Upload")
    target = mnt.path / ".rdfs" / "truncated.torrent"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data + b"trailing junk")
        os.truncate(target, len(data))
        assert os.stat(target).st_size == len(data)
    finally:
        os.close(fd)
    mountutil.wait_for(lambda: info_hash in hashes(account), timeout=60, what="the truncated upload")


def test_a_hundred_line_writer_returns_while_the_adds_are_queued(mnt, account):
    wanted = [fake_hash(f"hundred {i}") for i in range(100)]
    done = finished(mnt)
    fd = os.open(mnt.path / ".rdfs" / "add", os.O_WRONLY)
    try:
        for line in wanted:  # one write() per line, as a shell loop does
            os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    # The writer is back; RD's add pacing (20 per 10.5 s) keeps most adds queued for ~40 s.
    # (The worker takes the batch up at its next turn, which a close answered at once can precede.)
    report = mountutil.wait_for(
        lambda: (lambda s: s if s["queue"]["current"] else None)(status(mnt)), what="the batch in status"
    )
    current = report["queue"]["current"]
    assert current["items"] == 100 and current["done"] < 100 and report["queue"]["items"] == 100
    assert len(set(wanted) & hashes(account).keys()) < 100
    mountutil.wait_for(lambda: set(wanted) <= hashes(account).keys(), timeout=180, what="all 100 added")
    mountutil.wait_for(lambda: finished(mnt) == done + 1, what="the batch to finish")
    assert status(mnt)["recent_actions"][-1]["outcome"] == "done"


def test_thirty_concurrent_uploads_are_bounded_with_enospc(mnt, account):
    before = sorted(account.torrent_ids())
    chunk = b"\0" * (1024 * 1024)
    fds, refused, held = [], 0, 0
    try:
        for i in range(30):
            fd = os.open(mnt.path / ".rdfs" / f"big{i}.torrent", os.O_WRONLY | os.O_CREAT, 0o644)
            fds.append(fd)
            for _ in range(MAX_UPLOAD_BYTES // len(chunk)):
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    refused += 1
                    break
                held += len(chunk)
        # All of them open at once hold exactly the total bound, no more: the rest got ENOSPC.
        assert held == UPLOAD_MEMORY and refused == 30 - UPLOAD_MEMORY // MAX_UPLOAD_BYTES
        report = status(mnt)["queue"]
        assert report["upload_bytes"] == UPLOAD_MEMORY and report["uploads_open"] == 30
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError as exc:  # zeros are no .torrent: refused at close
                assert exc.errno == errno.EINVAL
    mountutil.wait_for(lambda: status(mnt)["queue"]["uploads_open"] == 0, what="uploads released")
    assert status(mnt)["queue"]["upload_bytes"] == 0
    assert sorted(os.listdir(mnt.path / ".rdfs")) == ["add", "delete", "refresh", "status"]
    run_sentinel(mnt, account)
    assert len(account.torrent_ids()) == len(before) + 1


def test_o_trunc_and_truncate_of_control_files(mnt):
    add = mnt.path / ".rdfs" / "add"
    os.truncate(add, 0)
    with pytest.raises(OSError) as caught:
        os.truncate(add, 5)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        os.open(mnt.path / ".rdfs" / "status", os.O_WRONLY | os.O_TRUNC)
    assert caught.value.errno == errno.EACCES
    assert os.stat(add).st_size == 0
    assert status(mnt)["queue"]["batches"] == 0
