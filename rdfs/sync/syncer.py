"""The sync task: keeps the cache (and so the tree) in step with the account, cheaply and safely.

Schedule. ``run`` marks itself started before any API call: a warm cache is visible at once.
The first tick lists ``/torrents`` and ``/downloads`` completely (large pages), unless the cache
holds what an earlier run's complete listing looked like, kept up to date since (``/torrents``'
ids in RD's order, ``/downloads``' page fingerprints, the totals: sync state ``listing:KIND``,
see :mod:`.listing`): then the cache is served as it is and the first tick, an interval after
the start, is a probe. After that each interval costs one request while nothing moves:

* three ticks out of four re-request the head of ``/torrents`` (``offset=0&limit=100``, a
  conditional GET: RD answers 304 when nothing changed; the newest torrents, where activity is,
  live there), plus the 100 around each torrent still downloading;
* the fourth tick sweeps one other part of the lists in turn: ``/downloads`` page 1, the tail of
  ``/torrents`` (its last 100: an add or a removal anywhere shifts them) every other turn, and
  ``/torrents`` pages 1, 2, ..., so a change deep in the list is noticed within a few minutes.

Changes, and what each costs (a window of the list is compared with what the cached order
predicts; small windows, so a change costs the same whatever the page size and the library):

* the same ids (and total): only the rows that changed are written (progress, links, a rename);
* the head is k new ids followed by the old head shifted by k, and the total grew by k (k less
  than the window; a sweep that sees the total grow re-reads the head first): the k torrents are
  added on top, no listing;
* the total is one less and the window fits one id gone (before it, inside it or after it): that
  id is found with the window in hand or a binary search of ``offset``/``limit=1`` requests
  against the cached order (at most about log2(total) + 1: 18 at 100,000), then held as missing
  (below);
* a torrent deleted through rdfs (``removed``: RD answered the DELETE, the control layer dropped
  it from the cache) leaves the cached order at the next tick, which probes the head; an add
  through rdfs asks for that probe too (``check_soon``);
* anything else (several changes at once, an unknown or inconsistent total, a known id moving to
  the top, a record RD sent that failed validation) leads to a complete listing, as do
  ``trigger()`` (``.rdfs/refresh``, SIGHUP, a repair), a ``/downloads`` change and a cache that
  lost its listing state. A listing goes into the store page by page (each page compared with the
  stored rows' fingerprints): it holds the ids of the list, never all its records.

A change followed without a listing is persisted by a later tick, at most every ``SAVE_EVERY``
(one write of the order: O(library), 30 ms at 100,000, off the changes' path), and when ``run``
ends; until then the stored state says "list everything", so a restart never trusts a stale
order (a crash costs one complete listing at the next start).

Files. ``/torrents`` does not list files: every downloaded torrent's directory appears as soon as
the listing is known (``files_pending``), and workers fetch ``/torrents/info`` in the background
(newest first, as background requests of the client's shared rate limiter: they run on the budget
reads and the sync's own requests leave, see :mod:`rdfs.api.ratelimit`). ``ensure_files`` fetches
one torrent on demand ahead of them; concurrent callers for the same torrent share one request.
``status()["fill"]`` reports the fill's progress, pace and time left (:mod:`.fillprogress`).

Listings. Paging goes on while pages come back full, whatever ``X-Total-Count`` says (RD has
sent -1, 0 and exactly the page size): the first short page is the last one. Paging stops early,
and the listing is *incomplete*, when a full page adds no new id (a server ignoring ``page``) or
after a bound derived from the larger of the announced total and the items cached, plus
``EXTRA_PAGES`` (``MAX_PAGES`` when neither is known). A total smaller than what page 1 held is
never trusted.

Safety. Nothing is deleted unless a listing was complete: no error, no early stop, at least as
many items as ``X-Total-Count`` announced, the same total on every page. An empty listing while
the cache holds items counts only once it persisted for ``EMPTY_CONFIRM_SECONDS``. An id missing
from a complete listing is deleted only when it is still missing from a *later* complete
listing; while more than ``small_removal`` ids (or several ids that are more than
``max_delete_fraction`` of a list) are missing, each must also have been missing for
``delete_confirm_seconds`` (minutes): a media scan never sees a library vanish on one bad
answer. A torrent found missing by the binary search counts as missing from one listing; the
confirmation is RD's answer to ``/torrents/info`` for it (``unknown_ressource``: gone) a tick
later, after which the same rules apply (a large removal is still held); one RD still knows is
kept, and everything is listed. A torrent whose directory was shown and whose status leaves
``downloaded`` for an active one (RD flipping it to ``downloading`` and back) keeps its directory
for the same time; a failed one (``dead``, ``error``, ...) leaves at once. Every torrent deleted
that way is written to the removal record (``Cache.record_removals``) with its name, hash and
file selection, so it can be re-added.

Deadlines. A tick's API calls share one deadline (``tick_timeout``): a server that drips its
answer cannot hold the sync forever; the tick ends as ``stalled`` and the next one starts on
time. A tick running longer than ``stall_after`` is reported as ``stalled`` by ``status()``.

Writes go in batches of ``batch_size`` rows (listed torrents and tree entries: ``BULK_BATCHES``
of them), one transaction each, yielding to the loop between them, so FUSE requests (answered
from SQLite) interleave with a big sync.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

import trio

from rdfs.api.errors import APIError, NetworkError, RDError, UnknownResource
from rdfs.api.models import ACTIVE_STATUSES, STATUS_DOWNLOADED, Torrent, TorrentInfo
from rdfs.api.ratelimit import background
from rdfs.events import TOP_LEVEL, ChangeBus, StatusBoard
from rdfs.store.metadata import (
    Cache,
    CacheError,
    Changes,
    list_key,
    row_key,
)
from rdfs.store.values import chunks as _chunks
from rdfs.sync.fillprogress import FillProgress
from rdfs.sync.listing import Listing, ListState, page_fingerprint
from rdfs.sync.treebuilder import TreeBuilder
from rdfs.tree.specs import Namespace

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 2500  # RD's documented maximum for ``limit``
SWEEP_EVERY = 4  # one tick in this many sweeps another list page instead of /torrents page 1
SAVE_EVERY = 300.0  # the listing state changed by probes is persisted at most this often
PROBE_SIZE = 100  # torrents per probe of the head (and of an active torrent's neighbourhood)
EMPTY_CONFIRM_SECONDS = 600.0
DELETE_CONFIRM_SECONDS = 1800.0  # how long a larger removal must persist before it is applied
SMALL_REMOVAL = 3  # removals of at most this many ids wait one more complete listing only
MAX_PAGES = 400  # paging bound when no total is known (1,000,000 items at 2,500 a page)
EXTRA_PAGES = 2  # pages allowed beyond what the total announced (items added while paging)
STALL_AFTER = 300.0  # a tick running this long is reported as stalled
TICK_TIMEOUT = 900.0  # a tick's API calls are abandoned after this long
CONFIRM_DELAY = 5.0  # the listing that confirms a small removal comes this soon
RECENT_REMOVALS = 50  # removal record entries shown by status()
MAX_RECENT_ERRORS = 20
MAX_FILL_PAUSE = 120.0
ANNOUNCE_FILL = 500  # a fill of this many file lists takes minutes: say so in the log
# Listed torrents, and the entries of a rebuilt tree, are written this many batches at a time (a
# page of 2,500 at the default batch size). Every transaction rewrites the index pages its random
# keys (ids, names, inode keys) land on: at 100,000 torrents five batches of 500 write ~2x the
# bytes of one of 2,500. One still blocks the loop for ~40-60 ms (measured at 100,000 torrents).
BULK_BATCHES = 5

T = TypeVar("T")


class Client(Protocol):
    """What the syncer needs from ``rdfs.api.client.RDClient``."""

    async def torrents(
        self, *, page: int | None = None, offset: int | None = None, limit: int
    ) -> Any: ...

    async def downloads(self, *, page: int, limit: int) -> Any: ...

    async def torrent_info(self, id: str) -> TorrentInfo: ...


def policy_options(config: Any) -> dict[str, Any]:
    """The Syncer's keyword arguments for a ``rdfs.config.Config``'s deletion and stall settings."""
    stall = config.sync_stall_minutes * 60
    return {
        "max_delete_fraction": config.max_delete_fraction,
        "delete_confirm_seconds": config.delete_confirm_minutes * 60,
        "small_removal": config.small_removal,
        "stall_after": stall,
        "tick_timeout": 3 * stall,
        "own_downloads": config.downloads == "own",
    }


class SyncStalled(Exception):
    """The tick's API calls did not finish within ``tick_timeout``: abandoned, retried next tick."""


