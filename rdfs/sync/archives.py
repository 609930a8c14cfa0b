"""Lists the members of the RAR archives RD packed torrents into, so stored members show as files.

For each downloaded torrent with one link and several selected files (one archive), the indexer
reads the archive's headers through the reader pool (one unrestrict, a small ranged read per
member; the blocks land in the probe cache like any other), stores the member list in the cache,
rebuilds the torrent's subtree (:func:`rdfs.tree.specs.torrent_file_specs` adds the stored
members) and publishes the change (origin ``archives``). An archive that cannot be listed (RAR4,
encrypted headers, not a RAR) is recorded with its reason and keeps only its ``.rar`` file; a
transient failure (network, rate limit) is retried later with a growing pause.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import trio

from rdfs.api.errors import RDError
from rdfs.data import rar
from rdfs.data.links import LinkGone, LinkResolver
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.events import ChangeBus
from rdfs.store.metadata import Cache, CacheError
from rdfs.sync.treebuilder import TreeBuilder

log = logging.getLogger(__name__)

MAX_RETRY_PAUSE = 600.0


class ArchiveIndexer:
    def __init__(
        self,
        cache: Cache,
        readers: ReaderPool,
        resolver: LinkResolver,
        tree: TreeBuilder,
        bus: ChangeBus,
        *,
        interval: float = 15.0,
    ) -> None:
        self.cache = cache
        self.readers = readers
        self.resolver = resolver
        self.tree = tree
        self.bus = bus
        self.interval = interval
        self._retry_at: dict[str, tuple[float, int]] = {}  # link -> (monotonic time, failures)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Index new archives every ``interval`` seconds, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.index_pending()
            except CacheError as exc:  # rolled back whole: indexed again on the next round
                log.info("archive index: %s", exc)  # (the cache logged its state change once)
            await trio.sleep(self.interval)

    async def index_pending(self) -> int:
        """Index every archive not indexed yet (skipping those waiting for a retry); returns how
        many."""
        done = 0
        now = time.monotonic()
        for torrent_id, link in self.cache.archives_to_index():
            retry = self._retry_at.get(link)
            if retry is not None and retry[0] > now:
                continue
            if await self.index(torrent_id, link):
                done += 1
        return done

    async def index(self, torrent_id: str, hoster_link: str) -> bool:
        """List one archive's members and show them; False when it must be tried again later."""
        try:
            resolved = await self.resolver.resolve(hoster_link)
            source = FileSource(
                key=f"archive:{hoster_link}",
                hoster_link=hoster_link,
                size=resolved.filesize,
                name=f"{torrent_id}.rar",
            )
            handle = self.readers.open(source)
            try:
                members = await rar.list_members(handle.read, resolved.filesize)
            finally:
                await handle.close()
        except (rar.RarError, LinkGone) as exc:
            log.info("archive of torrent %s: members not listed (%s)", torrent_id, exc)
            self.cache.put_archive(hoster_link, None, str(exc))
            return True
        except RDError as exc:
            failures = self._retry_at.get(hoster_link, (0.0, 0))[1] + 1
            pause = min(MAX_RETRY_PAUSE, self.interval * 2.0**failures)
            self._retry_at[hoster_link] = (time.monotonic() + pause, failures)
            log.warning("archive of torrent %s: %s (again in %.0f s)", torrent_id, exc, pause)
            return False
        self._retry_at.pop(hoster_link, None)
        self.cache.put_archive(hoster_link, [dataclasses.asdict(m) for m in members])
        stored = sum(1 for m in members if m.stored and not m.is_dir)
        log.info(
            "archive of torrent %s: %d members, %d stored (shown as files)",
            torrent_id,
            len(members),
            stored,
        )
        self.bus.publish(self.tree.cached_files(torrent_id), "archives")
        return True
