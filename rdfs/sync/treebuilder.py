"""Shapes ``torrents/`` and ``downloads/`` from what the cache holds: no API call, no publishing.

Every method returns the :class:`~rdfs.store.metadata.Changes` it made; the caller publishes them
on the change bus under its own origin (the sync, a repair, the archive indexer). Long rebuilds
yield to the loop between steps so FUSE requests (answered from SQLite) interleave.

Held directories. RD flips some torrents between ``downloaded`` and ``downloading``; a shown
torrent that turns active again (not failed) keeps its directory for ``delete_confirm_seconds``,
so a media server does not see it go and come back on every sync. The hold is persisted (sync
state ``leaving``). A failed torrent leaves at once, unless ``keep_dead`` (repair is on: a dead
torrent stays, unreadable, while a repair may bring it back).

Downloads. Every unrestrict adds an entry to RD's ``/downloads``, also those rdfs makes to read a
torrent's files: with ``own_downloads`` (the default, config ``downloads = "own"``),
``downloads/`` leaves out every download whose hoster link is a torrent's (see
:meth:`~rdfs.store.metadata.Cache.own_downloads`), so it holds the user's own hoster downloads and
does not grow with every file opened (a media server pointed at the root would index the library
twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio

from rdfs.api.models import FAILED_STATUSES, STATUS_DOWNLOADED, TorrentInfo
from rdfs.store.metadata import (
    DOWNLOADS_INODE,
    TORRENTS_INODE,
    Cache,
    Changes,
    ListedTorrent,
    Scope,
)
from rdfs.tree.specs import download_specs, torrent_dir_specs, torrent_file_specs

log = logging.getLogger(__name__)


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

    def hold_expired(self) -> bool:
        """Whether a held directory's time ran out (its removal needs a rebuild)."""
        now = time.time()
        return any(now - since >= self.delete_confirm_seconds for since in self._leaving.values())

    async def torrent_dirs(self) -> Changes:
        """Bring ``torrents/`` in line with the cached downloaded torrents."""
        # Each step blocks the loop for a while on a big library: let FUSE requests in between.
        statuses = (STATUS_DOWNLOADED, "dead") if self.keep_dead else (STATUS_DOWNLOADED,)
        torrents = self.cache.shown_torrents(statuses) + self._held_torrents(statuses)
        await trio.sleep(0)
        specs = torrent_dir_specs(
            torrents, self.cache.torrents_with_files(), self.cache.subdir_counts(), statuses
        )
        await trio.sleep(0)
        diff = self.cache.diff_entries(Scope.torrent_dirs(), specs)
        await trio.sleep(0)
        changes = Changes()
        if not diff:
            return changes
        for step in self.cache.diff_batches(diff, self.batch_size):
            changes.merge(step)
            await trio.sleep(0)
        # A torrent shown again (e.g. back to downloaded) gets its cached files back at once.
        for spec in diff.upsert:
            if spec.key not in diff.existing and not spec.files_pending and spec.torrent_id:
                changes.merge(self.cached_files(spec.torrent_id))
        self.cache.refresh_dir(TORRENTS_INODE, time.time())
        changes.inodes.add(TORRENTS_INODE)
        log.info("torrents/: %d added or changed, %d removed", len(diff.upsert), len(diff.remove))
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
        changes.merge(await self.torrent_dirs())
        return changes

    def _held_torrents(self, statuses: Sequence[str]) -> list[ListedTorrent]:
        """Shown torrents now active again (not failed), while their hold lasts."""
        now = time.time()
        leaving = self.cache.listed_torrents(self.cache.shown_torrent_ids())
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
        self._leaving = {tid: since for tid, since in self._leaving.items() if tid in kept}
        if self._leaving != before:
            self.cache.set_state("leaving", self._leaving)
        return held
