"""The persistent probe cache: head and tail blocks survive a restart; the disk use is bounded."""

from __future__ import annotations

from pathlib import Path

import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.data.blockcache import BLOCK_SIZE
from rdfs.data.links import LinkResolver
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.emulator import Emulator, FileSpec
from rdfs.store.probecache import ProbeCache, file_key

KiB = 1024
MiB = 1024 * KiB


def probe_cache(path: Path, **kwargs: int) -> ProbeCache:
    kwargs.setdefault("head_bytes", MiB)
    kwargs.setdefault("tail_bytes", MiB)
    return ProbeCache(path, **kwargs)


async def scan(
    rd: RDClient, probe: ProbeCache, source: FileSource, ranges: list[tuple[int, int]]
) -> list[bytes]:
    """Read ``ranges`` through a fresh pool and resolver (nothing in memory: like a new process)."""
    async with trio.open_nursery() as nursery:
        pool = ReaderPool(LinkResolver(rd, None), nursery=nursery, probe=probe)
        handle = pool.open(source)
        try:
            return [await handle.read(offset, length) for offset, length in ranges]
        finally:
            await handle.close()
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_head_and_tail_survive_a_restart(emulator: Emulator, tmp_path: Path) -> None:
    size = 40 * MiB + 123
    torrent_id = emulator.add_torrent("Movie", [FileSpec("/Movie.mkv", size)])
    link = emulator.torrent_json(torrent_id)["links"][0]
    source = FileSource("inode-7", link, size, name="Movie.mkv")
    # A prober: the head in small sequential reads, then the tail.
    ranges = [(offset, 64 * KiB) for offset in range(0, 512 * KiB, 64 * KiB)] + [
        (size - 300_000, 300_000)
    ]
    expected = [emulator.file_bytes(torrent_id, 1, offset, length) for offset, length in ranges]
    async with RDClient(api_url=emulator.api_url, auth=StaticToken(emulator.token)) as rd:
        first = probe_cache(tmp_path / "probe.db")
        assert await scan(rd, first, source, ranges) == expected
        assert emulator.counters["POST /unrestrict/link"] == 1
        first.close()
        emulator.reset_counters()
        second = probe_cache(tmp_path / "probe.db")  # a restart: the same file on disk
        assert await scan(rd, second, source, ranges) == expected
        assert emulator.counters["POST /unrestrict/link"] == 0
        assert emulator.counters["download_requests"] == 0
        assert second.stats.hits > 0
        # The middle of the file is not a probe's business: it is downloaded.
        middle = [(20 * MiB, 64 * KiB)]
        assert await scan(rd, second, source, middle) == [
            emulator.file_bytes(torrent_id, 1, 20 * MiB, 64 * KiB)
        ]
        assert emulator.counters["download_requests"] == 1
        second.close()


def test_bounded_by_evicting_least_recently_used_files(tmp_path: Path) -> None:
    cache = probe_cache(tmp_path / "probe.db", max_bytes=10 * BLOCK_SIZE)
    block = bytes(BLOCK_SIZE)
    for name in ("a", "b", "c"):
        for index in range(4):
            cache.put(file_key(name, 0, MiB), index, block)
    assert cache.size <= 10 * BLOCK_SIZE
    assert cache.blocks(file_key("a", 0, MiB)) == set()  # the oldest went first
    assert cache.blocks(file_key("c", 0, MiB)) == {0, 1, 2, 3}
    assert cache.stats.evicted_files >= 1
    cache.close()
    reopened = probe_cache(tmp_path / "probe.db", max_bytes=10 * BLOCK_SIZE)
    assert reopened.size == cache.size and reopened.get(file_key("c", 0, MiB), 2) == block
    reopened.close()


def test_only_head_and_tail_blocks_are_wanted(tmp_path: Path) -> None:
    cache = probe_cache(tmp_path / "probe.db")
    size = 10 * MiB
    last = (size - 1) // BLOCK_SIZE

    def wants(probe: ProbeCache, index: int) -> bool:
        return probe.wants(size, index * BLOCK_SIZE, BLOCK_SIZE)

    assert wants(cache, 0) and wants(cache, MiB // BLOCK_SIZE - 1)
    assert not wants(cache, MiB // BLOCK_SIZE) and not wants(cache, 5 * MiB // BLOCK_SIZE)
    assert wants(cache, last) and wants(cache, (size - MiB) // BLOCK_SIZE)
    cache.close()
    assert not wants(probe_cache(tmp_path / "off.db", max_bytes=0), 0)
