"""RD's streaming extras as extended attributes through a real mount."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount


def test_mediainfo_and_transcode_xattrs(emulator_proc, tmp_path: Path) -> None:
    control = emulator_proc.control
    control.add_torrent("Show.S01E02.720p", [FileSpec("/Show.S01E02.720p.mkv", 50_000)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        path = mounted.path / "torrents" / "Show.S01E02.720p" / "Show.S01E02.720p.mkv"
        mountutil.wait_for(path.exists, what="file")
        names = os.listxattr(path)
        assert "user.rdfs.mediainfo" not in names and "user.rdfs.transcode" not in names  # never listed
        control.reset_counters()
        info = json.loads(os.getxattr(path, "user.rdfs.mediainfo"))
        again = json.loads(os.getxattr(path, "user.rdfs.mediainfo"))
        transcode = json.loads(os.getxattr(path, "user.rdfs.transcode"))
        counters = control.counters
    assert info == again
    assert (info["type"], info["season"], info["episode"]) == ("show", "1", "2")
    assert info["details"]["video"]["und1"]["height"] == 720
    assert set(transcode) == {"apple", "dash", "liveMP4", "h264WebM"}
    assert counters["POST /unrestrict/link"] == 1
    assert counters["GET /streaming/mediaInfos"] == 1 and counters["GET /streaming/transcode"] == 1
