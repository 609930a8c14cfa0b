"""Byte-range streaming of RD downloads for the filesystem: the reader pool and its handles.

The model follows rclone's VFS cache and mountpoint-s3's prefetcher. The jobs live apart:

* :mod:`rdfs.data.blockstore`: every block in memory (:mod:`rdfs.data.blockcache`), head and tail
  blocks on disk (the probe cache, written behind by :mod:`rdfs.data.probewrite`). A read served
  entirely from them starts no read-ahead: a rescan of an unchanged library sends nothing.
* :mod:`rdfs.data.readahead`: the read-pattern policy (runs, windows), pure.
* :mod:`rdfs.data.stream`: the read-ahead of one run; :mod:`rdfs.data.download`: requests,
  checks, resumes, link refreshes and stall deadlines.

A handle's read returns exactly the bytes asked for, or raises. A first or random read downloads
what it covers with one bounded ``Range`` request, from its first block's start to its own end
(media scanners read a head and a few tail ranges: no read-ahead for them; the last block's
leading bytes wait on the open file for a read of the rest); a probe of the first block and
then of a far place gets the head's next block in the background (it re-reads the head). The
filesystem opens files with direct I/O, so these are the application's reads, not the kernel's
readahead of them. A read waiting for a block that another download fetches waits at most
``READ_STALL_TIMEOUT``, then fetches it itself.
"""

from __future__ import annotations

import logging

import httpcore
import trio

from rdfs.api.errors import RDError
from rdfs.data.blockcache import BLOCK_SIZE, DEFAULT_CACHE_BYTES, Block, BlockCache
from rdfs.data.blockstore import BlockStore
from rdfs.data.download import (
    DEFAULT_CONNECTIONS_PER_HOST,
    MAX_STALLS,
    RANGE_DISCARD_LIMIT,
    STALL_TIMEOUT,
    Downloader,
    DownloadError,
    DownloadStalled,
)
from rdfs.data.downloadclient import TRANSPORT_ERRORS, download_pool
from rdfs.data.links import LinkResolver
from rdfs.data.readahead import (
    INITIAL_WINDOW,
    LOOKBACK,
    MAX_WINDOW,
    Run,
    Runs,
    Window,
    fetch_end,
    first_window,
    head_follow_up,
    run_start,
    window_budget,
)
from rdfs.data.source import FileSource, OpenFile
from rdfs.data.stats import ReaderStats
from rdfs.data.stream import Stream
from rdfs.store.probecache import ProbeCache

__all__ = ["DownloadError", "DownloadStalled", "FileHandle", "FileSource", "ReaderPool"]

log = logging.getLogger(__name__)


