"""Real clients' read patterns through a mount: what each costs the download server (issue 17).

Each pattern reads files no earlier pattern touched (a cold cache: no block, no probe-cache entry,
no link). The client's bytes are the mount's own count of bytes its reads returned (files are
opened with direct I/O: the application's reads); the server's bytes and requests come from
nginx's access log, the unrestricts from the emulator's counters.

* ``ffprobe``: Jellyfin's arguments over MKV, MP4 (moov at the end), faststart MP4 and HEVC clips,
  8 at a time;
* ``mediainfo``: one clip of each kind, one after the other;
* ``sparse``: an audio-only MP4 opened the way VLC does it: 1 KiB every 30 KiB (replayed; the
  target counts the reads rounded out to 64 KiB blocks);
* ``webdav``: open, read 512 B, read 96 KiB after it, close, 52 times at random offsets;
* ``seeks``: a player: 20 seeks, each followed by 2 MiB of 128 KiB reads;
* ``whole``: a whole-file read in 1 MiB reads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from benchlib import measure

KiB = 1 << 10
MiB = 1 << 20
SPARSE_BLOCK = 64 * KiB


@dataclass
class Outcome:
    """What a pattern's client did: a note for the table, and for a sparse pattern the bytes its
    reads cover rounded out to ``SPARSE_BLOCK`` blocks."""

    note: str = ""
    rounded: int | None = None


def served(mount: Path) -> int:
    """Bytes the mount's reads returned so far (its status file)."""
    status = json.loads((mount / ".rdfs" / "status").read_text())
    reads = status.get("reads") or status.get("sync", {}).get("reads") or {}
    return int(reads["bytes_served"])


def ffprobe(paths: list[Path]) -> Outcome:
    trio.run(measure.scan, paths, 8)
    return Outcome(f"{len(paths)} clips, 8 at a time")


def mediainfo(paths: list[Path]) -> Outcome:
    for path in paths:
        result = subprocess.run(
            ["mediainfo", "--Output=JSON", str(path)], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0 or '"track"' not in result.stdout:
            raise AssertionError(f"mediainfo failed on {path.name}: {result.stderr[-200:]}")
    return Outcome(f"{len(paths)} clips")


def sparse(path: Path) -> Outcome:
    """VLC opening an audio-only MP4: its head, the moov at the end, then ~1 KiB of audio every
    ~30 KiB (replayed; VLC's own reads would need VLC and a display-less output)."""
    size = path.stat().st_size
    reads = [(0, 32 * KiB), (size - 64 * KiB, 64 * KiB)]
    reads += [(4 * MiB + step * 30 * KiB, KiB) for step in range(200)]
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in reads:
            assert len(os.pread(fd, length, offset)) == length
    finally:
        os.close(fd)
    blocks = {
        index
        for offset, length in reads
        for index in range(offset // SPARSE_BLOCK, (offset + length - 1) // SPARSE_BLOCK + 1)
    }
    note = "replayed (VLC not installed)" if shutil.which("vlc") is None else "replayed"
    return Outcome(note, rounded=len(blocks) * SPARSE_BLOCK)


def webdav(path: Path) -> Outcome:
    rng = random.Random(17)
    size = path.stat().st_size
    for _ in range(52):
        offset = rng.randrange(size - MiB)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert len(os.pread(fd, 512, offset)) == 512
            assert len(os.pread(fd, 96 * KiB, offset + 512)) == 96 * KiB
        finally:
            os.close(fd)
    return Outcome("52 x open/512 B/96 KiB/close")


def seeks(path: Path) -> Outcome:
    rng = random.Random(17)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(20):
            start = rng.randrange(size - 4 * MiB)
            for offset in range(start, start + 2 * MiB, 128 * KiB):
                assert len(os.pread(fd, 128 * KiB, offset)) == 128 * KiB
    finally:
        os.close(fd)
    return Outcome("20 x (seek + 2 MiB)")


def whole(path: Path) -> Outcome:
    trio.run(measure.read_file, path)
    return Outcome(f"{path.stat().st_size // MiB} MiB in 1 MiB reads")


@dataclass(frozen=True)
class Pattern:
    name: str
    run: Callable[[], Outcome]
    target: float  # bytes sent / bytes read (sparse: / reads rounded out to 64 KiB blocks)