class Syncer:
    def __init__(
        self,
        client: Client,
        cache: Cache,
        *,
        interval: float = 15.0,
        bus: ChangeBus | None = None,
        board: StatusBoard | None = None,
        keep_dead: bool = False,
        own_downloads: bool = True,
        max_delete_fraction: float = 0.2,
        info_concurrency: int = 4,
        page_size: int = DEFAULT_PAGE_SIZE,
        batch_size: int = 500,
        delete_confirm_seconds: float = DELETE_CONFIRM_SECONDS,
        small_removal: int = SMALL_REMOVAL,
        stall_after: float = STALL_AFTER,
        tick_timeout: float = TICK_TIMEOUT,
    ) -> None:
        self.client = client
        self.cache = cache
        self.interval = interval
        self.max_delete_fraction = max_delete_fraction
        self.info_concurrency = max(1, info_concurrency)
        self.page_size = page_size
        # Probes ask for a small window: what a change costs does not grow with the page size.
        self.probe_size = min(PROBE_SIZE, page_size)
        self.batch_size = batch_size
        self.bulk_size = batch_size * BULK_BATCHES
        self.delete_confirm_seconds = delete_confirm_seconds
        self.small_removal = small_removal
        self.stall_after = stall_after
        self.tick_timeout = tick_timeout
        self.namespace = Namespace(cache)
        # Without a bus (tests, benchmarks) the changes go to a private one nobody listens to.
        self.bus = bus if bus is not None else ChangeBus(self.namespace.path)
        # The tree mutations, shared with repair and the archive indexer. Dead torrents stay in the
        # tree (unreadable) with ``keep_dead`` (repair is on): a media server must not see a movie
        # vanish while a repair may bring it back.
        self.tree = TreeBuilder(
            cache,
            delete_confirm_seconds=delete_confirm_seconds,
            keep_dead=keep_dead,
            own_downloads=own_downloads,
            batch_size=self.bulk_size,
        )
        self._lists = {
            kind: ListState.stored(cache.get_state(f"listing:{kind}"))
            for kind in ("torrents", "downloads")
        }
        # A cache that holds a complete listing is served as it is: the first probe comes an
        # interval after the start (no API call while a media server walks the tree at start).
        self._warm = self._lists["torrents"].listed
        self._wake = trio.Event()
        self._force_full = False
        self._probe_next = False  # the next tick probes the head, whatever the sweep's turn
        self._removed_here: list[str] = []  # torrents rdfs deleted, for the next tick's state
        # Torrents found missing by ``_locate_removal`` (not by a listing): their removal is
        # confirmed by asking RD for each (``_confirm_located``), not by a complete listing.
        self._located: set[str] = set()
        # When the listing state last changed without a listing, while not persisted (None),
        # and when it was last persisted (monotonic clock).
        self._unsaved: float | None = None
        self._saved = time.monotonic()
        self.save_every = SAVE_EVERY
        self._tick_number = 0
        self._sweep_number = 0
        # Background file fill: ids in fetch order, the requests in flight, on-demand callers.
        self._queue: dict[str, None] = {}
        self._urgent: dict[str, None] = {}  # torrents a probe just brought: ahead of the queue
        self._queue_changed = trio.Event()
        self._inflight: dict[str, trio.Event] = {}
        self._demand = 0
        self._no_demand = trio.Event()
        self._no_demand.set()
        self._fill = FillProgress()
        # downloads/ needs a rebuild: once at start (the ``downloads`` setting may have changed),
        # and when a stored file list brings links of shown downloads (see ``_fetch_files``).
        self._downloads_stale = True
        self._errors: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_RECENT_ERRORS
        )
        self._running = False
        self._health = cache.get_state("health", "unknown")
        # kind -> id -> [first time missing from a complete listing, complete listings missing it]
        self._missing: dict[str, dict[str, list[float]]] = cache.get_state("missing", {})
        self._empty_since: dict[str, float] = cache.get_state("empty_since", {})
        # Bad listing conditions currently warned about (one warning when one starts): key -> text.
        self._conditions: dict[str, str] = {}
        self._tick_started: float | None = None  # trio clock
        self._tick_deadline = float("inf")
        if board is not None:
            board.register(TOP_LEVEL, self.status)

    # --- public ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync forever. Started at once: the cached tree is served before any API call."""
        async with trio.open_nursery() as nursery:
            self._refill_queue()
            for _ in range(self.info_concurrency):
                nursery.start_soon(self._fill_worker, False)
            self._running = True
            task_status.started()
            if self._warm:
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()
            rebuild = False
            try:
                while True:
                    try:
                        if (
                            rebuild
                        ):  # a failed tick may have stored torrents but not their directories
                            self._emit(await self.tree.torrent_dirs())
                            self._emit(await self.tree.downloads())
                            rebuild = False
                        await self._tick()
                    except (
                        CacheError
                    ) as exc:  # each write rolled back whole: the next tick redoes it
                        rebuild = True
                        self._note_error(
                            "cache", str(exc)
                        )  # (the cache logged its state change once)
                        with contextlib.suppress(CacheError):
                            self._set_health("degraded")
                    except Exception:  # a bug or a broken cache must not take the mount down
                        log.exception("sync tick failed")
                        self._note_error("sync", "internal error (see the log)")
                        with contextlib.suppress(CacheError):
                            self._set_health("error")
                    # A small removal is confirmed by a listing soon after, not an interval later.
                    confirming = any(self._deletions_due(kind) for kind in self._lists)
                    with trio.move_on_after(
                        min(self.interval, CONFIRM_DELAY) if confirming else self.interval
                    ):
                        await self._wake.wait()
                    self._wake = trio.Event()
            finally:
                self._running = False
                if self._unsaved is not None:
                    with contextlib.suppress(CacheError):  # (then the next start lists)
                        self._save_torrents_state()

    def trigger(self) -> None:
        """Sync now, with complete listings (``.rdfs/refresh``, SIGHUP, a repair)."""
        self._force_full = True
        self._wake.set()

    def check_soon(self) -> None:
        """Probe the head now (rdfs added a torrent: it shows on top, followed with no listing)."""
        self._probe_next = True
        self._wake.set()

    def removed(self, torrent_ids: Sequence[str]) -> None:
        """rdfs deleted these torrents (RD answered the DELETE) and removed them from the cache:
        the next tick drops them from the listing state and probes the head, no listing."""
        self._removed_here.extend(torrent_ids)
        self.check_soon()

    async def sync_once(self, *, full: bool = True, fill: bool = True) -> None:
        """One tick (complete listings by default), then, with ``fill``, every missing file list."""
        if full:
            self._force_full = True
        await self._tick()
        if fill:
            self._refill_queue()
            async with trio.open_nursery() as nursery:
                for _ in range(self.info_concurrency):
                    nursery.start_soon(self._fill_worker, True)

    async def ensure_files(self, torrent_id: str) -> None:
        """Make sure a shown torrent's file list is cached; fetched now, ahead of the background
        fill."""
        if self.cache.has_files(torrent_id):
            return
        torrent = self.cache.torrent(torrent_id)
        if torrent is None or torrent.status != STATUS_DOWNLOADED:
            return
        if self._demand == 0:
            self._no_demand = trio.Event()
        self._demand += 1
        try:
            await self._fetch_files(torrent_id)
        finally:
            self._demand -= 1
            if self._demand == 0:
                self._no_demand.set()

    def status(self) -> dict[str, Any]:
        counts = self.cache.torrent_counts()
        totals = self.namespace.totals()
        running_for = (
            trio.current_time() - self._tick_started if self._tick_started is not None else None
        )
        stalled = running_for is not None and running_for > self.stall_after
        return {
            "health": "stalled" if stalled else self._health,
            "running": self._running,
            "stalled_for": round(running_for, 1) if stalled and running_for is not None else None,
            "last_sync": self.cache.get_state("last_sync"),
            "last_outcome": self.cache.get_state("last_outcome"),
            "last_complete_listing": self.cache.get_state("last_complete_listing"),
            "torrents_known": counts["torrents"],
            "torrents_downloaded": counts["downloaded"],
            "torrents_with_files": counts["with_files"],
            "files_pending": counts["files_pending"],
            "downloads_known": self.cache.download_count(),
            "entries": totals.entries,
            "fill_queue": len(self._queue) + len(self._urgent),
            "fill": self._fill.report(
                trio.current_time(),
                done=counts["downloaded"] - counts["files_pending"],
                total=counts["downloaded"],
            ),
            "fetching": sorted(self._inflight),
            "in_progress": [
                {"id": t.id, "name": t.filename, "status": t.status, "progress": t.progress}
                for t in self.cache.active_torrents()
            ],
            "pending_deletions": {kind: len(ids) for kind, ids in self._missing.items() if ids},
            "held_directories": self.tree.held,
            "removed": {
                "count": self.cache.removal_count(),
                "recent": self.cache.removals(RECENT_REMOVALS),
            },
            "recent_errors": list(self._errors),
        }

    # --- ticks ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        torrents, downloads = self._lists["torrents"], self._lists["downloads"]
        full = self._force_full
        self._force_full = False
        self._tick_started = trio.current_time()
        self._tick_deadline = self._tick_started + self.tick_timeout
        try:
            if self.tree.behind:  # a listing stopped after storing pages: their directories first
                self._emit(await self.tree.torrent_dirs(()))
            self._forget_removed()
            probe_next, self._probe_next = self._probe_next, False
            located = self._deletions_due("torrents") and self._located_only()
            if full or not torrents.listed or (self._deletions_due("torrents") and not located):
                await self._sync_torrents()
                await self._sync_downloads()
            else:
                if located:
                    await self._confirm_located()
                if not downloads.listed or self._deletions_due("downloads"):
                    await self._probe_torrents()
                    await self._sync_downloads()
                elif not probe_next and self._tick_number % SWEEP_EVERY == SWEEP_EVERY - 1:
                    await self._sweep()
                else:
                    await self._probe_torrents()
            expired = self.tree.hold_expired()
            if expired:
                self._emit(await self.tree.torrent_dirs(expired))
            if self._downloads_stale:
                await self._rebuild_downloads()
        except SyncStalled as exc:
            self._condition("sync", f"stalled: {exc}")  # one warning per outage, not one per tick
            self._set_health("stalled")
            self.cache.set_state("last_outcome", f"stalled: {exc}")
        except RDError as exc:
            self._condition("sync", f"failed: {exc}")
            unreachable = isinstance(exc, NetworkError) or (
                isinstance(exc, APIError) and exc.status >= 500
            )
            self._set_health("unavailable" if unreachable else "degraded")
            self.cache.set_state("last_outcome", f"failed: {exc}")
        else:
            self._condition("sync", None)
            if self._unsaved is not None and time.monotonic() - self._saved >= self.save_every:
                self._save_torrents_state()  # O(library): at most once per ``save_every``
            outcome = "ok" if torrents.listed else "incomplete listing"
            self._set_health("ok" if torrents.listed else "degraded")
            self.cache.set_state("last_sync", time.time())
            self.cache.set_state("last_outcome", outcome)
        finally:
            self._tick_number += 1
            self._tick_started = None
            self._tick_deadline = float("inf")

    async def _api(self, call: Awaitable[T]) -> T:
        """An API call of the tick, abandoned when the tick's deadline passed (``SyncStalled``)."""
        with trio.move_on_at(self._tick_deadline):
            return await call
        raise SyncStalled(
            f"the API calls of this sync did not finish within {self.tick_timeout:.0f} s"
        )

    async def _probe_torrents(self) -> None:
        """The idle check: the head of the list (and the windows of active torrents)."""
        windows = {0} | {
            offset - offset % self.probe_size for offset in self._lists["torrents"].where.values()
        }
        for offset in sorted(windows):
            if not await self._check_window(offset, self.probe_size):
                return

    async def _sweep(self) -> None:
        """Check one other part of the lists in turn: /downloads page 1, then the tail of
        /torrents (any add or removal shifts it) every other turn, and its pages 1, 2, ..."""
        state = self._lists["torrents"]
        turns = ["downloads", "tail"]
        for number in range(1, state.page_count(self.page_size) + 1):  # (the head is 100 only)
            turns += [str(number), "tail"]
        turn = turns[self._sweep_number % len(turns)]
        self._sweep_number += 1
        if turn == "downloads":
            page = await self._api(self.client.downloads(page=1, limit=self.page_size))
            known = self._lists["downloads"].pages
            ids = [d.id for d in page.items]
            if page.not_modified or (known and page_fingerprint(ids) == known[0]):
                return
            await self._sync_downloads(first=page)
        elif turn == "tail":
            await self._check_tail()
        else:
            await self._check_window((int(turn) - 1) * self.page_size, self.page_size)

    async def _check_tail(self) -> bool:
        """Check the last torrents: any add or removal, however deep, shifts them."""
        length = len(self._lists["torrents"].order or ())
        return await self._check_window(max(0, length - self.probe_size), self.probe_size)

    async def _check_window(self, offset: int, limit: int) -> bool:
        """Re-request ``limit`` torrents from ``offset``; True when that needed no listing: the
        same ids (only the rows that changed are written) or a change followed (``_follow``)."""
        state = self._lists["torrents"]
        page = await self._api(self.client.torrents(offset=offset, limit=limit))
        if page.not_modified:
            return True
        ids = [t.id for t in page.items]
        same_ids = page_fingerprint(ids) == state.window_fingerprint(offset, limit)
        if same_ids and (page.total is None or page.total == state.total):
            await self._store_torrents(page.items)
            self._note_moving(offset, page.items)
            return True
        if await self._follow(offset, limit, page, ids):
            return True
        log.debug("torrents %d-%d changed: listing everything", offset, offset + limit)
        await self._sync_torrents(first=page if offset == 0 and limit == self.page_size else None)
        return False

    async def _follow(self, offset: int, limit: int, page: Any, ids: list[str]) -> bool:
        """Apply a changed window without a listing when the change is torrents added on top
        (the head, the total grown by as many) or one torrent gone (the total one less); False
        for anything else, or when a total is unknown (a listing follows)."""
        state = self._lists["torrents"]
        if (
            state.order is None
            or state.total is None
            or page.total is None
            or page.received != len(ids)  # a record dropped as invalid: offsets are unknown
        ):
            return False
        grown = page.total - state.total
        if offset != 0 and grown > 0:  # a sweep saw adds first: the head shows them
            if not await self._check_window(0, self.probe_size):
                return True  # the head led to a complete listing: nothing more to do
            if (
                page_fingerprint(ids) != state.window_fingerprint(offset, limit)
                or page.total != state.total
            ):
                return False
            await self._store_torrents(page.items)
            self._note_moving(offset, page.items)
            return True
        if grown > 0:
            if not self._adds_on_top(ids, limit, grown):
                return False
            await self._store_torrents(page.items)  # (the state moves once the rows are stored)
            state.added_on_top(ids[:grown])
            log.info("%d torrents added on top of the list: followed without a listing", grown)
        elif grown == -1:
            position = await self._locate_removal(offset, ids)
            if position is None:
                return False
            await self._store_torrents(page.items)
            await self._hold_located(state.removed_at(position))
        else:
            return False
        self._note_moving(offset, page.items)
        self._unsaved_change()
        return True

    def _note_moving(self, offset: int, items: Sequence[Torrent]) -> None:
        """Keep the offsets of the torrents still moving (their windows are probed) current."""
        where = self._lists["torrents"].where
        for position, torrent in enumerate(items, offset):
            if torrent.status in ACTIVE_STATUSES:
                where[torrent.id] = position
            else:
                where.pop(torrent.id, None)

    def _adds_on_top(self, ids: list[str], limit: int, added: int) -> bool:
        """Whether the head is ``added`` new ids followed by the old head shifted."""
        order = self._lists["torrents"].order
        assert order is not None
        fits = (
            added < len(ids)
            and len(ids) == min(limit, len(order) + added)
            and ids[added:] == order[: len(ids) - added]
            and len(set(ids[:added])) == added
        )
        # (not: more than a window of adds, another change, or known ids moved on top)
        return fits and not self.cache.torrent_states_of(ids[:added])

    async def _locate_removal(self, base: int, ids: list[str]) -> int | None:
        """The offset of the one torrent gone (the total is one less), found with the ``ids`` in
        hand (from offset ``base``) or a binary search of ``offset``/``limit=1`` requests against
        the cached order (about log2(total) of them); None when the list does not fit that."""
        state = self._lists["torrents"]
        order = state.order
        assert order is not None and state.total is not None
        expected = state.total - 1
        same = 0
        while same < len(ids) and base + same < len(order) and ids[same] == order[base + same]:
            same += 1
        if same == len(ids):  # the window is as it was: the gap is further down
            low, high, seen_high = base + len(ids), len(order) - 1, False
        elif ids[same:] == order[base + same + 1 : base + len(ids) + 1]:  # shifted up by one
            low, high, seen_high = (base + same if same else 0), base + same, True
        else:
            return None
        if low > high:
            return None
        requests = 0
        while low < high or not seen_high:
            middle = (low + high) // 2 if low < high else high
            probe = await self._api(self.client.torrents(offset=middle, limit=1))
            requests += 1
            found = probe.items[0].id if probe.items else None
            following = order[middle + 1] if middle + 1 < len(order) else None
            # (a 304 brings the cached headers: its total is an earlier one, its id is current)
            stale_total = probe.not_modified
            if (not stale_total and probe.total != expected) or probe.received != len(probe.items):
                return None
            if middle < high and found == order[middle]:
                low = middle + 1
            elif found == following:
                high, seen_high = middle, True
            else:
                return None
        log.info(
            "torrent %s is gone from RD's list (found with %d requests): removed once RD "
            "confirms it",
            order[low],
            requests,
        )
        return low

    async def _hold_located(self, gone: str) -> None:
        """A torrent found missing without a listing counts as missing from one listing: held
        until ``_confirm_located`` asks RD about it."""
        self._located.add(gone)
        doomed = self._guard("torrents", {gone}, self._listed_count(), checked={gone})
        if doomed:  # (only when it was missing already: a listing between two ticks)
            self._emit(await self._remove_gone(doomed))

    async def _confirm_located(self) -> None:
        """Ask RD about each torrent ``_locate_removal`` found missing. An unknown id counts as
        the later complete listing that confirms a removal (the usual rules then apply: a large
        removal is still held); one that is still there means the cached order was wrong: it is
        kept and everything is listed."""
        missing = self._missing.get("torrents", {})
        checked = {torrent_id for torrent_id in missing if torrent_id in self._located}
        gone: set[str] = set()
        for torrent_id in sorted(checked):
            try:
                await self._api(self.client.torrent_info(torrent_id))
            except UnknownResource:
                gone.add(torrent_id)
        doomed = self._guard("torrents", gone, self._listed_count(), checked=checked)
        if doomed:
            self._emit(await self._remove_gone(doomed))
        if checked - gone:
            log.info("%d torrents found missing are still on RD: listing", len(checked - gone))
            await self._sync_torrents()

    async def _remove_gone(self, doomed: set[str]) -> Changes:
        """Delete torrents whose removal upstream was confirmed, and their directories."""
        changes = await self._delete_torrents(doomed)
        changes.merge(await self.tree.torrent_dirs(doomed))
        self._queue_files(doomed)
        return changes

    def _forget_removed(self) -> None:
        """Drop the torrents rdfs deleted itself (``removed``) from the cached order."""
        removed, self._removed_here = self._removed_here, []
        state = self._lists["torrents"]
        missing = self._missing.get("torrents", {})
        for torrent_id in removed:
            self._located.discard(torrent_id)
            if missing.pop(torrent_id, None) is not None:
                self.cache.set_state("missing", self._missing)
            offset = state.offset_of(torrent_id) if state.order is not None else None
            if offset is not None:
                state.removed_at(offset)
                self._unsaved_change()

    def _located_only(self) -> bool:
        """Whether every torrent held as missing was found by ``_locate_removal``."""
        missing = self._missing.get("torrents", {})
        return bool(missing) and all(torrent_id in self._located for torrent_id in missing)

    def _unsaved_change(self) -> None:
        """The state changed without a listing. It is persisted by a later tick, at most once
        per ``save_every`` (one O(library) write, off the changes' path), and when ``run`` ends;
        until then the stored state says "list everything": a restart never trusts a stale one."""
        stored, self._unsaved = self._unsaved, time.monotonic()
        if stored is None:
            self.cache.set_state("listing:torrents", None)

    def _save_torrents_state(self) -> None:
        self.cache.set_state("listing:torrents", self._lists["torrents"].as_stored())
        self._unsaved, self._saved = None, time.monotonic()

    # --- listings -------------------------------------------------------------------------

    async def _list_all(
        self,
        fetch: Callable[[int], Awaitable[Any]],
        first: Any = None,
        known: int = 0,
        on_page: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> Listing:
        """Every page of a list, and whether the listing may be trusted for deletions (see the
        module). Each page's new items go to ``on_page`` as it arrives, in listing order, while
        the next page is requested (when one is due): a listing of 100,000 torrents never holds
        more than two pages of records, and the store's work overlaps the API's."""
        seen: dict[str, None] = {}  # in listing order
        pages: list[str] = []
        where: dict[str, int] = {}
        fresh_totals: set[int] = set()
        total: int | None = None  # as announced (possibly a lie); compared by the page probes
        stopped = ""
        bound = MAX_PAGES
        number = 1
        page = first if first is not None else await self._api(fetch(1))
        del first
        while True:
            pages.append(page_fingerprint([item.id for item in page.items]))
            total = page.total if page.total is not None else total
            if not page.not_modified and page.total is not None:
                fresh_totals.add(page.total)
            new = []
            for item in page.items:
                if item.id not in seen:
                    seen[item.id] = None
                    new.append(item)
                    if getattr(item, "status", None) in ACTIVE_STATUSES:
                        where[item.id] = len(seen) - 1
            size, announced, added = len(page.items), page.total, len(new)
            del page  # only the ids and the new items stay while the next page is fetched
            full = size >= self.page_size  # a short page is the last one, whatever the total
            if full and added == 0:
                stopped = f"page {number} repeated earlier items (the server ignores paging)"
            elif full:
                if number == 1:
                    bound = self._page_bound(announced, size, known)
                if number >= bound:
                    stopped = f"still full pages after {number} pages (announced total: {total})"
            if not full or stopped:
                if new and on_page is not None:
                    await on_page(new)
                break
            number += 1
            page = await self._stored_while_fetching(new, on_page, fetch(number))
            del new
        if stopped:
            return Listing(seen, pages, total, False, stopped, where)
        if len(fresh_totals) > 1:
            return Listing(seen, pages, total, False, "the list changed while paging", where)
        if total is not None and total >= 0 and len(seen) < total:
            return Listing(
                seen, pages, total, False, f"short answer: {len(seen)} of {total} items", where
            )
        return Listing(seen, pages, total, True, "", where)

    async def _stored_while_fetching(
        self,
        items: list[Any],
        on_page: Callable[[list[Any]], Awaitable[None]] | None,
        request: Awaitable[Any],
    ) -> Any:
        """``on_page(items)`` while ``request`` (the next page, under the tick's deadline) is in
        flight; the page it brought. An error of either is raised as it is (not in an exception
        group) once both are over: the items are stored before a failed request's error."""
        answer: list[Any] = []
        failed: list[Exception] = []

        async def fetch_next() -> None:
            try:
                answer.append(await self._api(request))
            except Exception as exc:  # raised below, after the items are stored
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch_next)
            if items and on_page is not None:
                try:
                    await on_page(items)
                except Exception as exc:
                    nursery.cancel_scope.cancel()  # the listing ends here: no page is waited for
                    failed[:0] = [exc]
        if failed:
            raise failed[0]
        return answer[0]

    def _page_bound(self, total: int | None, first_page: int, known: int) -> int:
        """How many pages a listing may take, decided after page 1.

        A total is believed only when it is at least what page 1 held; the bound covers the larger
        of it and the items cached (what the last listings found), plus a margin. Without either,
        ``MAX_PAGES``. A listing cut by the bound is incomplete; the next one, knowing more, goes
        further.
        """
        size = max(total if total is not None and total >= first_page else 0, known)
        if size == 0:
            return MAX_PAGES
        return min(-(-size // self.page_size) + EXTRA_PAGES, MAX_PAGES)

    def _condition(self, key: str, reason: str | None) -> None:
        """Warn once when a bad listing condition starts (or changes), not on every tick."""
        if reason is None:
            if self._conditions.pop(key, None) is not None:
                log.info("%s: back to normal", key)
            return
        if self._conditions.get(key) != reason:
            self._conditions[key] = reason
            log.warning("%s: %s", key, reason)
            self._note_error(key, reason)

    def _trust(self, kind: str, listing: Listing, known: int) -> bool:
        """Whether deletions may be based on ``listing``; an empty answer needs time to be
        believed."""
        if not listing.complete:
            self._condition(f"{kind} listing", f"incomplete ({listing.reason}): nothing is deleted")
            return False
        if listing.ids or known == 0:
            self._condition(f"{kind} listing", None)
            self._set_empty_since(kind, None)
            return True
        first = self._empty_since.get(kind)
        if first is None:
            self._set_empty_since(kind, time.time())
        if first is None or time.time() - first < EMPTY_CONFIRM_SECONDS:
            self._condition(
                f"{kind} listing",
                f"empty listing while {known} are cached: ignored until it persists",
            )
            return False
        self._condition(f"{kind} listing", None)
        return True

    def _mass(self, missing: int, known: int) -> bool:
        """A large removal: more than a few ids, or several that are a large part of the list."""
        return missing > self.small_removal or (
            missing > 1 and missing > self.max_delete_fraction * known
        )

    def _guard(
        self, kind: str, gone: set[str], known: int, checked: set[str] | None = None
    ) -> set[str]:
        """Which of the ``gone`` ids to delete now: see "Safety" in the module's docstring.
        ``checked``: the ids this observation looked at (None: a complete listing, all)."""
        now = time.time()
        missing = self._missing.setdefault(kind, {})
        back = [
            item_id
            for item_id in missing
            if item_id not in gone and (checked is None or item_id in checked)
        ]
        for item_id in back:
            del missing[item_id]
        for item_id in gone:
            since, listings = missing.get(item_id, (now, 0))
            missing[item_id] = [since, listings + 1]
        mass = self._mass(len(missing), known)
        due = {
            item_id
            for item_id, (since, listings) in missing.items()
            if listings >= 2 and (not mass or now - since >= self.delete_confirm_seconds)
        }
        for item_id in due:
            del missing[item_id]
        self._located.intersection_update(self._missing.get("torrents", {}))
        if missing and mass:
            self._condition(
                f"{kind} removal",
                f"{len(missing)} of {known} items missing upstream: "
                "held back until they stay missing "
                f"for {self.delete_confirm_seconds / 60:g} minutes",
            )
        else:  # a small removal waiting for the next listing is routine: no warning
            self._condition(f"{kind} removal", None)
            if gone - due:
                log.info(
                    "%s: %d items missing upstream: deleted if the next listing agrees",
                    kind,
                    len(gone - due),
                )
        if back:
            log.info("%s: %d missing items are listed again: not deleted", kind, len(back))
        if due:
            log.log(
                logging.WARNING if mass else logging.INFO,
                "%s: removal of %d items confirmed",
                kind,
                len(due),
            )
        if back or gone or due:
            self.cache.set_state("missing", self._missing)
        return due

    def _deletions_due(self, kind: str) -> bool:
        """Whether a complete listing now could apply a held removal (else the probes will do)."""
        missing = self._missing.get(kind)
        if not missing:
            return False
        oldest = min(since for since, _ in missing.values())
        return (
            not self._mass(
                len(missing), self._listed_count() if kind == "torrents" else self._known(kind)
            )
            or time.time() - oldest >= self.delete_confirm_seconds
        )

    def _listed_count(self) -> int:
        """How many torrents the cache holds, for the removal rules' proportions, with no query
        over the library while the order is known: the listed ones, plus those held missing."""
        order = self._lists["torrents"].order
        if order is None or not self._lists["torrents"].listed:
            return self._known("torrents")
        return len(order) + len(self._missing.get("torrents", {}))

    def _known(self, kind: str) -> int:
        return (
            self.cache.torrent_counts()["torrents"]
            if kind == "torrents"
            else self.cache.download_count()
        )

    async def _sync_torrents(self, first: Any = None) -> None:
        known = self._known("torrents")
        structural: set[str] = set()

        async def store(items: list[Torrent]) -> None:
            structural.update(await self._store_torrents(items, rebuild=False))

        listing = await self._list_all(
            lambda n: self.client.torrents(page=n, limit=self.page_size), first, known, store
        )
        changes = Changes()
        if self._trust("torrents", listing, known):
            gone = self.cache.torrent_ids() - listing.ids.keys()
            doomed = self._guard("torrents", gone, known)
            if doomed:
                changes.merge(await self._delete_torrents(doomed))
                structural |= doomed
            self._listed("torrents", listing)
            self.cache.set_state("last_complete_listing", time.time())
        else:
            self._lists["torrents"].listed = False
        # (behind: a crash came between writing torrents and rebuilding their directories)
        if structural or self.tree.behind:
            changes.merge(await self.tree.torrent_dirs(structural))
            self._refill_queue()
        self._emit(changes)

    async def _delete_torrents(self, doomed: set[str]) -> Changes:
        """Delete (and record) torrents whose removal upstream is confirmed; the caller rebuilds
        their directories."""
        log.info("removing %d torrents gone upstream", len(doomed))
        self.tree.expect(doomed)
        changes = Changes()
        for chunk in _chunks(sorted(doomed), self.batch_size):
            with self.cache.transaction():
                self.cache.record_removals(chunk, by="rd", reason="gone from RD's torrent list")
                changes.merge(self.cache.delete_torrents(chunk))
            await trio.sleep(0)
        return changes

    def _listed(self, kind: str, listing: Listing) -> None:
        """Keep (and persist) what a complete listing looked like, for the probes: ``/torrents``
        by its ids in order, ``/downloads`` by its page fingerprints."""
        state = self._lists[kind]
        state.total, state.where = listing.total, listing.where
        if kind == "torrents":
            state.order, state.pages = list(listing.ids), []
            self._unsaved, self._saved = None, time.monotonic()
        else:
            state.pages = listing.pages
        state.listed = True
        self.cache.set_state(f"listing:{kind}", state.as_stored())

    async def _store_torrents(self, items: Sequence[Torrent], *, rebuild: bool = True) -> set[str]:
        """Write the listed torrents that changed (compared with their stored fingerprints); the
        ids of those whose directory may have changed (rebuilt now with ``rebuild``, else by the
        caller)."""
        changed: list[Torrent] = []
        structural: set[str] = set()
        for chunk in _chunks(items, self.bulk_size):
            known = self.cache.torrent_states_of([t.id for t in chunk])
            for torrent in chunk:
                state = known.get(torrent.id)
                if state is None or state.row_key != row_key(torrent):
                    changed.append(torrent)
                    if state is None or state.list_key != list_key(torrent):
                        structural.add(torrent.id)
            await trio.sleep(0)
        self.tree.expect(structural)
        for chunk in _chunks(changed, self.bulk_size):
            self.cache.upsert_torrents(chunk)
            await trio.sleep(0)
        if changed:
            log.debug(
                "%d listed torrents changed (%s)",
                len(changed),
                "structural" if structural else "progress",
            )
        if structural and rebuild:
            self._emit(await self.tree.torrent_dirs(structural))
            self._queue_files(structural)
        return structural

    async def _sync_downloads(self, first: Any = None) -> None:
        known = self.cache.download_ids()
        new = 0

        async def store(items: list[Any]) -> None:
            nonlocal new
            fresh = [d for d in items if d.id not in known]
            new += len(fresh)
            for chunk in _chunks(fresh, self.batch_size):
                self.cache.upsert_downloads(chunk)
                await trio.sleep(0)

        listing = await self._list_all(
            lambda n: self.client.downloads(page=n, limit=self.page_size), first, len(known), store
        )
        doomed: set[str] = set()
        if self._trust("downloads", listing, len(known)):
            gone = known - listing.ids.keys()
            doomed = self._guard("downloads", gone, len(known))
            for chunk in _chunks(sorted(doomed), self.batch_size):
                self.cache.delete_downloads(chunk)
                await trio.sleep(0)
            self._listed("downloads", listing)
        else:
            self._lists["downloads"].listed = False
        if new or doomed or self._downloads_stale:
            await self._rebuild_downloads()

    async def _rebuild_downloads(self) -> None:
        self._downloads_stale = False
        self._emit(await self.tree.downloads())

    # --- file lists -----------------------------------------------------------------------

    def _refill_queue(self) -> None:
        """The fill queue from the cache: every torrent whose file list is due (O(library): at
        the start and after a complete listing)."""
        idle = not self._queue
        self._urgent = {}
        self._queue = dict.fromkeys(
            t for t in self.cache.torrents_needing_files() if t not in self._inflight
        )
        if idle and len(self._queue) >= ANNOUNCE_FILL:
            log.info(
                "loading %d file lists in the background, newest first (one request each, on the "
                "API budget reads leave): `rdfs status` shows the time left",
                len(self._queue),
            )
        self._queue_changed.set()
        self._queue_changed = trio.Event()

    def _queue_files(self, torrent_ids: Collection[str]) -> None:
        """The fill queue brought up to date for these torrents only (changed or deleted by a
        probe): those whose file list is due go first, the others leave it."""
        states = self.cache.torrent_states_of(torrent_ids)
        for torrent_id in torrent_ids:
            self._queue.pop(torrent_id, None)
            self._urgent.pop(torrent_id, None)
            state = states.get(torrent_id)
            if (
                state is not None
                and state.status == STATUS_DOWNLOADED
                and state.info_key != state.list_key
                and torrent_id not in self._inflight
            ):
                self._urgent[torrent_id] = None
        self._queue_changed.set()
        self._queue_changed = trio.Event()

    async def _fill_worker(self, drain: bool) -> None:
        """Fetch missing file lists, newest torrent first; yields to on-demand requests."""
        failures = 0
        while True:
            while self._demand:
                await self._no_demand.wait()
            queue = self._urgent or self._queue
            torrent_id = next(iter(queue), None)
            if torrent_id is None:
                if drain:
                    return
                await self._queue_changed.wait()
                continue
            del queue[torrent_id]
            try:
                with background():
                    await self._fetch_files(torrent_id)
                failures = 0
            except Exception as exc:
                if drain and not isinstance(exc, (RDError, CacheError)):
                    raise
                if isinstance(exc, (RDError, CacheError)):
                    self._note_error(f"files of {torrent_id}", exc)
                else:  # keep the mount alive; the torrent stays pending and is retried
                    log.exception("storing the files of %s failed", torrent_id)
                if drain:
                    continue
                self._queue[torrent_id] = None  # again later, at the end of the line
                failures += 1
                await trio.sleep(min(MAX_FILL_PAUSE, 2.0**failures))

    async def _fetch_files(self, torrent_id: str) -> None:
        """One ``/torrents/info`` per torrent at a time: later callers wait for the first."""
        running = self._inflight.get(torrent_id)
        if running is not None:
            await running.wait()
            return
        done = self._inflight[torrent_id] = trio.Event()
        try:
            try:
                info = await self.client.torrent_info(torrent_id)
            except UnknownResource as exc:
                # Gone upstream since it was listed: the next listing removes it.
                self.cache.set_info_error(torrent_id, str(exc))
                if torrent_id not in self._located:  # (those are confirmed by the next tick)
                    self._force_full = True
                return
            self._queue.pop(torrent_id, None)
            self._urgent.pop(torrent_id, None)
            self._emit(self.tree.store_info(info))
            self._fill.stored(trio.current_time())
            # A torrent whose links changed has its list fetched again: a shown download that
            # turns out to be this torrent's leaves downloads/ with the next tick (one indexed
            # look-up here, no rebuild per list).
            if self.tree.own_downloads and self.cache.shows_download_of(info.links):
                self._downloads_stale = True
        finally:
            del self._inflight[torrent_id]
            done.set()

    # --- reporting ------------------------------------------------------------------------

    def _emit(self, changes: Changes) -> None:
        self.bus.publish(changes, "sync")

    def _note_error(self, where: str, error: BaseException | str) -> None:
        self._errors.append({"time": time.time(), "where": where, "error": str(error)})
        if isinstance(error, BaseException):
            log.warning("%s: %s", where, error)

    def _set_health(self, health: str) -> None:
        if health != self._health:
            log.info("sync health: %s -> %s", self._health, health)
            self._health = health
            self.cache.set_state("health", health)

    def _set_empty_since(self, kind: str, when: float | None) -> None:
        if self._empty_since.get(kind) == when:
            return
        if when is None:
            self._empty_since.pop(kind, None)
        else:
            self._empty_since[kind] = when
        self.cache.set_state("empty_since", self._empty_since)
