"""The mount's change bus and status board: how components hear of each other without wiring.

Both are built once, in the composition root (``rdfs.fuse.mount._serve``), and handed to the
constructors of the components that use them; nothing is attached to a component afterwards.
This module imports nothing else from rdfs: every layer may use it.

* :class:`ChangeBus`: publishers (the sync, the control files, repair, the archive indexer, the
  views) publish what they changed in the tree; subscribers (the FUSE invalidator, the views, the
  library update hook) are called with a :class:`TreeChange`.
* :class:`StatusBoard`: each component registers the section of ``.rdfs/status`` it reports.

Atomicity. Everything runs on the one trio loop, so code between two ``await`` is atomic: a
publish calls every subscriber synchronously, before the publisher's next ``await``. Subscribers
must therefore be quick and must not await (they note the change and wake a task of their own,
as the views and the hook do); a publisher may rely on every subscriber having seen its change
when ``publish`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass
class TreeChange:
    """What one step changed in the tree, for the kernel's caches and the listeners."""

    entries: list[tuple[int, str]]  # (parent inode, name) that appeared, vanished or was renamed
    inodes: list[int]  # inodes whose attributes changed
    paths: list[str]  # directories (relative to the mountpoint) whose listing changed
    dirs: list[int] = field(default_factory=list)  # the inodes of those directories
    origin: str = "sync"  # what made it: "sync", "control", "views", "repair", UPLOAD_GONE, ...
    torrents: list[str] = field(default_factory=list)  # torrents whose entries were written
    # (parent, name, inode): which inode a changed entry named (see ``Changes.named``); an entry
    # missing here may name anything.
    named: list[tuple[int, str, int]] = field(default_factory=list)


class ChangeSet(Protocol):
    """What a publisher hands over: ``rdfs.store.metadata.Changes`` is one."""

    entries: set[tuple[int, str]]  # (parent inode, name) gone or appeared
    inodes: set[int]  # inodes whose attributes changed
    dirs: set[int]  # directories whose listing changed
    torrents: set[str]  # torrents whose entries were written (the views redo only those)
    named: set[tuple[int, str, int]]  # (parent, name, inode) the changed entries named

    def __bool__(self) -> bool: ...


# The origin of an upload's name leaving ``.rdfs/``: only the kernel's entry matters, nothing a
# view or a media server shows moved.
UPLOAD_GONE = "upload"

Subscriber = Callable[[TreeChange], None]
PathOf = Callable[[int], "str | None"]  # inode -> path relative to the mountpoint, None if unknown


class ChangeBus:
    """Synchronous fan-out of tree changes (see the module docstring for the atomicity rule).

    A subscriber that raises is logged and skipped; the others and the publisher go on."""

    def __init__(self, path_of: PathOf) -> None:
        """``path_of`` names the changed directories (``Namespace.path``)."""
        self._path_of = path_of
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` with every later change, in the order of subscription."""
        self._subscribers.append(callback)

    def publish(self, changes: ChangeSet, origin: str) -> None:
        """Tell every subscriber what ``changes`` holds; nothing when it is empty."""
        if not changes or not self._subscribers:
            return
        paths = (self._path_of(inode) for inode in changes.dirs)
        change = TreeChange(
            entries=sorted(changes.entries),
            inodes=sorted(changes.inodes | changes.dirs),
            paths=sorted(p for p in paths if p is not None),
            dirs=sorted(changes.dirs),
            origin=origin,
            torrents=sorted(changes.torrents),
            named=sorted(changes.named),
        )
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("subscriber %r failed on a change from %s", callback, origin)


Report = Callable[[], Any]
TOP_LEVEL = ""  # the section whose keys are the top level of the status (the sync's)


class StatusBoard:
    """The sections of ``.rdfs/status``: each component registers the one it reports.

    The section registered as :data:`TOP_LEVEL` is merged into the top level (the sync's fields
    have always been there); every other one is a key of its own."""

    def __init__(self) -> None:
        self._sections: dict[str, Report] = {}

    def register(self, section: str, report: Report) -> None:
        """Show ``report()`` as ``section``; a section has one reporter (registering twice is a
        bug: two components would claim the same key)."""
        if section in self._sections:
            raise ValueError(f"status section {section!r} is registered already")
        self._sections[section] = report

    def snapshot(self) -> dict[str, Any]:
        """Every section now."""
        status: dict[str, Any] = {}
        for section, report in self._sections.items():
            value = report()
            if section == TOP_LEVEL:
                status.update(value)
            else:
                status[section] = value
        return status
