"""The measurements: each one reads through a path (a mount, or a URL) and returns numbers.

File reads on a FUSE mount block, so they run in trio worker threads; HTTP peers use httpx on
trio (the in-process limit) or ``curl`` (the physical limit).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import trio

from benchlib.media import JELLYFIN_FFPROBE, expected

KiB = 1 << 10
MiB = 1 << 20
MB = 1e6
CHUNK = MiB


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- sequential ---------------------------------------------------------------------------------


def _read_all(path: Path, verify: bool) -> int:
    """Read ``path`` in 1 MiB reads; with ``verify``, compare every 64th MiB with the expected
    bytes."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            if verify and total % (64 * MiB) == 0 and view[:count] != expected(total, count):
                raise AssertionError(f"{path}: wrong bytes at offset {total}")
            total += count
    return total


def drop_page_cache(path: Path) -> None:
    """Forget the kernel's cached pages of ``path`` (the next read goes to the filesystem)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def read_file(path: Path, verify: bool = False) -> float:
    """MB/s of one sequential read of the whole file."""
    size = path.stat().st_size
    start = time.perf_counter()
    got = await trio.to_thread.run_sync(_read_all, path, verify)
    elapsed = time.perf_counter() - start
    assert got == size, (path, got, size)
    return size / MB / elapsed


async def curl(url: str, byte_range: str | None = None) -> tuple[int, float]:
    """(bytes, seconds) of ``curl -o /dev/null``."""
    argv = ["curl", "-sS", "-o", os.devnull, "-w", "%{size_download} %{time_total}", url]
    if byte_range:
        argv[1:1] = ["-r", byte_range]
    result = await trio.run_process(argv, capture_stdout=True)
    size, seconds = result.stdout.split()
    return int(size), float(seconds)


async def curl_speed(url: str) -> float:
    size, seconds = await curl(url)
    return size / MB / seconds


async def httpx_speed(url: str) -> float:
    async with httpx.AsyncClient(timeout=120) as http:
        start = time.perf_counter()
        received = 0
        async with http.stream("GET", url) as response:
            async for piece in response.aiter_raw():
                received += len(piece)
        elapsed = time.perf_counter() - start
    return received / MB / elapsed


# --- time to first byte -------------------------------------------------------------------------


def _open_read(path: Path, offset: int) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, 64 * KiB, offset)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    assert len(data) == 64 * KiB
    return elapsed


def ttfb_offsets(size: int) -> tuple[int, int, int]:
    """Start, middle and tail of a file (4 KiB aligned)."""
    return 0, (size // 2) & ~4095, (size - 64 * KiB) & ~4095


async def cold_opens(paths: Sequence[Path], spacing: float) -> list[float]:
    """Open + 64 KiB read of each (never read) file, rotating start / middle / tail.

    The opens are ``spacing`` seconds apart: each needs an unrestrict, and a faster series would
    measure the client's API rate limit (250 calls/minute) instead of the time to first byte.
    """
    samples = []
    for index, path in enumerate(paths):
        next_at = trio.current_time() + spacing
        offset = ttfb_offsets(path.stat().st_size)[index % 3]
        samples.append(await trio.to_thread.run_sync(_open_read, path, offset))
        await trio.sleep_until(next_at)
    return samples


async def unrestrict_rtts(
    api_url: str, token: str, links: Sequence[str], spacing: float
) -> list[float]:
    """Round trips of ``POST /unrestrict/link`` on a keep-alive connection (the API part of a cold
    open), ``spacing`` seconds apart like the cold opens (an idle machine answers more slowly)."""
    samples = []
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        await api.get("/time")
        for link in links:
            next_at = trio.current_time() + spacing
            start = time.perf_counter()
            response = await api.post("/unrestrict/link", data={"link": link})
            samples.append(time.perf_counter() - start)
            response.raise_for_status()
            await trio.sleep_until(next_at)
    return samples


async def ranged_gets(
    url: str, offsets: Sequence[int], size: int = 64 * KiB, spacing: float = 0.0
) -> list[float]:
    """Latencies of keep-alive ranged GETs of ``size`` bytes (the download part of a read)."""
    samples = []
    async with httpx.AsyncClient(timeout=30) as http:
        await http.get(url, headers={"Range": "bytes=0-0"})  # the connection is open before timing
        for offset in offsets:
            next_at = trio.current_time() + spacing
            start = time.perf_counter()
            response = await http.get(url, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
            samples.append(time.perf_counter() - start)
            assert response.status_code == 206 and len(response.content) == size
            await trio.sleep_until(next_at)
    return samples


# --- random reads -------------------------------------------------------------------------------


async def warm_ranges(url: str, offsets: Sequence[int], margin: int = 128 * KiB) -> None:
    """Read ``margin`` bytes on each side of every offset once, untimed, with ranged GETs.

    The random-read file is sparse: the server's kernel fills a hole's pages on the first read of
    them, so whichever reader came first would pay that for the one after it (~0.03 ms a read).
    """
    async with httpx.AsyncClient(timeout=30) as http:
        for offset in offsets:
            start = max(0, offset - margin)
            response = await http.get(
                url, headers={"Range": f"bytes={start}-{offset + margin - 1}"}
            )
            assert response.status_code == 206


def random_offsets(size: int, count: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, size - 64 * KiB) & ~4095 for _ in range(count)]


def _random_reads(path: Path, offsets: Sequence[int]) -> list[float]:
    samples = []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, path.stat().st_size // 3)  # resolve the link before timing
        for offset in offsets:
            start = time.perf_counter()
            data = os.pread(fd, 64 * KiB, offset)
            samples.append(time.perf_counter() - start)
            assert len(data) == 64 * KiB
    finally:
        os.close(fd)
    return samples


async def random_reads(path: Path, offsets: Sequence[int]) -> list[float]:
    return await trio.to_thread.run_sync(_random_reads, path, offsets)


# --- library scan -------------------------------------------------------------------------------


async def scan(paths: Sequence[Path], concurrency: int) -> float:
    """Wall time of ffprobe (Jellyfin's arguments) over every file, ``concurrency`` at a time."""
    limiter = trio.CapacityLimiter(concurrency)
    failures: list[str] = []

    async def probe(path: Path) -> None:
        async with limiter:
            result = await trio.run_process(
                ["ffprobe", *JELLYFIN_FFPROBE, "-i", str(path)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if result.returncode != 0 or b'"streams"' not in result.stdout:
                failures.append(f"{path.name}: {result.stderr.decode(errors='replace')[-200:]}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(probe, path)
    elapsed = time.perf_counter() - start
    if failures:
        raise AssertionError(f"{len(failures)} probes failed, e.g. {failures[0]}")
    return elapsed


# --- streaming with seeks -------------------------------------------------------------------------


@dataclass
class Playback:
    stalls: dict[str, int] = field(default_factory=dict)  # by part of the playback
    stall_seconds: float = 0.0
    seek_latencies: list[float] = field(default_factory=list)
    # Download requests started while replaying the recent window, for bytes read or asked for
    # before it.
    back_seek_refetches: int = -1


def _play(
    fd: int,
    positions: Callable[[int], int],
    chunks: int,
    rate: float,
    result: Playback,
    part: str,
    seeks: int = 1,
) -> None:
    """Read ``chunks`` 256 KiB chunks at ``rate`` bytes/s; the first ``seeks`` are seeks (timed
    apart).

    A chunk that arrives after its due time (the schedule starts once the seeks were served) is a
    stall; the schedule then restarts from that chunk, as a player rebuffers.
    """
    interval = 256 * KiB / rate
    result.stalls[part] = 0
    for index in range(seeks):
        start = time.perf_counter()
        os.pread(fd, 256 * KiB, positions(index))
        result.seek_latencies.append(time.perf_counter() - start)
    due = time.perf_counter()
    for index in range(seeks, chunks):
        due += interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        data = os.pread(fd, 256 * KiB, positions(index))
        late = time.perf_counter() - due
        if late > interval:  # more than one chunk behind: the player's small buffer ran dry
            result.stalls[part] += 1
            result.stall_seconds += late
            due = time.perf_counter()
        assert len(data) == 256 * KiB


Refetches = Callable[[float, float, Sequence[tuple[int, int]]], int]


def _streaming(path: Path, bitrate: float, seconds: float, refetches: Refetches) -> Playback:
    """Play ``path`` at twice ``bitrate`` with seeks; ``refetches(t0, t1, read)`` counts the
    download requests that started between two epoch times for bytes read before (the byte
    ranges ``read``) or asked for by a request started before ``t0`` (counted once the file is
    closed: a request sent ahead during one part may end in the next, which is when the server
    logs it)."""
    rate = 2 * bitrate / 8  # bytes/s: the reader consumes at twice the bitrate
    content_rate = bitrate / 8
    chunk = 256 * KiB
    per_second = int(rate / chunk)
    result = Playback()
    fd = os.open(path, os.O_RDONLY)
    try:
        position = 0
        played = int(seconds * per_second)
        # 1. play from the start
        _play(fd, lambda i: position + i * chunk, played, rate, result, "start")
        read = [(position, position + played * chunk)]
        # 2. jump 3 minutes of content forward, play
        position = (position + int(180 * content_rate)) & ~(chunk - 1)
        _play(fd, lambda i: position + i * chunk, played, rate, result, "fwd")
        read.append((position, position + played * chunk))
        # 3. jump 4 s of content back (inside what was just read): must need no request for what
        # was read or requested before. The forward stream's request that the forward part's last
        # read made due may start a moment after the seek: read-ahead past the forward part's end
        # for a player that keeps playing, not a refetch.
        back = (position + played * chunk - int(4 * content_rate)) & ~(chunk - 1)
        back_started = time.time()
        _play(fd, lambda i: back + i * chunk, int(4 * content_rate) // chunk, rate, result, "back")
        back_ended = time.time()
        # 4. two interleaved positions in one file (two viewers of one handle), same total rate;
        # the first read at each position is a seek
        first, second = (
            path.stat().st_size // 4 & ~(chunk - 1),
            path.stat().st_size // 2 & ~(chunk - 1),
        )
        _play(
            fd,
            lambda i: (first if i % 2 else second) + (i // 2) * chunk,
            int(seconds * per_second),
            rate,
            result,
            "2pos",
            seeks=2,
        )
    finally:
        os.close(fd)
    time.sleep(0.5)  # the server logs a request cut by the close once it notices
    result.back_seek_refetches = refetches(back_started, back_ended, read)
    return result


async def streaming(path: Path, bitrate: float, seconds: float, refetches: Refetches) -> Playback:
    return await trio.to_thread.run_sync(_streaming, path, bitrate, seconds, refetches)


# --- parallel streams -----------------------------------------------------------------------------


def _read_prefix(path: Path, size: int) -> int:
    total = 0
    buffer = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as handle:
        while total < size and (count := handle.readinto(buffer)):
            total += count
    return total


def _connections(pid: int, port: int) -> int:
    try:
        return sum(
            1
            for c in psutil.Process(pid).net_connections("tcp")
            if c.raddr and c.raddr.port == port
        )
    except psutil.Error:
        return 0


async def parallel_reads(
    paths: Sequence[Path], size: int, pid: int | None, port: int
) -> tuple[float, int]:
    """(aggregate MB/s, most connections to the server seen) of reading ``size`` bytes of each
    file at once."""
    most = 0
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal most
            while pid is not None:
                most = max(most, _connections(pid, port))
                await trio.sleep(0.05)

        nursery.start_soon(watch)
        async with trio.open_nursery() as readers:
            for path in paths:
                readers.start_soon(trio.to_thread.run_sync, _read_prefix, path, size)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return len(paths) * size / MB / elapsed, most


async def parallel_curls(urls: Sequence[str], size: int) -> float:
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for url in urls:
            nursery.start_soon(curl, url, f"0-{size - 1}")
    return len(urls) * size / MB / (time.perf_counter() - start)


# --- metadata -------------------------------------------------------------------------------------


async def find_stat(root: Path, timeout: float) -> tuple[float | None, int]:
    """(seconds or None after ``timeout``, files seen) of ``find ROOT -type f -printf '%s'``
    (stats each file)."""
    start = time.perf_counter()
    with trio.move_on_after(timeout):
        result = await trio.run_process(
            ["find", str(root), "-type", "f", "-printf", "%s\n"], capture_stdout=True, check=False
        )
        return time.perf_counter() - start, result.stdout.count(b"\n")
    return None, 0


def median_ms(values: Sequence[float]) -> float:
    return 1000 * statistics.median(values)
