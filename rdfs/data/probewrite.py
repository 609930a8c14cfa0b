"""Write-behind of head and tail blocks into the persistent probe cache.

Blocks are queued as they arrive and written in batches, one per ``PROBE_FLUSH_DELAY``, in a
worker thread: a disk write never holds up a read. Past ``PROBE_QUEUE_LIMIT`` queued bytes,
blocks are skipped (it is only a cache). A disk that refuses a batch costs the cache, never a read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from rdfs.data.blockcache import Block, MiB
from rdfs.store.errors import CacheError
from rdfs.store.probecache import ProbeCache

log = logging.getLogger(__name__)

# Probe-cache writes wait this long to be batched; past this many queued bytes, blocks are skipped.
PROBE_FLUSH_DELAY = 0.2
PROBE_QUEUE_LIMIT = 64 * MiB

# Blocks by probe key, then by block index.
Batch = dict[str, dict[int, Block]]


class ProbeWriter:
    """``add(key, index, data)`` queues a block; ``on_written(batch)`` hears what reached disk.

    ``host()`` is the nursery the flushes run in; without one, a block is written at once.
    """

    def __init__(
        self,
        probe: ProbeCache,
        host: Callable[[], trio.Nursery | None],
        on_written: Callable[[Batch], None],
    ) -> None:
        self.probe = probe
        self._host = host
        self._on_written = on_written
        self._queue: Batch = {}
        self._queued_bytes = 0
        self._flushing = False

    def add(self, key: str, index: int, data: Block) -> None:
        nursery = self._host()
        if nursery is None:  # nothing runs in the background: write now
            self._write({key: {index: data}})
            return
        self._enqueue(key, index, data)
        if not self._flushing:
            self._flushing = True
            nursery.start_soon(self._flush)

    def drain(self) -> None:
        """Write what is still queued, now (on close)."""
        if self._queue:
            self._write(self._take())

    async def _flush(self) -> None:
        try:
            while self._queue:
                await trio.sleep(PROBE_FLUSH_DELAY)
                batch = self._take()
                try:
                    written = await trio.to_thread.run_sync(self._put, batch)
                except trio.Cancelled:  # before the thread started: drain() writes it
                    for key, blocks in batch.items():
                        for index, data in blocks.items():
                            self._enqueue(key, index, data)
                    raise
                if written:
                    self._on_written(batch)
        finally:
            self._flushing = False

    def _enqueue(self, key: str, index: int, data: Block) -> None:
        blocks = self._queue.setdefault(key, {})
        if index not in blocks and self._queued_bytes < PROBE_QUEUE_LIMIT:
            blocks[index] = data
            self._queued_bytes += len(data)

    def _take(self) -> Batch:
        batch, self._queue, self._queued_bytes = self._queue, {}, 0
        return batch

    def _put(self, batch: Batch) -> bool:
        """Store ``batch`` (any thread); False when the disk refused it."""
        try:
            self.probe.put_batch(batch)
        except CacheError as exc:  # a full or broken disk costs the cache, never the read
            count = sum(map(len, batch.values()))
            log.warning("probe cache: cannot store %d blocks: %s", count, exc)
            return False
        return True

    def _write(self, batch: Batch) -> None:
        if self._put(batch):
            self._on_written(batch)
