"""``rdfs login`` / ``logout`` end to end against the emulator's OAuth endpoints, and token refresh in a mount."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil


def cli_env(emu, config_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RD_API_TOKEN"}
    env.update(
        XDG_CONFIG_HOME=str(config_home),
        RDFS_API_URL=emu.api_url,
        RDFS_OAUTH_URL=emu.oauth_url,
        RDFS_CONFIG=str(config_home / "none.toml"),
    )
    return env


def rdfs(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rdfs", *args], capture_output=True, text=True, env=env, input=stdin, timeout=60
    )


def device_login(emu, env: dict[str, str]) -> str:
    """Run ``rdfs login``, approve the code it prints like a user would; its whole output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rdfs", "login", "--poll-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"Open (\S+) and enter the code: (\S+)", first)
        assert match, first + process.stderr.read() if process.poll() is not None else first
        assert match.group(1).startswith(emu.base_url)
        emu.control.approve_device(match.group(2))
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    return first + out


def stored(config_home: Path) -> dict:
    path = config_home / "rdfs" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


def test_device_login_stores_private_credentials_and_logout_forgets(emulator_module, tmp_path):
    env = cli_env(emulator_module, tmp_path)
    output = device_login(emulator_module, env)
    assert "logged in as emulator" in output
    saved = stored(tmp_path)
    assert saved["kind"] == "oauth" and saved["client_id"] and saved["refresh_token"] and saved["access_token"]
    assert saved["access_token"] not in output and saved["client_secret"] not in output
    assert stat.S_IMODE((tmp_path / "rdfs").stat().st_mode) == 0o700
    user = rdfs(env, "user", "--json")
    assert user.returncode == 0, user.stderr
    assert json.loads(user.stdout)["username"] == "emulator"
    out = rdfs(env, "logout")
    assert out.returncode == 0 and "logged out" in out.stdout
    assert not (tmp_path / "rdfs" / "credentials.json").exists()
    after = rdfs(env, "user")
    assert after.returncode == 1 and after.stderr.startswith("rdfs: error: not logged in")


def test_login_with_private_token(emulator_module, tmp_path):
    env = cli_env(emulator_module, tmp_path)
    result = rdfs(env, "login", "--token", stdin=emulator_module.token + "\n")
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path) == {"kind": "token", "token": emulator_module.token}
    assert emulator_module.token not in result.stdout + result.stderr
    assert rdfs(env, "traffic", "--json").returncode == 0
    bad = rdfs(env, "login", "--token", "not-a-valid-token-at-all")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert stored(tmp_path)["token"] == emulator_module.token  # a refused token replaces nothing


@pytest.mark.mount
def test_expired_access_token_is_refreshed_mid_mount(emulator_module, tmp_path):
    config_home = tmp_path / "config"
    env = cli_env(emulator_module, config_home)
    device_login(emulator_module, env)
    first = stored(config_home)
    control = emulator_module.control
    control.add_torrent("Before Expiry", [FileSpec("/a.mkv", 1000)])
    mount_env = {"XDG_CONFIG_HOME": str(config_home), "RDFS_OAUTH_URL": emulator_module.oauth_url}
    with mountutil.mount(emulator_module.api_url, "", tmp_path, "--sync-interval", "600", env=mount_env) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: "Before Expiry" in os.listdir(torrents), what="first sync")
        control.expire_access_tokens()
        torrent_id = control.add_torrent("After Expiry", [FileSpec("/b.mkv", 2000)])
        (mounted.path / ".rdfs" / "refresh").write_text("1")
        mountutil.wait_for(lambda: "After Expiry" in os.listdir(torrents), what="sync with a refreshed token")
        assert (torrents / "After Expiry" / "b.mkv").read_bytes() == control.file_bytes(torrent_id, 1)
        assert "refreshed" in mounted.log()
    second = stored(config_home)
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] == first["refresh_token"]
    assert first["access_token"] not in mounted.log() and second["access_token"] not in mounted.log()
