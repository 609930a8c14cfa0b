"""One shared token bucket that keeps every RD request under the account's limit.

RD allows about 250 requests per minute and counts refused requests too, so the client paces
itself instead of learning the limit from 429s. A burst waits its turn (first come, first
served) rather than failing. The bucket is sized so that *no* 60-second window ever holds more
than ``per_minute`` acquisitions: ``burst`` tokens are available at once and the rest refill at
``(per_minute - burst) / 60`` per second.

RD may allow less than the configured rate (it lowers limits under load). Since refused
requests count too, a client that keeps its pace after a 429 keeps the window full and never
gets through. So the pace adapts: every 429 halves it (down to ``MIN_PER_MINUTE``) and every
success raises it by one request per minute again, up to the configured rate.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)

_EPSILON = 1e-9  # float refill arithmetic may land a hair below a whole token
_MIN_SLEEP = 0.001
MIN_PER_MINUTE = 10


class RateLimiter:
    def __init__(self, per_minute: int = 250, burst: int | None = None) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.limit = per_minute  # the configured ceiling
        self._burst_wanted = burst
        self._set_pace(per_minute)
        self._tokens = float(self.burst)
        self._updated: float | None = None
        self._blocked_until = 0.0
        self._lock = trio.Lock()  # fair: waiters are served in arrival order
        self.acquired = 0
        self.waited = 0.0  # total seconds spent waiting for a token

    def _set_pace(self, per_minute: int) -> None:
        burst = self._burst_wanted if self._burst_wanted is not None else max(1, per_minute // 10)
        self.per_minute = per_minute
        self.burst = max(1, min(burst, per_minute))
        self._rate = max(per_minute - self.burst, 1) / 60.0  # tokens per second

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self._rate)
        self._updated = now

    async def acquire(self) -> None:
        """Wait until a request may be sent, then take one token."""
        async with self._lock:
            start = trio.current_time()
            while True:
                now = trio.current_time()
                self._refill(now)
                if now < self._blocked_until:
                    await trio.sleep_until(self._blocked_until)
                    continue
                if self._tokens >= 1.0 - _EPSILON:
                    break
                await trio.sleep(max((1.0 - self._tokens) / self._rate, _MIN_SLEEP))
            self._tokens = max(0.0, self._tokens - 1.0)
            self.acquired += 1
            waited = trio.current_time() - start
            self.waited += waited
            if waited > 1.0:
                log.debug("rate limiter held a request for %.1f s", waited)

    def penalize(self, seconds: float) -> None:
        """RD refused a request (429): empty the bucket, send nothing for ``seconds``, halve the pace."""
        now = trio.current_time()
        self._refill(now)
        self._tokens = 0.0
        self._blocked_until = max(self._blocked_until, now + max(0.0, seconds))
        self._set_pace(max(min(MIN_PER_MINUTE, self.limit), self.per_minute // 2))
        log.info("rate limited by RD: pausing all requests for %.1f s, then %d per minute", seconds, self.per_minute)

    def succeeded(self) -> None:
        """RD accepted a request: creep back towards the configured pace."""
        if self.per_minute < self.limit:
            self._refill(trio.current_time())
            self._set_pace(self.per_minute + 1)

    def budget_left(self) -> int:
        """Requests that can go out right now without waiting."""
        now = trio.current_time()
        self._refill(now)
        if now < self._blocked_until:
            return 0
        return int(self._tokens)
