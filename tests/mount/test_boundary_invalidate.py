"""Invalidation through a real mount: only what the kernel holds is invalidated (the in-process
test checks that nothing is sent for the rest), and what it holds is invalidated at once: a
removed torrent it looked up vanishes without waiting for the 60 s entry timeout."""

from __future__ import annotations

import json
import os

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount

COUNT = 40


def test_removing_unseen_torrents_logs_no_error(emulator_proc, tmp_path) -> None:
    control = emulator_proc.control
    keep = control.add_torrent("Keep", [FileSpec("/k.mkv", 1000)])
    seen = control.add_torrent("Seen", [FileSpec("/s.mkv", 1000)])
    unseen = [control.add_torrent(f"Unseen {i:03d}", [FileSpec(f"/u{i}.mkv", 100)]) for i in range(COUNT)]
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path, "--sync-interval", "600") as mounted:
        status = mounted.path / ".rdfs" / "status"
        mountutil.wait_for(
            lambda: json.loads(status.read_text())["torrents_known"] == COUNT + 2, timeout=60, what="first sync"
        )
        torrents = mounted.path / "torrents"
        assert os.stat(torrents / "Keep" / "k.mkv").st_size == 1000
        assert os.stat(torrents / "Seen").st_ino  # the kernel holds this one
        (mounted.path / ".rdfs" / "delete").write_text("".join(f"{t}\n" for t in unseen + [seen]))
        # The batch is queued at close and run by the control worker.
        mountutil.wait_for(lambda: sorted(control.torrent_ids()) == [keep], timeout=60, what="deletes upstream")
        mountutil.wait_for(lambda: not json.loads(status.read_text())["queue"]["pending"], what="queue drained")
        # The entry the kernel held is gone at once (invalidated), the rest never reached it.
        assert not (torrents / "Seen").exists()
        assert os.listdir(torrents) == ["Keep"]
        assert (torrents / "Keep" / "k.mkv").read_bytes() == control.file_bytes(keep, 1)
        log = mounted.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert errors == [], errors[:5]
