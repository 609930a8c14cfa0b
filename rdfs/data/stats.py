"""The reader's counters, for status files and benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
