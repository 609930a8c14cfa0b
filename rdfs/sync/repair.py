"""Repair of dead torrents: detect, report, and (when enabled) re-add and swap in place.

Detection. A torrent is *broken* when RD lists it as ``dead``, or when one of its links cannot be
unrestricted any more (``hoster_unavailable``, ``infringing_file``, …: the resolver reports it
through :meth:`Repairer.link_gone`; a download server's 404 leads there too, as the reader
refreshes the link). A link failure alone is only a *suspect*: RD's links sometimes fail for
20-30 minutes and recover, so it must still fail ``confirm_after`` seconds later (one unrestrict
to check) before it counts. Only RD's own answer is a verdict: a gateway page (a 5xx without an
RD ``error_code``, ``GatewayError``), a 429 or no answer at all leaves the suspect as it was.

Outage, not breakage. When ``outage_threshold`` different torrents turn broken within
``outage_window`` seconds, that is an RD outage: nothing is repaired, ``status()`` says so, and
repairs stay paused for ``outage_pause`` seconds. The same torrents, still broken afterwards,
still count as one burst: a mass repair never happens on its own.

Repair (``enabled``). The recipe RD clients use: ``addMagnet`` with the torrent's hash,
``selectFiles`` with the same file ids, wait until it is downloaded, then *swap*: the inode keys
of the old torrent are renamed to the new torrent's id, so every path (``torrents/``, the views)
keeps its inode and name; the old torrent is deleted on RD. At most ``per_hour`` repairs run per
hour, and a torrent (by hash) is repaired at most once per ``retry_after`` seconds: a
repaired torrent that dies again is reported, not repaired in a loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from rdfs.api.errors import APIError, GatewayError, RDError, TooManyRequests
from rdfs.api.models import FAILED_STATUSES, STATUS_DOWNLOADED, Created, TorrentInfo
from rdfs.data.links import LinkGone
from rdfs.events import ChangeBus, StatusBoard
from rdfs.store.metadata import Cache
from rdfs.sync.selection import select_when_ready
from rdfs.sync.treebuilder import TreeBuilder

log = logging.getLogger(__name__)

DEAD_STATUSES = frozenset({"dead"})
# Answers that say nothing about a torrent or a link (a gateway's page, a rate limit).
_TRANSIENT = (GatewayError, TooManyRequests)


class RepairClient(Protocol):
    async def torrent_info(self, id: str) -> TorrentInfo: ...

    async def add_magnet(self, magnet: str, host: str | None = None) -> Created: ...

    async def select_files(self, id: str, files: Any) -> None: ...

    async def delete_torrent(self, id: str) -> None: ...

    async def unrestrict_link(
        self, link: str, password: str | None = None, remote: bool | None = None
    ) -> Any: ...


class Refresher(Protocol):
    """What the repairer needs from the syncer."""

    def trigger(self) -> None: ...


@dataclass
class Broken:
    torrent_id: str
    name: str
    reason: str
    since: float
    confirmed: bool


@dataclass
class RepairPolicy:
    enabled: bool = False
    per_hour: int = 6
    confirm_after: float = 600.0
    outage_threshold: int = 3
    outage_window: float = 120.0
    outage_pause: float = 1800.0
    retry_after: float = 86400.0
    wait_download: float = 120.0  # how long a repair waits for the re-added torrent
    poll: float = 2.0
    check_every: float = 60.0  # seconds between two checks (the mount: the sync interval)


@dataclass
class _History:
    repairs: deque[float] = field(default_factory=deque)  # times of repairs in the last hour


class Repairer:
    """``check()``, every sync interval: find, confirm and repair broken torrents."""

    def __init__(
        self,
        client: RepairClient,
        cache: Cache,
        syncer: Refresher,
        tree: TreeBuilder,
        bus: ChangeBus,
        policy: RepairPolicy | None = None,
        *,
        board: StatusBoard | None = None,
    ) -> None:
        """A swap is shown through ``tree`` and published on ``bus`` (origin ``repair``)."""
        self.client = client
        self.cache = cache
        self.syncer = syncer
        self.tree = tree
        self.bus = bus
        self.policy = policy or RepairPolicy()
        self.broken: dict[str, Broken] = {}
        self.outage_until = 0.0
        self.history = _History()
        self.repaired: list[dict[str, Any]] = []
        self.gave_up: dict[str, str] = {}  # torrent id -> why it is not repaired
        self._burst: deque[tuple[float, str]] = deque()  # (time turned broken, torrent id)
        if board is not None:
            board.register("repair", self.status)

    # --- detection ------------------------------------------------------------------------------

    def link_gone(self, hoster_link: str, error: LinkGone) -> None:
        """Resolver callback: RD refused to unrestrict ``hoster_link``."""
        torrent_id = self.cache.torrent_for_link(hoster_link)
        if torrent_id is not None:
            self._report(torrent_id, f"link refused: {error.reason}", confirmed=False)

    def _report(self, torrent_id: str, reason: str, *, confirmed: bool) -> None:
        known = self.broken.get(torrent_id)
        if known is not None:
            if confirmed and not known.confirmed:
                known.confirmed, known.reason = True, reason
            return
        torrent = self.cache.torrent(torrent_id)
        name = torrent.filename if torrent is not None else torrent_id
        now = time.time()
        self.broken[torrent_id] = Broken(torrent_id, name, reason, now, confirmed)
        log.warning("torrent %s (%s) is broken: %s", torrent_id, name, reason)
        self._burst.append((now, torrent_id))
        while self._burst and self._burst[0][0] < now - self.policy.outage_window:
            self._burst.popleft()
        if len({tid for _, tid in self._burst}) >= self.policy.outage_threshold:
            if self.outage_until < now:
                log.warning(
                    "%d torrents broke within %.0f s: treated as an RD outage, repairs paused",
                    len(self._burst),
                    self.policy.outage_window,
                )
            self.outage_until = now + self.policy.outage_pause
            for _, tid in self._burst:
                self.gave_up.setdefault(tid, "part of a burst of failures (RD outage?)")

    def _scan_listing(self) -> None:
        for torrent_id in self.cache.torrents_with_status(DEAD_STATUSES):
            self._report(torrent_id, "RD lists it as dead", confirmed=True)
        # Broken torrents that left the account (deleted by the user, or swapped out) are forgotten.
        for torrent_id in list(self.broken):
            if self.cache.torrent(torrent_id) is None:
                del self.broken[torrent_id]

    async def _confirm(self, broken: Broken) -> None:
        """A link failure that lasted ``confirm_after`` seconds: unrestrict once more to be sure."""
        torrent = self.cache.torrent(broken.torrent_id)
        if torrent is None or not torrent.links:
            return
        try:
            await self.client.unrestrict_link(torrent.links[0])
        except _TRANSIENT:
            return  # RD unreachable, or a gateway answered for it: ask again later
        except APIError as exc:
            broken.confirmed = True
            broken.reason = f"link still refused: {exc}"
        except RDError:
            return  # RD unreachable: ask again later
        else:
            log.info("torrent %s recovered by itself", broken.torrent_id)
            del self.broken[broken.torrent_id]

    # --- repair ---------------------------------------------------------------------------------

    async def check(self) -> int:
        """One round: detect, confirm, repair what is allowed. Returns the number of repairs."""
        self._scan_listing()
        now = time.time()
        for broken in list(self.broken.values()):
            if not broken.confirmed and now - broken.since >= self.policy.confirm_after:
                await self._confirm(broken)
        if not self.policy.enabled or now < self.outage_until:
            return 0
        done = 0
        for broken in list(self.broken.values()):
            if not broken.confirmed or broken.torrent_id in self.gave_up:
                continue
            while self.history.repairs and self.history.repairs[0] < now - 3600:
                self.history.repairs.popleft()
            if len(self.history.repairs) >= self.policy.per_hour:
                log.info("repair budget of %d per hour used up: waiting", self.policy.per_hour)
                break
            if await self._repair(broken):
                done += 1
        return done

    def _attempts(self) -> dict[str, float]:
        return self.cache.get_state("repair_attempts", {})

    async def _repair(self, broken: Broken) -> bool:
        old = self.cache.files_of(broken.torrent_id)
        if old is None:
            self.gave_up[broken.torrent_id] = "its file list is unknown"
            return False
        attempts = self._attempts()
        last = attempts.get(old.hash)
        if last is not None and time.time() - last < self.policy.retry_after:
            self.gave_up[old.id] = "repaired recently and broken again: not repaired in a loop"
            log.warning(
                "torrent %s (%s) broke again after a repair: giving up", old.id, old.filename
            )
            return False
        attempts[old.hash] = time.time()
        self.cache.set_state("repair_attempts", attempts)
        self.history.repairs.append(time.time())
        wanted = sorted(f.id for f in old.files if f.selected)
        log.info(
            "repairing torrent %s (%s): re-adding %s with files %s",
            old.id,
            old.filename,
            old.hash,
            wanted,
        )
        try:
            created = await self.client.add_magnet(f"magnet:?xt=urn:btih:{old.hash}")
            with trio.fail_after(self.policy.wait_download):
                info = await select_when_ready(
                    self.client,
                    created.id,
                    lambda _: wanted,
                    timeout=self.policy.wait_download,
                    poll=self.policy.poll,
                )
            if info.status == "magnet_conversion":
                raise TimeoutError(f"torrent {created.id} was not converted in time")
            new = await self._wait_downloaded(created.id)
        except _TRANSIENT as exc:  # not a verdict on the torrent: tried again at a later check
            attempts.pop(old.hash, None)
            self.cache.set_state("repair_attempts", attempts)
            log.warning("repair of torrent %s postponed: %s", old.id, exc)
            return False
        except (RDError, TimeoutError) as exc:
            self.gave_up[old.id] = f"repair failed: {exc}"
            log.error("repair of torrent %s failed: %s", old.id, exc)
            return False
        await self.swap(old.id, new)
        try:
            await self.client.delete_torrent(old.id)
        except RDError as exc:
            log.warning("repaired torrent %s: deleting the dead original failed: %s", old.id, exc)
        self.repaired.append(
            {"time": time.time(), "old": old.id, "new": new.id, "name": old.filename}
        )
        self.broken.pop(old.id, None)
        self.syncer.trigger()
        return True

    async def _wait_downloaded(self, torrent_id: str) -> TorrentInfo:
        with trio.fail_after(self.policy.wait_download):
            while True:
                info = await self.client.torrent_info(torrent_id)
                if info.status == STATUS_DOWNLOADED and info.links:
                    return info
                if info.status in FAILED_STATUSES:
                    raise RDError(f"the re-added torrent is {info.status}")
                await trio.sleep(self.policy.poll)

    async def swap(self, old_id: str, new: TorrentInfo) -> None:
        """Put ``new`` where ``old_id`` was (same inodes and paths, one transaction); rebuild."""
        self.cache.swap_torrent(old_id, new)
        self.bus.publish(await self.tree.adopt(new), "repair")
        log.info("torrent %s swapped in for %s (%s)", new.id, old_id, new.filename)

    # --- reporting and running ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.policy.enabled,
            "outage_suspected": time.time() < self.outage_until,
            "broken": [
                {
                    "id": b.torrent_id,
                    "name": b.name,
                    "reason": b.reason,
                    "since": b.since,
                    "confirmed": b.confirmed,
                    "not_repaired": self.gave_up.get(b.torrent_id),
                }
                for b in self.broken.values()
            ],
            "repaired": self.repaired[-20:],
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check every ``policy.check_every`` seconds, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not take the mount down
                log.exception("repair check failed")
            await trio.sleep(self.policy.check_every)
