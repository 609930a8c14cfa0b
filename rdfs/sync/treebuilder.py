"""Shapes ``torrents/`` and ``downloads/`` from what the cache holds: no API call, no publishing.

Every method returns the :class:`~rdfs.store.metadata.Changes` it made; the caller publishes them
on the change bus under its own origin (the sync, a repair, the archive indexer). Long rebuilds
yield to the loop between steps so FUSE requests (answered from SQLite) interleave.

Held directories. RD flips some torrents between ``downloaded`` and ``downloading``; a shown
torrent that turns active again (not failed) keeps its directory for ``delete_confirm_seconds``,
so a media server does not see it go and come back on every sync. The hold is persisted (sync
state ``leaving``). A failed torrent leaves at once, unless ``keep_dead`` (repair is on: a dead
torrent stays, unreadable, while a repair may bring it back).

Incremental rebuilds. A sync that changes a few torrents rebuilds the directories of those only:
``torrent_dirs(changed)`` computes the specs of the changed torrents and of every torrent whose
name could collide with theirs (a *family*: names share a prefix; found on the ``(parent, name)``
index, to a fixpoint) and diffs the stored directories of that family alone, so the work is
O(changed), not O(library). Names come out as a full rebuild would give them, because a name
depends only on the torrents whose candidate names it shares (see ``assign_names``). The ids
(and current names) about to change are persisted first (``expect``): a crash between writing a
torrent and rebuilding its directory is caught up at the next start (``behind``). A full rebuild
(``torrent_dirs()``) stays for the recovery after a failed write and for large changes.

Downloads. Every unrestrict adds an entry to RD's ``/downloads``, also those rdfs makes to read a
torrent's files: with ``own_downloads`` (the default, config ``downloads = "own"``),
``downloads/`` leaves out every download whose hoster link is a torrent's (see
:meth:`~rdfs.store.metadata.Cache.own_downloads`), so it holds the user's own hoster downloads and
does not grow with every file opened (a media server pointed at the root would index the library
twice).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Sequence

import trio

from rdfs.api.models import FAILED_STATUSES, STATUS_DOWNLOADED, TorrentInfo
from rdfs.store.metadata import (
    DOWNLOADS_INODE,
    TORRENTS_INODE,
    Cache,
    Changes,
    EntryDiff,
    ListedTorrent,
    Scope,
)
from rdfs.store.values import IN_CHUNK
from rdfs.tree.specs import download_specs, safe_name, torrent_dir_specs, torrent_file_specs

log = logging.getLogger(__name__)

PENDING_KEY = "tree_pending"  # sync state: {"ids": [...], "names": [...]} not rebuilt yet
MAX_INCREMENTAL = IN_CHUNK  # a larger family is rebuilt in full (as cheap, one diff)
# Prefixes are cut well below the 255-byte name limit: a tagged name (" [id N]") shortens its stem
# to fit, and every name of a family must still start with the family's prefix.
_PREFIX_BYTES = 200
_TAG = re.compile(r" \[[^\[\]]*\]$")


def _family_prefix(name: str) -> str:
    """What every name derived from ``name`` (plain or tagged) starts with."""
    raw = name.encode()
    if len(raw) <= _PREFIX_BYTES:
        return name
    # Cut on a character boundary, one more character off: a cut name is normalized again.
    return raw[:_PREFIX_BYTES].decode("utf-8", "ignore")[:-1]


def _after_prefix(prefix: str) -> str:
    """The least string above every string starting with ``prefix`` (code point order, which
    is SQLite's byte order on UTF-8)."""
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:
        last = 0xE000
    return prefix[:-1] + chr(last) if last <= 0x10FFFF else prefix + "\U0010ffff"


class TreeBuilder:
    """The tree mutations of the sync, shared with repair (``adopt``) and the archive indexer."""

    def __init__(
        self,
        cache: Cache,
        *,
        delete_confirm_seconds: float,
        keep_dead: bool = False,
        own_downloads: bool = True,
        batch_size: int = 500,
    ) -> None:
        self.cache = cache
        self.own_downloads = own_downloads
        self.delete_confirm_seconds = delete_confirm_seconds
        self.keep_dead = keep_dead
        self.batch_size = batch_size
        # Torrents whose shown directory is kept although their status left "downloaded":
        # id -> since when.
        self._leaving: dict[str, float] = cache.get_state("leaving", {})

    @property
    def held(self) -> int:
        """How many directories are held (see the module docstring)."""
        return len(self._leaving)

    def hold_expired(self) -> set[str]:
        """The held directories whose time ran out (their removal needs a rebuild)."""
        now = time.time()
        return {
            tid
            for tid, since in self._leaving.items()
            if now - since >= self.delete_confirm_seconds
        }

    @property
    def _statuses(self) -> tuple[str, ...]:
        return (STATUS_DOWNLOADED, "dead") if self.keep_dead else (STATUS_DOWNLOADED,)

    @property
    def behind(self) -> bool:
        """Torrents were written whose directories were not rebuilt since (a crash came between)."""
        return bool(self.cache.get_state(PENDING_KEY))

    def expect(self, torrent_ids: Collection[str]) -> None:
        """Note that these torrents are about to be written or deleted: call before the write,
        then ``torrent_dirs`` with them. Their current names are kept for the rebuild (a deleted
        torrent's name frees a name its family may take back)."""
        if not torrent_ids:
            return
        pending = self.cache.get_state(PENDING_KEY) or {"ids": [], "names": []}
        if len(pending["ids"]) + len(torrent_ids) > MAX_INCREMENTAL:
            pending = {"ids": [], "names": [], "full": True}
        else:
            pending["ids"] = sorted(set(pending["ids"]) | set(torrent_ids))
            names = self.cache.torrent_dir_names(torrent_ids).values()
            pending["names"] = sorted(set(pending["names"]) | set(names))
        self.cache.set_state(PENDING_KEY, pending)

    async def torrent_dirs(self, changed: Collection[str] | None = None) -> Changes:
        """Bring ``torrents/`` in line with the cached downloaded torrents: those ``changed``
        (and what ``expect`` noted) only, or all of them (``None``)."""
        pending = self.cache.get_state(PENDING_KEY) or {}
        family = None
        if changed is not None and not pending.get("full"):
            family = self._family(
                set(changed) | set(pending.get("ids", ())), set(pending.get("names", ()))
            )
        if family is None:
            diff = await self._diff_all()
        else:
            diff = self._diff_some(family)
        # Deleted torrents left already (with their entries): torrents/ changed all the same.
        changes = await self._apply(diff, full=family is None, left=bool(pending.get("names")))
        if pending:
            self.cache.set_state(PENDING_KEY, {})
        return changes

    async def _diff_all(self) -> EntryDiff:
        # Each step blocks the loop for a while on a big library: let FUSE requests in between.
        statuses = self._statuses
        torrents = self.cache.shown_torrents(statuses) + self._held_torrents(statuses)
        await trio.sleep(0)
        specs = torrent_dir_specs(
            torrents, self.cache.torrents_with_files(), self.cache.subdir_counts(), statuses
        )
        await trio.sleep(0)
        diff = self.cache.diff_entries(Scope.torrent_dirs(), specs)
        await trio.sleep(0)
        return diff

    def _diff_some(self, family: set[str]) -> EntryDiff:
        """The diff of ``torrents/`` restricted to the directories of ``family``."""
        statuses = self._statuses
        ids = sorted(family)
        listed = self.cache.listed_torrents(ids)
        shown = set(self.cache.torrent_dir_names(ids))
        torrents = [t for t in listed if t.status in statuses]
        torrents += self._held(
            [t for t in listed if t.id in shown and t.status not in statuses], statuses, family
        )
        specs = torrent_dir_specs(
            torrents,
            self.cache.torrents_with_files_among(ids),
            self.cache.subdir_counts_of(ids),
            statuses,
        )
        return self.cache.diff_entries(Scope.torrent_dirs_of(ids), specs)

    def _family(self, changed: set[str], gone_names: set[str]) -> set[str] | None:
        """``changed`` and every shown torrent whose name may depend on theirs (see the module
        docstring); None when that is too many for an incremental rebuild."""
        family: set[str] = set()
        prefixes = {_family_prefix(_TAG.sub("", name)) for name in gone_names}
        searched: set[str] = set()
        new = changed
        while new:
            family |= new
            if len(family) > MAX_INCREMENTAL:
                return None
            for torrent in self.cache.listed_torrents(new):
                prefixes.add(
                    _family_prefix(safe_name(torrent.filename, is_dir=True, fallback=torrent.id))
                )
            for name in self.cache.torrent_dir_names(new).values():
                prefixes.add(_family_prefix(_TAG.sub("", name)))
            new = set()
            for prefix in prefixes - searched:
                searched.add(prefix)
                if not prefix:
                    return None
                for tid, _name in self.cache.torrent_dirs_named(prefix, _after_prefix(prefix)):
                    if tid not in family:
                        new.add(tid)
        return family

    async def _apply(self, diff: EntryDiff, *, full: bool, left: bool) -> Changes:
        """Write ``diff``. The store keeps the nlink of ``torrents/`` in step with its children
        (O(changed)); a ``full`` rebuild recounts them all the same, to heal a count gone wrong.
        Its mtime moves with a diff, or when torrents ``left`` before it (deleted upstream)."""
        changes = Changes()
        for step in self.cache.diff_batches(diff, self.batch_size):
            changes.merge(step)
            await trio.sleep(0)
        # A torrent shown again (e.g. back to downloaded) gets its cached files back at once.
        for spec in diff.upsert:
            if spec.key not in diff.existing and not spec.files_pending and spec.torrent_id:
                changes.merge(self.cached_files(spec.torrent_id))
        if full and self.cache.recount_dirs(TORRENTS_INODE):
            log.warning("torrents/: link count corrected")
            changes.inodes.add(TORRENTS_INODE)
        if diff or left:
            self.cache.touch_dir(TORRENTS_INODE, time.time())
            changes.inodes.add(TORRENTS_INODE)
        if diff:
            log.info(
                "torrents/: %d added or changed, %d removed", len(diff.upsert), len(diff.remove)
            )
        return changes

    async def downloads(self) -> Changes:
        """Bring ``downloads/`` in line with the cached downloads (see "Downloads" above)."""
        shown = self.cache.own_downloads() if self.own_downloads else self.cache.downloads()
        await trio.sleep(0)
        diff = self.cache.diff_entries(Scope.downloads(), download_specs(shown))
        changes = Changes()
        for step in self.cache.diff_batches(diff, self.batch_size):
            changes.merge(step)
            await trio.sleep(0)
        if diff:
            self.cache.refresh_dir(DOWNLOADS_INODE, time.time())
            changes.inodes.add(DOWNLOADS_INODE)
        return changes

    def store_info(self, info: TorrentInfo) -> Changes:
        """Store a torrent's file list and build its subtree."""
        specs = torrent_file_specs(
            info, self.cache.link_sizes(info.links), self.cache.archive_members(info.links)
        )
        return self.cache.store_info(info, specs)

    def cached_files(self, torrent_id: str) -> Changes:
        """Rebuild a torrent's subtree from its cached file list (e.g. after its archive was
        indexed); nothing when the list is not cached."""
        info = self.cache.files_of(torrent_id)
        return self.store_info(info) if info is not None else Changes()

    async def adopt(self, info: TorrentInfo) -> Changes:
        """Store and show a torrent obtained elsewhere (a repair's replacement)."""
        changes = self.store_info(info)
        changes.merge(await self.torrent_dirs({info.id}))
        return changes

    def _held_torrents(self, statuses: Sequence[str]) -> list[ListedTorrent]:
        """Shown torrents now active again (not failed), while their hold lasts."""
        leaving = self.cache.listed_torrents(self.cache.shown_torrent_ids())
        return self._held(leaving, statuses, None)

    def _held(
        self,
        leaving: Sequence[ListedTorrent],
        statuses: Sequence[str],
        among: Collection[str] | None,
    ) -> list[ListedTorrent]:
        """Which of the shown torrents ``leaving`` stay held; the holds of the torrents
        ``among`` (all with None) that are not held any more end."""
        now = time.time()
        before = dict(self._leaving)
        held: list[ListedTorrent] = []
        for torrent in leaving:
            if torrent.status in statuses or torrent.status in FAILED_STATUSES:
                continue  # a failed torrent is unreadable: it leaves at once (unless kept dead)
            since = self._leaving.setdefault(torrent.id, now)
            if now - since < self.delete_confirm_seconds:
                held.append(torrent._replace(status=statuses[0]))
                if torrent.id not in before:
                    log.info(
                        "torrent %s (%s) is %s now: its directory stays for %g minutes",
                        torrent.id,
                        torrent.filename,
                        torrent.status,
                        self.delete_confirm_seconds / 60,
                    )
        kept = {t.id for t in held}
        self._leaving = {
            tid: since
            for tid, since in self._leaving.items()
            if tid in kept or (among is not None and tid not in among)
        }
        if self._leaving != before:
            self.cache.set_state("leaving", self._leaving)
        return held
