"""The read-pattern policy: which reads form sequential runs, and how far ahead a run is read.

Pure: plain numbers of bytes, no I/O, no trio. The reader asks it; the streams follow it.

What a handle's reads mean is inferred from their pattern, never from the file's name:

* A *probe* (a media scanner: the head, a few tail ranges, the head again) reads little at each
  place: runs shorter than ``SEQUENTIAL_MIN`` start no read-ahead, each read fetches the blocks
  it covers, up to its own end when it reads a block or more (``fetch_end``). A probe that read
  the first block and then reads far from it gets the head's next block (``HEAD_FOLLOW_UP``) in
  the background: it comes back to re-read the head.
* A *player starting* (or seeking) reads a lot at once: a first read of ``STREAM_ON_SEEK`` or more
  starts the read-ahead at once, so the reads after it do not wait for a first byte.
* A *copy* reads on and on: a run that reaches ``SEQUENTIAL_MIN`` starts its read-ahead, unless
  another run came in between (a probe that reads the head, the tail, then the head again is no
  stream); an interleaved run earns its stream once it is ``INTERLEAVED_RUN_MIN`` long.
* A handle that starts where blocks of the file are cached contiguously before it (the previous
  handle of an open/read/close loop: WebDAV, SMB, Plex's transcoder) continues that reading: the
  run counts from where the cached blocks begin, so its read-ahead starts with the window that
  reading earned, where the cache ends.

A handle follows up to ``MAX_RUNS`` sequential runs (two places of one file read in turn each
keep theirs). A read belongs to a run when it lies within ``BACK_TOLERANCE`` /
``FORWARD_TOLERANCE`` of the run's latest read or of its stream (concurrent FUSE reads arrive
out of order).

A stream stays a *window* ahead of its reader, with bounded requests (the model is
mountpoint-s3's prefetcher and rclone's chunked reader). The window is a quarter of the bytes
read sequentially, at least its first window (the size of the read that started it,
between ``MIN_WINDOW`` and ``INITIAL_WINDOW``: small reads earn a small window), at most the
budget (all windows together stay within half the block cache, so read-ahead is not evicted
before it is read). A request asks for the bytes up to the window's end and is sent once at
least ``1 / DUE_DIVISOR`` of the window is missing (a paced reader, a player, still has the rest
at hand during its round trip). A reader as fast as the link (a copy) would wait a round trip
per request: the next request goes out *before* the one being read ends, once what is still to
come of it is at most ``1 / LEAD_DIVISOR`` of the window, so its latency to the first byte runs
while that rest arrives (on a second connection). Every request is bounded by the window's end:
requests grow with the run, and a close or a seek never wastes more than the current window,
whatever the sockets' buffers hold (an open-ended request paused by back-pressure would waste the
window plus the client's and the server's socket buffers, several MiB each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

KiB = 1024
MiB = 1024 * KiB

INITIAL_WINDOW = 1 * MiB
# The next request goes out once this fraction of the window is missing: a player reading at its
# pace keeps three quarters of a window (1 MiB+ after a seek) while the request's round trip runs
# (half a window, 128 KiB after a seek, stalled it on a 30 ms link).
DUE_DIVISOR = 4
# The next request is sent while the one being read still has this fraction of the window to
# come: requests of about half a window, each one's round trip hidden behind the other's rest.
LEAD_DIVISOR = 2
# A stream's first window is the read that started it (at least MIN_WINDOW, at most the initial
# window): a probe reading its head in 32 KiB reads leaves 64 KiB unread when it stops, a reader
# whose reads double (`rclone serve`: 4 KiB, 8 KiB, ... until its response is written, then a
# close) consumes each window with its next read; reads of STREAM_ON_SEEK or more (a player
# starting, a copy) get the whole initial window, which covers a few round trips of the link.
# Two reads' worth wasted 0.3 MB per request of `rclone serve webdav` (1.38x sent / read).
MIN_WINDOW = 64 * KiB
MAX_WINDOW = 64 * MiB
# The window is the bytes read sequentially divided by this: a player that reads 2 MiB after a
# seek leaves at most 512 KiB unread (a quarter), a long copy still reaches MAX_WINDOW.
WINDOW_DIVISOR = 4
# Reads this far behind / ahead of a stream still belong to it (out-of-order FUSE reads).
BACK_TOLERANCE = 256 * KiB
FORWARD_TOLERANCE = 512 * KiB
# Sequential runs followed per handle (interleaved readers of one file); the oldest is dropped.
MAX_RUNS = 4
# A run resumed after another run was read gets a stream only once it is this long.
INTERLEAVED_RUN_MIN = 512 * KiB
# A first read at least this large (a player's, not a probe's) starts a stream.
STREAM_ON_SEEK = 256 * KiB
# A run this long (two reads or more) starts a stream: a probe's few reads at a place do not.
SEQUENTIAL_MIN = 128 * KiB
# How far back a new run looks for blocks cached contiguously before it (a previous reading):
# enough for a 16 MiB window, little enough that a random read in a cached file stays cheap.
LOOKBACK = 32 * MiB
# A handle that read only the file's first block, then reads far from it, is a probe of a
# container's index (an MP4's moov at the end, a faststart MP4's first samples) and re-reads the
# head from a few bytes in (ffprobe: 32 KiB from byte 48): this many blocks after the first are
# fetched alongside that far read, in the background, so the re-read needs no round trip of its
# own, while a head read alone (an MKV's) costs its one block.
HEAD_FOLLOW_UP = 1
# On a seek, other streams of the handle this far ahead of their reader let their connection go.
RELEASE_AHEAD = 4 * MiB


def first_window(read_size: int, initial: int) -> int:
    """The window a stream started by a read of ``read_size`` bytes begins with."""
    if read_size >= STREAM_ON_SEEK:  # a player's, not a probe's
        return initial
    return min(initial, max(MIN_WINDOW, read_size))


def run_start(offset: int, cached_from: int, block: int) -> int:
    """Where a new run that reads at ``offset`` begins: ``cached_from``, the first byte of the
    blocks cached contiguously before the read's block (a previous handle's reading, which the
    run continues), or the read's own offset when none are (not its block's start: a run that
    counted the bytes before its first read would start a stream too early)."""
    return cached_from if cached_from < offset - offset % block else offset


def head_follow_up(head_only: bool, first: int) -> range:
    """The blocks to fetch in the background for a read from block ``first``, when the handle
    has read nothing but the file's first block so far (``head_only``): the head's next blocks
    once the handle reads far from them, none otherwise."""
    if head_only and first > HEAD_FOLLOW_UP:
        return range(1, 1 + HEAD_FOLLOW_UP)
    return range(0)


def fetch_end(offset: int, end: int, block: int, size: int) -> int | None:
    """Where a read of ``[offset, end)`` that fetches its last block itself stops fetching: at
    its own end when it reads at least a block (a WebDAV server's 96 KiB at a random place costs
    what it reads, not its blocks rounded out; the next read of the block fetches the rest),
    None for whole blocks when it reads less (small reads come in series, ``dd bs=1`` or 4 KiB
    at a time: a request per read would cost more than the block)."""
    last_block_end = min(((end - 1) // block + 1) * block, size)
    return end if end - offset >= block and end < last_block_end else None


def window_budget(cache_bytes: int, streams: int, initial: int, max_window: int) -> int:
    """The largest window a stream may have while ``streams`` streams share the cache."""
    share = (cache_bytes // 2) // max(1, streams)
    return max(initial, min(max_window, share))


@dataclass
class Window:
    """Where a stream stands: its run began at ``run_start``, its reader got to ``consumed``."""

    run_start: int
    consumed: int
    initial: int

    def size(self, budget: int) -> int:
        """The window: a quarter of the bytes read sequentially, at least ``initial``, at most
        ``budget``."""
        return min(budget, max(self.initial, (self.consumed - self.run_start) // WINDOW_DIVISOR))

    def target(self, budget: int, stop: int, block: int) -> int:
        """The byte the stream reads up to now: whole blocks (never pausing inside a promised
        one), at most ``stop``."""
        target = self.consumed + self.size(budget)
        return min(-(-target // block) * block, stop)

    def due_from(self, budget: int, stop: int, block: int) -> int:
        """The byte from which a gap in the window makes a request due (see :meth:`due`): a run
        whose window is at hand up to here (a re-read of what another run fetched, a seek back)
        needs no stream yet, as a running stream needs no request."""
        target = self.target(budget, stop, block)
        return target if target >= stop else target - self.size(budget) // DUE_DIVISOR

    def due(self, received: int, requested: int, budget: int, stop: int, block: int) -> bool:
        """Whether a stream that has received up to ``received`` and asked for the bytes up to
        ``requested`` (``received`` when no request is under way) sends its next request now:
        at least ``1 / DUE_DIVISOR`` of a window is missing (or the rest of the file), so
        requests are never tiny, and the request under way has at most ``1 / LEAD_DIVISOR`` of
        the window still to come."""
        requested = max(requested, received)
        target = self.target(budget, stop, block)
        if requested >= target:
            return False
        size = self.size(budget)
        if target < stop and target - requested < size // DUE_DIVISOR:
            return False
        return requested - received <= size // LEAD_DIVISOR

    def request_end(self, start: int, budget: int, stop: int, block: int) -> int:
        """Where a request from ``start`` ends: the window's end (never past it)."""
        return max(self.target(budget, stop, block), start)

    def covers(self, offset: int, ahead: int) -> bool:
        """A read near the reader or inside the stream's reach ``ahead`` (reads come out of
        order)."""
        return self.consumed - BACK_TOLERANCE <= offset <= ahead + FORWARD_TOLERANCE

    def straggler(self, offset: int, budget: int) -> bool:
        """A read shortly behind the reader (out of order), not a seek back."""
        floor = max(self.run_start, self.consumed - self.size(budget)) - BACK_TOLERANCE
        return floor <= offset < self.consumed

    def advance(self, end: int) -> None:
        self.consumed = max(self.consumed, end)


