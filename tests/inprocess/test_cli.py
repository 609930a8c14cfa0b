"""The management commands without a mount, and the add/delete logic they share with ``.rdfs/``."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from rdfs.control import actions
from rdfs.control.actions import ActionFailed, InvalidInput, Magnet, Target
from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.models import TorrentFile, TorrentInfo
from rdfs.api.transport import RetryPolicy
from rdfs.emulator import FileSpec
from tests.mount.test_control import fake_hash, hashes, make_torrent

COMMANDS = ["mount", "umount", "login", "logout", "status", "add", "rm", "ls", "user", "traffic", "hosts"]


@pytest.fixture
def env(emulator_module, tmp_path):
    values = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    values.update(
        RDFS_API_URL=emulator_module.api_url,
        RD_API_TOKEN=emulator_module.token,
        RDFS_CONFIG=str(tmp_path / "none.toml"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    return values


def rdfs(env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rdfs", *args], capture_output=True, text=True, env=env, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert result.stderr.startswith("rdfs: error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# --- parsing (no I/O) ---------------------------------------------------------------------------


def test_parse_magnets_and_hashes():
    hex_hash = fake_hash("x")
    b32 = base64.b32encode(bytes.fromhex(hex_hash)).decode()
    assert actions.parse_magnet(hex_hash.upper()) == Magnet(hex_hash, f"magnet:?xt=urn:btih:{hex_hash}")
    assert actions.parse_magnet(b32.lower()).info_hash == hex_hash
    magnet = f"magnet:?dn=Name&xt=urn:btih:{b32}&tr=udp://t.invalid:1"
    assert actions.parse_magnet(magnet) == Magnet(hex_hash, magnet)
    for junk in ("junk", "magnet:?xt=urn:btih:123", "magnet:?dn=x", hex_hash[:-1], "http://example.invalid/x"):
        with pytest.raises(InvalidInput):
            actions.parse_magnet(junk)
    assert actions.parse_lines("  a \n\n# comment\nb\r\n") == ["a", "b"]
    with pytest.raises(InvalidInput, match="line 2.*line 3"):
        actions.parse_magnets([hex_hash, "bad", "worse"])


def test_parse_torrent_file():
    data, info_hash = make_torrent("Some Name")
    parsed = actions.parse_torrent_file(data)
    assert (parsed.info_hash, parsed.name, parsed.data) == (info_hash, "Some Name", data)
    for broken in (b"", b"garbage", data[:-1], data + b"x", b"d4:infod4:name1:aee", b"le"):
        with pytest.raises(InvalidInput):
            actions.parse_torrent_file(broken)


def test_selection_policy():
    files = tuple(
        TorrentFile(i, p, 100, False)
        for i, p in enumerate(["/S01/e1.mkv", "/S01/e1.en.srt", "/info.nfo", "/sample.MP4", "/cover.jpg"], start=1)
    )
    info = TorrentInfo(
        id="X", filename="x", hash="h", bytes=0, host="", split=0, progress=0, status="waiting_files_selection",
        added=None, links=(), files=files,
    )  # fmt: skip
    assert actions.choose_files(info, "all") == "all"
    assert actions.choose_files(info, "video") == [1, 2, 4]
    assert actions.choose_files(dataclasses.replace(info, files=files[2:3]), "video") == "all"
    with pytest.raises(InvalidInput):
        actions.choose_files(info, "everything")


# --- add_items / delete_targets against the in-process emulator --------------------------------


async def test_batch_is_rolled_back_when_rd_fails_half_way(emulator):
    emulator.download_time = 60.0  # selected torrents stay active...
    emulator.active_limit = 1  # ...so the second addMagnet is refused (509)
    async with RDClient(api_url=emulator.api_url, auth=StaticToken(emulator.token), retry=RetryPolicy(0, 0, 0, 0)) as rd:
        items = [actions.parse_magnet(fake_hash("one")), actions.parse_magnet(fake_hash("two"))]
        with pytest.raises(ActionFailed, match="removed"):
            await actions.add_items(rd, items)
        assert emulator.torrent_ids() == []
        assert emulator.counters["POST /torrents/addMagnet"] == 2 and emulator.counters["DELETE /torrents/delete"] == 1


async def test_add_video_policy_and_duplicates(emulator):
    emulator.add_torrent("Pack", [FileSpec("/a.mkv", 10), FileSpec("/a.srt", 1), FileSpec("/a.nfo", 1)])
    pack_hash = emulator.torrent_json(emulator.torrent_ids()[0])["hash"]
    emulator.remove_torrent(emulator.torrent_ids()[0])  # the catalog still knows the hash's files
    async with RDClient(api_url=emulator.api_url, auth=StaticToken(emulator.token)) as rd:
        known = {fake_hash("old"): "OLDID"}
        added = await actions.add_items(
            rd, [actions.parse_magnet(pack_hash), actions.parse_magnet(fake_hash("old"))], policy="video",
            known_hashes=known,
        )  # fmt: skip
        assert [a.duplicate for a in added] == [False, True] and added[1].id == "OLDID"
        info = emulator.torrent_json(added[0].id)
        assert [f["selected"] for f in info["files"]] == [1, 1, 0] and info["status"] == "downloaded"
        deleted = await actions.delete_targets(rd, [Target("torrent", added[0].id, "x")] * 2)
        assert len(deleted) == 1 and emulator.torrent_ids() == []


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command):
    result = subprocess.run([sys.executable, "-m", "rdfs", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: rdfs " + command)


def test_cli_add_ls_rm_without_a_mount(emulator_module, env, tmp_path):
    control = emulator_module.control
    data, upload_hash = make_torrent("Plain CLI Upload")
    (tmp_path / "up.torrent").write_bytes(data)
    magnet_hash = fake_hash("plain cli")
    result = rdfs(env, "add", str(tmp_path / "up.torrent"), f"magnet:?xt=urn:btih:{magnet_hash}&dn=Plain.CLI.Magnet")
    assert result.returncode == 0, result.stderr
    assert "added: Plain CLI Upload" in result.stdout and "added: Plain.CLI.Magnet" in result.stdout
    account = hashes(control)
    assert {upload_hash, magnet_hash} <= account.keys()
    listing = json.loads(rdfs(env, "ls", "--json").stdout)
    assert {t["hash"]: t["status"] for t in listing}[magnet_hash] == "downloaded"
    table = rdfs(env, "ls").stdout
    assert table.splitlines()[0].split() == ["id", "status", "progress", "size", "name"] and "Plain CLI Upload" in table
    assert "already in the account" in rdfs(env, "add", magnet_hash).stdout
    assert len(hashes(control)) == len(account)

    removed = rdfs(env, "rm", account[upload_hash], "torrents/Plain.CLI.Magnet", "--json")
    assert removed.returncode == 0, removed.stderr
    assert {t["id"] for t in json.loads(removed.stdout)} == {account[upload_hash], account[magnet_hash]}
    assert not {upload_hash, magnet_hash} & hashes(control).keys()


def test_cli_refuses_bad_input_and_changes_nothing(emulator_module, env, tmp_path):
    control = emulator_module.control
    before = sorted(control.torrent_ids())
    (tmp_path / "bad.torrent").write_bytes(b"not bencode")
    assert "junk" in one_line_error(rdfs(env, "add", fake_hash("fine"), "junk"))
    assert "bad.torrent" in one_line_error(rdfs(env, "add", fake_hash("fine"), str(tmp_path / "bad.torrent")))
    assert "no torrent with id" in one_line_error(rdfs(env, "rm", "AAAAAAAAAAAAA"))
    assert "not in the account" in one_line_error(rdfs(env, "rm", "torrents/Nothing Like This"))
    assert "not a torrent id" in one_line_error(rdfs(env, "rm", "whatever"))
    assert sorted(control.torrent_ids()) == before


def test_cli_fails_clearly_during_an_outage(emulator_module, env):
    control = emulator_module.control
    before = sorted(control.torrent_ids())
    control.set_faults(api_down=True)
    try:
        env = dict(env)
        message = one_line_error(rdfs(env, "add", "--wait", "0", fake_hash("outage")))
    finally:
        control.reset_faults()
    assert "503" in message or "unavailable" in message.lower()
    assert sorted(control.torrent_ids()) == before


def test_account_commands_json(env):
    assert json.loads(rdfs(env, "user", "--json").stdout)["username"] == "emulator"
    assert json.loads(rdfs(env, "traffic", "--json").stdout)["remote"]["left"] > 0
    hosts = json.loads(rdfs(env, "hosts", "--json").stdout)
    assert hosts and all("status" in h for h in hosts.values())
    status = rdfs(env, "status", "--json", "/nonexistent/mount")
    assert "not an rdfs mount" in one_line_error(status)
    user = rdfs(env, "user")
    assert "emulator" in user.stdout and user.returncode == 0


def test_not_logged_in_is_one_line(env):
    env = {k: v for k, v in env.items() if k != "RD_API_TOKEN"}
    assert "rdfs login" in one_line_error(rdfs(env, "ls"))
