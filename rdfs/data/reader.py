"""Byte-range streaming of RD downloads for the filesystem.

The model follows rclone's VFS cache and mountpoint-s3's prefetcher:

* Every byte lives in a :class:`BlockCache` of fixed ``BLOCK_SIZE`` blocks keyed by
  ``(FileSource.key, block index)``, shared by every handle of a file and bounded in memory
  (LRU). A block being downloaded is *pending*: it has a ``trio.Event`` that readers wait on, so
  two readers never download the same block at the same time.
* Under it, an optional persistent :class:`~rdfs.store.probecache.ProbeCache` keeps the head and
  tail blocks of every file on disk (what media scanners probe). A block found in either tier
  needs no download, and a read served entirely from them starts no read-ahead: a rescan of an
  unchanged library sends nothing to the network.
* A first or random read downloads just the blocks it covers with one bounded ``Range`` request
  (media scanners read a head and a few tail ranges: no read-ahead for them); a download of a
  file's first block brings ``HEAD_FETCH`` (a probe's second read of the head needs no second
  round trip). The filesystem opens files with direct I/O, so these are the application's reads,
  not the kernel's readahead of them.
* A handle follows up to ``MAX_RUNS`` sequential *runs* (two places of one file read in turn
  each keep theirs). A read that continues a run (within ``BACK_TOLERANCE``/``FORWARD_TOLERANCE``,
  as concurrent FUSE reads arrive out of order) starts the run's *stream*: one long ranged
  response up to the end of the file, read in the pool's nursery, that stays a read-ahead
  window ahead of the reader. The window starts small and grows with the bytes read
  sequentially (2x, capped); all windows together stay within half the block cache, so
  read-ahead is not evicted before it is read (if it is, the stream restarts there). The stream
  stops reading the socket when it is far enough ahead (TCP back-pressure) and gives its
  connection up after a while idle, when another download waits for a connection, or when its
  reader seeks elsewhere while it is far ahead. Blocks behind the reader stay cached, so small
  backward seeks cost nothing; blocks read from a stream keep their LRU place (read once, in
  order, they go first).
* Every download resumes from the byte where it stopped when the connection drops (bounded
  retries with backoff through ``stamina``). A download server that refuses the URL (403, 404,
  410, an HTML error page) gets the link refreshed once through the resolver, then the download
  resumes; only a link RD refuses to unrestrict raises :class:`LinkGone` (the resolver
  negative-caches a link whose fresh URL is refused too). Responses are checked:
  a 200 for a ranged request (Range ignored) is read-and-discarded up to the offset when that is
  small, otherwise fails; a Content-Range that does not start at the asked offset fails; a body
  with a ``Content-Encoding`` other than identity fails (it is never cached); every redirect
  ``Location`` is checked like an unrestricted URL. A read returns exactly the bytes asked for, or
  raises.
* Every request has a deadline without progress: one that delivers less than ``STALL_PROGRESS``
  bytes in ``STALL_TIMEOUT`` seconds (time to the first byte included, time paused on purpose
  excluded) is aborted and resumed; after ``MAX_STALLS`` such aborts in a row without a block
  delivered, the download fails (:class:`DownloadStalled`, EIO). A read waiting for a block that
  another download fetches waits at most ``READ_STALL_TIMEOUT``, then fetches it itself.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import stamina
import trio

from rdfs.api.errors import NetworkError, RDError
from rdfs.data.downloadclient import TRANSPORT_ERRORS, download_pool, header
from rdfs.data.links import BadDownloadURL, LinkGone, LinkResolver, ResolvedLink, checked_url
from rdfs.store.probecache import ProbeCache, file_key

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB

BLOCK_SIZE = 32 * KiB
DEFAULT_CACHE_BYTES = 128 * MiB
INITIAL_WINDOW = 512 * KiB
MAX_WINDOW = 64 * MiB
# Reads this far behind / ahead of a stream still belong to it (out-of-order FUSE reads).
BACK_TOLERANCE = 256 * KiB
FORWARD_TOLERANCE = 512 * KiB
# Sequential runs followed per handle (interleaved readers of one file); the oldest is dropped.
MAX_RUNS = 4
# A run resumed after another run was read gets a stream only once it is this long.
INTERLEAVED_RUN_MIN = 512 * KiB
# Probe-cache writes wait this long to be batched; past this many queued bytes, blocks are skipped.
PROBE_FLUSH_DELAY = 0.2
PROBE_QUEUE_LIMIT = 64 * MiB
# A first read at least this large (a player's, not a probe's) starts a stream.
STREAM_ON_SEEK = 256 * KiB
# A download of a file's first block fetches at least this much: container probes read the head
# in more than one 32 KiB read (ffprobe re-reads an MP4's head from byte 48), and a second request
# would cost the probe another round trip to the download server.
HEAD_FETCH = 64 * KiB
# MP4/MOV written without "faststart" keep their index (the moov box) at the end: a probe reads the
# head, then the tail. For these, the first read of the head also fetches the last TAIL_FETCH bytes,
# in parallel: the probe's tail read finds them, and a scan saves one round trip per file. (An MKV
# probe reads the head only; a faststart MP4 costs one small request too many.)
TAIL_FIRST_SUFFIXES = (".mp4", ".m4v", ".mov")
TAIL_FETCH = 32 * KiB
# On a seek, other streams of the handle this far ahead of their reader let their connection go.
RELEASE_AHEAD = 4 * MiB
# A stream jumps over this many blocks already cached (or being fetched by someone else)
# instead of downloading them again; shorter runs are cheaper to read through.
SKIP_RUN_BLOCKS = (1 * MiB) // BLOCK_SIZE
# A server ignoring Range is tolerated (read and discard) for offsets up to this.
RANGE_DISCARD_LIMIT = 8 * MiB
# Link refreshes in a row, without progress in between, before a download gives up.
MAX_LINK_REFRESHES = 2
DEFAULT_CONNECTIONS_PER_HOST = 16
DEFAULT_TIMEOUT = {
    "connect": 15.0,
    "read": 30.0,
    "write": 15.0,
    "pool": None,
}  # seconds, httpcore's keys
MAX_REDIRECTS = 5
# A download request that delivers less than STALL_PROGRESS bytes in STALL_TIMEOUT seconds is
# aborted (a server dripping a byte now and then defeats any per-socket-read timeout); the
# transfer resumes where it stopped. MAX_STALLS aborts in a row without a block delivered fail the
# download: a read that cannot progress fails with EIO within READ_STALL_TIMEOUT.
STALL_TIMEOUT = 15.0
STALL_PROGRESS = BLOCK_SIZE
MAX_STALLS = 2
READ_STALL_TIMEOUT = STALL_TIMEOUT * MAX_STALLS

# A cached block: its own bytes, or a view of the response piece it arrived in (no copy).
Block = bytes | memoryview

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_REFUSED = frozenset({403, 404, 410})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FileSource:
    """A readable file: ``size`` bytes at ``offset`` inside the content of ``hoster_link``.

    ``key`` identifies the file for the shared cache (e.g. its inode); ``offset`` is non-zero
    for a file stored inside an archive.
    """

    key: str
    hoster_link: str
    size: int
    offset: int = 0
    name: str = ""


class DownloadError(RDError):
    """The download server answered something that cannot be served correctly."""


class DownloadStalled(DownloadError):
    """The download server stopped delivering (``MAX_STALLS`` requests in a row without progress)."""


@dataclass
class ReaderStats:
    """Counters for status files and benchmarks (cumulative)."""

    requests: int = 0  # HTTP requests sent to download servers
    bytes_fetched: int = 0  # body bytes received (including discarded ones)
    bytes_served: int = 0  # bytes returned by reads
    reads: int = 0
    cache_hits: int = 0  # blocks found in the cache
    cache_waits: int = 0  # blocks waited for while another download fetched them
    cache_misses: int = 0  # blocks a read had to download itself
    streams: int = 0  # read-ahead streams started
    reconnects: int = 0  # downloads resumed after a dropped connection
    link_refreshes: int = 0  # links unrestricted again after the server refused them
    probe_hits: int = 0  # blocks read from the persistent probe cache
    stalls: int = 0  # requests aborted: less than STALL_PROGRESS bytes in STALL_TIMEOUT
    stalled: int = 0  # downloads given up after MAX_STALLS stalls in a row (their reads: EIO)
    stalling: int = 0  # downloads whose latest request stalled, now
    last_stall: dict[str, Any] | None = None  # {"file", "byte", "time" (UNIX), "gave_up"}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BlockCache:
    """LRU of file blocks, bounded by total bytes, shared by every handle of the pool."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._blocks: OrderedDict[tuple[str, int], Block] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: str, index: int, touch: bool = True) -> Block | None:
        """The block, made the most recently used unless ``touch`` is False.

        A block that is a view of a larger response piece becomes a copy of its own when touched:
        kept on past its neighbours, it must not keep the whole piece in memory.
        """
        data = self._blocks.get((key, index))
        if data is not None and touch:
            if isinstance(data, memoryview) and len(data.obj) > len(data):  # type: ignore[arg-type]
                data = self._blocks[(key, index)] = bytes(data)
            self._blocks.move_to_end((key, index))
        return data

    def __contains__(self, item: tuple[str, int]) -> bool:
        return item in self._blocks

    def put(self, key: str, index: int, data: Block) -> None:
        old = self._blocks.pop((key, index), None)
        if old is not None:
            self.size -= len(old)
        self._blocks[(key, index)] = data
        self.size += len(data)
        while self.size > self.max_bytes and len(self._blocks) > 1:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(evicted)


