"""OAuth under a hostile light (issue 15 "Tests"): an access token that expires mid-mount and a
refresh that succeeds (reads go on) or fails because the user revoked the app (the mount stays
up serving what it has, status says to log in again, RD is not asked to refresh every sync).
"""

from __future__ import annotations

import json
import os
import time
import types

import pytest

from rdfs.api import OAuthSession, ReauthRequired, auth
from rdfs.emulator import Emulator, FileSpec
from tests import mountutil
from tests.inprocess.test_api_auth import _client, _login
from tests.mount.test_login import cli_env, device_login


async def test_refused_refresh_is_remembered(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = await _login(emulator)
    session = OAuthSession(credentials)
    async with _client(emulator, session) as rd:
        await rd.user()
        emulator.revoke_oauth()
        before = emulator.counters["POST /oauth/v2/token"]
        for _ in range(5):  # five syncs
            with pytest.raises(ReauthRequired, match="log in again"):
                await rd.user()
        assert emulator.counters["POST /oauth/v2/token"] - before == 1
        # Once the pause is over, RD is asked again (the grant may have been restored).
        later = types.SimpleNamespace(monotonic=lambda: time.monotonic() + session.refused_retry + 1, time=time.time)
        monkeypatch.setattr(auth, "time", later)
        with pytest.raises(ReauthRequired):
            await rd.user()
        assert emulator.counters["POST /oauth/v2/token"] - before == 2


def _mount_env(emu, config_home) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(config_home), "RDFS_OAUTH_URL": emu.oauth_url}


def _status(mounted) -> dict:
    return json.loads((mounted.path / ".rdfs" / "status").read_text())


@pytest.mark.mount
def test_expiry_mid_mount_first_read_refreshes_and_reads_go_on(emulator_module, tmp_path) -> None:
    config_home = tmp_path / "config"
    device_login(emulator_module, cli_env(emulator_module, config_home))
    control = emulator_module.control
    first = control.add_torrent("OAuth Read A", [FileSpec("/a.mkv", 10_000)])
    second = control.add_torrent("OAuth Read B", [FileSpec("/b.mkv", 20_000)])
    with mountutil.mount(
        emulator_module.api_url, "", tmp_path, "--sync-interval", "600", env=_mount_env(emulator_module, config_home)
    ) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: {"OAuth Read A", "OAuth Read B"} <= set(os.listdir(torrents)), what="first sync")
        assert (torrents / "OAuth Read A" / "a.mkv").read_bytes() == control.file_bytes(first, 1)
        control.expire_access_tokens()
        # No sync in between: the read's own unrestrict meets the 401 and refreshes.
        assert (torrents / "OAuth Read B" / "b.mkv").read_bytes() == control.file_bytes(second, 1)
        assert (torrents / "OAuth Read A" / "a.mkv").read_bytes() == control.file_bytes(first, 1)
        assert "access token refreshed" in mounted.log()
        assert mounted.process.poll() is None


@pytest.mark.mount
def test_revoked_grant_mount_stays_up_and_says_log_in_again(emulator_module, tmp_path) -> None:
    config_home = tmp_path / "config"
    device_login(emulator_module, cli_env(emulator_module, config_home))
    control = emulator_module.control
    kept = control.add_torrent("OAuth Kept", [FileSpec("/kept.mkv", 30_000)])
    with mountutil.mount(
        emulator_module.api_url, "", tmp_path, env=_mount_env(emulator_module, config_home)
    ) as mounted:  # --sync-interval 1
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: "OAuth Kept" in os.listdir(torrents), what="first sync")
        assert (torrents / "OAuth Kept" / "kept.mkv").read_bytes() == control.file_bytes(kept, 1)
        control.revoke_oauth()
        refreshes = control.counters["POST /oauth/v2/token"]
        (mounted.path / ".rdfs" / "refresh").write_text("1")
        mountutil.wait_for(
            lambda: "log in again" in str(_status(mounted)), timeout=60, what="status telling to log in again"
        )
        # Several syncs later (each one fails; the log says why once, not per sync)...
        for _ in range(5):
            (mounted.path / ".rdfs" / "refresh").write_text("1")
            time.sleep(1.2)  # --sync-interval 1: lets a sync run; nothing is asserted on time
        assert "log in again" in str(_status(mounted))
        # ...RD was asked to refresh once, and the log told the user once what to do.
        assert control.counters["POST /oauth/v2/token"] - refreshes == 1
        warnings = [line for line in mounted.log().splitlines() if "run `rdfs login`" in line]
        assert len(warnings) == 1, warnings
        # The mount serves what it has: the tree, and the file whose link it holds.
        assert "OAuth Kept" in os.listdir(torrents)
        assert (torrents / "OAuth Kept" / "kept.mkv").read_bytes() == control.file_bytes(kept, 1)
        assert mounted.process.poll() is None
