"""The two cache tiers of the open files: memory (every block) and disk (head and tail blocks).

Every byte lives in a :class:`~rdfs.data.blockcache.BlockCache` of fixed ``BLOCK_SIZE`` blocks,
shared by every handle of a file and bounded in memory (LRU). Under it, an optional persistent
:class:`~rdfs.store.probecache.ProbeCache` keeps the head and tail blocks of every file on disk
(what media scanners probe), written behind by :class:`~rdfs.data.probewrite.ProbeWriter`. A
block found in either tier needs no download.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from rdfs.data.blockcache import BLOCK_SIZE, Block, BlockCache
from rdfs.data.probewrite import Batch, ProbeWriter
from rdfs.data.source import FileSource, OpenFile
from rdfs.data.stats import ReaderStats
from rdfs.store.probecache import ProbeCache


class BlockStore:
    """The open files and their blocks: ``available``, ``cached``, ``store``."""

    def __init__(
        self,
        cache: BlockCache,
        probe: ProbeCache | None,
        stats: ReaderStats,
        host: Callable[[], trio.Nursery | None],
    ) -> None:
        self.cache = cache
        self.probe = probe
        self.stats = stats
        self._files: dict[str, OpenFile] = {}
        self._writer = None if probe is None else ProbeWriter(probe, host, self._mark_stored)

    def open(self, source: FileSource) -> OpenFile:
        """The shared state of ``source``, one more handle on it."""
        file = self._files.get(source.key)
        if file is None or file.source != source:
            file = self._files[source.key] = OpenFile(source)
            if self.probe is not None:
                file.stored = self.probe.blocks(file.probe_key)
        file.handles += 1
        return file

    def close(self, file: OpenFile) -> None:
        """One handle of ``file`` less; the file is forgotten with its last handle."""
        file.handles -= 1
        if file.handles <= 0 and self._files.get(file.source.key) is file:
            del self._files[file.source.key]

    def drain(self) -> None:
        """Write what the probe cache still waits for."""
        if self._writer is not None:
            self._writer.drain()

    def available(self, file: OpenFile, index: int) -> bool:
        """Whether block ``index`` can be read without a download."""
        return index in file.stored or (file.cache_key, index) in self.cache

    def all_available(self, file: OpenFile, first: int, last: int) -> bool:
        """Whether blocks ``first`` to ``last`` need no download (the last one is looked at
        first: past the cached blocks, it answers alone)."""
        available = self.available
        return available(file, last) and all(available(file, i) for i in range(first, last))

    def cached_run_start(self, file: OpenFile, index: int, limit: int) -> int:
        """The first of the blocks held in memory contiguously before block ``index`` (looking
        back ``limit`` blocks at most); ``index`` when block ``index - 1`` is not. Blocks on disk
        only do not count: the probe cache holds every file's head, read or not."""
        key, cache = file.cache_key, self.cache
        first = index
        while first > 0 and index - first < limit and (key, first - 1) in cache:
            first -= 1
        return first

    def cached(self, file: OpenFile, index: int, touch: bool = True) -> Block | None:
        data = self.cache.get(file.cache_key, index, touch)
        if data is None and index in file.stored:
            assert self.probe is not None
            data = self.probe.get(file.probe_key, index)
            if data is None:  # evicted from disk since the file was opened
                file.stored.discard(index)
            else:
                self.stats.probe_hits += 1
                self.cache.put(file.cache_key, index, data)
        return data

    def store(self, file: OpenFile, index: int, data: Block) -> None:
        """A downloaded block: into memory, and into the probe cache when it is a head or tail
        block."""
        self.cache.put(file.cache_key, index, data)
        writer = self._writer
        if writer is None or index in file.stored:
            return
        if writer.probe.wants(file.source.size, index * BLOCK_SIZE, BLOCK_SIZE):
            writer.add(file.probe_key, index, data)

    def _mark_stored(self, batch: Batch) -> None:
        """The open files learn which of their blocks are on disk now (event loop only)."""
        for file in self._files.values():
            stored = batch.get(file.probe_key)
            if stored:
                file.stored.update(stored)
