"""A media-server library scan through a real mount: exact probes, and a rescan that costs nothing.

How "zero API calls" is made meaningful: the mount's own periodic sync also calls the API, so
the mounts run with ``--sync-interval 3600``: after the start-up sync (one listing of /torrents
and /downloads) no sync runs during the test. The rescan happens in a *new* mount process on
the same cache directory (nothing survives in memory: no block cache, no kernel page cache), and
the counters are read only once that mount's start-up listing is done; from then on *every* API
endpoint and the download server must see zero requests while ffprobe reads every file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from rdfs.emulator.samples import probe
from tests import mountutil

pytestmark = pytest.mark.mount

SECONDS = 2
# file name -> ffmpeg output arguments: several containers; the MP4s keep ffmpeg's default
# layout (moov atom at the end), so a probe must read their tail.
MEDIA = {
    "Movie.One.2021.1080p.mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    "Movie.Two.2022.720p.mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    "Show.S01E01.mp4": ["-c:v", "mpeg4", "-c:a", "libmp3lame"],
    "Show.S01E02.avi": ["-c:v", "mpeg4", "-c:a", "libmp3lame"],
    "Show.S01E03.ts": ["-c:v", "mpeg2video", "-c:a", "ac3"],
}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scan-media")
    made = {}
    for index, (name, codec) in enumerate(MEDIA.items()):
        path = root / name
        subprocess.run(
            [
                "ffmpeg", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", f"testsrc=duration={SECONDS}:size=320x240:rate=25",
                "-f", "lavfi", "-i", f"sine=frequency={300 + 100 * index}:duration={SECONDS}",
                *codec, "-shortest", str(path),
            ],  # fmt: skip
            check=True,
        )
        made[name] = path
    return made


def _api_calls(counters) -> int:
    return counters.get("api_total", 0)


def test_rescan_after_restart_costs_nothing(emulator_proc, media, tmp_path):
    control = emulator_proc.control
    torrents = {}
    for name, path in media.items():
        stem = name.rsplit(".", 1)[0]
        torrents[name] = control.add_torrent(
            stem, [FileSpec(f"/{name}", path.stat().st_size, source=path), FileSpec("/info.nfo", 300)]
        )
    expected = {name: probe(path) for name, path in media.items()}
    args = (emulator_proc.api_url, emulator_proc.token, tmp_path, "--sync-interval", "3600")

    def scan(root: Path) -> dict[str, dict]:
        return {name: probe(root / "torrents" / name.rsplit(".", 1)[0] / name) for name in media}

    with mountutil.mount(*args) as mounted:
        files = [mounted.path / "torrents" / n.rsplit(".", 1)[0] / n for n in media]
        mountutil.wait_for(lambda: all(f.exists() for f in files), timeout=30, what="every file listed")
        control.reset_counters()
        assert scan(mounted.path) == expected
        first = control.counters
    # One unrestrict per probed file (the .nfo files are never read), no file list fetched again.
    assert first["POST /unrestrict/link"] == len(media)
    assert first["GET /torrents/info"] == 0
    assert first["download_requests"] > 0

    control.reset_counters()
    with mountutil.mount(*args) as mounted:
        # A warm start serves the cached tree as it is: its first sync probe comes an interval later.
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Show.S01E03").exists(), what="tree")
        assert scan(mounted.path) == expected
        after = control.counters
    assert _api_calls(after) == 0, after
    assert after["download_requests"] == 0
    assert after["POST /unrestrict/link"] == 0
