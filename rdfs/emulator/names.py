"""Realistic-looking synthetic releases (movies and TV seasons) for demos and unknown magnets."""

from __future__ import annotations

import random

from .model import FileSpec

_MOVIES = [
    "Big Buck Bunny",
    "Sintel",
    "Tears of Steel",
    "Elephants Dream",
    "Cosmos Laundromat",
    "Spring",
    "Agent 327",
    "Caminandes",
    "Glass Half",
    "Hero",
    "Charge",
    "Wing It",
    "The Daily Dweebs",
    "Sprite Fright",
    "Coffee Run",
    "Llamigos",
]
_SHOWS = [
    "Open Movie Chronicles",
    "The Render Farm",
    "Blender Nights",
    "Pixel Valley",
    "Keyframe Stories",
    "Node Tree",
    "Viewport",
    "Cycles and Eevee",
]
_QUALITIES = ["1080p.WEB-DL.x264", "2160p.BluRay.x265", "720p.HDTV.x264", "1080p.BluRay.x264"]
_GIB = 1 << 30
_MIB = 1 << 20


def _dotted(title: str) -> str:
    return ".".join(title.split())


def movie(rng: random.Random) -> tuple[str, list[FileSpec]]:
    title = rng.choice(_MOVIES)
    year = rng.randint(1995, 2025)
    quality = rng.choice(_QUALITIES)
    stem = f"{_dotted(title)}.{year}.{quality}"
    files = [FileSpec(f"/{stem}.mkv", rng.randint(1 * _GIB, 6 * _GIB))]
    if rng.random() < 0.5:
        files.append(FileSpec(f"/{stem}.nfo", rng.randint(1_000, 8_000)))
    if rng.random() < 0.5:
        files.append(FileSpec(f"/Subs/{stem}.en.srt", rng.randint(40_000, 120_000)))
    return f"{title} ({year})", files


def season(rng: random.Random) -> tuple[str, list[FileSpec]]:
    title = rng.choice(_SHOWS)
    number = rng.randint(1, 6)
    quality = rng.choice(_QUALITIES)
    name = f"{_dotted(title)}.S{number:02d}.{quality}"
    files = [
        FileSpec(
            f"/{_dotted(title)}.S{number:02d}E{episode:02d}.{quality}.mkv",
            rng.randint(200 * _MIB, 1200 * _MIB),
        )
        for episode in range(1, rng.randint(3, 10) + 1)
    ]
    return name, files


def release(seed: str) -> tuple[str, list[FileSpec]]:
    """A deterministic release (torrent name and files) for ``seed``."""
    rng = random.Random(seed)
    return movie(rng) if rng.random() < 0.6 else season(rng)