class FileHandle:
    """One open file: ``await handle.read(offset, size)``; ``await handle.close()``."""

    def __init__(self, pool: ReaderPool, file: OpenFile) -> None:
        self.pool = pool
        self.file = file
        self.source = file.source
        self._blocks = pool.blocks
        self._runs: Runs[Stream] = Runs()
        self._closed = False
        self._reads = 0
        self._head_only = False  # every read so far lay in the file's first block
        self._background = trio.CancelScope()  # the head's follow-up fetch

    async def read(self, offset: int, size: int) -> Block:
        """Exactly ``min(size, file size - offset)`` bytes at ``offset`` (b"" at or after EOF).

        The result is bytes-like: a read inside one cached block is a view of it.
        """
        if self._closed:
            raise ValueError("read on a closed FileHandle")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        file_size = self.source.size
        if size <= 0 or offset >= file_size:
            return b""
        end = min(offset + size, file_size)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        self._follow_head(first, last)
        streamed = self._observe(offset, end, first)
        # Blocks a stream brought keep their place in the LRU when read: read once, in order,
        # they go before the read-ahead still waiting for its reader.
        part = fetch_end(offset, end, BLOCK_SIZE, file_size)
        blocks = await self._collect(first, last, end, part, touch=not streamed)
        stats = self.pool.stats
        stats.reads += 1
        head = offset - first * BLOCK_SIZE
        if first == last:
            data = blocks[0][head : head + end - offset]
        else:
            tail = end - last * BLOCK_SIZE
            parts = [memoryview(blocks[0])[head:], *blocks[1:-1], memoryview(blocks[-1])[:tail]]
            data = b"".join(parts)
        stats.bytes_served += len(data)
        return data

    def _observe(self, offset: int, end: int, first: int) -> bool:
        """Follow the access pattern (see :mod:`rdfs.data.readahead`): feed a run's stream, or
        start one for a sequential run; True when the read continues a running stream."""
        run, resumed = self._runs.find(offset)
        if run is None:
            cached = self._blocks.cached_run_start(self.file, first, LOOKBACK // BLOCK_SIZE)
            start = run_start(offset, cached * BLOCK_SIZE, BLOCK_SIZE)
            run, dropped = self._runs.begin(start, end)
            for old in dropped:
                if old.stream is not None:
                    old.stream.cancel()
            # A seek: a stream waiting for its reader (window full) holds a connection whose socket
            # buffer still fills, taking the link from the new position. One well ahead of its
            # reader lets the connection go and keeps its blocks; a reader coming back to it gets a
            # new request. (A young stream with a small window keeps it: it is likely interleaved.)
            for other in self._runs.others():
                if other.stream is not None and other.stream.idle_ahead:
                    other.stream.release_connection()
            if run.earns_stream(end, new=True):
                self._start_stream(run, offset, end, first)
            return False
        stream = run.stream
        if stream is not None and stream.serving:
            if stream.covers(offset):
                if not stream.evicted(first):
                    stream.advance(end)
                    run.end = end
                    return True
                log.debug(
                    "read-ahead of %s was evicted before it was read: restarting", self.source.label
                )
            elif stream.straggler(offset):
                return True  # a late read of what the stream serves: fetch it, keep the stream
        run.end = end
        if run.earns_stream(end, resumed=resumed):
            self._start_stream(run, offset, end, first)
        return False

    def _follow_head(self, first: int, last: int) -> None:
        """Fetch the head's next block in the background for a probe that read the first block
        and now reads far from it (see :func:`~rdfs.data.readahead.head_follow_up`)."""
        wanted = [
            index
            for index in head_follow_up(self._head_only, first)
            if index < self.file.blocks
            and index not in self.file.pending
            and not self._blocks.available(self.file, index)
        ]
        self._head_only = last == 0 and (self._reads == 0 or self._head_only)
        self._reads += 1
        if wanted:
            self.pool.fetch_behind(self.file, wanted[0], wanted[-1] + 1, self._background)

    def _start_stream(self, run: Run[Stream], offset: int, end: int, first: int) -> None:
        """(Re)start ``run``'s read-ahead from this read, unless it needs none.

        A run whose window is at hand in the caches (e.g. a rescan hitting the probe cache, a
        handle continuing a previous handle's reading, a player seeking back into what it read)
        needs no read-ahead yet: a stream starts with the first read whose window has a gap a
        running stream would send a request for (:meth:`~rdfs.data.readahead.Window.due_from`).
        """
        initial = first_window(end - offset, self.pool.initial_window)
        window = Window(run_start=run.start, consumed=end, initial=initial)
        size = self.source.size
        last = (window.due_from(self.pool.window_budget(), size, BLOCK_SIZE) - 1) // BLOCK_SIZE
        if end >= size or self._blocks.all_available(self.file, first, last):
            return
        stream = self.pool.start_stream(run, self.file, first * BLOCK_SIZE, window)
        if stream is None:
            return
        if run.stream is not None:
            run.stream.cancel()
        run.stream = stream

    async def _collect(
        self, first: int, last: int, end: int, part: int | None, touch: bool
    ) -> list[Block]:
        """Blocks ``first`` to ``last`` for a read up to byte ``end``: cached, awaited from
        another download, or fetched here. A fetch of the last block here ends at ``part``
        when given (see :func:`~rdfs.data.readahead.fetch_end`): that block's leading bytes
        are kept on the open file for a read of the rest."""
        pool, blocks, file, pending = self.pool, self._blocks, self.file, self.file.pending
        stats = pool.stats
        out: list[Block] = []
        fetched: dict[int, Block] = {}
        overdue: set[int] | None = None  # blocks waited for too long: fetched here
        index = first
        while index <= last:
            data = fetched.pop(index, None)
            if data is None:
                data = blocks.cached(file, index, touch)
                if data is not None:
                    stats.cache_hits += 1
            if data is None:
                prefix = file.partial.get(index)
                if prefix is not None and len(prefix) >= min(end, (index + 1) * BLOCK_SIZE) - (
                    index * BLOCK_SIZE
                ):
                    data = prefix
            if data is not None:
                out.append(data)
                index += 1
                continue
            event = pending.get(index)
            if event is not None and (overdue is None or index not in overdue):
                stats.cache_waits += 1
                with trio.move_on_after(pool.read_stall_timeout):
                    await event.wait()
                    continue
                log.info(
                    "%s: block %d is overdue from another download: fetching it",
                    self.source.label,
                    index,
                )
                overdue = overdue or set()
                overdue.add(index)
            stop = last
            while stop > index and (blocks.available(file, stop) or stop in pending):
                stop -= 1
            stats.cache_misses += stop - index + 1
            trim = part if stop == last else None
            fetched.update(await pool.downloader.fetch(file, index, stop + 1, trim))
        return out

    async def close(self) -> None:
        """Stop the read-ahead; cached blocks stay for the next open."""
        if self._closed:
            return
        self._closed = True
        self._background.cancel()
        for run in self._runs.clear():
            if run.stream is not None:
                run.stream.cancel()
        self._blocks.close(self.file)


class ReaderPool:
    """Opens :class:`FileHandle` s; owns the block store, the downloader and the read-ahead.

    Read-ahead runs in ``nursery`` (or in the nursery of :meth:`run`); without one, reads still
    work but only download the blocks they cover.
    """

    def __init__(
        self,
        resolver: LinkResolver,
        *,
        http: httpcore.AsyncConnectionPool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST,
        nursery: trio.Nursery | None = None,
        initial_window: int = INITIAL_WINDOW,
        max_window: int = MAX_WINDOW,
        retries: int = 5,
        retry_wait_initial: float = 0.1,
        retry_wait_max: float = 2.0,
        idle_release: float = 10.0,
        range_discard_limit: int = RANGE_DISCARD_LIMIT,
        probe: ProbeCache | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        max_stalls: int = MAX_STALLS,
    ) -> None:
        self.resolver = resolver
        self._owns_http = http is None
        self.http = http or download_pool(max_keepalive_connections=64, keepalive_expiry=30.0)
        self.nursery = nursery
        self.initial_window = initial_window
        self.max_window = max(initial_window, min(max_window, cache_bytes // 4))
        self.idle_release = idle_release
        self.read_stall_timeout = stall_timeout * max_stalls
        self.stats = ReaderStats()
        self.cache = BlockCache(cache_bytes)
        self.blocks = BlockStore(self.cache, probe, self.stats, lambda: self.nursery)
        self.downloader = Downloader(
            resolver,
            self.http,
            self.blocks,
            self.stats,
            connections_per_host=max_connections_per_host,
            retries=retries,
            retry_wait_initial=retry_wait_initial,
            retry_wait_max=retry_wait_max,
            range_discard_limit=range_discard_limit,
            stall_timeout=stall_timeout,
            max_stalls=max_stalls,
        )
        self._streams: set[Stream] = set()
        self._run_scope: trio.CancelScope | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the read-ahead until cancelled: ``await nursery.start(pool.run)``."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._run_scope = nursery.cancel_scope
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.nursery = None
                self._run_scope = None
                nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Stop every read-ahead, write what the probe cache still waits for, close the download
        client (if the pool made it)."""
        for stream in list(self._streams):
            stream.cancel()
        if self._run_scope is not None:
            self._run_scope.cancel()
        self.blocks.drain()
        if self._owns_http:
            await self.http.aclose()

    def open(self, source: FileSource) -> FileHandle:
        """A handle on ``source``; no I/O until the first read."""
        return FileHandle(self, self.blocks.open(source))

    @property
    def cached_bytes(self) -> int:
        return self.cache.size

    @property
    def streaming(self) -> int:
        """Read-ahead streams running now."""
        return len(self._streams)

    # --- read-ahead ------------------------------------------------------------------------------

    def window_budget(self) -> int:
        """The largest read-ahead window a stream may have now.

        All windows together stay within half the block cache: read-ahead evicted before it is
        read would be downloaded twice.
        """
        return window_budget(
            self.cache.max_bytes, len(self._streams), self.initial_window, self.max_window
        )

    def fetch_behind(self, file: OpenFile, first: int, stop: int, scope: trio.CancelScope) -> None:
        """Download blocks ``[first, stop)`` in the background (in ``scope``); a failure costs
        only this fetch: a read of these blocks fetches them itself."""
        if self.nursery is not None:
            self.nursery.start_soon(self._fetch_behind, file, first, stop, scope)

    async def _fetch_behind(
        self, file: OpenFile, first: int, stop: int, scope: trio.CancelScope
    ) -> None:
        with scope:
            try:
                await self.downloader.fetch(file, first, stop)
            except (RDError, *TRANSPORT_ERRORS) as exc:
                log.info("background fetch of %s failed: %s", file.source.label, exc)

    def start_stream(
        self, run: Run[Stream], file: OpenFile, start: int, window: Window
    ) -> Stream | None:
        """A read-ahead of ``run`` from byte ``start`` that keeps ``window`` (None without a
        nursery to run it in)."""
        if self.nursery is None:
            return None
        stream = Stream(
            self.blocks,
            file,
            start,
            window,
            budget=self.window_budget,
            idle_release=self.idle_release,
        )
        self._streams.add(stream)
        self.stats.streams += 1
        self.nursery.start_soon(self._run_stream, run, stream)
        return stream

    async def _run_stream(self, run: Run[Stream], stream: Stream) -> None:
        try:
            with stream.scope:
                await self.downloader.download(stream)
        except (RDError, *TRANSPORT_ERRORS) as exc:
            # The reads waiting for these blocks fetch them themselves and report the error.
            label = stream.file.source.label
            log.warning("read-ahead of %s stopped at byte %d: %s", label, stream.received, exc)
        except Exception:  # a bug in a read-ahead costs that read-ahead, never the mount
            label = stream.file.source.label
            log.exception("read-ahead of %s failed at byte %d", label, stream.received)
        finally:
            stream.done = True
            stream.release()
            self._streams.discard(stream)
            if run.stream is stream and not stream.finished:
                run.stream = None
