"""The rows the store hands out and takes in, and the fingerprints of listed torrents."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from rdfs.api.models import Torrent
from rdfs.store.values import unix_time


@dataclass(frozen=True, slots=True)
class StoredLink:
    """An unrestricted link as the data path persists it."""

    hoster_link: str
    url: str
    download_id: str
    filesize: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """A wanted row of ``entries``, addressed by stable keys instead of inode numbers."""

    key: str
    parent_key: str
    name: str
    kind: str  # "dir" | "file"
    size: int = 0
    mtime: float = 0.0
    nlink: int = 1
    torrent_id: str | None = None
    file_id: int | None = None
    download_id: str | None = None
    hoster_link: str | None = None
    link_offset: int = 0
    files_pending: bool = False

    def row(self) -> tuple[Any, ...]:
        """The fields compared to decide whether a stored entry must be rewritten."""
        return (
            self.parent_key,
            self.name,
            self.kind,
            self.size,
            self.mtime,
            self.nlink,
            self.torrent_id,
            self.file_id,
            self.download_id,
            self.hoster_link,
            self.link_offset,
            int(self.files_pending),
        )


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A stored row of ``entries``: its inode, parent inode, key and ``EntrySpec.row()`` values."""

    inode: int
    parent: int
    key: str
    row: tuple[Any, ...]

    @property
    def parent_key(self) -> str:
        return self.row[0]

    @property
    def name(self) -> str:
        return self.row[1]

    @property
    def torrent_id(self) -> str | None:
        return self.row[6]


@dataclass
class EntryDiff:
    """What turns the stored entries of one scope into the wanted ones."""

    remove: list[StoredEntry] = field(default_factory=list)
    upsert: list[EntrySpec] = field(default_factory=list)
    existing: dict[str, StoredEntry] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.remove or self.upsert)


@dataclass
class Changes:
    """What a write changed, for kernel cache invalidation."""

    entries: set[tuple[int, str]] = field(
        default_factory=set
    )  # (parent inode, name) gone or appeared
    inodes: set[int] = field(default_factory=set)  # inodes whose attributes changed
    dirs: set[int] = field(default_factory=set)  # directories whose listing changed
    # Torrents some of whose entries (in torrents/ or a view) were written: what the views redo.
    torrents: set[str] = field(default_factory=set)
    # (parent, name, inode): the inode each changed entry named, before the change (gone,
    # renamed) or after it (new). The kernel can only cache an entry it looked up, so the FUSE
    # layer skips the entries whose inodes it does not hold (a new name never needs one).
    named: set[tuple[int, str, int]] = field(default_factory=set)

    def merge(self, other: Changes) -> None:
        self.entries |= other.entries
        self.named |= other.named
        self.inodes |= other.inodes
        self.dirs |= other.dirs
        self.torrents |= other.torrents

    def __bool__(self) -> bool:
        return bool(self.entries or self.inodes or self.dirs)


@dataclass(frozen=True, slots=True)
class TorrentState:
    """The sync-relevant columns of a cached torrent."""

    id: str
    status: str
    row_key: str
    list_key: str
    info_key: str | None


class ListedTorrent(NamedTuple):
    """The columns of a torrent that name and date its directory (times in UNIX seconds)."""

    id: str
    filename: str
    status: str
    added: float | None
    ended: float | None


class ShownTorrent(NamedTuple):
    """What the library views classify a torrent of ``torrents/`` by."""

    id: str
    filename: str
    bytes: int
    added: float | None


class EntryRow(NamedTuple):
    """A row of ``entries``, with the hash and status of its torrent (for the xattrs)."""

    inode: int
    parent: int
    name: str
    kind: str  # "dir" | "file"
    size: int
    mtime: float
    nlink: int
    torrent_id: str | None
    file_id: int | None
    download_id: str | None
    hoster_link: str | None
    link_offset: int
    files_pending: int
    torrent_hash: str | None
    torrent_status: str | None


def _json(value: Any) -> str:
    """``json.dumps(value)`` for the values of a fingerprint, without building an encoder per
    call (json.dumps does, and that was most of a cold listing's fingerprint cost). The output
    must stay byte for byte json.dumps's: stored fingerprints are compared with new ones, and a
    different text would make every torrent look changed (and every file list be fetched
    again). Anything but str, None, bool, int, finite float and list goes to json.dumps."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    if type(value) is list:
        return "[" + ", ".join([_json(item) for item in value]) + "]"
    return json.dumps(value)


def _fingerprint(values: list[Any]) -> str:
    return hashlib.blake2b(_json(values).encode(), digest_size=12).hexdigest()


def list_key(torrent: Torrent) -> str:
    """Fingerprint of the listed fields whose change can change the torrent's files."""
    return _fingerprint([torrent.status, torrent.bytes, torrent.filename, list(torrent.links)])


def row_key(torrent: Torrent, listed: str | None = None) -> str:
    """Fingerprint of every listed field rdfs keeps: equal means the stored row is current.
    ``listed`` is the torrent's :func:`list_key` when the caller has it already."""
    return _fingerprint(
        [
            list_key(torrent) if listed is None else listed,
            torrent.hash,
            torrent.host,
            torrent.split,
            torrent.progress,
            unix_time(torrent.added),
            unix_time(torrent.ended),
        ]
    )
