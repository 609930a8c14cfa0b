"""How values are stored: times as UNIX seconds, long id lists in statement-sized chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TypeVar, overload

T = TypeVar("T")

# SQLite host parameters per statement stay well below the 32766 limit.
IN_CHUNK = 500


@overload
def unix_time(value: datetime | float | None) -> float | None: ...


@overload
def unix_time(value: datetime | float | None, if_none: float) -> float: ...


def unix_time(value: datetime | float | None, if_none: float | None = None) -> float | None:
    """Seconds since the epoch of ``value``; an unknown time (None) gives ``if_none``.

    The cache stores an unknown time as NULL (the default); the tree shows and sorts it as
    ``if_none=0.0``, the epoch.
    """
    if value is None:
        return if_none
    return value.timestamp() if isinstance(value, datetime) else float(value)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size`` (e.g. the ids of one ``IN (...)`` statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
