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

Real clients (each installed by the bench when missing, skipped with one line when it cannot run):

* ``mpv``: ``--cache=no``, 5 seeks each followed by 2 s of playback (driven over its IPC socket),
  and mpv with its defaults (FUSE counts as network storage: a large read-ahead cache), one open,
  one seek, 2 s of playback;
* ``vlc``: ``cvlc --no-video`` playing 5 s of an MP4 (run as ``nobody``: VLC refuses root); its
  reads are traced with strace so the target counts them rounded out to 64 KiB blocks;
* ``minidlna``: ``minidlnad`` scanning ``movies/`` and ``shows/`` until its scan is finished;
* ``kodi``: Kodi 20 scanning a library of 4 films (each with an ``.nfo``: its offline scraper)
  into its video library, stream details extracted (its default), no thumbnails;
* ``rclone serve webdav``: over the mount (a local remote), 52 ranged GETs of 64 KiB at random
  offsets.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import re
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from benchlib import infra, measure

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
    return Outcome("replayed", rounded=_rounded(reads))


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


def _rounded(reads: list[tuple[int, int]]) -> int:
    """Bytes of the ``SPARSE_BLOCK`` blocks that ``(offset, length)`` reads touch."""
    blocks = {
        index
        for offset, length in reads
        if length > 0
        for index in range(offset // SPARSE_BLOCK, (offset + length - 1) // SPARSE_BLOCK + 1)
    }
    return len(blocks) * SPARSE_BLOCK


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(
    check: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready in {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _running(argv: list[str], log_file: Path) -> Iterator[subprocess.Popen]:
    with open(log_file, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        infra.stop_process(process)


# --- mpv --------------------------------------------------------------------------------------

MPV_SEEKS = (60.0, 400.0, 150.0, 300.0, 220.0)  # seconds into the 8-minute movie


class _MpvIpc:
    """mpv's JSON IPC: commands, and waiting for an event or a property's value."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.sock.settimeout(60)
        self.stream = self.sock.makefile("rwb")

    def command(self, *args: object) -> None:
        self.stream.write(json.dumps({"command": list(args)}).encode() + b"\n")
        self.stream.flush()

    def wait(self, event: str, name: str = "", at_least: float = 0.0) -> None:
        while line := self.stream.readline():
            message = json.loads(line)
            if message.get("event") != event:
                continue
            if not name or (message.get("name") == name and (message.get("data") or 0) >= at_least):
                return
        raise RuntimeError(f"mpv closed its IPC socket before {event} {name}")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def mpv(path: Path, seeks: tuple[float, ...], *options: str) -> Outcome:
    """mpv (no video, no audio output) paused on ``path``: each seek is followed by 2 s of
    playback, then a pause; then it quits."""
    with tempfile.TemporaryDirectory(prefix="bench-mpv-") as tmp:
        ipc = Path(tmp) / "mpv.sock"
        argv = ["mpv", "--no-config", "--vo=null", "--ao=null", "--pause", "--keep-open=always"]
        argv += [f"--input-ipc-server={ipc}", *options, str(path)]
        with _running(argv, Path(tmp) / "mpv.log") as process:
            _wait_for(ipc.exists, process, "mpv", 30)
            control = _MpvIpc(ipc)
            try:
                control.command("observe_property", 1, "time-pos")
                control.wait("playback-restart")  # loaded, paused at the start
                for position in seeks:
                    control.command("seek", position, "absolute")
                    control.wait("playback-restart")
                    control.command("set_property", "pause", False)
                    control.wait("property-change", "time-pos", position + 2)
                    control.command("set_property", "pause", True)
                control.command("quit")
                process.wait(timeout=30)
            finally:
                control.close()
    return Outcome(f"{' '.join(options) or 'defaults'}, {len(seeks)} x (seek + 2 s)")


# --- VLC --------------------------------------------------------------------------------------

_SYSCALL = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)(?: resumed>|\()(.*)$")


def traced_reads(trace: Path, target: Path) -> list[tuple[int, int]]:
    """(offset, length) of every read of ``target`` in an ``strace -f -y`` log (read(v), pread(v),
    lseek and close tracked per descriptor; calls split by another thread are joined)."""
    name, pending = str(target), {}
    positions: dict[int, int] = {}
    reads = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _SYSCALL.match(line)
        if match is None:
            continue
        pid, call, rest = match.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>")
            continue
        if "resumed>" in line:
            rest = pending.pop(pid, "") + rest
        fd_match = re.match(r"(\d+)<(.*?)>", rest)
        result = re.search(r"= (-?\d+)", rest.rsplit(")", 1)[-1])
        if fd_match is None or result is None:
            continue
        fd, value = int(fd_match.group(1)), int(result.group(1))
        if call == "openat" or fd_match.group(2) != name:
            continue
        if call in ("read", "readv") and value > 0:
            reads.append((positions.get(fd, 0), value))
            positions[fd] = positions.get(fd, 0) + value
        elif call in ("pread64", "preadv") and value > 0:
            reads.append((int(rest.rsplit(",", 1)[1].split(")")[0]), value))
        elif call == "lseek" and value >= 0:
            positions[fd] = value
        elif call == "close":
            positions.pop(fd, None)
    return reads


def vlc(path: Path, seconds: int = 5) -> Outcome:
    """``cvlc --no-video`` playing the first ``seconds`` of ``path`` as ``nobody`` (VLC refuses
    root; the mount has ``allow_other``), under strace for its reads."""
    with tempfile.TemporaryDirectory(prefix="bench-vlc-") as tmp:
        os.chown(tmp, *_nobody())
        trace = Path(tmp) / "strace.log"
        player = ["cvlc", "-q", "--no-video", "--aout", "dummy", "--play-and-exit"]
        player += ["--stop-time", str(seconds), str(path)]
        argv = ["strace", "-f", "-y", "-qq", "-o", str(trace)]
        argv += ["-e", "trace=openat,read,readv,pread64,preadv,lseek,close"]
        argv += ["runuser", "-u", "nobody", "--", "env", f"HOME={tmp}", *player]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        reads = traced_reads(trace, path)
        if result.returncode != 0 or not reads:
            raise RuntimeError(
                f"cvlc read nothing of {path.name} as nobody (exit {result.returncode}): "
                f"{result.stderr.strip()[-200:]}"
            )
    offsets = sorted(offset for offset, _ in reads)
    note = f"{len(reads)} reads, {offsets[0] // MiB}-{offsets[-1] // MiB} MiB, {seconds} s"
    return Outcome(note, rounded=_rounded(reads))


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


# --- minidlna ---------------------------------------------------------------------------------

MINIDLNA_CONF = """media_dir=V,{movies}
media_dir=V,{shows}
db_dir={work}/db
log_dir={work}
port={port}
network_interface=lo
inotify=no
notify_interval=900
"""


def minidlna(directories: tuple[Path, Path], timeout: float = 600) -> Outcome:
    """``minidlnad`` (debug, foreground) scanning ``movies/`` and ``shows/``; stopped when its
    log says the scan finished."""
    with tempfile.TemporaryDirectory(prefix="bench-minidlna-") as tmp:
        work = Path(tmp)
        movies, shows = directories
        conf = work / "minidlna.conf"
        conf.write_text(
            MINIDLNA_CONF.format(movies=movies, shows=shows, work=work, port=_free_port())
        )
        log_file = work / "out.log"
        argv = ["minidlnad", "-d", "-f", str(conf), "-P", str(work / "minidlna.pid")]
        with _running(argv, log_file) as process:

            def finished() -> bool:
                return "Initial file scan completed" in log_file.read_text(errors="replace")

            _wait_for(finished, process, "minidlnad", timeout)
        files = set(re.findall(r"Container: '.*' \[(.*)\]", log_file.read_text(errors="replace")))
    return Outcome(f"{len(files)} files parsed")


# --- Kodi -------------------------------------------------------------------------------------

KODI_ADVANCED = """<advancedsettings version="1.0">
  <loglevel>1</loglevel>
  <videolibrary><importwatchedstate>false</importwatchedstate></videolibrary>
</advancedsettings>
"""
# The web server for JSON-RPC on loopback without a password; no thumbnails from the files (the
# stream details, what a library scan reads the files for, stay on: Kodi's default).
KODI_SETTINGS = """<settings version="2">
  <setting id="services.webserver">true</setting>
  <setting id="services.webserverport">{port}</setting>
  <setting id="services.webserverauthentication">false</setting>
  <setting id="services.esenabled">false</setting>
  <setting id="services.zeroconf">false</setting>
  <setting id="services.upnp">false</setting>
  <setting id="general.addonupdates">2</setting>
  <setting id="myvideos.extractflags">true</setting>
  <setting id="myvideos.extractthumb">false</setting>
  <setting id="myvideos.extractchapterthumbs">false</setting>
</settings>
"""
KODI_SOURCES = """<sources>
  <video>
    <default pathversion="1"></default>
    <source><name>Movies</name><path pathversion="1">{path}</path></source>
  </video>
</sources>
"""
# Kodi 20's video database; the source's content (movies, the offline "local information only"
# scraper) is a row of its path table: Kodi has no JSON-RPC method to set it.
KODI_DATABASE = "MyVideos121.db"
KODI_CONTENT = (
    "INSERT INTO path (strPath, strContent, strScraper, scanRecursive, useFolderNames, "
    "strSettings, noUpdate, exclude, allAudio) "
    "VALUES (?, 'movies', 'metadata.local', 2147483647, 0, '', 0, 0, 0)"
)


class _KodiRpc:
    """Kodi's JSON-RPC over its web server."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/jsonrpc"
        self.http = httpx.Client(timeout=30)

    def call(self, method: str, **params: object) -> object:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        answer = self.http.post(self.url, json=body).json()
        if "error" in answer:
            raise RuntimeError(f"Kodi {method}: {answer['error']}")
        return answer["result"]

    def answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.call("JSONRPC.Ping") == "pong"
        return False


def kodi(directory: Path, timeout: float = 600) -> Outcome:
    """Kodi 20 (``kodi --standalone`` under ``xvfb-run``, as ``nobody``: the mount has
    ``allow_other``) scanning ``directory`` into its video library as movies with the offline
    "local information only" scraper, driven over JSON-RPC; it quits when the scan is over. Its
    reads are traced with strace: the note gives them rounded out to 64 KiB blocks."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-kodi-") as tmp:
        home = Path(tmp)
        userdata = home / ".kodi" / "userdata"
        userdata.mkdir(parents=True)
        source = f"{directory}/"
        (userdata / "advancedsettings.xml").write_text(KODI_ADVANCED)
        (userdata / "guisettings.xml").write_text(KODI_SETTINGS.format(port=port))
        (userdata / "sources.xml").write_text(KODI_SOURCES.format(path=source))
        subprocess.run(["chown", "-R", "nobody:", str(home)], check=True)
        trace = home / "strace.log"
        argv = ["strace", "-f", "--seccomp-bpf", "-y", "-qq", "-o", str(trace)]
        argv += ["-e", "trace=openat,read,readv,pread64,preadv,lseek,close"]
        argv += ["runuser", "-u", "nobody", "--", "env", f"HOME={home}", "KODI_AE_SINK=NULL"]
        argv += ["xvfb-run", "-a", "kodi", "--standalone", "--windowing=x11"]
        with open(home / "out.log", "wb") as out:
            # A session of its own: runuser does not pass a SIGTERM on to Kodi.
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        rpc = _KodiRpc(port)
        log = home / ".kodi" / "temp" / "kodi.log"
        try:
            _wait_for(rpc.answers, process, "kodi", 120)
            with contextlib.closing(sqlite3.connect(userdata / "Database" / KODI_DATABASE)) as db:
                db.execute(KODI_CONTENT, (source,))
                db.commit()
            rpc.call("VideoLibrary.Scan", directory=source, showdialogs=False)

            def finished() -> bool:
                return "VideoInfoScanner: Finished scan" in log.read_text(errors="replace")

            _wait_for(finished, process, "kodi scan", timeout)
            movies = rpc.call("VideoLibrary.GetMovies", properties=["streamdetails"])
            rpc.call("Application.Quit")
            process.wait(timeout=60)
        finally:
            rpc.http.close()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        files = [Path(root, name) for root, _, names in os.walk(directory) for name in names]
        rounded = 0
        for path in files:
            reads = traced_reads(trace, path)
            rounded += _rounded(reads)
            spans = ", ".join(f"{length} B at {offset}" for offset, length in reads)
            infra.log(f"kodi read {path.name}: {spans or 'nothing'}")
    assert isinstance(movies, dict)
    found = movies.get("movies", [])
    with_streams = sum(1 for movie in found if movie.get("streamdetails", {}).get("video"))
    if not found:
        raise RuntimeError(f"kodi scanned {directory} into an empty library")
    return Outcome(
        f"Kodi {kodi_version()}, {len(found)} movies, {with_streams} with streams, "
        f"reads in 64 KiB blocks {rounded / 1e6:.2f} MB"
    )


def kodi_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "kodi"], capture_output=True, text=True
        )
        return result.stdout.split(":")[-1].split("+")[0] or "?"
    return "?"


# --- rclone serve webdav ----------------------------------------------------------------------


def rclone_webdav(directory: Path, name: str, reads: int = 52) -> Outcome:
    """``rclone serve webdav`` of ``directory`` (a local remote: the mount); ``reads`` GETs of
    64 KiB at random offsets of ``name``."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-rclone-") as tmp:
        argv = ["rclone", "serve", "webdav", str(directory), "--addr", f"127.0.0.1:{port}"]
        argv += ["--config", os.devnull, "--read-only"]
        with _running(argv, Path(tmp) / "rclone.log") as process:
            url = f"http://127.0.0.1:{port}/{name}"

            def listening() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.head(url, timeout=5).status_code == 200
                return False

            _wait_for(listening, process, "rclone serve webdav", 60)
            size = (directory / name).stat().st_size
            rng = random.Random(17)
            with httpx.Client(timeout=60) as http:
                for _ in range(reads):
                    offset = rng.randrange(size - MiB)
                    headers = {"Range": f"bytes={offset}-{offset + 64 * KiB - 1}"}
                    response = http.get(url, headers=headers)
                    assert response.status_code == 206 and len(response.content) == 64 * KiB
    over_http = reads * 64 * KiB / 1e6
    return Outcome(
        f"rclone {rclone_version()}, {reads} x GET 64 KiB = {over_http:.2f} MB over HTTP"
    )


def rclone_version() -> str:
    words = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split()
    return words[1] if len(words) > 1 else "?"


@dataclass(frozen=True)
class Pattern:
    name: str
    run: Callable[[], Outcome]
    target: float  # bytes sent / bytes read (sparse: / reads rounded out to 64 KiB blocks)
    needs: str = ""  # the client's binary: the pattern is skipped when it cannot be installed
