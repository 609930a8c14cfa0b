"""The file-list fill's status (progress, pace, time left), against the emulator in-process over
real HTTP, with real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdfs.cli import _show_status, fill_line, human_duration
from rdfs.emulator import Emulator
from rdfs.store.metadata import Cache
from rdfs.sync.fillprogress import FillProgress
from rdfs.sync.syncer import Syncer
from tests.inprocess.test_sync import make_client


@pytest.fixture
def cache(tmp_path: Path):
    cache = Cache.open(tmp_path, 4242)
    yield cache
    cache.close()


async def test_fill_status_reports_progress_pace_and_time_left(
    emulator: Emulator, cache: Cache
) -> None:
    ids = emulator.bulk_add_torrents(30, 1)  # oldest first
    async with make_client(emulator.api_url, emulator.token) as rd:
        syncer = Syncer(rd, cache, info_concurrency=1)
        await syncer.sync_once(fill=False)
        fill = syncer.status()["fill"]
        assert fill == {"done": 0, "total": 30, "per_minute": None, "eta_seconds": None}
        assert fill_line(fill) == "0 of 30 (starting)"

        await syncer.sync_once()
        assert rd.info_ids == ids[::-1]  # newest first
        assert rd.limiter.background_acquired == 30  # the fill's requests yield to others
        fill = syncer.status()["fill"]
        assert fill["done"] == fill["total"] == 30 and fill["eta_seconds"] == 0
        assert fill_line(fill) is None

        more = emulator.bulk_add_torrents(10, 1)
        await syncer.sync_once(fill=False)
        # 30 lists stored within the last minute: 30 a minute, 10 left take 20 s.
        fill = syncer.status()["fill"]
        assert fill == {"done": 30, "total": 40, "per_minute": 30.0, "eta_seconds": 20}
        assert fill_line(fill) == "30 of 40 (30/min, less than a minute left)"

        await syncer.ensure_files(more[0])  # on demand: a foreground request
        assert rd.limiter.background_acquired == 30
        assert syncer.status()["fill"]["done"] == 31


def test_fill_progress_rate_and_eta() -> None:
    progress = FillProgress()
    assert progress.report(0.0, done=0, total=100_000)["eta_seconds"] is None
    for second in range(300):  # 225 a minute, the first minute's 225 sent at once
        for _ in range(225 if second % 60 == 0 else 0):
            progress.stored(float(second))
    report = progress.report(300.0, done=1125, total=100_000)
    assert report["per_minute"] == 225.0
    assert report["eta_seconds"] == round((100_000 - 1125) / 225 * 60)
    assert progress.report(1000.0, done=1125, total=100_000)["per_minute"] is None  # stopped


def test_fill_line_in_words() -> None:
    fill = {"done": 12_345, "total": 100_000, "per_minute": 250.0, "eta_seconds": 21_038}
    assert fill_line(fill) == "12,345 of 100,000 (250/min, about 5 h 51 min left)"
    assert human_duration(3 * 3600) == "about 3 h"
    assert human_duration(190) == "about 3 min"
    assert human_duration(20) == "less than a minute"


def test_rdfs_status_prints_the_fill(capsys: pytest.CaptureFixture[str]) -> None:
    report = {"fill": {"done": 12_345, "total": 100_000, "per_minute": 250.0, "eta_seconds": 21_038}}
    _show_status("/mnt/rd", report)
    assert "file lists  12,345 of 100,000 (250/min, about 5 h 51 min left)\n" in capsys.readouterr().out
    _show_status("/mnt/rd", {"fill": {"done": 5, "total": 5, "per_minute": None, "eta_seconds": 0}})
    assert "file lists" not in capsys.readouterr().out
