"""The read-ahead stream of one sequential run: a transfer that stays a window ahead of its reader.

Bounded ranged requests, read in the pool's nursery: each asks for the bytes up to the end of
the window, and the next one goes out once a quarter of the window is missing, before the one
under way ends when the reader keeps up with the link (sent ahead on a second connection, see
:mod:`rdfs.data.readahead`); a close or a seek cancels those in flight, so the download server
never sends more than a window nobody reads. Should the window shrink below what a request asked
for (more streams share the cache), the stream stops reading the socket while it is far enough
ahead (TCP back-pressure) and gives its connection up after a while idle, when another download
waits for a connection, or when its reader seeks elsewhere while it is far ahead. Blocks it passes
over that are already at hand (a long run of them: ``SKIP_RUN_BLOCKS``) are not downloaded again:
the stream sends a new request after them.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from rdfs.data.blockcache import BLOCK_SIZE, MiB
from rdfs.data.blockstore import BlockStore
from rdfs.data.download import HostSlots, Transfer
from rdfs.data.readahead import RELEASE_AHEAD, Window
from rdfs.data.source import OpenFile

# A stream jumps over this many blocks already cached (or being fetched by someone else)
# instead of downloading them again; shorter runs are cheaper to read through.
SKIP_RUN_BLOCKS = (1 * MiB) // BLOCK_SIZE


class Stream(Transfer):
    """The read-ahead of one run: wants data up to a window ahead of the reader.

    ``budget()`` is the largest window it may have now (the pool shares the cache between its
    streams); a paused stream gives its connection up after ``idle_release`` seconds.
    """

    pipelined = True

    def __init__(
        self,
        blocks: BlockStore,
        file: OpenFile,
        start: int,
        window: Window,
        *,
        budget: Callable[[], int],
        idle_release: float,
    ) -> None:
        super().__init__(blocks, file, start, file.source.size)
        self.window = window
        self.budget = budget
        self.idle_release = idle_release
        self.wake = trio.Event()
        self.scope = trio.CancelScope()
        self.done = False
        self._release = False  # set to make a paused stream give its connection up
        self._claimed = start // BLOCK_SIZE
        self._extend()

    def want(self) -> int:
        return self.window.target(self.budget(), self.stop, BLOCK_SIZE)

    def request_stop(self, start: int) -> int:
        return self.window.request_end(start, self.budget(), self.stop, BLOCK_SIZE)

    @property
    def due(self) -> bool:
        """Whether the next request goes out now (while the one under way, if any, still runs)."""
        return self.window.due(self.received, self.requested, self.budget(), self.stop, BLOCK_SIZE)

    def next_request(self) -> int | None:
        if not self.due:
            return None
        self._extend()
        return self.request_stop(self.requested)

    @property
    def idle_ahead(self) -> bool:
        """Its whole window is downloaded and that is a lot: it waits for the reader."""
        return (
            self.received >= self.want() and self.received - self.window.consumed >= RELEASE_AHEAD
        )

    @property
    def serving(self) -> bool:
        """Still downloading, or done because it delivered everything up to the end of the file."""
        return not self.done or self.finished

    def covers(self, offset: int) -> bool:
        return self.window.covers(offset, max(self.want(), self.received))

    def straggler(self, offset: int) -> bool:
        return self.window.straggler(offset, self.budget())

    def advance(self, end: int) -> None:
        """The reader got up to ``end``: when the next request is due, promise the blocks of the
        new window (the reader then waits for them instead of fetching them) and wake up."""
        self.window.advance(end)
        if self.due:
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
            if self.ahead is not None:
                if self.ahead.start == self.received:
                    return True  # the next request was sent ahead
                self.drop_ahead()  # the stream jumped, or let its request go before its end
            self.requested = min(self.requested, self.received)
            if self.due:
                self._extend()
                self._release = False  # a new request: the last one was let go already
                return True
            self.wake = trio.Event()
            await self.wake.wait()

    async def pause(self, slots: HostSlots) -> bool:
        slots.parked.add(self)
        try:
            give_up_at = trio.current_time() + self.idle_release
            while self.received >= self.want():
                if self.finished:
                    return False
                self.wake = trio.Event()
                with trio.move_on_at(give_up_at):  # woken by the reader, or by a download waiting
                    await self.wake.wait()
                if self._release or slots.contended or trio.current_time() >= give_up_at:
                    self._release = False
                    return False
        finally:
            slots.parked.discard(self)
        self._extend()
        return True

    def nudge(self) -> None:
        self.wake.set()

    def evicted(self, index: int) -> bool:
        """Whether block ``index``, which this stream already passed, is gone from the caches."""
        return (
            index * BLOCK_SIZE < self.pos
            and index not in self.file.pending
            and not self.blocks.available(self.file, index)
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