@dataclass
class _File:
    """What the handles of one file share: its source and the blocks being downloaded."""

    source: FileSource
    handles: int = 0
    pending: dict[int, trio.Event] = field(default_factory=dict)
    # Blocks of this file held by the persistent probe cache (loaded when the file is opened).
    stored: set[int] = field(default_factory=set)
    # Blocks are cached per file *and* source: a file whose size or link changed starts afresh.
    cache_key: str = field(init=False)
    probe_key: str = field(init=False)
    blocks: int = field(init=False)
    # An MP4/MOV whose tail lies beyond the head fetch: a head read fetches the tail too.
    tail_first: bool = field(init=False)

    def __post_init__(self) -> None:
        source = self.source
        self.cache_key = f"{source.key}\0{source.hoster_link}\0{source.offset}\0{source.size}"
        self.probe_key = file_key(source.hoster_link, source.offset, source.size)
        self.blocks = (source.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        self.tail_first = source.size > HEAD_FETCH + TAIL_FETCH and source.name.lower().endswith(
            TAIL_FIRST_SUFFIXES
        )


class _Transient(Exception):
    """A download attempt failed before making progress; worth another try."""


class _Stalled(Exception):
    """A request delivered less than ``STALL_PROGRESS`` bytes in ``STALL_TIMEOUT``: aborted."""


class _Refused(Exception):
    """The download server refused the URL: the link needs a refresh."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.url = url


class _Transfer:
    """Downloads the blocks of ``[start, stop)`` of a file in order, delivering them to the cache.

    ``received`` is the next byte wanted from the network; ``pos`` the start of the block being
    assembled in ``buf``. The blocks this transfer promised (``owned``) are pending in the file
    until delivered or released.
    """

    def __init__(self, pool: ReaderPool, file: _File, start: int, stop: int) -> None:
        self.pool = pool
        self.file = file
        self.pos = start
        self.received = start
        self.stop = stop
        self.buf = bytearray()
        self.owned: dict[int, trio.Event] = {}
        self.collected: dict[int, Block] | None = None
        self.url = ""  # the download URL of the latest request

    @property
    def finished(self) -> bool:
        return self.pos >= self.stop

    def claim(self, first: int, stop: int) -> None:
        """Promise the blocks ``[first, stop)`` that are neither cached nor pending elsewhere."""
        pending, available = self.file.pending, self.pool._available
        for index in range(first, stop):
            if index not in pending and not available(self.file, index):
                event = pending[index] = trio.Event()
                self.owned[index] = event

    def release(self) -> None:
        """Give up every promise still open (waiters wake up and look again)."""
        pending = self.file.pending
        for index, event in self.owned.items():
            if pending.get(index) is event:
                del pending[index]
            event.set()
        self.owned.clear()

    def want(self) -> int:
        """The byte up to which this transfer wants data now."""
        return self.stop

    def feed(self, piece: bytes) -> None:
        """Take the next bytes of the response (everything up to ``stop``: a response is never
        read partially, the next piece would land at the wrong offset).

        Whole blocks inside ``piece`` are delivered as views of it, without a copy; only a block
        that straddles two pieces is assembled in ``buf``."""
        take = min(len(piece), self.stop - self.received)
        if take <= 0:
            return
        view = memoryview(piece)[:take]
        self.received += take
        size = self.file.source.size
        used = 0
        if self.buf:
            used = min(BLOCK_SIZE - len(self.buf), take)
            self.buf += view[:used]
            if len(self.buf) < BLOCK_SIZE and self.received < size:
                return
            self._deliver(bytes(self.buf))
            self.buf = bytearray()
        while take - used >= BLOCK_SIZE:
            self._deliver(view[used : used + BLOCK_SIZE])
            used += BLOCK_SIZE
        if used < take:
            if self.received >= size:
                self._deliver(view[used:])
            else:
                self.buf += view[used:]

    def _deliver(self, data: Block) -> None:
        index = self.pos // BLOCK_SIZE
        self.pos += len(data)
        self.pool._store(self.file, index, data)
        if self.collected is not None:
            self.collected[index] = data
        event = self.owned.pop(index, None)
        if event is not None:
            if self.file.pending.get(index) is event:
                del self.file.pending[index]
            event.set()

    def should_jump(self) -> bool:
        """Whether to drop the response to skip blocks already at hand (streams only)."""
        return False

    def ready_run(self, limit: int) -> int:
        """How many blocks from ``pos`` on are cached or being fetched by someone else (<= limit)."""
        if self.buf:
            return 0
        available, pending = self.pool._available, self.file.pending
        index = self.pos // BLOCK_SIZE
        count = 0
        while count < limit and index + count < self.file.blocks:
            block = index + count
            if available(self.file, block):
                event = self.owned.pop(block, None)
                if event is not None:  # somebody else delivered what we promised
                    if pending.get(block) is event:
                        del pending[block]
                    event.set()
            elif block not in pending or block in self.owned:
                break
            count += 1
        return count

    async def ready_for_more(self) -> bool:
        """Wait until more data is wanted; False when the transfer is complete."""
        return not self.finished

    async def pause(self, limiter: trio.CapacityLimiter) -> bool:
        """Wait, holding the response, until more data is wanted; False to let it go."""
        return True


class _Stream(_Transfer):
    """The read-ahead of one handle: wants data up to a window ahead of the reader."""

    def __init__(
        self, pool: ReaderPool, file: _File, start: int, consumed: int, run_start: int
    ) -> None:
        super().__init__(pool, file, start, file.source.size)
        self.consumed = consumed
        self.run_start = run_start
        self.wake = trio.Event()
        self.scope = trio.CancelScope()
        self.done = False
        self._release = False  # set to make a paused stream give its connection up
        self._claimed = start // BLOCK_SIZE
        self._extend()

    def window(self) -> int:
        pool = self.pool
        return min(
            pool.window_budget(), max(pool.initial_window, 2 * (self.consumed - self.run_start))
        )

    def want(self) -> int:
        target = self.consumed + self.window()
        target = (
            -(-target // BLOCK_SIZE) * BLOCK_SIZE
        )  # whole blocks: never pause inside a promised one
        return min(target, self.stop)

    @property
    def idle_ahead(self) -> bool:
        """Its whole window is downloaded and that is a lot: it waits for the reader."""
        return self.received >= self.want() and self.received - self.consumed >= RELEASE_AHEAD

    @property
    def serving(self) -> bool:
        """Still downloading, or done because it delivered everything up to the end of the file."""
        return not self.done or self.finished

    def covers(self, offset: int) -> bool:
        """A read near the stream's position or inside its window (reads arrive out of order)."""
        return (
            self.consumed - BACK_TOLERANCE
            <= offset
            <= max(self.want(), self.received) + FORWARD_TOLERANCE
        )

    def straggler(self, offset: int) -> bool:
        """A read shortly behind the stream (out of order), not a seek back."""
        floor = max(self.run_start, self.consumed - self.window()) - BACK_TOLERANCE
        return floor <= offset < self.consumed

    def advance(self, end: int) -> None:
        """The reader got up to ``end``: promise the blocks of the new window and wake up."""
        if end > self.consumed:
            self.consumed = end
        self._extend()
        self.wake.set()

    def _extend(self) -> None:
        stop = -(-self.want() // BLOCK_SIZE)
        first = max(self._claimed, self.pos // BLOCK_SIZE)
        if stop > first:
            self.claim(first, stop)
            self._claimed = stop

    def _skip_ready(self) -> None:
        """Jump over blocks that need no download (only between responses)."""
        while not self.finished:
            run = self.ready_run(self.file.blocks)
            if not run:
                return
            self.pos = min(self.stop, self.pos + run * BLOCK_SIZE)
            self.received = self.pos

    async def ready_for_more(self) -> bool:
        while True:
            self._skip_ready()
            if self.finished:
                return False
            if self.received < self.want():
                self._extend()
                self._release = False  # a new request: the last one was let go already
                return True
            self.wake = trio.Event()
            await self.wake.wait()

    async def pause(self, limiter: trio.CapacityLimiter) -> bool:
        paused = self.pool._paused.setdefault(limiter, set())
        paused.add(self)
        try:
            give_up_at = trio.current_time() + self.pool.idle_release
            while self.received >= self.want():
                if self.finished:
                    return False
                self.wake = trio.Event()
                with trio.move_on_at(give_up_at):  # woken by the reader, or by a download waiting
                    await self.wake.wait()
                if (
                    self._release
                    or limiter.statistics().tasks_waiting
                    or trio.current_time() >= give_up_at
                ):
                    self._release = False
                    return False
        finally:
            paused.discard(self)
        self._extend()
        return True

    def evicted(self, index: int) -> bool:
        """Whether block ``index``, which this stream already passed, is gone from the caches."""
        return (
            index * BLOCK_SIZE < self.pos
            and index not in self.file.pending
            and not self.pool._available(self.file, index)
        )

    def should_jump(self) -> bool:
        # A long run of blocks already at hand: a new request after it beats downloading them again.
        return self.ready_run(SKIP_RUN_BLOCKS) >= SKIP_RUN_BLOCKS

    def release_connection(self) -> None:
        """If paused, close the response now (the stream goes on with a new request when needed)."""
        self._release = True
        self.wake.set()

    def cancel(self) -> None:
        self.scope.cancel()


@dataclass(eq=False)
class _Run:
    """One sequential run of reads on a handle, and the stream that reads ahead of it.

    A handle follows several runs at once: a player reading video and audio at two places of one
    file, or two viewers of one handle, each keep their own read-ahead.
    """

    start: int  # where the run began
    end: int  # end of its latest read
    stream: _Stream | None = None

    def claims(self, offset: int) -> bool:
        """Whether a read at ``offset`` belongs to this run (reads arrive slightly out of order)."""
        stream = self.stream
        if (
            stream is not None
            and stream.serving
            and (stream.covers(offset) or stream.straggler(offset))
        ):
            return True
        return self.end - BACK_TOLERANCE <= offset <= self.end + FORWARD_TOLERANCE


class FileHandle:
    """One open file: ``await handle.read(offset, size)``; ``await handle.close()``."""

    def __init__(self, pool: ReaderPool, file: _File) -> None:
        self.pool = pool
        self.file = file
        self.source = file.source
        self._runs: list[_Run] = []  # most recently used first, at most MAX_RUNS
        self._closed = False

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
        if first == 0 and self.file.tail_first:
            self.pool._prefetch_tail(self.file)
        streamed = self._observe(offset, end, first)
        # Blocks a stream brought keep their place in the LRU when read: read once, in order,
        # they go before the read-ahead still waiting for its reader.
        blocks = await self._collect(first, last, touch=not streamed)
        self.pool.stats.reads += 1
        head = offset - first * BLOCK_SIZE
        if first == last:
            data = blocks[0][head : head + end - offset]
        else:
            tail = end - last * BLOCK_SIZE
            parts = [memoryview(blocks[0])[head:], *blocks[1:-1], memoryview(blocks[-1])[:tail]]
            data = b"".join(parts)
        self.pool.stats.bytes_served += len(data)
        return data

    def _observe(self, offset: int, end: int, first: int) -> bool:
        """Follow the access pattern: feed a run's stream, or start one for a sequential run;
        True when the read continues a running stream.

        A small first read of a run (a seek of a media probe, a random read) starts no
        read-ahead; the second read that continues it does, unless another run came in between:
        a probe that reads the head, the tail, then the head again is no stream. An interleaved
        run earns its stream once it is ``INTERLEAVED_RUN_MIN`` long. A large first read
        (``STREAM_ON_SEEK``: a player seeking) starts the stream at once, so the reads after it
        do not wait for a first byte.
        """
        run = next((r for r in self._runs if r.claims(offset)), None)
        if run is None:
            run = _Run(start=offset, end=end)
            self._runs.insert(0, run)
            for old in self._runs[MAX_RUNS:]:
                if old.stream is not None:
                    old.stream.cancel()
            del self._runs[MAX_RUNS:]
            # A seek: a stream waiting for its reader (window full) holds a connection whose socket
            # buffer still fills, taking the link from the new position. One well ahead of its
            # reader lets the connection go and keeps its blocks; a reader coming back to it gets a
            # new request. (A young stream with a small window keeps it: it is likely interleaved.)
            for other in self._runs[1:]:
                if other.stream is not None and other.stream.idle_ahead:
                    other.stream.release_connection()
            if end - offset >= STREAM_ON_SEEK:
                self._start_stream(run, end, first)
            return False
        resumed = self._runs[0] is not run
        if resumed:
            self._runs.remove(run)
            self._runs.insert(0, run)
        stream = run.stream
        if stream is not None and stream.serving:
            if stream.covers(offset):
                if not stream.evicted(first):
                    stream.advance(end)
                    run.end = end
                    return True
                log.debug(
                    "read-ahead of %s was evicted before it was read: restarting", self.source.name
                )
            elif stream.straggler(offset):
                return True  # a late read of what the stream serves: fetch it, keep the stream
        run.end = end
        if not resumed or end - run.start >= INTERLEAVED_RUN_MIN:
            self._start_stream(run, end, first)
        return False

    def _start_stream(self, run: _Run, end: int, first: int) -> None:
        """(Re)start ``run``'s read-ahead from this read, unless it needs none.

        A read served entirely from the caches (e.g. a rescan hitting the probe cache) needs no
        read-ahead: a stream starts with the first read that has to download.
        """
        pool = self.pool
        if (
            end >= self.source.size
            or pool.nursery is None
            or all(pool._available(self.file, i) for i in range(first, (end - 1) // BLOCK_SIZE + 1))
        ):
            return
        if run.stream is not None:
            run.stream.cancel()
        run.stream = pool._start_stream(run, self.file, first * BLOCK_SIZE, end)

    async def _collect(self, first: int, last: int, touch: bool) -> list[Block]:
        pool, file, pending, stats = self.pool, self.file, self.file.pending, self.pool.stats
        out: list[Block] = []
        fetched: dict[int, Block] = {}
        overdue: set[int] | None = None  # blocks waited for too long: fetched here
        index = first
        while index <= last:
            data = fetched.pop(index, None)
            if data is None:
                data = pool._cached(file, index, touch)
                if data is not None:
                    stats.cache_hits += 1
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
                    self.source.name,
                    index,
                )
                overdue = overdue or set()
                overdue.add(index)
            stop = last
            while stop > index and (pool._available(file, stop) or stop in pending):
                stop -= 1
            if index == 0:
                stop = self._head_stop(stop)
            stats.cache_misses += stop - index + 1
            fetched.update(await self.pool._fetch(self.file, index, stop + 1))
        return out

    def _head_stop(self, stop: int) -> int:
        """The last block a download of the file's first block fetches (``HEAD_FETCH``)."""
        last_block = (self.source.size - 1) // BLOCK_SIZE
        limit = min(HEAD_FETCH // BLOCK_SIZE - 1, last_block)
        while (
            stop < limit
            and not self.pool._available(self.file, stop + 1)
            and stop + 1 not in self.file.pending
        ):
            stop += 1
        return stop

    async def close(self) -> None:
        """Stop the read-ahead; cached blocks stay for the next open."""
        if self._closed:
            return
        self._closed = True
        for run in self._runs:
            if run.stream is not None:
                run.stream.cancel()
        self._runs.clear()
        self.pool._forget(self.file)


class ReaderPool:
    """Opens :class:`FileHandle` s; owns the block cache, the download client and the read-ahead.

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
        self.probe = probe
        self._owns_http = http is None
        self.http = http or download_pool(max_keepalive_connections=64, keepalive_expiry=30.0)
        self.cache = BlockCache(cache_bytes)
        self.max_connections_per_host = max_connections_per_host
        self.nursery = nursery
        self.initial_window = initial_window
        self.max_window = max(initial_window, min(max_window, cache_bytes // 4))
        self.retries = retries
        self.retry_wait_initial = retry_wait_initial
        self.retry_wait_max = retry_wait_max
        self.idle_release = idle_release
        self.range_discard_limit = range_discard_limit
        self.stall_timeout = stall_timeout
        self.max_stalls = max_stalls
        self.read_stall_timeout = stall_timeout * max_stalls
        self.stats = ReaderStats()
        self._stalling: set[_Transfer] = set()
        self._files: dict[str, _File] = {}
        self._streams: set[_Stream] = set()
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        self._paused: dict[
            trio.CapacityLimiter, set[_Stream]
        ] = {}  # streams holding an idle connection
        # Head and tail blocks waiting to be written to the probe cache (probe key -> index -> block).
        self._probe_queue: dict[str, dict[int, Block]] = {}
        self._probe_queued_bytes = 0
        self._probe_flushing = False
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
        if self._probe_queue:
            self._write_probe(self._take_probe_queue())
        if self._owns_http:
            await self.http.aclose()

    def open(self, source: FileSource) -> FileHandle:
        """A handle on ``source``; no I/O until the first read."""
        file = self._files.get(source.key)
        if file is None or file.source != source:
            file = self._files[source.key] = _File(source)
            if self.probe is not None:
                file.stored = self.probe.blocks(file.probe_key)
        file.handles += 1
        return FileHandle(self, file)

    def _forget(self, file: _File) -> None:
        file.handles -= 1
        if file.handles <= 0 and self._files.get(file.source.key) is file:
            del self._files[file.source.key]

    @property
    def cached_bytes(self) -> int:
        return self.cache.size

    # --- the two cache tiers: memory (every block) and disk (head and tail blocks) ------------------

    def _available(self, file: _File, index: int) -> bool:
        """Whether block ``index`` can be read without a download."""
        return index in file.stored or (file.cache_key, index) in self.cache

    def _cached(self, file: _File, index: int, touch: bool = True) -> Block | None:
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

    def _store(self, file: _File, index: int, data: Block) -> None:
        """A downloaded block: into memory, and into the probe cache when it is a head or tail block.

        Probe cache writes are batched and run in a worker thread (see :meth:`_flush_probe`).
        """
        self.cache.put(file.cache_key, index, data)
        probe = self.probe
        if probe is None or index in file.stored or not probe.wants(file.source.size, index):
            return
        if self.nursery is None:  # nothing runs in the background: write now
            self._write_probe({file.probe_key: {index: data}})
            return
        self._queue_probe(file.probe_key, index, data)
        if not self._probe_flushing:
            self._probe_flushing = True
            self.nursery.start_soon(self._flush_probe)

    async def _flush_probe(self) -> None:
        """Write the queued probe-cache blocks, a batch per ``PROBE_FLUSH_DELAY``, off the event loop."""
        try:
            while self._probe_queue:
                await trio.sleep(PROBE_FLUSH_DELAY)
                batch = self._take_probe_queue()
                try:
                    written = await trio.to_thread.run_sync(self._put_probe, batch)
                except trio.Cancelled:  # before the thread started: aclose() writes it
                    self._requeue_probe(batch)
                    raise
                if written:
                    self._mark_stored(batch)
        finally:
            self._probe_flushing = False

    def _queue_probe(self, key: str, index: int, data: Block) -> None:
        blocks = self._probe_queue.setdefault(key, {})
        if index not in blocks and self._probe_queued_bytes < PROBE_QUEUE_LIMIT:
            blocks[index] = data
            self._probe_queued_bytes += len(data)

    def _take_probe_queue(self) -> dict[str, dict[int, Block]]:
        batch, self._probe_queue, self._probe_queued_bytes = self._probe_queue, {}, 0
        return batch

    def _requeue_probe(self, batch: dict[str, dict[int, Block]]) -> None:
        for key, blocks in batch.items():
            for index, data in blocks.items():
                self._queue_probe(key, index, data)

    def _put_probe(self, batch: dict[str, dict[int, Block]]) -> bool:
        """Store ``batch`` (any thread); False when the disk refused it."""
        assert self.probe is not None
        try:
            self.probe.put_batch(batch)
        except sqlite3.Error as exc:  # a full or broken disk costs the cache, never the read
            log.warning(
                "probe cache: cannot store %d blocks: %s", sum(map(len, batch.values())), exc
            )
            return False
        return True

    def _mark_stored(self, batch: dict[str, dict[int, Block]]) -> None:
        """The open files learn which of their blocks are on disk now (event loop only)."""
        for file in self._files.values():
            stored = batch.get(file.probe_key)
            if stored:
                file.stored.update(stored)

    def _write_probe(self, batch: dict[str, dict[int, Block]]) -> None:
        if self._put_probe(batch):
            self._mark_stored(batch)

    # --- downloads -------------------------------------------------------------------------------

    def window_budget(self) -> int:
        """The largest read-ahead window a stream may have now.

        All windows together stay within half the block cache: read-ahead evicted before it is
        read would be downloaded twice.
        """
        share = (self.cache.max_bytes // 2) // max(1, len(self._streams))
        return max(self.initial_window, min(self.max_window, share))

    def _start_stream(self, run: _Run, file: _File, start: int, consumed: int) -> _Stream:
        assert self.nursery is not None
        stream = _Stream(self, file, start, consumed, run.start)
        self._streams.add(stream)
        self.stats.streams += 1
        self.nursery.start_soon(self._run_stream, run, stream)
        return stream

    async def _run_stream(self, run: _Run, stream: _Stream) -> None:
        name = stream.file.source.name or stream.file.source.key
        try:
            with stream.scope:
                await self._download(stream)
        except (RDError, *TRANSPORT_ERRORS) as exc:
            # The reads waiting for these blocks fetch them themselves and report the error.
            log.warning("read-ahead of %s stopped at byte %d: %s", name, stream.received, exc)
        finally:
            stream.done = True
            stream.release()
            self._streams.discard(stream)
            if run.stream is stream and not stream.finished:
                run.stream = None

    async def _fetch(self, file: _File, first: int, stop: int) -> dict[int, Block]:
        """Download blocks ``[first, stop)`` now (in the caller's task) and return them."""
        transfer = _Transfer(
            self, file, first * BLOCK_SIZE, min(stop * BLOCK_SIZE, file.source.size)
        )
        transfer.collected = {}
        transfer.claim(first, stop)
        try:
            await self._download(transfer)
        finally:
            transfer.release()
        return transfer.collected

    def _prefetch_tail(self, file: _File) -> None:
        """Fetch the tail of an MP4/MOV in the background (see ``TAIL_FIRST_SUFFIXES``), unless
        it is at hand or on its way."""
        if self.nursery is None:
            return
        first, stop = (file.source.size - TAIL_FETCH) // BLOCK_SIZE, file.blocks
        if any(self._available(file, i) or i in file.pending for i in range(first, stop)):
            return
        self.nursery.start_soon(self._prefetch, file, first, stop)

    async def _prefetch(self, file: _File, first: int, stop: int) -> None:
        """Download blocks ``[first, stop)`` into the cache; a failure is left to the reads."""
        try:
            await self._fetch(file, first, stop)
        except (RDError, *TRANSPORT_ERRORS) as exc:
            log.debug("prefetch of %s failed: %s", file.source.name or file.source.key, exc)

    def _limiter(self, host: str) -> trio.CapacityLimiter:
        limiter = self._limiters.get(host)
        if limiter is None:
            limiter = self._limiters[host] = trio.CapacityLimiter(self.max_connections_per_host)
        return limiter

    async def _download(self, transfer: _Transfer) -> None:
        """Run ``transfer`` to completion: requests, resumes, link refreshes."""
        source = transfer.file.source
        refreshes = 0
        refreshed_at = -1
        unreachable_at = -1
        stalls = 0
        stalled_at = -1
        try:
            while await transfer.ready_for_more():
                try:
                    await self._attempts(transfer)
                except _Stalled as stalled:
                    if transfer.pos != stalled_at:
                        stalls = 0
                    stalls += 1
                    stalled_at = transfer.pos
                    self._stalled(transfer, str(stalled), gave_up=stalls >= self.max_stalls)
                    if stalls >= self.max_stalls:
                        raise DownloadStalled(
                            f"{source.name or source.key}: the download server stopped delivering at byte "
                            f"{transfer.received} ({stalls} requests without progress)"
                        ) from None
                    continue
                except NetworkError:
                    # The download server stayed unreachable through every retry. RD moves files
                    # between servers, and a link cached before a restart may name one that is gone:
                    # a fresh link is worth one try per position, if it names another URL.
                    if transfer.received == unreachable_at:
                        raise
                    unreachable_at = transfer.received
                    stale = transfer.url
                    fresh = await self._refresh_link(
                        source, stale, "its download server is unreachable"
                    )
                    if fresh.url == stale:
                        raise
                except _Refused as refused:
                    if transfer.received != refreshed_at:
                        refreshes = 0
                    refreshes += 1
                    if refreshes > MAX_LINK_REFRESHES:
                        raise LinkGone(
                            source.hoster_link,
                            f"the download server refuses even a fresh link (HTTP {refused.status})",
                        ) from None
                    refreshed_at = transfer.received
                    await self._refresh_link(
                        source, refused.url, f"the download was refused (HTTP {refused.status})"
                    )
                else:
                    if self._stalling:
                        self._recovered(transfer)
        finally:
            if self._stalling:
                self._recovered(transfer)

    def _stalled(self, transfer: _Transfer, why: str, *, gave_up: bool) -> None:
        """Count a stalled request for the reads status (and log it)."""
        stats, name = self.stats, transfer.file.source.name or transfer.file.source.key
        stats.stalls += 1
        stats.stalled += gave_up
        self._stalling.add(transfer)
        stats.stalling = len(self._stalling)
        stats.last_stall = {
            "file": name,
            "byte": transfer.received,
            "time": time.time(),
            "gave_up": gave_up,
        }
        outcome = "giving up" if gave_up else "retrying"
        log.warning(
            "download of %s stalled at byte %d (%s): %s", name, transfer.received, why, outcome
        )

    def _recovered(self, transfer: _Transfer) -> None:
        self._stalling.discard(transfer)
        self.stats.stalling = len(self._stalling)

    async def _refresh_link(self, source: FileSource, stale_url: str, why: str) -> ResolvedLink:
        """Unrestrict ``source``'s link again (unless another task already replaced ``stale_url``)."""
        self.stats.link_refreshes += 1
        log.info("%s: %s, refreshing its link", source.name, why)
        return await self.resolver.resolve(source.hoster_link, force=True, stale_url=stale_url)

    async def _attempts(self, transfer: _Transfer) -> None:
        """One request, retried with backoff while it fails without making progress.

        The first try runs outside stamina: its per-call cost is as large as a cached read.
        """
        try:
            await self._request(transfer)
            return
        except _Transient as exc:
            log.info("download of %s failed (%s): retrying", transfer.file.source.name, exc)
        try:
            async for attempt in stamina.retry_context(
                on=_Transient,
                attempts=self.retries,
                timeout=None,
                wait_initial=self.retry_wait_initial,
                wait_max=self.retry_wait_max,
                wait_jitter=self.retry_wait_initial,
            ):
                with attempt:
                    await self._request(transfer)
        except _Transient as exc:
            name = transfer.file.source.name or transfer.file.source.key
            raise NetworkError(
                f"download of {name} failed at byte {transfer.received}: {exc}", reached=True
            ) from None

    async def _request(self, transfer: _Transfer) -> None:
        """Send one ranged GET from ``transfer.received`` and feed its body to the transfer.

        Returns when the response ended, when the transfer has enough, or after a dropped
        connection that made progress (the caller sends the next request at once). Raises
        ``_Transient`` for a failure without progress, ``_Refused`` for a refused URL.
        """
        source = transfer.file.source
        link = await self.resolver.resolve(source.hoster_link)
        transfer.url = link.url
        start = transfer.received
        first = source.offset + start
        last = source.offset + transfer.stop - 1
        headers = [
            (b"Range", f"bytes={first}-{last}".encode()),
            (b"Accept-Encoding", b"identity"),
            (b"User-Agent", b"rdfs"),
        ]
        limiter = self._limiter(link.host)
        if not limiter.available_tokens:
            for stream in self._paused.get(limiter, ()):
                stream.wake.set()  # it sees us waiting and lets its connection go
        try:
            limiter.acquire_nowait()  # a free connection slot costs no trip through the scheduler
        except trio.WouldBlock:
            await limiter.acquire()
        # No progress for stall_timeout aborts the request (see STALL_TIMEOUT); _receive moves the
        # deadline on with every STALL_PROGRESS bytes, and lifts it while the transfer pauses.
        guard = trio.CancelScope(deadline=trio.current_time() + self.stall_timeout)
        try:
            with guard:
                self.stats.requests += 1
                response = await self._send(link.url, headers)
                try:
                    skip = self._check(response, link, source, first)
                    self.resolver.confirm(source.hoster_link)
                    await self._receive(response, transfer, skip, limiter, guard)
                    if transfer.received == start:
                        raise _Transient(f"HTTP {response.status} with no data from byte {first}")
                finally:
                    await response.aclose()
        except TRANSPORT_ERRORS as exc:
            if transfer.received > start:
                self.stats.reconnects += 1
                log.info(
                    "download of %s dropped at byte %d (%s): resuming",
                    source.name,
                    transfer.received,
                    exc,
                )
                return
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        finally:
            limiter.release()
        if guard.cancelled_caught:
            raise _Stalled(f"less than {STALL_PROGRESS} bytes in {self.stall_timeout:g} s")

    async def _send(self, url: str, headers: list[tuple[bytes, bytes]]) -> httpcore.Response:
        """The response to a GET of ``url``, after up to ``MAX_REDIRECTS`` redirects; the caller
        closes it. (httpcore's request API rather than its ``stream()`` context manager: one
        generator less per request on the path of every read.)"""
        extensions = {"timeout": DEFAULT_TIMEOUT}
        for _ in range(MAX_REDIRECTS + 1):
            host = (b"Host", urlsplit(url).netloc.rpartition("@")[2].encode("ascii"))
            response = await self.http.handle_async_request(
                httpcore.Request(b"GET", url, headers=[host, *headers], extensions=extensions)
            )
            location = header(response, b"location") if response.status in _REDIRECTS else ""
            if not location:
                return response
            await response.aclose()
            url = _redirect_target(url, location)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from the download server")

    def _check(
        self, response: httpcore.Response, link: ResolvedLink, source: FileSource, first: int
    ) -> int:
        """Validate a response to ``Range: bytes=first-…``; returns how many leading bytes to discard."""
        status = response.status
        content_type = header(response, b"content-type").lower()
        if status in _REFUSED:
            raise _Refused(status, link.url)
        if status in _TRANSIENT:
            raise _Transient(f"HTTP {status}")
        encoding = header(response, b"content-encoding").strip().lower()
        if encoding and encoding != "identity" and status in (200, 206):
            # Asked for identity: encoded bytes are not the file's bytes (and a range of them is
            # not decodable); never served, never cached.
            raise DownloadError(
                f"{source.name}: the download server sent a {encoding[:32]!r}-encoded body"
            )
        if status == 206:
            content_range = header(response, b"content-range")
            match = _CONTENT_RANGE.match(content_range)
            if match is None or int(match.group(1)) != first or int(match.group(2)) < first:
                raise DownloadError(
                    f"{source.name}: wrong Content-Range {content_range!r} for a request from byte {first}"
                )
            total = match.group(3)
            if total != "*" and int(total) < source.offset + source.size:
                raise DownloadError(
                    f"{source.name}: the download has {total} bytes, the file needs more"
                )
            return 0
        if status == 200:
            if content_type.startswith("text/html"):
                raise _Refused(status, link.url)  # RD's "no longer valid" page
            length = header(response, b"content-length")
            if link.filesize and length.isdigit() and int(length) != link.filesize:
                raise DownloadError(
                    f"{source.name}: a {length}-byte answer instead of the {link.filesize}-byte file"
                )
            if first > self.range_discard_limit:
                raise DownloadError(
                    f"{source.name}: the download server ignores Range (200 for a request from byte {first})"
                )
            if first:
                log.info(
                    "download server ignores Range for %s: discarding %d bytes", source.name, first
                )
            return first
        if status == 416:
            raise DownloadError(
                f"{source.name}: byte {first} is past the end of the download (HTTP 416)"
            )
        raise DownloadError(f"{source.name}: unexpected HTTP {status} from the download server")

    async def _receive(
        self,
        response: httpcore.Response,
        transfer: _Transfer,
        skip: int,
        limiter: trio.CapacityLimiter,
        guard: trio.CancelScope,
    ) -> None:
        stats = self.stats
        length = header(response, b"content-length")
        expected = int(length) if length.isdigit() else None
        got = 0
        progress_at = 0  # ``got`` when the stall deadline last moved on
        async for piece in response.aiter_stream():
            got += len(piece)
            stats.bytes_fetched += len(piece)
            if got - progress_at >= STALL_PROGRESS:
                progress_at = got
                guard.deadline = trio.current_time() + self.stall_timeout
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece = piece[skip:]
                skip = 0
            transfer.feed(piece)
            if transfer.finished:
                if got == expected:
                    continue  # let httpcore see the end of the message: the connection stays reusable
                return
            if transfer.received >= transfer.want():
                guard.deadline = math.inf  # waiting for the reader is no stall
                if not await transfer.pause(limiter):
                    return
                progress_at = got
                guard.deadline = trio.current_time() + self.stall_timeout
            if transfer.should_jump():
                return


def _redirect_target(url: str, location: str) -> str:
    """The checked URL a redirect from ``url`` points to (:class:`BadDownloadURL` if unusable)."""
    try:
        target = urljoin(url, location)
    except ValueError:  # urljoin parses the Location: "Invalid IPv6 URL"
        raise BadDownloadURL("a redirect points to a malformed URL") from None
    return checked_url(target)
