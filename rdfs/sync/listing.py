"""What the syncer remembers of a list (``/torrents``, ``/downloads``) between listings.

``/torrents`` keeps its ids in RD's order (newest first): the fingerprint of any window of the
list (a page, the head, the tail) is derived from that order on demand, so one torrent added on
top or removed anywhere shifts the state in O(changed) (a list insert or delete, nothing
re-hashed), and a probe can tell "k new ids on top" or "one id gone at offset p" from any other
difference. 100,000 ids of 13 characters take about 7 MiB. ``/downloads`` (which grows without
bound and is only re-listed) keeps one fingerprint per page.

Persisted as sync state ``listing:KIND``: the ids as one newline-joined string (or the page
fingerprints), the total, the offset of each item still moving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def page_fingerprint(ids: Sequence[str]) -> str:
    """What a page's ids are compared by (the probes and sweeps): short, order-sensitive."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


@dataclass
class Listing:
    """A listing of ``/torrents`` or ``/downloads``, and whether deletions may trust it.

    The items themselves went page by page to the caller's ``on_page``: what stays is their ids
    in listing order (a dict: a set that keeps the order), one fingerprint per page, and the
    offset of each item still moving (``where``).
    """

    ids: dict[str, None]
    pages: list[str]
    total: int | None
    complete: bool
    reason: str = ""
    where: dict[str, int] = field(default_factory=dict)


@dataclass
class ListState:
    """What the last complete listing of one list looked like, kept up to date by the changes
    followed since (see the module).

    ``order`` is None for a list known by its page fingerprints only (``/downloads``, compared
    page by page by the caller): any difference then needs a listing. ``where`` maps an item
    still moving to its offset.
    """

    pages: list[str] = field(default_factory=list)
    total: int | None = None
    where: dict[str, int] = field(default_factory=dict)
    listed: bool = False  # a complete listing is known (made here, or stored by an earlier run)
    order: list[str] | None = None

    @classmethod
    def stored(cls, value: Any) -> ListState:
        """The state ``as_stored`` wrote; an empty one (a listing is due) for anything else."""
        try:
            total = value["total"] if isinstance(value["total"], int) else None
            where = {str(k): int(v) for k, v in value["active"].items()}
            if "order" in value:
                if not isinstance(value["order"], str):
                    return cls()
                order = value["order"].split("\n") if value["order"] else []
                return cls([], total, where, listed=True, order=order)
            pages = [str(p) for p in value["pages"]]
        except (TypeError, KeyError, ValueError, AttributeError, OverflowError):
            return cls()
        return cls(pages, total, where, listed=bool(pages))

    def as_stored(self) -> dict[str, Any]:
        if self.order is not None:
            return {"order": "\n".join(self.order), "total": self.total, "active": self.where}
        return {"pages": self.pages, "total": self.total, "active": self.where}

    def page_count(self, size: int) -> int:
        if self.order is None:
            return len(self.pages)
        return max(1, -(-len(self.order) // size))

    def window_fingerprint(self, offset: int, limit: int) -> str | None:
        """The fingerprint of ``limit`` items from ``offset`` (None: unknown, or past the end)."""
        if self.order is None:
            return None
        if offset and offset >= len(self.order):
            return None
        return page_fingerprint(self.order[offset : offset + limit])

    def added_on_top(self, ids: Sequence[str]) -> None:
        """``ids`` were added before the first item (the caller notes those still moving)."""
        assert self.order is not None
        self.order[0:0] = ids
        self.where = {k: v + len(ids) for k, v in self.where.items()}
        if self.total is not None:
            self.total += len(ids)

    def removed_at(self, offset: int) -> str:
        """Drop the item at ``offset``; its id."""
        assert self.order is not None
        item_id = self.order.pop(offset)
        self.where.pop(item_id, None)
        self.where = {k: v - 1 if v > offset else v for k, v in self.where.items()}
        if self.total is not None:
            self.total -= 1
        return item_id

    def offset_of(self, item_id: str) -> int | None:
        """Where ``item_id`` is (a scan: only for removals rdfs made itself, one id each)."""
        assert self.order is not None
        try:
            return self.order.index(item_id)
        except ValueError:
            return None
