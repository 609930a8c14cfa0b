"""The ``.rdfs/`` control files and the CLI against a real mount and the emulator."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from rdfs.emulator.bencode import encode
from tests import mountutil

pytestmark = pytest.mark.mount

# A long interval: whatever appears in these tests appears because rdfs synced at once.
SLOW_SYNC = ("--sync-interval", "600")


def make_torrent(name: str, size: int = 123_456) -> tuple[bytes, str]:
    """A small single-file .torrent and its info hash."""
    info = {"name": name, "piece length": 16384, "length": size, "pieces": b"\0" * 20 * (size // 16384 + 1)}
    return encode({"announce": "http://tracker.invalid/announce", "info": info}), hashlib.sha1(encode(info)).hexdigest()


def fake_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def hashes(control) -> dict[str, str]:
    """info hash -> torrent id of every torrent in the emulated account."""
    return {control.torrent_json(t)["hash"]: t for t in control.torrent_ids()}


def status(mounted) -> dict:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


def write(path: Path, data: bytes) -> None:
    """One write() and one close(), as ``echo`` does; OSError carries the errno of either."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def finished(mounted) -> int:
    """Batches the mount's control worker has run so far (batches are queued at close)."""
    return status(mounted)["queue"]["finished"]


def submit(mounted, name: str, data: bytes) -> None:
    """``write`` a batch to ``.rdfs/<name>`` and wait until the worker has run it."""
    before = finished(mounted)
    write(mounted.path / ".rdfs" / name, data)
    mountutil.wait_for(lambda: finished(mounted) > before, timeout=60, what=f"the .rdfs/{name} batch to run")


def rdfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rdfs", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def account(emulator_module):
    control = emulator_module.control
    control.add_torrent("Existing Show", [FileSpec("/e01.mkv", 10_000), FileSpec("/e02.mkv", 20_000)])
    return control


@pytest.fixture(scope="module")
def mnt(emulator_module, account, tmp_path_factory):
    base = tmp_path_factory.mktemp("control")
    with mountutil.mount(emulator_module.api_url, emulator_module.token, base, *SLOW_SYNC) as mounted:
        mountutil.wait_for(lambda: "Existing Show" in os.listdir(mounted.path / "torrents"), what="first sync")
        yield mounted


def test_control_files_exist(mnt):
    control_dir = mnt.path / ".rdfs"
    assert sorted(os.listdir(control_dir)) == ["add", "delete", "refresh", "status"]
    assert oct(os.stat(control_dir / "status").st_mode & 0o777) == "0o444"
    assert oct(os.stat(control_dir / "add").st_mode & 0o777) == "0o644"
    assert ".rdfs" not in os.listdir(mnt.path / "torrents")


def test_add_by_magnet_and_by_hash(mnt, account):
    magnet_hash, bare_hash = fake_hash("magnet add"), fake_hash("bare add")
    before = set(account.torrent_ids())
    submit(mnt, "add", f"magnet:?xt=urn:btih:{magnet_hash}&dn=Magnet.Added.2024\n{bare_hash}\n".encode())
    after = hashes(account)
    assert {magnet_hash, bare_hash} <= after.keys()
    assert len(set(account.torrent_ids()) - before) == 2
    assert account.torrent_json(after[magnet_hash])["status"] == "downloaded"  # files were selected
    bare_name = account.torrent_json(after[bare_hash])["filename"]
    # Shown at once, although the next periodic sync is 10 minutes away.
    mountutil.wait_for(
        lambda: {"Magnet.Added.2024", bare_name} <= set(os.listdir(mnt.path / "torrents")), what="added torrents shown"
    )
    assert os.getxattr(mnt.path / "torrents" / "Magnet.Added.2024", "user.rdfs.hash").decode() == magnet_hash


def test_add_base32_hash_and_duplicates_are_not_added_twice(mnt, account):
    import base64

    info_hash = fake_hash("base32 add")
    b32 = base64.b32encode(bytes.fromhex(info_hash)).decode()
    submit(mnt, "add", f"{b32}\n".encode())
    count = len(account.torrent_ids())
    assert info_hash in hashes(account)
    # The same hash again, as hex, as a magnet, twice in one batch: nothing new.
    submit(mnt, "add", f"{info_hash}\nmagnet:?xt=urn:btih:{info_hash.upper()}\n{b32}\n".encode())
    assert len(account.torrent_ids()) == count
    # Also for a torrent that was in the account before the mount started.
    existing = next(h for h, t in hashes(account).items() if account.torrent_json(t)["filename"] == "Existing Show")
    submit(mnt, "add", f"{existing}\n".encode())
    assert len(account.torrent_ids()) == count


