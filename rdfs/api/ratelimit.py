"""One shared sliding-window limiter that keeps every RD request under the account's limit.

RD allows about 250 requests in any 60 seconds and counts refused requests too, so the client
paces itself instead of learning the limit from 429s. The limiter applies exactly that rule: it
keeps the send times of the last 60 seconds, and a request may go out while fewer than
``per_minute`` of them are in the window. A first library scan that needs 200 unrestricts sends
them all at once; the 251st request waits until the oldest send leaves the window. A burst
waits its turn (first come, first served) rather than failing.

Background requests (the file-list fill of a fresh cache: hours of ``/torrents/info`` at RD's
pace) run on the budget the foreground leaves: a request made inside :func:`background` goes out
only while no foreground request is waiting and more than a reserve of the window
(``RESERVE_FRACTION`` of the pace) is free. So a fill never fills the window: a file opened
during it is unrestricted at once (from the reserve), and a burst of foreground requests (a
library scan) passes every waiting background one. The fill runs at the pace minus the reserve
while nothing else happens.

There is no separate burst cap (requests per second): RD's rule is the window alone, so any
smaller cap would only slow down the bursts (library scans) the full budget is meant for.

Adds (``addMagnet``, ``addTorrent``) pass a second limiter of their own first: RD throttles them
harder than the global limit (about 20 per 10 s), and the 429 an add earns would halve the pace
of every other request (a library scan's unrestricts) for minutes.

RD may allow less than the configured rate (it lowers limits under load, and other clients may
share the account). Since refused requests count too, a client that keeps its pace after a 429
keeps the window full and never gets through. So the pace adapts: every 429 blocks all requests
for the time RD asked and halves the pace (down to ``MIN_PER_MINUTE``), and every success raises
it by one request per minute again, up to the configured rate. The halved pace applies to the
same log of recent sends, so a penalty never opens room for an immediate burst.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar

import trio

log = logging.getLogger(__name__)

# RD counts requests over 60 s as they arrive; the limiter stamps them before they leave, so a
# first request delayed on the way could fall out of RD's window after ours: one second of margin.
WINDOW = 61.0
MIN_PER_MINUTE = 10
# Adds: at most this many in any ADD_WINDOW seconds (with the same kind of margin).
ADDS_PER_WINDOW = 20
ADD_WINDOW = 10.5
# The part of the window background requests leave free for foreground ones (25 of 250).
RESERVE_FRACTION = 0.1

_background: ContextVar[bool] = ContextVar("rdfs_background_requests", default=False)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """The requests made inside this block (in this task) yield to foreground ones."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


class RateLimiter:
    """At most ``per_minute`` sends in any ``window`` seconds.

    The window is one minute plus a margin by default.
    """

    def __init__(
        self,
        per_minute: int = 250,
        *,
        window: float = WINDOW,
        reserve_fraction: float = RESERVE_FRACTION,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        if not 0 <= reserve_fraction < 1:
            raise ValueError("reserve_fraction must be in [0, 1)")
        self.window = window
        self.reserve_fraction = reserve_fraction
        self.limit = per_minute  # the configured ceiling
        self.per_minute = per_minute  # the current pace (lowered by 429s)
        self._sent: deque[float] = deque()  # send times still inside the window, oldest first
        self._blocked_until = 0.0
        self._lock = trio.Lock()  # fair: waiters are served in arrival order
        self._background_lock = trio.Lock()  # the same among background requests
        self._foreground = 0  # foreground requests waiting for room
        self._no_foreground = trio.Event()
        self._no_foreground.set()
        self.acquired = 0
        self.background_acquired = 0
        self.waited = 0.0  # total seconds spent waiting for room in the window

    def _forget_old(self, now: float) -> None:
        while self._sent and self._sent[0] + self.window <= now:
            self._sent.popleft()

    def reserve(self) -> int:
        """Sends of the window kept free for foreground requests at the current pace."""
        return int(self.per_minute * self.reserve_fraction)

    def _ready_at(self, now: float, reserve: int = 0) -> float:
        """The earliest time the next request may go out (``<= now``: right away) while
        ``reserve`` sends of the window stay free."""
        self._forget_old(now)
        ready = self._blocked_until
        excess = len(self._sent) - (self.per_minute - reserve)
        if excess >= 0:  # the sends up to index ``excess`` must leave the window first
            ready = max(ready, self._sent[excess] + self.window)
        return ready

    async def acquire(self) -> None:
        """Wait until a request may be sent, then record it in the window.

        Inside :func:`background`, also wait for the foreground (see the module)."""
        start = trio.current_time()
        if _background.get():
            async with self._background_lock:
                now = await self._wait_for_background_room()
                self.background_acquired += 1
                self._send(start, now)
            return
        if self._foreground == 0:
            self._no_foreground = trio.Event()
        self._foreground += 1
        try:
            async with self._lock:
                now = trio.current_time()
                while (ready := self._ready_at(now)) > now:
                    await trio.sleep_until(ready)
                    now = trio.current_time()
                self._send(start, now)
        finally:
            self._foreground -= 1
            if self._foreground == 0:
                self._no_foreground.set()

    async def _wait_for_background_room(self) -> float:
        """Wait until no foreground request waits and the reserve stays free; the time then."""
        while True:
            await self._no_foreground.wait()
            now = trio.current_time()
            ready = self._ready_at(now, self.reserve())
            if ready <= now and self._foreground == 0:
                return now
            # A foreground request arriving meanwhile may take the room: look again at ``ready``.
            await trio.sleep_until(ready)

    def _send(self, start: float, now: float) -> None:
        self._sent.append(now)
        self.acquired += 1
        waited = now - start
        self.waited += waited
        if waited > 1.0:
            log.debug("rate limiter held a request for %.1f s", waited)

    def penalize(self, seconds: float) -> None:
        """RD refused a request (429): send nothing for ``seconds``, then at half the pace."""
        now = trio.current_time()
        self._blocked_until = max(self._blocked_until, now + max(0.0, seconds))
        self.per_minute = max(min(MIN_PER_MINUTE, self.limit), self.per_minute // 2)
        log.info(
            "rate limited by RD: pausing all requests for %.1f s, then %d per minute",
            seconds,
            self.per_minute,
        )

    def succeeded(self) -> None:
        """RD accepted a request: creep back towards the configured pace."""
        if self.per_minute < self.limit:
            self.per_minute += 1

    def budget_left(self) -> int:
        """Requests that can go out right now without waiting."""
        now = trio.current_time()
        self._forget_old(now)
        if now < self._blocked_until:
            return 0
        return max(0, self.per_minute - len(self._sent))