class Reach(Protocol):
    """What the run tracker needs to know of a stream."""

    @property
    def serving(self) -> bool: ...

    def covers(self, offset: int) -> bool: ...

    def straggler(self, offset: int) -> bool: ...


S = TypeVar("S", bound=Reach)


@dataclass(eq=False)
class Run(Generic[S]):
    """One sequential run of reads on a handle, and the stream that reads ahead of it.

    A handle follows several runs at once: a player reading video and audio at two places of one
    file, or two viewers of one handle, each keep their own read-ahead.
    """

    start: int  # where the run began
    end: int  # end of its latest read
    stream: S | None = None

    def claims(self, offset: int) -> bool:
        """Whether a read at ``offset`` belongs to this run."""
        stream = self.stream
        if (
            stream is not None
            and stream.serving
            and (stream.covers(offset) or stream.straggler(offset))
        ):
            return True
        return self.end - BACK_TOLERANCE <= offset <= self.end + FORWARD_TOLERANCE

    def earns_stream(self, end: int, *, resumed: bool = False, new: bool = False) -> bool:
        """Whether a read of this run up to ``end`` starts its stream: ``new`` for the run's
        first read, ``resumed`` when another run was read since its latest read."""
        if new:
            need = STREAM_ON_SEEK
        elif resumed:
            need = INTERLEAVED_RUN_MIN
        else:
            need = SEQUENTIAL_MIN
        return end - self.start >= need


class Runs(Generic[S]):
    """The runs of one handle, most recently read first, at most ``MAX_RUNS``."""

    def __init__(self) -> None:
        self.runs: list[Run[S]] = []

    def find(self, offset: int) -> tuple[Run[S] | None, bool]:
        """The run a read at ``offset`` continues (made the most recent), and whether another run
        was read in between (the run is *resumed*)."""
        run = next((r for r in self.runs if r.claims(offset)), None)
        if run is None:
            return None, False
        resumed = self.runs[0] is not run
        if resumed:
            self.runs.remove(run)
            self.runs.insert(0, run)
        return run, resumed

    def begin(self, start: int, end: int) -> tuple[Run[S], list[Run[S]]]:
        """A new run from ``start`` (the read's offset, or where the cached reading it continues
        began) to ``end``, and the runs dropped to make room."""
        run: Run[S] = Run(start=start, end=end)
        self.runs.insert(0, run)
        dropped = self.runs[MAX_RUNS:]
        del self.runs[MAX_RUNS:]
        return run, dropped

    def others(self) -> list[Run[S]]:
        return self.runs[1:]

    def clear(self) -> list[Run[S]]:
        runs, self.runs = self.runs, []
        return runs
