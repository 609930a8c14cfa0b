"""The file-list fill's pace and how long it still takes, for ``.rdfs/status`` and ``rdfs status``.

A fresh cache of a large library needs one ``/torrents/info`` per torrent: at RD's 250 requests
a minute, 100,000 torrents take hours. The status says so (done, total, the rate observed, an
estimate of the time left) so the user sees a fill making progress, not a mount that looks stuck.

The rate counts the file lists stored over the last ``RATE_WINDOW`` seconds, divided by the
time since the first of them but never by less than a minute: RD's limit is a sliding minute, so
a fill that spends its whole budget in the first seconds of a minute (as the limiter lets it)
still reads as its true pace per minute, not sixty times it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

RATE_WINDOW = 300.0  # seconds of history the rate is taken over
MIN_SPAN = 60.0  # the rate is never taken over less than a minute


@dataclass
class FillProgress:
    """File lists stored by time (the trio clock); figures for a status report."""

    _stored: deque[float] = field(default_factory=deque)

    def stored(self, now: float) -> None:
        """One file list stored."""
        self._stored.append(now)

    def rate(self, now: float) -> float | None:
        """File lists per minute over the recent past; None when none was stored lately."""
        while self._stored and self._stored[0] <= now - RATE_WINDOW:
            self._stored.popleft()
        if not self._stored:
            return None
        span = max(MIN_SPAN, now - self._stored[0])
        return len(self._stored) * 60.0 / span

    def report(self, now: float, *, done: int, total: int) -> dict[str, Any]:
        """``done`` of ``total`` file lists, the observed rate per minute and the seconds left
        (0 when done; None while no rate is known)."""
        left = max(0, total - done)
        rate = self.rate(now)
        if left == 0:
            eta: float | None = 0
        elif rate:
            eta = round(left / rate * 60.0)
        else:
            eta = None
        return {
            "done": done,
            "total": total,
            "per_minute": round(rate, 1) if rate is not None else None,
            "eta_seconds": eta,
        }
