"""Real media files for the demo and the probe tests, generated with ffmpeg (small, a few
seconds each)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

# name -> extra ffmpeg output arguments. MP4 keeps ffmpeg's default layout: moov atom at the end,
# so a probe must read the tail of the file.
MEDIA = {
    "Big Test Movie (2024)/Big.Test.Movie.2024.1080p.mkv": [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
    ],
    "Big Test Movie (2024)/Big.Test.Movie.2024.1080p.en.srt": None,
    "Test Show S01/Test.Show.S01E01.mp4": [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
    ],
    "Test Show S01/Test.Show.S01E02.mp4": ["-c:v", "mpeg4", "-c:a", "mp3"],
}

SUBTITLE = (
    "1\n00:00:00,000 --> 00:00:02,000\nHello from rdfs\n\n"
    "2\n00:00:02,000 --> 00:00:04,000\nStill here\n"
)


def make_media(root: Path, seconds: float = 3.0) -> list[Path]:
    """Write the files of :data:`MEDIA` under ``root`` (skipping those already there)."""
    made = []
    for index, (relative, codec_args) in enumerate(MEDIA.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            if codec_args is None:
                path.write_text(SUBTITLE)
            else:
                subprocess.run(
                    [
                        "ffmpeg",
                        "-loglevel",
                        "error",
                        "-y",
                        "-f",
                        "lavfi",
                        "-i",
                        f"testsrc=duration={seconds}:size=320x240:rate=25",
                        "-f",
                        "lavfi",
                        "-i",
                        f"sine=frequency={440 + 110 * index}:duration={seconds}",
                        *codec_args,
                        "-shortest",
                        str(path),
                    ],  # fmt: skip
                    check=True,
                )
        made.append(path)
    return made


def probe(path: Path | str) -> dict:
    """ffprobe's view of a file: duration, format and streams (what a media server reads)."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(result.stdout)
    return {
        "duration": data["format"].get("duration"),
        "format": data["format"].get("format_name"),
        "streams": [
            (
                s.get("codec_type"),
                s.get("codec_name"),
                s.get("width"),
                s.get("height"),
                s.get("duration"),
            )
            for s in data["streams"]
        ],
    }
