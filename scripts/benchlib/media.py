"""The files the benchmark reads, made once and kept in the bench cache directory.

* ``Seq/big.bin``: real bytes (the emulator's synthetic content, so any range can be checked),
  ``Shaped/shaped.bin`` the same kind, smaller (the shaped link runs at 25 MB/s);
* sparse files (holes read as zeros) for time to first byte, random reads, streaming, parallel;
* ``Scan/``: a media library whose heads and tails are real and whose bodies are holes: real
  MP4s (moov at the end) and MKVs made by ffmpeg, each grown to hundreds of MiB to GiBs by
  growing its ``mdat`` (MP4: the moov moves to the tail, its sample offsets stay valid) or by an
  EBML Void element (MKV: the Segment size is patched), so ffprobe sees a valid file;
* ``Patterns/``: what the read-pattern section reads, each file read once per run (cold): clips
  for ffprobe and for mediainfo (MKV, MP4 with its moov at the end, faststart MP4, HEVC), an
  audio-only MP4, sparse files for the WebDAV loops, the seeks and the whole-file read, a real
  8-minute 720p movie (MKV and MP4, every byte real: players seek in it) and ``DLNA/``, a small
  library of grown clips (movie and season torrents) for a media server's scan;
* ``meta/``: on tmpfs, N directories of 5 empty sparse files, the shape of a big RD library.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rdfs.emulator.content import synthetic_bytes

MiB = 1 << 20
GiB = 1 << 30
SEED = "rdfs-bench"
JELLYFIN_FFPROBE = [
    "-analyzeduration",
    "200M",
    "-probesize",
    "1G",
    "-threads",
    "0",
    "-v",
    "warning",
    "-print_format",
    "json",
    "-show_streams",
    "-show_chapters",
    "-show_format",
]


@dataclass(frozen=True)
class Library:
    media: Path  # nginx /media/ and the emulator's --media
    meta: Path  # nginx /meta/ (tmpfs)
    seq: Path
    shaped: Path
    random: Path
    stream: Path
    parallel: list[Path]
    ttfb: list[Path]
    scan: list[Path]
    probe_bytes: dict[str, int]  # scan file name -> bytes ffprobe reads from it (local file)
    meta_files: int


def _write_synthetic(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        for offset in range(0, size, 16 * MiB):
            out.write(synthetic_bytes(SEED, offset, min(16 * MiB, size - offset)))
    partial.rename(path)


def expected(offset: int, length: int) -> bytes:
    """What ``Seq/big.bin`` and ``Shaped/shaped.bin`` hold at ``offset``."""
    return synthetic_bytes(SEED, offset, length)


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as out:
            out.truncate(size)
    return path


# --- real media, grown with holes ----------------------------------------------------------------

TEMPLATES = {
    name: args.split()
    for name, args in {
        "h264-aac.mp4": "-c:v libx264 -preset ultrafast -c:a aac",
        "mpeg4-mp3.mp4": "-c:v mpeg4 -c:a libmp3lame",
        "h264-aac.mkv": "-c:v libx264 -preset ultrafast -c:a aac",
        "h264-2audio.mkv": "-map 0:v -map 1:a -map 1:a -c:v libx264 -preset ultrafast -c:a aac",
    }.items()
}


def _template(directory: Path, name: str, codec_args: list[str]) -> Path:
    path = directory / name
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        sources = "-f lavfi -i testsrc=duration=20:size=640x360:rate=25 "
        sources += "-f lavfi -i sine=frequency=440:duration=20"
        tmp = path.with_suffix(".tmp" + path.suffix)
        argv = ["ffmpeg", "-loglevel", "error", "-y", *sources.split(), *codec_args, "-shortest"]
        subprocess.run([*argv, str(tmp)], check=True)
        tmp.rename(path)
    return path


def _grow_with_free(template: bytes, out: Path, size: int) -> None:
    """A faststart MP4 (its mdat is the last box) grown by a top-level ``free`` box at the end."""
    hole = size - len(template)
    with open(out, "wb") as handle:
        handle.write(template + struct.pack(">I4sQ", 1, b"free", hole))
        handle.truncate(size)


def _boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level MP4 boxes: (type, offset, size)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append((kind, offset, size))
        offset += size
    return boxes


def _grow_mp4(template: bytes, out: Path, size: int) -> None:
    boxes = _boxes(template)
    kinds = [kind for kind, _, _ in boxes]
    free, mdat = kinds.index(b"free"), kinds.index(b"mdat")
    assert mdat == free + 1 and boxes[free][2] == 8, kinds
    _, mdat_at, mdat_size = boxes[mdat]
    head, payload, tail = (
        template[: boxes[free][1]],
        template[mdat_at + 8 : mdat_at + mdat_size],
        template[mdat_at + mdat_size :],
    )
    hole = size - len(template)
    # free(8) + mdat(8) become one 64-bit mdat header (16): payload and sample offsets stay put.
    header = struct.pack(">I4sQ", 1, b"mdat", 16 + len(payload) + hole)
    with open(out, "wb") as handle:
        handle.write(head + header + payload)
        handle.seek(hole, os.SEEK_CUR)
        handle.write(tail)


def _grow_mkv(template: bytes, out: Path, size: int) -> None:
    segment = template.index(b"\x18\x53\x80\x67")
    assert template[segment + 4] == 0x01, "expected an 8-byte Segment size"
    old = int.from_bytes(template[segment + 5 : segment + 12], "big")
    hole = size - len(template) - 9
    patched = bytearray(template)
    patched[segment + 5 : segment + 12] = (old + 9 + hole).to_bytes(7, "big")
    void = b"\xec\x01" + hole.to_bytes(7, "big")  # EBML Void, 8-byte size: its body is the hole
    with open(out, "wb") as handle:
        handle.write(bytes(patched) + void)
        handle.truncate(size)


def _scan_library(root: Path, count: int, template_dir: Path) -> list[Path]:
    templates = {name: _template(template_dir, name, args) for name, args in TEMPLATES.items()}
    rng = random.Random(42)
    files = []
    for index in range(count):
        name = list(templates)[index % len(templates)]
        show = f"Show.{index // 10:02d}"
        out = root / show / f"{show}.E{index % 10:02d}.{name}"
        files.append(out)
        size = rng.randrange(600 * MiB, 4 * GiB)
        if out.exists() and out.stat().st_size == size:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        template = templates[name].read_bytes()
        (_grow_mp4 if name.endswith(".mp4") else _grow_mkv)(template, out, size)
    return files


def _probe_bytes(files: list[Path], cache_file: Path) -> dict[str, int]:
    """Bytes ffprobe (Jellyfin's arguments) reads from each local file: libavformat's own count."""
    known = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    for path in files:
        if path.name not in known:
            result = subprocess.run(
                ["ffprobe", *JELLYFIN_FFPROBE, "-v", "debug", "-i", str(path)],
                capture_output=True,
                text=True,
            )
            counts = re.findall(r"Statistics: (\d+) bytes read", result.stderr)
            if result.returncode != 0 or not counts:
                raise RuntimeError(
                    f"ffprobe cannot read the bench file {path}: {result.stderr[-500:]}"
                )
            known[path.name] = sum(map(int, counts))
    cache_file.write_text(json.dumps(known))
    return {path.name: known[path.name] for path in files}


# The read-pattern clips: template arguments, how the template grows.
PATTERN_CLIPS = {
    "h264-aac.mkv": "-c:v libx264 -preset ultrafast -c:a aac",
    "h264-aac.mp4": "-c:v libx264 -preset ultrafast -c:a aac",
    "faststart.mp4": "-c:v libx264 -preset ultrafast -c:a aac -movflags +faststart",
    "hevc-aac.mp4": "-c:v libx265 -preset ultrafast -x265-params log-level=error -c:a aac",
}
AUDIO_ONLY = "-map 1:a -c:a aac"


# A real movie for the players: 30 s of 720p CBR H.264 (6 Mbit/s, a keyframe every 2 s) + AAC,
# looped 16 times by stream copy (8 minutes, ~370 MB).
MOVIE_BASE = (
    "-f lavfi -i testsrc=duration=30:size=1280x720:rate=25"
    " -f lavfi -i sine=frequency=440:duration=30"
    " -c:v libx264 -preset ultrafast -g 50 -b:v 6M -maxrate 6M -minrate 6M -bufsize 3M"
    " -x264-params nal-hrd=cbr -c:a aac -b:a 128k -shortest"
)
MOVIE_LOOPS = 15
# The DLNA library: torrent directory -> files (name, clip template).
DLNA_LIBRARY = {
    "DLNA.Film.One.2019.1080p": [("DLNA.Film.One.2019.1080p.mkv", "h264-aac.mkv")],
    "DLNA.Film.Two.2020.1080p": [("DLNA.Film.Two.2020.1080p.mp4", "h264-aac.mp4")],
    "DLNA.Film.Three.2021.1080p": [("DLNA.Film.Three.2021.1080p.mp4", "faststart.mp4")],
    "DLNA.Film.Four.2022.2160p": [("DLNA.Film.Four.2022.2160p.mp4", "hevc-aac.mp4")],
    "DLNA.Show.S01.1080p": [
        (f"DLNA.Show.S01E0{episode}.1080p.{name.rsplit('.', 1)[1]}", name)
        for episode, name in enumerate(PATTERN_CLIPS, start=1)
    ],
    "DLNA.Other.Show.S02.720p": [
        (f"DLNA.Other.Show.S02E0{episode}.720p.{name.rsplit('.', 1)[1]}", name)
        for episode, name in enumerate(PATTERN_CLIPS, start=1)
    ],
}

# Kodi's library (torrents beside the DLNA ones): the DLNA films under other names (hard links:
# cold for rdfs), each with a full .nfo (Kodi's offline scraper adds only what an .nfo describes).
KODI_LIBRARY = {
    f"Kodi.{torrent.removeprefix('DLNA.')}": (
        f"{torrent}/{files[0][0]}",
        f"Kodi.{files[0][0].removeprefix('DLNA.')}",
    )
    for torrent, files in DLNA_LIBRARY.items()
    if ".Film." in torrent
}
KODI_NFO = "<movie><title>{title}</title><year>{year}</year></movie>\n"


@dataclass(frozen=True)
class PatternFiles:
    probe: list[Path]  # ffprobe: 3 of each clip kind
    mediainfo: list[Path]  # one of each clip kind
    audio: Path  # an audio-only MP4 (moov at the end)
    webdav: Path
    seeks: Path
    whole: Path
    rclone: Path  # sparse, read through ``rclone serve webdav``
    mpv: Path  # the real movie (MKV), for mpv with its cache off
    mpv_cached: Path  # the same bytes under another name (cold), for mpv's defaults
    vlc: Path  # the real movie as an MP4 (moov at the end), for VLC audio-only
    dlna: Path  # its subdirectories are torrents of the media servers' libraries (DLNA, Kodi)


def _grown(template: Path, out: Path, size: int) -> Path:
    if out.exists() and out.stat().st_size == size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    data = template.read_bytes()
    if template.name.startswith("faststart"):
        _grow_with_free(data, out, size)
    elif template.suffix in (".mp4", ".m4a"):
        _grow_mp4(data, out, size)
    else:
        _grow_mkv(data, out, size)
    return out


def _movie(template_dir: Path, name: str) -> Path:
    """The players' real movie (made once): ``MOVIE_BASE`` encoded, then looped by stream copy."""
    out, base = template_dir / name, template_dir / "movie-base.mkv"
    quiet = ["ffmpeg", "-loglevel", "error", "-y"]
    if not base.exists():
        tmp = base.with_suffix(".tmp.mkv")
        subprocess.run([*quiet, *MOVIE_BASE.split(), str(tmp)], check=True)
        tmp.rename(base)
    if not out.exists():
        tmp = out.with_suffix(".tmp" + out.suffix)
        loop = ["-stream_loop", str(MOVIE_LOOPS), "-i", str(base), "-c", "copy"]
        subprocess.run([*quiet, *loop, str(tmp)], check=True)
        tmp.rename(out)
    return out


def _linked(source: Path, out: Path) -> Path:
    """``source`` under another name (a hard link: a file of its own for rdfs, no bytes copied)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, out)
    return out


def pattern_files(media: Path, template_dir: Path) -> PatternFiles:
    """The files of the read-pattern section (made once; clips grown to 700 MiB..2 GiB)."""
    root = media / "Patterns"
    templates = {
        name: _template(template_dir, name, args.split()) for name, args in PATTERN_CLIPS.items()
    }
    audio_template = _template(template_dir, "audio-only.m4a", AUDIO_ONLY.split())
    rng = random.Random(17)
    probe: list[Path] = []
    mediainfo: list[Path] = []
    for name, template in templates.items():
        for copy in range(4):
            out = root / ("MediaInfo" if copy == 3 else "Probe") / f"c{copy}.{name}"
            (mediainfo if copy == 3 else probe).append(
                _grown(template, out, rng.randrange(700 * MiB, 2 * GiB))
            )
    return PatternFiles(
        probe=probe,
        mediainfo=mediainfo,
        audio=_grown(audio_template, root / "Audio" / "audio-only.m4a", 300 * MiB),
        webdav=_sparse(root / "WebDAV" / "webdav.bin", 4 * GiB),
        seeks=_sparse(root / "Seeks" / "movie.mkv", 8 * GiB),
        whole=_sparse(root / "Whole" / "whole.bin", 512 * MiB),
        rclone=_sparse(root / "WebDAV" / "rclone.bin", 4 * GiB),
        mpv=_linked(_movie(template_dir, "movie.mkv"), root / "Player" / "mpv.mkv"),
        mpv_cached=_linked(_movie(template_dir, "movie.mkv"), root / "Player" / "mpv-cache.mkv"),
        vlc=_linked(_movie(template_dir, "movie.mp4"), root / "Player" / "vlc.mp4"),
        dlna=_dlna_library(root / "DLNA", templates, rng),
    )


def _dlna_library(root: Path, templates: dict[str, Path], rng: random.Random) -> Path:
    for torrent, files in DLNA_LIBRARY.items():
        for name, template in files:
            _grown(templates[template], root / torrent / name, rng.randrange(700 * MiB, 2 * GiB))
    for torrent, (source, name) in KODI_LIBRARY.items():
        movie = _linked(root / source, root / torrent / name)
        words = name.split(".")  # Kodi, title..., year, resolution, extension
        nfo = movie.with_suffix(".nfo")
        if not nfo.exists():
            nfo.write_text(KODI_NFO.format(title=" ".join(words[1:-3]), year=words[-3]))
    return root


def _meta_tree(root: Path, directories: int) -> int:
    marker = root.with_name(f"{root.name}.complete-{directories}")
    if not marker.exists():
        subprocess.run(
            ["rm", "-rf", str(root), *map(str, root.parent.glob(f"{root.name}.complete-*"))],
            check=True,
        )
        for index in range(directories):
            directory = root / f"Bulk.Release.{index:06d}"
            directory.mkdir(parents=True)
            for part in range(1, 6):
                with open(directory / f"Bulk.Release.{index:06d}.part{part}.mkv", "wb") as handle:
                    handle.truncate(100 * MiB)
        marker.touch()
    return directories * 5


def build(
    cache: Path,
    meta_root: Path,
    *,
    seq_size: int,
    shaped_size: int,
    ttfb_files: int,
    scan_files: int,
    meta_dirs: int,
) -> Library:
    media = cache / "www" / "media"
    seq, shaped = media / "Seq" / "big.bin", media / "Shaped" / "shaped.bin"
    _write_synthetic(seq, seq_size)
    _write_synthetic(shaped, shaped_size)
    scan = _scan_library(media / "Scan", scan_files, cache / "templates")
    return Library(
        media=media,
        meta=meta_root,
        seq=seq,
        shaped=shaped,
        random=_sparse(media / "Random" / "random.bin", 4 * GiB),
        stream=_sparse(media / "Stream" / "movie.mkv", 8 * GiB),
        parallel=[_sparse(media / "Parallel" / f"p{i}.bin", 64 * MiB) for i in range(8)],
        ttfb=[_sparse(media / "TTFB" / f"t{i:03d}.bin", GiB + i) for i in range(ttfb_files)],
        scan=scan,
        probe_bytes=_probe_bytes(scan, cache / "probe-bytes.json"),
        meta_files=_meta_tree(meta_root, meta_dirs),
    )