def test_add_torrent_file_by_copying_it(mnt, account, tmp_path):
    data, info_hash = make_torrent("Copied Upload")
    source = tmp_path / "upload.torrent"
    source.write_bytes(data)
    before = finished(mnt)
    subprocess.run(["cp", str(source), str(mnt.path / ".rdfs/")], check=True, capture_output=True)
    mountutil.wait_for(lambda: finished(mnt) > before, what="the upload to be sent")
    assert info_hash in hashes(account)
    mountutil.wait_for(lambda: "Copied Upload" in os.listdir(mnt.path / "torrents"), what="uploaded torrent shown")
    assert not (mnt.path / ".rdfs" / "upload.torrent").exists()
    assert sorted(os.listdir(mnt.path / ".rdfs")) == ["add", "delete", "refresh", "status"]


def test_broken_torrent_file_is_refused(mnt, account, tmp_path):
    source = tmp_path / "broken.torrent"
    source.write_bytes(b"d4:infod4:name3:abcee")
    before = sorted(account.torrent_ids())
    result = subprocess.run(["cp", str(source), str(mnt.path / ".rdfs/")], capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    # Refused at close (flush); the last close (release) records why, and nothing is queued.
    mountutil.wait_for(
        lambda: "not a valid .torrent" in status(mnt)["recent_errors"][-1]["error"], what="the refusal in status"
    )
    assert sorted(account.torrent_ids()) == before


def test_junk_is_refused_with_einval_and_nothing_changes(mnt, account):
    before = sorted(account.torrent_ids())
    counters = account.counters
    shell = subprocess.run(["bash", "-c", f"echo junk > '{mnt.path}/.rdfs/add'"], capture_output=True, text=True)
    assert shell.returncode != 0 and "Invalid argument" in shell.stderr
    good = fake_hash("never added")
    with pytest.raises(OSError) as caught:
        write(mnt.path / ".rdfs" / "add", f"{good}\nmagnet:?xt=urn:btih:xyz\n".encode())
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as caught:
        write(mnt.path / ".rdfs" / "delete", b"torrents/No Such Torrent\n")
    assert caught.value.errno == errno.EINVAL
    assert sorted(account.torrent_ids()) == before
    assert account.counters["POST /torrents/addMagnet"] == counters["POST /torrents/addMagnet"]
    errors = [e["error"] for e in status(mnt)["recent_errors"]]
    assert any("line 2" in e and "xyz" in e for e in errors)
    assert any("No Such Torrent" in e for e in errors)


def test_delete_by_id_and_by_path(mnt, account):
    first = account.add_torrent("Delete Me By Id", [FileSpec("/a.mkv", 1000)])
    account.add_torrent("Delete Me By Path", [FileSpec("/b.mkv", 1000)])
    (mnt.path / ".rdfs" / "refresh").write_text("now\n")
    torrents = mnt.path / "torrents"
    mountutil.wait_for(lambda: {"Delete Me By Id", "Delete Me By Path"} <= set(os.listdir(torrents)), what="shown")
    submit(mnt, "delete", f"{first}\ntorrents/Delete Me By Path\n".encode())
    names = {account.torrent_json(t)["filename"] for t in account.torrent_ids()}
    assert not {"Delete Me By Id", "Delete Me By Path"} & names
    # Gone from the mount at once, not at the next sync.
    listing = set(os.listdir(torrents))
    assert not {"Delete Me By Id", "Delete Me By Path"} & listing
    assert not (torrents / "Delete Me By Path").exists()


def test_delete_a_download_by_path(mnt, account):
    torrent_id = account.add_torrent("Read Once", [FileSpec("/once.mkv", 4096)])
    (mnt.path / ".rdfs" / "refresh").write_text("1")
    movie = mnt.path / "torrents" / "Read Once" / "once.mkv"
    mountutil.wait_for(movie.exists, what="torrent shown")
    assert movie.read_bytes() == account.file_bytes(torrent_id, 1)  # unrestricting adds a /downloads entry
    account.add_hoster_download("own.iso", 4096, "https://hoster.example/f/own", "hoster.example")
    downloads = mnt.path / "downloads"
    (mnt.path / ".rdfs" / "refresh").write_text("1")
    mountutil.wait_for(lambda: "own.iso" in os.listdir(downloads), what="download listed")
    assert "once.mkv" not in os.listdir(downloads)  # a torrent's unrestrict is not the user's own
    submit(mnt, "delete", b"downloads/own.iso\n")
    assert "own.iso" not in os.listdir(downloads)


def test_rm_is_refused_without_allow_delete(mnt, account):
    target = mnt.path / "torrents" / "Existing Show"
    result = subprocess.run(["rm", "-rf", str(target)], capture_output=True, text=True)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    assert target.is_dir() and sorted(os.listdir(target)) == ["e01.mkv", "e02.mkv"]
    assert "Existing Show" in {account.torrent_json(t)["filename"] for t in account.torrent_ids()}


def test_rm_r_deletes_with_allow_delete(emulator_module, account, tmp_path):
    torrent_id = account.add_torrent("Removable", [FileSpec("/x/1.mkv", 100), FileSpec("/2.srt", 10)])
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path, "--allow-delete") as mounted:
        target = mounted.path / "torrents" / "Removable"
        mountutil.wait_for(target.exists, what="torrent shown")
        subprocess.run(["rm", "-r", str(target)], check=True, capture_output=True)
        assert torrent_id not in account.torrent_ids()
        assert "Removable" not in os.listdir(mounted.path / "torrents")
        with pytest.raises(PermissionError):
            os.unlink(mounted.path / ".rdfs" / "add")


