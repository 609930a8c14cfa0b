"""Read patterns of real clients replayed through a ``ReaderPool`` against an in-process emulator.

Each pattern runs on a cold cache (a new pool, a new link resolver) and reports what the client
read, what the download server sent, its requests and the unrestricts (issue 17: "fetch what is
read"). The patterns:

* ``probe``: a media probe (ffprobe of an MKV, or an MP4 with its index at the end): eight
  32 KiB reads of the head, three reads of the tail, the head again from byte 48; 12 files.
* ``sparse``: an audio-only open the way VLC does it: 1 KiB every 30 KiB, 200 times.
* ``webdav``: a WebDAV/SMB re-export: open, read 512 B, read 96 KiB after it, close; 52 times at
  random offsets.
* ``seeks``: a player: 20 seeks, each followed by 2 MiB of 128 KiB reads.
* ``sequential``: a whole-file read in 1 MiB reads.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from rdfs.api.client import RDClient
from rdfs.data.links import LinkResolver
from rdfs.data.reader import FileHandle, FileSource, ReaderPool
from rdfs.emulator import Emulator, FileSpec

KiB = 1 << 10
MiB = 1 << 20
UNRESTRICT = "POST /unrestrict/link"


@dataclass
class Cost:
    pattern: str
    read: int  # bytes the client read
    sent: int  # bytes the download server sent
    requests: int  # download requests
    unrestricts: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.sent / self.read if self.read else float("inf")


async def _read(handle: FileHandle, offset: int, size: int) -> int:
    return len(await handle.read(offset, size))


async def probe(pool: ReaderPool, sources: list[FileSource], rng: random.Random) -> int:
    read = 0
    for source in sources:
        handle = pool.open(source)
        size = source.size
        for offset in range(0, 256 * KiB, 32 * KiB):
            read += await _read(handle, offset, 32 * KiB)
        for offset in (size - 96 * KiB, size - 64 * KiB, size - 20000):
            read += await _read(handle, offset, 32 * KiB)
        read += await _read(handle, 48, 32 * KiB)
        await handle.close()
    return read


async def sparse(pool: ReaderPool, sources: list[FileSource], rng: random.Random) -> int:
    handle = pool.open(sources[0])
    read = 0
    for step in range(200):
        read += await _read(handle, 4 * MiB + step * 30 * KiB, KiB)
    await handle.close()
    return read


async def webdav(pool: ReaderPool, sources: list[FileSource], rng: random.Random) -> int:
    source, read = sources[0], 0
    for _ in range(52):
        offset = rng.randrange(source.size - MiB)
        handle = pool.open(source)
        read += await _read(handle, offset, 512)
        read += await _read(handle, offset + 512, 96 * KiB)
        await handle.close()
    return read


async def seeks(pool: ReaderPool, sources: list[FileSource], rng: random.Random) -> int:
    source, read = sources[0], 0
    handle = pool.open(source)
    for _ in range(20):
        start = rng.randrange(source.size - 4 * MiB)
        for offset in range(start, start + 2 * MiB, 128 * KiB):
            read += await _read(handle, offset, 128 * KiB)
    await handle.close()
    return read


async def sequential(pool: ReaderPool, sources: list[FileSource], rng: random.Random) -> int:
    source, read = sources[0], 0
    handle = pool.open(source)
    for offset in range(0, source.size, MiB):
        read += await _read(handle, offset, MiB)
    await handle.close()
    return read


Pattern = Callable[[ReaderPool, list[FileSource], random.Random], Awaitable[int]]
PATTERNS: dict[str, Pattern] = {
    "probe": probe,
    "sparse": sparse,
    "webdav": webdav,
    "seeks": seeks,
    "sequential": sequential,
}


def add_files(emu: Emulator, name: str, count: int, size: int) -> list[FileSource]:
    sources = []
    for slot in range(count):
        torrent_id = emu.add_torrent(f"{name}{slot}", [FileSpec(f"/{name}{slot}.mkv", size)])
        link = emu.torrent_json(torrent_id)["links"][0]
        sources.append(FileSource(torrent_id, link, size, name=f"{name}{slot}.mkv"))
    return sources


async def run_pattern(
    emu: Emulator, rd: RDClient, name: str, sources: list[FileSource], **pool_options: object
) -> Cost:
    """Replay pattern ``name`` on a cold pool; the emulator's counters give the server's side."""
    counters = emu.counters
    before = (counters["download_bytes"], counters["download_requests"], counters[UNRESTRICT])
    async with trio.open_nursery() as nursery:
        resolver = LinkResolver(rd, None)  # type: ignore[arg-type]
        pool = ReaderPool(resolver, nursery=nursery, **pool_options)  # type: ignore[arg-type]
        start = time.perf_counter()
        read = await PATTERNS[name](pool, sources, random.Random(17))
        seconds = time.perf_counter() - start
        await trio.sleep(0.2)  # what a cancelled request still sends arrives now
        await pool.aclose()
        nursery.cancel_scope.cancel()
    return Cost(
        name,
        read,
        counters["download_bytes"] - before[0],
        counters["download_requests"] - before[1],
        counters[UNRESTRICT] - before[2],
        seconds,
    )
