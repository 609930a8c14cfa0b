"""ReaderPool against the emulator's download server over real HTTP: bytes compared to the
source."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpcore
import pytest
import trio
import trio.testing

from rdfs.api.client import RDClient
from rdfs.data.blockcache import BLOCK_SIZE, BlockCache
from rdfs.data.download import DownloadError, check_response
from rdfs.data.links import LinkGone, LinkResolver
from rdfs.data.readahead import WINDOW_DIVISOR
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.data.source import MAX_PARTIAL
from rdfs.emulator import Emulator, FileSpec
from rdfs.store.metadata import Cache

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
UNRESTRICT = "POST /unrestrict/link"
# A window's end rounded up to whole blocks, and a read's block fetched whole.
SLACK = 2 * BLOCK_SIZE


@dataclass
class Env:
    emu: Emulator
    rd: RDClient
    cache: Cache
    resolver: LinkResolver
    pool: ReaderPool
    nursery: trio.Nursery

    def add(self, size: int, name: str = "Movie", suffix: str = ".mkv") -> tuple[str, FileSource]:
        torrent_id = self.emu.add_torrent(name, [FileSpec(f"/{name}{suffix}", size)])
        link = self.emu.torrent_json(torrent_id)["links"][0]
        return torrent_id, FileSource(
            key=torrent_id, hoster_link=link, size=size, name=f"{name}{suffix}"
        )

    def new_pool(self, **kwargs: object) -> ReaderPool:
        kwargs.setdefault("retry_wait_initial", 0.01)
        kwargs.setdefault("retry_wait_max", 0.05)
        return ReaderPool(LinkResolver(self.rd, self.cache), nursery=self.nursery, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def env(emulator: Emulator, rd_client: RDClient, cache_db: Cache) -> AsyncIterator[Env]:
    rd, cache = rd_client, cache_db
    async with trio.open_nursery() as nursery:
        resolver = LinkResolver(rd, cache)
        pool = ReaderPool(resolver, nursery=nursery, retry_wait_initial=0.01, retry_wait_max=0.05)
        try:
            yield Env(emulator, rd, cache, resolver, pool, nursery)
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def read_all(handle, size: int, chunk: int, pause: float | None = None) -> bytes:  # type: ignore[no-untyped-def]
    """The first ``size`` bytes in ``chunk`` reads, sleeping ``pause`` s after each (None: no
    checkpoint)."""
    parts = []
    for offset in range(0, size, chunk):
        parts.append(await handle.read(offset, chunk))
        if pause is not None:
            await trio.sleep(pause)
    return b"".join(parts)


async def read_files_at_once(
    pool: ReaderPool, sources: list[FileSource], size: int, pause: float
) -> list[bytes]:
    """Each source read (``size`` bytes, 256 KiB at a time) by a task of its own, all at once."""
    results: dict[int, bytes] = {}

    async def reader(slot: int) -> None:
        handle = pool.open(sources[slot])
        try:
            results[slot] = await read_all(handle, size, 256 * KiB, pause)
        finally:
            await handle.close()

    async with trio.open_nursery() as nursery:
        for slot in range(len(sources)):
            nursery.start_soon(reader, slot)
    return [results[slot] for slot in range(len(sources))]


# --- pure parts -------------------------------------------------------------------------------


def test_block_cache_is_lru_and_bounded() -> None:
    cache = BlockCache(max_bytes=3 * 10)
    for index in range(3):
        cache.put("f", index, bytes([index]) * 10)
    assert cache.get("f", 0) == b"\0" * 10  # 0 is now the most recent
    cache.put("f", 3, b"x" * 10)
    assert ("f", 1) not in cache and ("f", 0) in cache and cache.size == 30
    cache.put("f", 3, b"y" * 5)  # replacing adjusts the size
    assert cache.size == 25 and len(cache) == 3


def test_response_checks_catch_wrong_content_range() -> None:
    from rdfs.data.links import ResolvedLink

    link = ResolvedLink("http://127.0.0.1:9/d/X/f", "X", 1000, 0.0)
    source = FileSource("k", "h", 1000)

    def answer(status: int, **headers: str) -> httpcore.Response:
        return httpcore.Response(
            status, headers=[(k.encode(), v.encode()) for k, v in headers.items()]
        )

    assert (
        check_response(answer(206, **{"content-range": "bytes 100-999/1000"}), link, source, 100)
        == 0
    )
    with pytest.raises(DownloadError, match="Content-Range"):
        check_response(answer(206, **{"content-range": "bytes 0-999/1000"}), link, source, 100)
    with pytest.raises(DownloadError, match="Content-Range"):
        check_response(answer(206), link, source, 100)
    with pytest.raises(DownloadError, match="needs more"):
        check_response(answer(206, **{"content-range": "bytes 100-499/500"}), link, source, 100)
    assert (
        check_response(answer(200, **{"content-length": "1000"}), link, source, 100) == 100
    )  # discard
    with pytest.raises(DownloadError, match="1000-byte file"):
        check_response(answer(200, **{"content-length": "7"}), link, source, 0)


# --- against the emulator ---------------------------------------------------------------------


async def test_sequential_read_streams_exact_bytes(env: Env) -> None:
    size = 24 * MiB + 12345
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    data = await read_all(handle, size, 128 * KiB)
    await handle.close()
    assert data == env.emu.file_bytes(torrent_id, 1)
    assert env.emu.counters[UNRESTRICT] == 1
    assert env.pool.stats.streams >= 1
    # Bounded requests that grow with the run: far fewer requests than the 193 reads.
    assert env.emu.counters["download_requests"] <= 40
    assert env.emu.counters["download_bytes"] <= size + 2 * MiB


async def test_random_offsets_tail_and_block_boundaries(env: Env) -> None:
    size = 5 * MiB + 777
    torrent_id, source = env.add(size)
    expected = env.emu.file_bytes(torrent_id, 1)
    handle = env.pool.open(source)
    cases = [
        (0, 1),
        (BLOCK_SIZE - 1, 2),
        (3 * BLOCK_SIZE - 5, 2 * BLOCK_SIZE + 10),
        (size - 1, 1),
        (size - 100, 1000),  # short at EOF
        (size - BLOCK_SIZE - 3, BLOCK_SIZE + 3),
        (MiB, MiB),
        (size, 10),  # at EOF
        (size + 5, 10),  # past EOF
        (100, 0),
    ]
    for offset, length in cases:
        assert await handle.read(offset, length) == expected[offset : offset + length], (
            offset,
            length,
        )
    await handle.close()


async def test_multi_gib_sparse_file_at_random_offsets(env: Env) -> None:
    size = 6 * GiB + 4321
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    rng = random.Random(7)
    offsets = [rng.randrange(size) for _ in range(40)] + [size - 70 * KiB, 4 * GiB - 10, 2**32 + 1]
    for offset in offsets:
        assert await handle.read(offset, 64 * KiB) == env.emu.file_bytes(
            torrent_id, 1, offset, 64 * KiB
        )
    await handle.close()


async def test_random_small_reads_fetch_at_most_twice_what_they_read(env: Env) -> None:
    size = 3 * GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    rng = random.Random(11)
    served = 0
    for _ in range(60):
        offset, length = rng.randrange(size - MiB), rng.choice([64 * KiB, 128 * KiB, 100 * KiB])
        data = await handle.read(offset, length)
        assert data == env.emu.file_bytes(torrent_id, 1, offset, length)
        served += len(data)
    await handle.close()
    assert env.emu.counters["download_bytes"] <= 2 * served
    assert env.pool.stats.streams == 0


async def test_probe_pattern_does_not_open_a_big_window(env: Env) -> None:
    """ffprobe-like: 64 KiB head, two 36 KiB reads near the tail, then the second 64 KiB."""
    size = 2 * GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    probe = [
        (0, 64 * KiB),
        (size - 80 * KiB, 36 * KiB),
        (size - 40 * KiB, 36 * KiB),
        (64 * KiB, 64 * KiB),
    ]
    for offset, length in probe:
        assert await handle.read(offset, length) == env.emu.file_bytes(
            torrent_id, 1, offset, length
        )
    await handle.close()
    assert env.emu.counters["download_bytes"] <= 2 * MiB


async def test_a_head_probe_costs_one_request_for_the_head(env: Env) -> None:
    """ffprobe on an MP4 under direct I/O: 32 KiB at 0, the tail, then 32 KiB from byte 48. The
    tail read brings the head's second block along in the background (the re-read waits for no
    round trip of its own); nothing else is read ahead."""
    size = 2 * GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    probe = [(0, 32 * KiB), (size - 14155, 32 * KiB), (48, 32 * KiB)]
    for offset, length in probe:
        expected = env.emu.file_bytes(torrent_id, 1, offset, min(length, size - offset))
        assert await handle.read(offset, length) == expected
    await handle.close()
    tail_block = size - (size - 14155) // BLOCK_SIZE * BLOCK_SIZE
    assert env.emu.counters["download_requests"] == 3
    assert env.emu.counters["download_bytes"] == 2 * BLOCK_SIZE + tail_block
    assert env.pool.stats.streams == 0
    assert env.pool.stats.cache_misses == 2  # the head's first block, the tail's


async def test_a_head_read_alone_fetches_one_block(env: Env) -> None:
    """A probe that reads 32 KiB of the head and closes (ffprobe on an MKV whose header fits)
    costs the server that block, not a bigger head."""
    torrent_id, source = env.add(2 * GiB)
    handle = env.pool.open(source)
    assert await handle.read(0, 32 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, 32 * KiB)
    await handle.close()
    await trio.testing.wait_all_tasks_blocked()
    assert env.emu.counters["download_bytes"] == BLOCK_SIZE


async def test_a_head_read_fetches_the_head_only_whatever_the_name(env: Env) -> None:
    """What a read means comes from the pattern, not the name: an MP4's probe of head, tail and
    head again costs what an MKV's does (the head's second block comes with the tail read)."""
    size = 2 * GiB + 5000
    for name, suffix in (("Clip", ".mp4"), ("Show", ".mkv")):
        requests, sent = env.emu.counters["download_requests"], env.emu.counters["download_bytes"]
        torrent_id, source = env.add(size, name, suffix)
        handle = env.pool.open(source)
        for offset, length in [(0, 32 * KiB), (size - 14155, 32 * KiB), (48, 32 * KiB)]:
            expected = env.emu.file_bytes(torrent_id, 1, offset, min(length, size - offset))
            assert await handle.read(offset, length) == expected
        await trio.testing.wait_all_tasks_blocked()
        await handle.close()
        tail_block = size - (size - 14155) // BLOCK_SIZE * BLOCK_SIZE
        assert env.emu.counters["download_requests"] - requests == 3, name
        assert env.emu.counters["download_bytes"] - sent == 2 * BLOCK_SIZE + tail_block, name


async def test_concurrent_readers_same_and_different_files(env: Env) -> None:
    size = 6 * MiB + 99
    files = [env.add(size, name=f"Movie{i}") for i in range(4)]
    results: dict[int, bytes] = {}

    async def reader(slot: int) -> None:
        torrent_id, source = files[slot % 4]
        handle = env.pool.open(source)
        try:
            results[slot] = await read_all(handle, size, 256 * KiB)
        finally:
            await handle.close()

    async with trio.open_nursery() as nursery:
        for slot in range(8):  # two readers on each of four files
            nursery.start_soon(reader, slot)
    for slot in range(8):
        torrent_id, _ = files[slot % 4]
        assert results[slot] == env.emu.file_bytes(torrent_id, 1)
    assert env.emu.counters[UNRESTRICT] == 4


async def test_out_of_order_concurrent_reads(env: Env) -> None:
    size = 16 * MiB
    torrent_id, source = env.add(size)
    expected = env.emu.file_bytes(torrent_id, 1)
    handle = env.pool.open(source)
    rng = random.Random(3)
    chunk = 128 * KiB
    offsets = list(range(0, size, chunk))
    for batch_start in range(0, len(offsets), 8):
        batch = offsets[batch_start : batch_start + 8]
        rng.shuffle(batch)
        got: dict[int, bytes] = {}

        async def one(offset: int, got: dict[int, bytes] = got) -> None:
            got[offset] = await handle.read(offset, chunk)

        async with trio.open_nursery() as nursery:
            for offset in batch:
                nursery.start_soon(one, offset)
        for offset in batch:
            assert got[offset] == expected[offset : offset + chunk]
    await handle.close()
    assert env.emu.counters["download_bytes"] <= 2 * size


async def test_dropped_connections_resume_with_exact_bytes(env: Env) -> None:
    size = 12 * MiB + 5
    torrent_id, source = env.add(size)
    other_id, other = env.add(size, name="Other")
    env.emu.faults.download_drop_rate = 1.0  # every body is cut halfway
    handle = env.pool.open(source)
    data = await read_all(handle, size, 128 * KiB)
    await handle.close()
    assert data == env.emu.file_bytes(torrent_id, 1)
    handle = env.pool.open(other)
    rng = random.Random(5)
    for _ in range(10):
        offset = rng.randrange(size)
        assert await handle.read(offset, 200 * KiB) == env.emu.file_bytes(
            other_id, 1, offset, 200 * KiB
        )
    await handle.close()
    drops = env.emu.counters["download_drops"]
    assert drops > 20
    # Every cut body a read still needed was resumed; one cut while its handle closed is not (at
    # most the two requests a stream has in flight, per handle).
    assert drops - 2 * 2 <= env.pool.stats.reconnects <= drops


async def test_expired_links_refresh_transparently(env: Env) -> None:
    size = 32 * MiB
    torrent_id, source = env.add(size)
    expected = env.emu.file_bytes(torrent_id, 1)
    handle = env.pool.open(source)
    assert await read_all(handle, 3 * MiB, 128 * KiB) == expected[: 3 * MiB]
    env.emu.expire_links()  # open responses keep flowing; every new request is refused
    far = 20 * MiB
    assert await handle.read(far, 128 * KiB) == expected[far : far + 128 * KiB]
    rest = b"".join(
        [await handle.read(offset, 128 * KiB) for offset in range(far + 128 * KiB, size, 128 * KiB)]
    )
    assert rest == expected[far + 128 * KiB :]
    await handle.close()
    assert env.emu.counters[UNRESTRICT] == 2
    assert env.emu.counters["download_refused"] >= 1
    assert env.pool.stats.link_refreshes >= 1


async def test_redirected_downloads_are_followed(env: Env) -> None:
    """A download server that hands each request on (302, relative Location) still gives exact
    bytes."""
    env.emu.faults.download_redirect = True
    size = 6 * MiB + 77
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    assert await read_all(handle, size, 128 * KiB) == env.emu.file_bytes(torrent_id, 1)
    assert await handle.read(size - 100, 100) == env.emu.file_bytes(torrent_id, 1, size - 100, 100)
    await handle.close()
    assert env.emu.counters["download_redirects"] >= 1


async def test_server_ignoring_range(env: Env) -> None:
    size = 40 * MiB
    torrent_id, source = env.add(size)
    env.emu.faults.ignore_range = True
    handle = env.pool.open(source)
    for offset in (0, 3 * MiB + 17, 1234567):  # small offsets: read and discard
        assert await handle.read(offset, 100 * KiB) == env.emu.file_bytes(
            torrent_id, 1, offset, 100 * KiB
        )
    with pytest.raises(
        DownloadError, match="ignores Range"
    ):  # far: fail clearly, never wrong bytes
        await handle.read(30 * MiB, 100 * KiB)
    await handle.close()


async def test_dead_torrent_raises_link_gone(env: Env) -> None:
    size = 4 * MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    assert await handle.read(0, 64 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, 64 * KiB)
    env.emu.kill_torrent(torrent_id)
    with pytest.raises(LinkGone):
        await handle.read(2 * MiB, 64 * KiB)
    await handle.close()
    other_id, other = env.add(size, name="Other")
    env.emu.kill_torrent(other_id)
    fresh = env.pool.open(other)
    with pytest.raises(LinkGone):  # never unrestricted before: unrestrict itself refuses
        await fresh.read(0, 10)
    await fresh.close()


async def test_handles_of_one_file_share_the_cache(env: Env) -> None:
    size = 4 * MiB
    torrent_id, source = env.add(size)
    first = env.pool.open(source)
    head = await read_all(first, 2 * MiB, 128 * KiB)
    requests = env.emu.counters["download_requests"]
    second = env.pool.open(source)
    assert await second.read(0, 64 * KiB) == head[: 64 * KiB]
    assert await read_all(second, 2 * MiB, 128 * KiB) == head
    assert env.emu.counters["download_requests"] == requests  # no new download
    assert env.emu.counters[UNRESTRICT] == 1
    await first.close()
    await second.close()
    third = env.pool.open(source)  # a later open still finds the blocks
    assert await third.read(MiB, 10) == env.emu.file_bytes(torrent_id, 1, MiB, 10)
    await third.close()
    assert env.emu.counters["download_requests"] == requests


async def test_links_persist_across_pools(env: Env) -> None:
    size = MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    await handle.read(0, 10)
    await handle.close()
    pool = env.new_pool()  # a restart: new resolver and cache-less pool on the same database
    handle = pool.open(source)
    assert await handle.read(500 * KiB, 10) == env.emu.file_bytes(torrent_id, 1, 500 * KiB, 10)
    await handle.close()
    await pool.aclose()
    assert env.emu.counters[UNRESTRICT] == 1


async def test_file_inside_a_link_at_an_offset(env: Env) -> None:
    size = 3 * MiB
    torrent_id, whole = env.add(size)
    start = 123457
    inner = FileSource(key="inner", hoster_link=whole.hoster_link, size=2 * MiB, offset=start)
    handle = env.pool.open(inner)
    data = await read_all(handle, inner.size, 128 * KiB)
    assert await handle.read(inner.size - 5, 100) == env.emu.file_bytes(
        torrent_id, 1, start + inner.size - 5, 5
    )
    await handle.close()
    assert data == env.emu.file_bytes(torrent_id, 1, start, inner.size)


async def test_memory_bound_and_close_cancels_read_ahead(env: Env) -> None:
    size = 20 * MiB
    torrent_id, source = env.add(size)
    pool = env.new_pool(cache_bytes=4 * MiB)
    handle = pool.open(source)
    data = await read_all(handle, size // 2, 256 * KiB)
    assert pool.cache.size <= 4 * MiB
    assert pool.streaming  # read-ahead running
    await handle.close()
    await trio.testing.wait_all_tasks_blocked()
    assert not pool.streaming
    assert data == env.emu.file_bytes(torrent_id, 1, 0, size // 2)
    await pool.aclose()


async def test_connection_limit_with_many_streams(env: Env) -> None:
    """Paused read-aheads give their connection up to downloads that wait for one."""
    size = 6 * MiB
    files = [env.add(size, name=f"Show{i}") for i in range(6)]
    pool = env.new_pool(max_connections_per_host=2)
    results = await read_files_at_once(pool, [source for _, source in files], size, pause=0)
    await pool.aclose()
    for slot, (torrent_id, _) in enumerate(files):
        assert results[slot] == env.emu.file_bytes(torrent_id, 1)


async def test_without_a_nursery_reads_still_work(env: Env) -> None:
    size = 3 * MiB
    torrent_id, source = env.add(size)
    pool = ReaderPool(env.resolver)
    handle = pool.open(source)
    assert await read_all(handle, size, 128 * KiB) == env.emu.file_bytes(torrent_id, 1)
    await handle.close()
    await pool.aclose()
    assert pool.stats.streams == 0


async def test_seek_back_far_starts_a_new_stream(env: Env) -> None:
    size = 24 * MiB
    torrent_id, source = env.add(size)
    expected = env.emu.file_bytes(torrent_id, 1)
    pool = env.new_pool(cache_bytes=4 * MiB)  # the start is evicted by the time we seek back
    handle = pool.open(source)
    assert await read_all(handle, 16 * MiB, 256 * KiB) == expected[: 16 * MiB]
    streams = pool.stats.streams
    back = b"".join(
        [await handle.read(offset, 256 * KiB) for offset in range(MiB, 5 * MiB, 256 * KiB)]
    )
    assert back == expected[MiB : 5 * MiB]
    assert pool.stats.streams == streams + 1
    # A 4 MiB cache: windows of 1 MiB at most, requests of half a window at least.
    assert pool.stats.requests <= 40
    await handle.close()
    await pool.aclose()


async def test_small_backward_seek_needs_no_request(env: Env) -> None:
    size = 16 * MiB
    torrent_id, source = env.add(size)
    expected = env.emu.file_bytes(torrent_id, 1)
    handle = env.pool.open(source)
    assert await read_all(handle, 8 * MiB, 128 * KiB) == expected[: 8 * MiB]
    requests = env.emu.counters["download_requests"]
    for offset in (8 * MiB - 300 * KiB, 7 * MiB, 8 * MiB - 64 * KiB):
        assert await handle.read(offset, 128 * KiB) == expected[offset : offset + 128 * KiB]
    assert await handle.read(8 * MiB, 128 * KiB) == expected[8 * MiB : 8 * MiB + 128 * KiB]
    assert env.emu.counters["download_requests"] == requests
    await handle.close()


class RangeLog(httpcore.AsyncConnectionPool):
    """A download client that keeps the byte range ``[first, stop)`` of every request sent."""

    def __init__(self) -> None:
        super().__init__(max_connections=None)
        self.ranges: list[tuple[int, int]] = []

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        for key, value in request.headers:
            if key.lower() == b"range":
                first, _, last = value.decode().removeprefix("bytes=").partition("-")
                self.ranges.append((int(first), int(last) + 1))
        return await super().handle_async_request(request)


async def test_seek_back_into_the_window_refetches_nothing(env: Env) -> None:
    """A player seeking a few seconds back into what it just read (scripts/bench's streaming
    "back" part, scaled down): the back run's reads are served from the cache, and no request
    sent from the seek on asks again for a byte read or asked for before it (the forward
    stream's read-ahead past its reader may go on: it asks for new bytes)."""
    size = 64 * MiB
    torrent_id, source = env.add(size)
    http = RangeLog()
    pool = ReaderPool(env.resolver, http=http, nursery=env.nursery)
    handle = pool.open(source)
    start, end, back = 16 * MiB, 40 * MiB, 32 * MiB  # a 6 MiB window at the seek back
    forward = [await handle.read(offset, 256 * KiB) for offset in range(start, end, 256 * KiB)]
    assert b"".join(forward) == env.emu.file_bytes(torrent_id, 1, start, end - start)
    before = [(start, end), *http.ranges]
    sent = len(http.ranges)
    replay = [await handle.read(offset, 256 * KiB) for offset in range(back, end, 256 * KiB)]
    assert b"".join(replay) == env.emu.file_bytes(torrent_id, 1, back, end - back)
    await handle.close()
    await pool.aclose()
    await http.aclose()
    refetched = [
        (first, stop)
        for first, stop in http.ranges[sent:]
        if any(first < b_stop and b_first < stop for b_first, b_stop in before)
    ]
    assert refetched == []
    assert all(first >= end for first, _ in http.ranges[sent:])


async def test_run_hosts_the_read_ahead(env: Env) -> None:
    size = 8 * MiB
    torrent_id, source = env.add(size)
    pool = ReaderPool(env.resolver)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        handle = pool.open(source)
        assert await read_all(handle, size, 256 * KiB) == env.emu.file_bytes(torrent_id, 1)
        await handle.close()
        await pool.aclose()  # ends run() as well
    assert pool.stats.streams >= 1 and pool.nursery is None


async def test_interleaved_positions_each_keep_a_stream(env: Env) -> None:
    """Two places of one file read in turn (video and audio, two viewers): both stream."""
    size = 64 * MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    starts = (8 * MiB, 40 * MiB)
    for step in range(40):
        offset = starts[step % 2] + (step // 2) * 128 * KiB
        expected = env.emu.file_bytes(torrent_id, 1, offset, 128 * KiB)
        assert await handle.read(offset, 128 * KiB) == expected, offset
    await handle.close()
    assert env.pool.stats.streams == 2
    # A few bounded reads at each place before its stream starts, then requests that grow with
    # each run: not one per read.
    assert env.emu.counters["download_requests"] <= 40


async def test_large_first_read_starts_the_read_ahead(env: Env) -> None:
    """A player's seek (a large read) streams at once; the next reads download nothing
    themselves (the stream brings their blocks)."""
    size = 64 * MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    assert await handle.read(10 * MiB, 512 * KiB) == env.emu.file_bytes(
        torrent_id, 1, 10 * MiB, 512 * KiB
    )
    assert env.pool.stats.streams == 1
    misses = env.pool.stats.cache_misses
    for offset in range(10 * MiB + 512 * KiB, 12 * MiB, 256 * KiB):
        assert await handle.read(offset, 256 * KiB) == env.emu.file_bytes(
            torrent_id, 1, offset, 256 * KiB
        )
    assert env.pool.stats.cache_misses == misses and env.pool.stats.streams == 1
    await handle.close()


async def test_many_streams_share_the_read_ahead_budget(env: Env) -> None:
    """Read-ahead never outgrows the cache: nothing is evicted before it is read, and downloaded
    twice."""
    size = 24 * MiB
    files = [env.add(size, name=f"Part{i}") for i in range(6)]
    pool = env.new_pool(cache_bytes=32 * MiB)  # alone, each stream's window could grow to 8 MiB
    # Readers slower than the link: every window fills up.
    results = await read_files_at_once(pool, [source for _, source in files], size, pause=0.01)
    await pool.aclose()
    for slot, (torrent_id, _) in enumerate(files):
        assert results[slot] == env.emu.file_bytes(torrent_id, 1)
    assert pool.stats.bytes_fetched <= 6 * size + 6 * MiB
    assert pool.stats.streams <= 6 * 2


async def test_evicted_read_ahead_restarts_its_stream(env: Env) -> None:
    """Read-ahead pushed out of the cache by other reads is fetched again by one new stream."""
    size = 16 * MiB
    torrent_id, source = env.add(size, name="Movie")
    other_id, other = env.add(8 * MiB, name="Other")
    pool = env.new_pool(cache_bytes=4 * MiB)
    handle = pool.open(source)
    assert await read_all(handle, 3 * MiB, 256 * KiB) == env.emu.file_bytes(
        torrent_id, 1, 0, 3 * MiB
    )
    await trio.testing.wait_all_tasks_blocked()
    second = pool.open(other)
    for offset in range(0, 8 * MiB, 256 * KiB):  # scattered small reads: no stream, all cached
        assert await second.read(offset, 128 * KiB) == env.emu.file_bytes(
            other_id, 1, offset, 128 * KiB
        )
    await second.close()
    streams, sent = pool.stats.streams, env.emu.counters["download_bytes"]
    rest = b"".join(
        [await handle.read(offset, 256 * KiB) for offset in range(3 * MiB, size, 256 * KiB)]
    )
    assert rest == env.emu.file_bytes(torrent_id, 1, 3 * MiB)
    assert pool.stats.streams - streams == 1
    assert env.emu.counters["download_bytes"] - sent <= size - 3 * MiB + 2 * MiB
    await handle.close()
    await pool.aclose()


async def test_a_stream_ahead_of_its_reader_holds_no_connection(env: Env) -> None:
    """The stream of a short run whose window is full, or far ahead of a reader who left, holds
    no connection (and no link): its request ended at the end of its window."""
    size = 96 * MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    short = 2 * MiB
    assert await read_all(handle, short, 256 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, short)
    await trio.testing.wait_all_tasks_blocked()
    assert env.pool.streaming and env.pool.downloader.connections == 0
    far = 60 * MiB
    assert await handle.read(far, 512 * KiB) == env.emu.file_bytes(torrent_id, 1, far, 512 * KiB)
    await trio.testing.wait_all_tasks_blocked()
    assert env.pool.downloader.connections == 0
    # Coming back to the first place still works (its blocks were kept; a new request continues).
    offset = short
    assert await handle.read(offset, 256 * KiB) == env.emu.file_bytes(
        torrent_id, 1, offset, 256 * KiB
    )
    await handle.close()


async def test_a_long_run_sends_bounded_requests_and_a_close_ends_them(env: Env) -> None:
    """A run of 48 MiB (a copy, a playback) reads by bounded requests that grow with the run (the
    next one sent before the one under way ends), not a request per read; closing the handle
    cancels them: the server sent what was read plus at most the window, whatever the sockets'
    buffers could have held."""
    size = 512 * MiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    read = 48 * MiB
    requests = env.emu.counters["download_requests"]
    assert await read_all(handle, read, 256 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, read)
    assert env.emu.counters["download_requests"] - requests <= 48
    await trio.testing.wait_all_tasks_blocked()  # the read-ahead fills its window
    await handle.close()
    await trio.testing.wait_all_tasks_blocked()
    sent = env.emu.counters["download_bytes"]
    await trio.sleep(0.2)
    assert env.emu.counters["download_bytes"] == sent  # nothing more comes after the close
    assert sent - read <= read // WINDOW_DIVISOR + SLACK


async def test_a_far_seek_after_a_long_run_wastes_at_most_the_window(env: Env) -> None:
    """A player that read 32 MiB and seeks far (a small read there: no new stream): the first
    place's read-ahead stops at its window's end, the server sent what was read plus at most that
    window (not the sockets' buffers of an open-ended request)."""
    size = GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    read = 32 * MiB
    assert await read_all(handle, read, 256 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, read)
    await trio.testing.wait_all_tasks_blocked()
    far, length = 700 * MiB, 64 * KiB
    assert await handle.read(far, length) == env.emu.file_bytes(torrent_id, 1, far, length)
    await trio.testing.wait_all_tasks_blocked()
    sent = env.emu.counters["download_bytes"]
    await trio.sleep(0.2)
    await trio.testing.wait_all_tasks_blocked()
    assert env.emu.counters["download_bytes"] == sent  # the first place's stream is not reading
    assert sent - (read + length) <= read // WINDOW_DIVISOR + SLACK
    await handle.close()


def test_a_touched_block_stops_pinning_its_response_piece() -> None:
    cache = BlockCache(max_bytes=1 << 20)
    piece = bytes(range(256)) * 1024  # a 256 KiB response piece, split into views without copies
    view = memoryview(piece)
    for index in range(4):
        cache.put("f", index, view[index * 64 * KiB : (index + 1) * 64 * KiB])
    assert isinstance(cache.get("f", 1, touch=False), memoryview)
    touched = cache.get("f", 2)
    assert isinstance(touched, bytes) and touched == piece[128 * KiB : 192 * KiB]
    assert cache.get("f", 2) is touched and cache.size == 256 * KiB


async def test_a_cached_link_to_an_unreachable_server_is_refreshed(env: Env) -> None:
    """A link remembered from before a restart names a server that is gone: one fresh unrestrict."""
    from rdfs.store.metadata import StoredLink

    size = MiB
    torrent_id, source = env.add(size)
    with trio.socket.socket() as closed:  # a port nobody listens on
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env.cache.put_link(
        StoredLink(
            source.hoster_link, f"http://127.0.0.1:{port}/d/GONE/Movie.mkv", "GONE", size, 4e9
        )
    )
    pool = env.new_pool()
    handle = pool.open(source)
    assert await handle.read(1000, 64 * KiB) == env.emu.file_bytes(torrent_id, 1, 1000, 64 * KiB)
    await handle.close()
    await pool.aclose()
    assert env.emu.counters[UNRESTRICT] == 1 and pool.stats.link_refreshes == 1


# --- what read-ahead costs: bytes the download server sent (the emulator counts them) -------


def cached_extent(pool: ReaderPool, source: FileSource) -> int:
    """The end of the blocks of ``source`` cached contiguously from byte 0."""
    file = pool.blocks.open(source)
    index = 0
    while pool.blocks.available(file, index):
        index += 1
    pool.blocks.close(file)
    return min(index * BLOCK_SIZE, source.size)


async def test_a_head_and_tail_probe_fetches_a_bounded_number_of_bytes(env: Env) -> None:
    """ffprobe-like on a large file: 256 KiB of head in 32 KiB reads, three tail reads, the head
    again. No read-ahead request runs to the end of the file: the server sends about what was
    read, rounded to blocks, plus at most the first window (two of the probe's reads)."""
    size = 4 * GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    reads = [(offset, 32 * KiB) for offset in range(0, 256 * KiB, 32 * KiB)]
    reads += [(size - 96 * KiB, 32 * KiB), (size - 64 * KiB, 32 * KiB), (size - 20000, 20000)]
    reads += [(48, 32 * KiB)]
    for offset, length in reads:
        assert await handle.read(offset, length) == env.emu.file_bytes(
            torrent_id, 1, offset, length
        )
    await trio.testing.wait_all_tasks_blocked()
    await handle.close()
    await trio.testing.wait_all_tasks_blocked()
    assert env.emu.counters["download_bytes"] <= 256 * KiB + 96 * KiB + 64 * KiB


async def test_a_small_read_then_a_larger_one_fetch_what_they_read(env: Env) -> None:
    """A WebDAV server's open/read 512 B/read 96 KiB/close at a place where the first read
    crosses a block boundary: no read-ahead; the server sends the first read's first block and
    then just the bytes read (each fetch ends where its read ends, the next one resumes there)."""
    size = GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    offset = 100 * 32 * KiB - 256  # the 512 B read straddles two blocks
    reads = [(offset, 512), (offset + 512, 96 * KiB)]  # the first fetches whole blocks
    for at, length in reads:
        assert await handle.read(at, length) == env.emu.file_bytes(torrent_id, 1, at, length)
    await trio.testing.wait_all_tasks_blocked()
    await handle.close()
    assert env.pool.stats.streams == 0
    assert env.emu.counters["download_bytes"] == offset + 512 + 96 * KiB - 99 * 32 * KiB
    assert env.emu.counters["download_requests"] == 2


async def test_an_open_file_keeps_a_few_partial_blocks(env: Env) -> None:
    """Random reads that end inside blocks keep the latest few blocks' leading bytes, not one
    per read (they live outside the block cache's bound)."""
    torrent_id, source = env.add(GiB)
    handle = env.pool.open(source)
    for step in range(3 * MAX_PARTIAL):
        offset = step * 3 * MiB + 1000
        assert await handle.read(offset, 40_000) == env.emu.file_bytes(
            torrent_id, 1, offset, 40_000
        )
    assert len(handle.file.partial) == MAX_PARTIAL
    await handle.close()


async def test_tiny_reads_in_series_fetch_whole_blocks(env: Env) -> None:
    """``dd bs=1``: a read smaller than a block fetches the whole block, the reads after it find
    it cached (not a request per byte)."""
    torrent_id, source = env.add(GiB)
    handle = env.pool.open(source)
    start = 7 * MiB + 100
    for offset in range(start, start + 40_000, 1000):
        assert await handle.read(offset, 1000) == env.emu.file_bytes(torrent_id, 1, offset, 1000)
    await handle.close()
    assert env.emu.counters["download_requests"] == 2


async def test_reads_ending_inside_blocks_fetch_no_byte_twice(env: Env) -> None:
    """Unaligned reads one after the other (ffprobe from byte 48, a server copying in odd
    sizes): each fetch resumes where the previous read ended, every byte is right, and the
    server sends each byte once."""
    torrent_id, source = env.add(GiB)
    handle = env.pool.open(source)
    start, length = 5 * MiB + 48, 40_000
    for offset in range(start, start + 3 * length, length):
        assert await handle.read(offset, length) == env.emu.file_bytes(
            torrent_id, 1, offset, length
        )
    await handle.close()
    assert env.pool.stats.streams == 0
    block_start = start // BLOCK_SIZE * BLOCK_SIZE
    assert env.emu.counters["download_bytes"] == start + 3 * length - block_start


async def test_closing_a_handle_mid_stream_cancels_its_request(env: Env) -> None:
    """A reader that stops after 16 MiB of a 1 GiB file: the server sends at most one window
    beyond what was read, not the rest of the file (or a socket buffer of it)."""
    size = GiB
    torrent_id, source = env.add(size)
    handle = env.pool.open(source)
    read = 16 * MiB
    assert await read_all(handle, read, 256 * KiB) == env.emu.file_bytes(torrent_id, 1, 0, read)
    assert env.pool.streaming
    await trio.testing.wait_all_tasks_blocked()  # the read-ahead fills its window
    await handle.close()
    await trio.testing.wait_all_tasks_blocked()
    assert not env.pool.streaming
    sent = env.emu.counters["download_bytes"]
    await trio.sleep(0.1)  # nothing more arrives
    await trio.testing.wait_all_tasks_blocked()
    assert env.emu.counters["download_bytes"] == sent
    # At most the window (a quarter of what was read in sequence): every request is bounded.
    assert sent - read <= read // WINDOW_DIVISOR + SLACK


async def test_a_second_handle_continues_where_the_first_cache_ends(env: Env) -> None:
    """open/read/close loops (WebDAV, SMB, Plex): the next handle reads the cached blocks and its
    read-ahead starts where the cache ends, with the window the sequential reading earned; no
    cached block is downloaded again."""
    size = GiB
    torrent_id, source = env.add(size)
    first = env.pool.open(source)
    assert await read_all(first, 8 * MiB, 256 * KiB) == env.emu.file_bytes(
        torrent_id, 1, 0, 8 * MiB
    )
    await trio.testing.wait_all_tasks_blocked()  # the read-ahead fills its window
    await first.close()
    await trio.testing.wait_all_tasks_blocked()
    extent = cached_extent(env.pool, source)
    assert extent >= 8 * MiB
    before = env.emu.counters["download_bytes"]
    assert before - 8 * MiB <= 8 * MiB // WINDOW_DIVISOR + SLACK  # what was read, one window
    misses = env.pool.stats.cache_misses
    second = env.pool.open(source)
    start, stop = 6 * MiB, extent + 4 * MiB
    for offset in range(start, stop, 256 * KiB):
        length = min(256 * KiB, stop - offset)
        assert await second.read(offset, length) == env.emu.file_bytes(
            torrent_id, 1, offset, length
        )
    await second.close()
    await trio.testing.wait_all_tasks_blocked()
    after = env.emu.counters["download_bytes"] - before
    # Only what lies past the first handle's cache, and at most one window beyond the reads.
    assert after <= (stop - extent) + stop // 4 + MiB
    assert env.pool.stats.cache_misses == misses  # every read found its blocks cached or coming