def test_status_is_json_and_shows_an_outage(mnt, account):
    report = status(mnt)
    assert report["health"] == "ok" and report["api"]["reachable"] is True
    assert report["torrents_known"] >= 1 and report["last_sync"] > 0
    assert report["traffic"]["remote"]["left"] > 0
    assert isinstance(report["api"]["rate_limit_budget"], int)
    account.set_faults(api_down=True)
    try:
        (mnt.path / ".rdfs" / "refresh").write_text("1")
        mountutil.wait_for(lambda: status(mnt)["api"]["reachable"] is False, what="outage in status")
        before = account.torrent_ids()
        # The writer does not wait for RD: the batch is queued, and fails in the worker.
        submit(mnt, "add", f"{fake_hash('during outage')}\n".encode())
        assert account.torrent_ids() == before
        assert any("adding failed" in e["error"] for e in status(mnt)["recent_errors"])
        assert status(mnt)["recent_actions"][-1]["outcome"] == "failed"
    finally:
        account.reset_faults()
    (mnt.path / ".rdfs" / "refresh").write_text("1")
    mountutil.wait_for(lambda: status(mnt)["api"]["reachable"], what="recovery")


def test_in_progress_torrents_in_status(mnt, account):
    torrent_id = account.add_torrent("Slow One", [FileSpec("/slow.mkv", 1000)], status="downloading")
    account.set_status(torrent_id, "downloading", progress=42.0)
    (mnt.path / ".rdfs" / "refresh").write_text("1")
    report = mountutil.wait_for(
        lambda: [t for t in status(mnt)["in_progress"] if t["id"] == torrent_id], what="in progress listed"
    )
    assert report[0]["status"] == "downloading" and report[0]["progress"] == 42.0
    cli = rdfs("status", str(mnt.path))
    assert cli.returncode == 0 and "Slow One" in cli.stdout and "42%" in cli.stdout
    assert json.loads(rdfs("status", str(mnt.path), "--json").stdout)["torrents_known"] >= 1


def test_cli_add_and_rm_with_a_mount(emulator_module, mnt, account, tmp_path):
    env = dict(os.environ, RDFS_API_URL=emulator_module.api_url, RD_API_TOKEN=emulator_module.token,
               RDFS_CONFIG=str(tmp_path / "none.toml"))  # fmt: skip
    data, info_hash = make_torrent("CLI Upload")
    (tmp_path / "cli.torrent").write_bytes(data)
    magnet_hash = fake_hash("cli magnet")
    result = rdfs(
        "add", "--mount", str(mnt.path), "--json", str(tmp_path / "cli.torrent"),
        f"magnet:?xt=urn:btih:{magnet_hash}&dn=CLI.Magnet", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert [a["hash"] for a in added] == [info_hash, magnet_hash] and not any(a["duplicate"] for a in added)
    torrents = mnt.path / "torrents"
    mountutil.wait_for(lambda: {"CLI Upload", "CLI.Magnet"} <= set(os.listdir(torrents)), what="CLI adds shown")
    again = rdfs("add", "--json", magnet_hash, env=env)
    assert json.loads(again.stdout)[0]["duplicate"] is True
    result = rdfs("rm", str(torrents / "CLI Upload"), "--mount", str(mnt.path), env=env)
    assert result.returncode == 0, result.stderr
    assert info_hash not in hashes(account)
    mountutil.wait_for(lambda: "CLI Upload" not in os.listdir(torrents), what="CLI delete shown")
    inside = rdfs("rm", str(torrents / "CLI.Magnet" / os.listdir(torrents / "CLI.Magnet")[0]), env=env)
    assert inside.returncode == 1 and "name the torrent directory" in inside.stderr
    assert magnet_hash in hashes(account)
