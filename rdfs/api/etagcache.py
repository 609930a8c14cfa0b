"""The answers of GET requests, kept with their ETag to be revalidated with ``If-None-Match``.

Bounded by bytes, not by entries: a listing of 100,000 torrents is 41 pages of ~1 MB of JSON, and
keeping each page's parsed body (one dict per torrent) cost ~150 MiB for as long as the process
ran. Entries hold the response bytes zlib-compressed (level 1: ~1 ms per page, 5-10x smaller);
a 304 decodes them again. The least recently used entries go first when the budget is exceeded,
so the probes' hot keys (``/torrents`` page 1) stay while a sweep passes over the others.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass

import httpx

DEFAULT_BUDGET = 4 * 1024 * 1024  # compressed bytes kept in all


@dataclass(frozen=True)
class CachedAnswer:
    """A 200 answer as it arrived: its ETag, headers and (compressed) bytes."""

    etag: str
    status: int
    headers: httpx.Headers
    packed: bytes

    @property
    def content(self) -> bytes:
        return zlib.decompress(self.packed)


class ETagCache:
    """An LRU of :class:`CachedAnswer` by request key, within ``budget`` compressed bytes."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Compressed bytes held."""
        return self._size

    def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, etag: str, status: int, headers: httpx.Headers, content: bytes) -> None:
        self._drop(key)
        packed = zlib.compress(content, 1)
        if len(packed) > self.budget:
            return  # larger than the whole budget: not worth evicting everything for
        self._entries[key] = CachedAnswer(etag, status, headers, packed)
        self._size += len(packed)
        while self._size > self.budget:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= len(entry.packed)
