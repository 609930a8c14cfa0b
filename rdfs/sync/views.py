"""Library views: directories beside ``torrents/`` that group torrents for media servers.

Each view is a top-level directory (``movies/``, ``shows/`` …) holding, for every torrent it
matches, a copy of the torrent's directory from ``torrents/`` (same names, own inodes, stable
across restarts), without junk: samples and ``.txt``/``.nfo``/``.exe``… files are hidden by
default, and a packed torrent whose archive members are shown loses its ``.rar``.

Views belong to *groups*; within a group the views are tried in order and a torrent lands in
the first that matches, so each torrent is in at most one view per group (exactly one when the
group ends with a view without rules, as the default ``movies`` does). A view's rules must all
hold: ``name`` (regex on the torrent name), ``file`` (regex matching at least one file name),
``min_size_gb`` / ``max_size_gb`` (the torrent's selected bytes), ``has_episodes`` (SxxEyy,
1x02, "Season 2", "S02" in a name), ``added_within_days``.

Configured in the ``[views]`` table of ``config.toml`` (docs/LIBRARY.md has an example);
without one, the group ``library`` holds ``shows`` (has_episodes) then ``movies`` (the rest).

Incremental. A torrent's place in the views depends on that torrent alone, so the views follow
the bus: every change names the torrents whose entries it wrote, and ``update`` recomputes the
copies of those torrents only (O(changed)). A full recompute (``refresh``) runs when the stored
views are not known to be current (first start, a changed configuration, a crash between a change
and its update), for a large batch of changes, and every ``interval`` when a rule depends on time
alone (``added_within_days``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from rdfs.config import read_table
from rdfs.events import UPLOAD_GONE, ChangeBus, TreeChange
from rdfs.store import keys
from rdfs.store.metadata import (
    ROOT_INODE,
    Cache,
    CacheError,
    Changes,
    EntryDiff,
    EntrySpec,
    Scope,
    ShownTorrent,
)
from rdfs.store.values import IN_CHUNK
from rdfs.tree.specs import safe_name

log = logging.getLogger(__name__)

GiB = 1024**3
DEFAULT_JUNK = (
    r"(?i)(^|[^a-z0-9])sample([^a-z0-9]|$)",
    r"(?i)\.(txt|nfo|exe|com|bat|scr|lnk|url|sfv|md5|sha1|nzb|par2|ini|db|dat|log|html?|torrent)$",
)
_EPISODES = re.compile(
    r"(?i)(\bS\d{1,2}[ ._-]?E\d{1,3}\b|\b\d{1,2}x\d{2,3}\b|\bseason[ ._-]?\d{1,2}\b|\bS\d{1,2}\b|"
    r"\bcomplete[ ._-]series\b|\bepisode[ ._-]?\d{1,3}\b)"
)
_RESERVED = {"torrents", "downloads", ".rdfs"}
VIEWS_CURRENT_KEY = (
    "views_current"  # cache meta: fingerprint of the config the views are current with
)


class ViewsError(Exception):
    """The ``[views]`` configuration is invalid; the message is one line for the user."""


@dataclass(frozen=True)
class View:
    path: str  # directory name at the top of the mount
    group: str = "library"
    name: re.Pattern[str] | None = None
    file: re.Pattern[str] | None = None
    min_size: int | None = None
    max_size: int | None = None
    has_episodes: bool | None = None
    added_within: float | None = None  # seconds

    def matches(self, torrent: TorrentFacts, now: float) -> bool:
        if self.name is not None and not self.name.search(torrent.name):
            return False
        if self.file is not None and not any(self.file.search(f) for f in torrent.files):
            return False
        if self.min_size is not None and torrent.size < self.min_size:
            return False
        if self.max_size is not None and torrent.size > self.max_size:
            return False
        if self.has_episodes is not None and has_episodes(torrent) != self.has_episodes:
            return False
        if self.added_within is not None and (
            torrent.added is None or now - torrent.added > self.added_within
        ):
            return False
        return True


@dataclass(frozen=True)
class ViewsConfig:
    views: tuple[View, ...] = ()
    junk: tuple[re.Pattern[str], ...] = ()  # empty: nothing hidden

    def groups(self) -> dict[str, list[View]]:
        grouped: dict[str, list[View]] = defaultdict(list)
        for view in self.views:
            grouped[view.group].append(view)
        return grouped


DEFAULT_VIEWS = ViewsConfig(
    views=(View("shows", has_episodes=True), View("movies")),
    junk=tuple(re.compile(p) for p in DEFAULT_JUNK),
)


@dataclass(frozen=True)
class TorrentFacts:
    """What the rules look at."""

    id: str
    name: str
    size: int
    added: float | None
    files: tuple[str, ...]  # file names (not paths)


def has_episodes(torrent: TorrentFacts) -> bool:
    """The default show classifier: an episode or season marker in the torrent or a file name."""
    return bool(_EPISODES.search(torrent.name.replace("_", " "))) or any(
        _EPISODES.search(name.replace("_", " ")) for name in torrent.files
    )


def _regex(table: dict[str, Any], key: str) -> re.Pattern[str] | None:
    value = table.get(key)
    if value is None:
        return None
    try:
        return re.compile(str(value))
    except re.error as exc:
        raise ViewsError(f"views: invalid {key} regex {value!r}: {exc}") from None


def _number(table: dict[str, Any], key: str, scale: float) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ViewsError(f"views: {key} must be a number, got {value!r}")
    return value * scale


_VIEW_KEYS = {
    "path",
    "group",
    "name",
    "file",
    "min_size_gb",
    "max_size_gb",
    "has_episodes",
    "added_within_days",
}


def parse_views(table: dict[str, Any]) -> ViewsConfig:
    """The ``[views]`` table of config.toml (see the module doc)."""
    if not table.get("enabled", True):
        return ViewsConfig()
    junk_patterns = table.get("junk", list(DEFAULT_JUNK)) if table.get("hide_junk", True) else []
    try:
        junk = tuple(re.compile(p) for p in junk_patterns)
    except (re.error, TypeError) as exc:
        raise ViewsError(f"views: invalid junk pattern: {exc}") from None
    dirs = table.get("dir")
    if dirs is None:
        return replace(DEFAULT_VIEWS, junk=junk)
    views = []
    seen: set[str] = set()
    for entry in dirs:
        unknown = set(entry) - _VIEW_KEYS
        if unknown:
            raise ViewsError(f"views: unknown key(s) {', '.join(sorted(unknown))} in [[views.dir]]")
        path = safe_name(str(entry.get("path", "")), is_dir=True)
        if not entry.get("path") or path in _RESERVED or path in seen:
            raise ViewsError(f"views: bad or duplicate view path {entry.get('path')!r}")
        seen.add(path)
        episodes = entry.get("has_episodes")
        views.append(
            View(
                path=path,
                group=str(entry.get("group", "library")),
                name=_regex(entry, "name"),
                file=_regex(entry, "file"),
                min_size=_number(entry, "min_size_gb", GiB),
                max_size=_number(entry, "max_size_gb", GiB),
                has_episodes=None if episodes is None else bool(episodes),
                added_within=_number(entry, "added_within_days", 86400.0),
            )
        )
    return ViewsConfig(views=tuple(views), junk=junk)


def load_views(path: Path | None) -> ViewsConfig:
    """The views configured in ``path`` (config.toml); the defaults when it has no ``[views]``."""
    table = read_table(path, "views")
    return DEFAULT_VIEWS if table is None else parse_views(table)


def classify(config: ViewsConfig, torrent: TorrentFacts, now: float) -> list[View]:
    """The views showing ``torrent``: the first match of each group."""
    chosen = []
    for views in config.groups().values():
        match = next((view for view in views if view.matches(torrent, now)), None)
        if match is not None:
            chosen.append(match)
    return chosen


def view_specs(
    config: ViewsConfig, torrents: Iterable[TorrentFacts], entries: Sequence[EntrySpec], now: float
) -> list[EntrySpec]:
    """Every entry of every view: the view directories, and the filtered copies of torrent subtrees.

    ``entries``: the ``torrents/`` entries (:meth:`Cache.torrent_entries`). Pure: no I/O.
    """
    specs = [
        EntrySpec(key=keys.view_dir(v.path), parent_key=keys.ROOT, name=v.path, kind="dir", nlink=2)
        for v in config.views
    ]
    by_torrent: dict[str, list[EntrySpec]] = defaultdict(list)
    for entry in entries:
        by_torrent[entry.torrent_id or ""].append(entry)
    subdirs: dict[str, int] = defaultdict(int)
    for torrent in torrents:
        subtree = by_torrent.get(torrent.id)
        if not subtree:
            continue
        kept = _without_junk(config, subtree)
        for view in classify(config, torrent, now):
            top = keys.view_dir(view.path)
            for entry in kept:
                at_top = keys.is_torrent_dir(entry.key)
                specs.append(
                    replace(
                        entry,
                        key=keys.view_copy(view.path, entry.key),
                        parent_key=top if at_top else keys.view_copy(view.path, entry.parent_key),
                    )
                )
                if at_top:
                    subdirs[top] += 1
    return [replace(s, nlink=2 + subdirs[s.key]) if s.key in subdirs else s for s in specs]


def _without_junk(config: ViewsConfig, subtree: Sequence[EntrySpec]) -> list[EntrySpec]:
    """A torrent's entries minus junk files, a shown archive's ``.rar`` and emptied directories."""
    has_members = any(keys.is_archive_member(e.key) for e in subtree)

    def junk(entry: EntrySpec) -> bool:
        if has_members and keys.is_rar_volume(entry.key):
            return True
        return any(p.search(entry.name) for p in config.junk)

    files = [e for e in subtree if e.kind == "file" and not junk(e)]
    dirs = {e.key: e for e in subtree if e.kind == "dir"}
    needed: set[str] = set()
    for entry in files:
        parent = entry.parent_key
        while parent in dirs and parent not in needed:
            needed.add(parent)
            parent = dirs[parent].parent_key
    # The torrent directory stays (a pending one has no files yet); a junk-named subdirectory goes.
    kept_dirs = [
        d
        for d in dirs.values()
        if keys.is_torrent_dir(d.key)
        or (d.key in needed and not any(p.search(d.name) for p in config.junk))
    ]
    kept_keys = {d.key for d in kept_dirs}
    files = [f for f in files if f.parent_key in kept_keys]
    # A directory's nlink counts the subdirectories that stay.
    sub_count: dict[str, int] = defaultdict(int)
    for d in kept_dirs:
        sub_count[d.parent_key] += 1
    return [replace(d, nlink=2 + sub_count[d.key]) for d in kept_dirs] + files


class Views:
    """Keeps the view directories in step with ``torrents/``: ``refresh()`` after a change."""

    def __init__(
        self,
        cache: Cache,
        config: ViewsConfig,
        bus: ChangeBus | None = None,
        *,
        settle: float = 0.2,
        interval: float = 3600.0,
    ) -> None:
        self.cache = cache
        self.settle = settle  # seconds of quiet after a change before an update
        self.interval = interval  # seconds between timed refreshes (``added_within_days``)
        self.config = config
        self.bus = bus
        self._dirty = trio.Event()
        # Which configuration the view entries stored in the cache were computed with; cleared
        # while torrents/ has changes the views have not caught up with. A warm mount whose views
        # are current skips the first recompute, which blocks the loop for seconds at 20,000
        # torrents, so the tree is visible at once.
        self._fingerprint = hashlib.sha1(repr(config).encode()).hexdigest()
        # The torrents whose copies are to be recomputed; None: every torrent (a full refresh).
        self._pending: set[str] | None = set() if self.current else None
        self._timed = any(view.added_within is not None for view in config.views)

    def mark_dirty(self, change: TreeChange | None = None) -> None:
        """Torrents changed in ``torrents/`` (all of them with None): update soon (coalescing
        bursts). A subscriber of the bus."""
        if change is None:
            self._pending = None
        elif change.origin in ("views", UPLOAD_GONE) or not change.torrents:
            return  # nothing a view shows moved (downloads/, .rdfs/, the views themselves)
        elif self._pending is not None:
            self._pending.update(change.torrents)
        if not self._dirty.is_set():
            self.cache.set_meta(VIEWS_CURRENT_KEY, "")
        self._dirty.set()

    @property
    def current(self) -> bool:
        """The stored views match ``torrents/`` and this configuration."""
        return self.cache.get_meta(VIEWS_CURRENT_KEY) == self._fingerprint

    def update(self) -> Changes:
        """Recompute the copies of the torrents changed since the last update (everything when
        that is unknown or many), in one transaction (no await inside)."""
        pending = self._pending
        if pending is None or len(pending) > IN_CHUNK:
            return self.refresh()
        self._pending = set()
        if not pending:
            return Changes()
        diff = self._copies_diff(sorted(pending))
        # (The store keeps each view directory's nlink in step with its children.)
        changes = self.cache.apply_diff(diff) if diff else Changes()
        self.cache.set_meta(VIEWS_CURRENT_KEY, self._fingerprint)
        if not changes:
            return changes
        return self._published(changes, len(diff.upsert), len(diff.remove))

    def _copies_diff(self, ids: Sequence[str]) -> EntryDiff:
        """The diff of the view copies of these torrents (at most ``IN_CHUNK``)."""
        entries = self.cache.torrent_entries(ids)
        facts = self._facts(entries, self.cache.shown_torrent_facts_of(ids))
        specs = view_specs(self.config, facts, entries, time.time())
        return self.cache.diff_entries(
            Scope.view_copies_of(ids), [s for s in specs if not keys.is_view_dir(s.key)]
        )

    def _recount(self, changes: Changes) -> None:
        """Count the torrents of each view directory again (its nlink): the store keeps it in
        step at every write, a full recompute heals a count gone wrong all the same."""
        for view in self.config.views:
            inode = self.cache.inode_for(keys.view_dir(view.path))
            if self.cache.recount_dirs(inode):
                log.warning("views: link count of %s/ corrected", view.path)
                changes.inodes.add(inode)

    async def rebuild(self) -> None:
        """The full recompute of ``refresh`` for the running mount, in steps: the view
        directories, then the copies of a chunk of torrents at a time (one transaction each,
        published as it is written), then the directories no longer configured.

        At 100,000 torrents the one-shot ``refresh`` blocked the loop for ~20 s at the start of a
        mount whose views were not current, and held every entry of the library at once; here a
        step holds one chunk's entries, and the loop is free at least four fifths of the time in
        between (a media server walking ``torrents/`` meanwhile is answered).
        """
        self._pending = set()
        try:
            await self._rebuild()
        except BaseException:
            self._pending = None  # not known to be current: everything again next time
            raise

    async def _rebuild(self) -> None:
        stored = self.cache.diff_entries(Scope.view_dirs(), []).existing
        wanted = {keys.view_dir(v.path): v.path for v in self.config.views}
        dirs = EntryDiff(
            upsert=[
                EntrySpec(key=key, parent_key=keys.ROOT, name=name, kind="dir", nlink=2)
                for key, name in wanted.items()
                if key not in stored
            ],
            existing=stored,
        )
        if dirs:
            self._write(self.cache.apply_diff(dirs))
        shown = self.cache.shown_torrent_ids()
        ids = sorted(shown) + sorted(self.cache.view_copy_torrent_ids() - shown)
        upserted = removed = 0
        for start in range(0, len(ids), IN_CHUNK):
            began = trio.current_time()
            diff = self._copies_diff(ids[start : start + IN_CHUNK])
            if diff:
                self._write(self.cache.apply_diff(diff))
                upserted, removed = upserted + len(diff.upsert), removed + len(diff.remove)
            await trio.sleep(4 * (trio.current_time() - began))
        gone = EntryDiff(remove=[e for k, e in stored.items() if k not in wanted], existing=stored)
        changes = self.cache.apply_diff(gone) if gone else Changes()
        self._recount(changes)
        if dirs or gone:
            self.cache.refresh_dir(ROOT_INODE)
            changes.inodes.add(ROOT_INODE)
        if self._pending == set():  # nothing changed meanwhile: the stored views are current
            self.cache.set_meta(VIEWS_CURRENT_KEY, self._fingerprint)
        self._write(changes)
        if upserted or removed or dirs or gone:
            log.info("views: %d entries added or changed, %d removed", upserted, removed)

    def _write(self, changes: Changes) -> None:
        """Publish what a step of ``rebuild`` wrote."""
        if changes and self.bus is not None:
            self.bus.publish(changes, "views")

    def refresh(self) -> Changes:
        """Recompute every view and apply the difference in one transaction (no await inside)."""
        self._pending = set()
        entries = self.cache.torrent_entries()
        facts = self._facts(entries, self.cache.shown_torrent_facts())
        specs = view_specs(self.config, facts, entries, time.time())
        diff = self.cache.diff_entries(Scope.views(), specs)
        if not diff:
            self.cache.set_meta(VIEWS_CURRENT_KEY, self._fingerprint)
            return Changes()
        changes = self.cache.apply_diff(diff)
        if any(keys.is_view_dir(e.key) for e in diff.remove) or any(
            keys.is_view_dir(s.key) and s.key not in diff.existing for s in diff.upsert
        ):
            self.cache.refresh_dir(ROOT_INODE)
            changes.inodes.add(ROOT_INODE)
        self.cache.set_meta(VIEWS_CURRENT_KEY, self._fingerprint)
        return self._published(changes, len(diff.upsert), len(diff.remove))

    def _published(self, changes: Changes, upserted: int, removed: int) -> Changes:
        log.info("views: %d entries added or changed, %d removed", upserted, removed)
        if self.bus is not None:
            self.bus.publish(changes, "views")
        return changes

    @staticmethod
    def _facts(entries: Sequence[EntrySpec], shown: Iterable[ShownTorrent]) -> list[TorrentFacts]:
        names: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.kind == "file" and entry.torrent_id:
                names[entry.torrent_id].append(entry.name)
        return [
            TorrentFacts(tid, name, size, added, tuple(names.get(tid, ())))
            for tid, name, size, added in shown
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh after changes (once they settle for ``settle`` s) and every ``interval`` s
        (rules like ``added_within_days`` change with time alone).

        An update blocks the loop while it runs (a few statements per changed torrent); during a
        big first sync, updates are spaced to take at most a fifth of the time. A full recompute
        (views not current, or many changes) is ``rebuild``: in steps, spaced the same way.
        """
        task_status.started()
        settle, interval = self.settle, self.interval
        if self.current and not self._dirty.is_set():
            await self._wait(interval)
            await trio.sleep(settle)
            self._dirty = trio.Event()
        while True:
            took = 0.0
            try:
                if self._pending is None or len(self._pending) > IN_CHUNK:
                    await self.rebuild()  # spaces its own steps
                else:
                    started = trio.current_time()
                    self.update()
                    took = trio.current_time() - started
            except CacheError as exc:  # rolled back whole; the next refresh redoes it
                log.warning("views refresh failed: %s", exc)
            except Exception:  # a bug here must not take the mount down; torrents/ still works
                log.exception("views refresh failed")
            await self._wait(interval)
            await trio.sleep(max(settle, 4 * took))
            self._dirty = trio.Event()

    async def _wait(self, interval: float) -> None:
        """Until a change, or ``interval`` (then a full refresh if time alone moves torrents)."""
        with trio.move_on_after(interval):
            await self._dirty.wait()
            return
        if self._timed:
            self._pending = None
