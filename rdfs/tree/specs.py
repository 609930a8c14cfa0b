"""The namespace of the mount: safe names, the entries sync materializes, and fast reads of them.

Two halves:

* Pure building functions (no I/O) that turn RD records into :class:`~rdfs.store.metadata.EntrySpec`
  rows: :func:`torrent_dir_specs`, :func:`torrent_file_specs`, :func:`download_specs`. The
  result depends only on the records, never on the order they arrived in, so the same account
  always gives the same tree.
* :class:`Namespace`, the read side used by the FUSE adapter: every call is one indexed query.

Naming rules (a public interface):

* Names are Unicode NFC; ``/`` becomes ``∕`` (U+2215); NUL, other control characters and lone
  surrogates are dropped; ``.`` and ``..`` become ``．`` / ``．．`` (U+FF0E); an empty name becomes
  ``_`` (a torrent without a name uses its id).
* At most 255 bytes of UTF-8, cut on a character boundary, keeping a file's extension.
* Collisions in one directory: the first in a fixed order keeps the plain name, the others get
  `` [<tag>]`` before the extension (files) or at the end (directories). Torrent directories are
  ordered by (added, id) and tagged with the torrent id; files inside a torrent by file id and
  tagged with it (directories inside a torrent win over files); downloads by (generated, id) and
  tagged with the download id.
* ``torrents/<name>/`` holds the selected files at their paths. When a torrent has fewer links
  than selected files, RD packed it into RAR volumes: the directory then holds one file per
  link, ``<torrent name>.rar`` or ``<torrent name>.partN.rar``, whose size is exact once the
  link was unrestricted (until then a single volume shows the torrent's size, several show 0).
  For a single-volume RAR5 archive, once its headers were read (:mod:`rdfs.sync.archives`), every
  member stored without compression also appears at its path, as a regular file that reads its
  byte range of the archive; compressed, encrypted or split members are reachable only through
  the ``.rar`` (open it with an archive tool).
* ``downloads/`` shows one file per hoster link (the oldest ``/downloads`` entry of it; RD adds
  an entry on every unrestrict).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rdfs.api.models import STATUS_DOWNLOADED, Download, Torrent, TorrentInfo
from rdfs.store import keys
from rdfs.store.metadata import (
    ROOT_INODE,
    Cache,
    ChildStat,
    EntryHead,
    EntryRow,
    EntrySpec,
    ListedTorrent,
)
from rdfs.store.values import unix_time

MAX_NAME_BYTES = 255
SLASH_SUBSTITUTE = "\u2215"  # ∕ DIVISION SLASH
DOT_SUBSTITUTE = "\uff0e"  # ． FULLWIDTH FULL STOP
MAX_EXTENSION_CHARS = 16

# --- names ------------------------------------------------------------------------------------


def _fit(stem: str, tail: str = "") -> str:
    """``stem + tail`` cut to MAX_NAME_BYTES by shortening ``stem`` on a character boundary."""
    budget = MAX_NAME_BYTES - len(tail.encode())
    cut = budget
    while len(stem.encode()) > budget:
        stem = unicodedata.normalize("NFC", stem.encode()[:cut].decode("utf-8", "ignore"))
        cut -= 1  # only needed again if normalizing the cut text made it longer
    return stem + tail


def split_extension(name: str) -> tuple[str, str]:
    """``("movie", ".mkv")``; no extension for dot-files, long or spaced suffixes."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return name, ""
    extension = name[dot:]
    if len(extension) > MAX_EXTENSION_CHARS or any(ch.isspace() for ch in extension):
        return name, ""
    return name[:dot], extension


def safe_name(raw: str, *, is_dir: bool = False, fallback: str = "_") -> str:
    """A name any Linux filesystem accepts and displays, derived deterministically from ``raw``."""
    text = raw if unicodedata.is_normalized("NFC", raw) else unicodedata.normalize("NFC", raw)
    text = text.replace("/", SLASH_SUBSTITUTE)
    if not text.isprintable():  # printable text has no control characters or surrogates
        text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cs"))
    if not text:
        text = fallback
    if text in (".", ".."):
        text = DOT_SUBSTITUTE * len(text)
    if len(text.encode()) <= MAX_NAME_BYTES:
        return text
    if is_dir:
        return _fit(text)
    stem, extension = split_extension(text)
    return _fit(stem, extension)


def tagged_name(name: str, tag: str, *, is_dir: bool) -> str:
    """``name`` with `` [tag]`` before its extension (files) or at its end (directories)."""
    suffix = f" [{tag}]"
    if is_dir:
        return _fit(name, suffix)
    stem, extension = split_extension(name)
    return _fit(stem, suffix + extension)


@dataclass(frozen=True, slots=True)
class NameCandidate:
    key: str  # the entry's stable key
    name: str  # its safe name
    tag: str  # what tells it apart on a collision
    is_dir: bool
    order: tuple[Any, ...]  # earlier keeps the plain name; must be a total order


def assign_names(candidates: Iterable[NameCandidate]) -> dict[str, str]:
    """Unique names for the entries of one directory, independent of the input order."""
    taken: set[str] = set()
    names: dict[str, str] = {}
    for candidate in sorted(candidates, key=lambda c: (c.order, c.key)):
        name = candidate.name
        if name in taken:
            name = tagged_name(candidate.name, candidate.tag, is_dir=candidate.is_dir)
            number = 2
            while name in taken:
                name = tagged_name(
                    candidate.name, f"{candidate.tag} {number}", is_dir=candidate.is_dir
                )
                number += 1
        taken.add(name)
        names[candidate.key] = name
    return names


# --- entries ----------------------------------------------------------------------------------


def torrent_mtime(torrent: Torrent | ListedTorrent) -> float:
    return unix_time(torrent.ended or torrent.added, if_none=0.0)


def torrent_dir_specs(
    torrents: Iterable[Torrent | ListedTorrent],
    with_files: set[str],
    subdirs: Mapping[str, int] | None = None,
    statuses: Collection[str] = (STATUS_DOWNLOADED,),
) -> list[EntrySpec]:
    """The directories of ``torrents/``: one per downloaded torrent (per torrent in ``statuses``).

    ``with_files``: ids whose file list is cached (the others are ``files_pending``);
    ``subdirs``: subdirectories directly inside each torrent directory (for ``nlink``).
    """
    shown = [t for t in torrents if t.status in statuses]
    names = assign_names(
        NameCandidate(
            key=keys.torrent(t.id),
            name=safe_name(t.filename, is_dir=True, fallback=t.id),
            tag=t.id,
            is_dir=True,
            order=(unix_time(t.added, if_none=0.0), t.id),
        )
        for t in shown
    )
    subdirs = subdirs or {}
    return [
        EntrySpec(
            key=keys.torrent(t.id),
            parent_key=keys.TORRENTS,
            name=names[keys.torrent(t.id)],
            kind="dir",
            mtime=torrent_mtime(t),
            nlink=2 + subdirs.get(t.id, 0),
            torrent_id=t.id,
            files_pending=t.id not in with_files,
        )
        for t in shown
    ]


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A file to place below a torrent's directory, at its path inside the torrent."""

    key: str
    path: str
    size: int
    tag: str  # tells it apart on a name collision
    order: int
    file_id: int | None = None
    hoster_link: str | None = None
    link_offset: int = 0


def torrent_file_specs(
    info: TorrentInfo,
    link_sizes: Mapping[str, int] | None = None,
    archives: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[EntrySpec]:
    """Everything below a torrent's directory: its selected files and their subdirectories.

    The i-th selected file reads ``links[i]``. With fewer links than selected files the torrent
    is RAR-packed: one ``.rar`` volume per link (``link_sizes`` gives sizes learnt from
    unrestricts), plus, for a single archive whose members are known (``archives``: hoster link
    -> members as :class:`rdfs.data.rar.Member` fields), every *stored* member as a regular file
    that reads its byte range of the archive. Compressed, encrypted or split members are not shown:
    only the ``.rar`` gives access to them.
    """
    selected = info.selected_files
    if len(info.links) < len(selected):
        return _packed_specs(info, link_sizes or {}, archives or {})
    leaves = [
        _Leaf(
            key=keys.torrent_file(info.id, file.id),
            path=file.path,
            size=file.bytes,
            tag=str(file.id),
            order=file.id,
            file_id=file.id,
            hoster_link=info.links[index] if index < len(info.links) else None,
        )
        for index, file in enumerate(selected)
    ]
    return _subtree(info, leaves)


def _subtree(
    info: TorrentInfo, leaves: Sequence[_Leaf], taken: Sequence[EntrySpec] = ()
) -> list[EntrySpec]:
    """Entries for ``leaves`` and the directories of their paths (``taken``: other entries of the
    torrent's directory, whose names come first)."""
    root = keys.torrent(info.id)
    mtime = torrent_mtime(info)
    dirs: dict[str, EntrySpec] = {}
    files: list[tuple[EntrySpec, _Leaf]] = []
    for leaf in leaves:
        raw_parts = [part for part in leaf.path.split("/") if part]
        name = safe_name(raw_parts[-1] if raw_parts else "", fallback=f"file {leaf.tag}")
        parts = [safe_name(part, is_dir=True) for part in raw_parts[:-1]]
        parent = root
        for depth in range(len(parts)):
            key = keys.torrent_dir(info.id, "/".join(parts[: depth + 1]))
            if key not in dirs:
                dirs[key] = EntrySpec(
                    key=key,
                    parent_key=parent,
                    name=parts[depth],
                    kind="dir",
                    mtime=mtime,
                    torrent_id=info.id,
                )
            parent = key
        spec = EntrySpec(
            key=leaf.key,
            parent_key=parent,
            name=name,
            kind="file",
            size=leaf.size,
            mtime=mtime,
            torrent_id=info.id,
            file_id=leaf.file_id,
            hoster_link=leaf.hoster_link,
            link_offset=leaf.link_offset,
        )
        files.append((spec, leaf))
    by_parent: dict[str, list[NameCandidate]] = defaultdict(list)
    for spec in taken:
        by_parent[spec.parent_key].append(
            NameCandidate(spec.key, spec.name, "rar", False, (-1, spec.key))
        )
    for spec in dirs.values():
        by_parent[spec.parent_key].append(
            NameCandidate(spec.key, spec.name, "dir", True, (0, spec.key))
        )
    for spec, leaf in files:
        by_parent[spec.parent_key].append(
            NameCandidate(spec.key, spec.name, leaf.tag, False, (1, leaf.order))
        )
    names: dict[str, str] = {}
    for candidates in by_parent.values():
        names.update(assign_names(candidates))
    subdir_count: dict[str, int] = defaultdict(int)
    for spec in dirs.values():
        subdir_count[spec.parent_key] += 1
    specs = [
        replace(spec, name=names[spec.key], nlink=2 + subdir_count[spec.key])
        for spec in dirs.values()
    ]
    specs += [replace(spec, name=names[spec.key]) for spec, _ in files]
    return specs


def _packed_specs(
    info: TorrentInfo,
    link_sizes: Mapping[str, int],
    archives: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[EntrySpec]:
    base = safe_name(info.filename, is_dir=True, fallback=info.id)
    count = len(info.links)
    width = len(str(count))
    specs = []
    for index, link in enumerate(info.links):
        suffix = ".rar" if count == 1 else f".part{index + 1:0{width}d}.rar"
        fallback_size = info.bytes if count == 1 else 0
        specs.append(
            EntrySpec(
                key=keys.rar_volume(info.id, index),
                parent_key=keys.torrent(info.id),
                name=_fit(base, suffix),
                kind="file",
                size=link_sizes.get(link, fallback_size),
                mtime=torrent_mtime(info),
                torrent_id=info.id,
                hoster_link=link,
            )
        )
    members = archives.get(info.links[0], ()) if count == 1 else ()
    leaves = [
        _Leaf(
            key=keys.archive_member(info.id, member["name"]),
            path=member["name"],
            size=member["size"],
            tag=str(number),
            order=number,
            hoster_link=info.links[0],
            link_offset=member["data_offset"],
        )
        for number, member in enumerate(members, start=1)
        if member["stored"] and not member["is_dir"]
    ]
    if not leaves:
        return specs
    inner = _subtree(info, leaves, taken=specs)
    return specs + inner


def download_specs(downloads: Iterable[Download]) -> list[EntrySpec]:
    """The files of ``downloads/``: one per hoster link, the oldest entry of each."""
    chosen: dict[str, Download] = {}
    for item in sorted(downloads, key=lambda d: (unix_time(d.generated, if_none=0.0), d.id)):
        chosen.setdefault(item.link or f"id:{item.id}", item)
    names = assign_names(
        NameCandidate(
            key=keys.download(d.id),
            name=safe_name(d.filename, fallback=d.id),
            tag=d.id,
            is_dir=False,
            order=(unix_time(d.generated, if_none=0.0), d.id),
        )
        for d in chosen.values()
    )
    return [
        EntrySpec(
            key=keys.download(d.id),
            parent_key=keys.DOWNLOADS,
            name=names[keys.download(d.id)],
            kind="file",
            size=d.filesize,
            mtime=unix_time(d.generated, if_none=0.0),
            download_id=d.id,
            hoster_link=d.link or None,
        )
        for d in chosen.values()
    ]


# --- the read side ----------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """One file or directory of the mount, as the FUSE adapter needs it."""

    inode: int
    parent: int
    name: str
    kind: str  # "dir" | "file"
    size: int
    mtime: float  # seconds since the epoch
    nlink: int
    torrent_id: str | None = None
    file_id: int | None = None
    download_id: str | None = None
    hoster_link: str | None = None
    link_offset: int = 0
    files_pending: bool = False  # a torrent directory whose file list is not cached yet
    xattrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Totals:
    entries: int
    bytes: int


def _node(row: EntryRow) -> Node:
    xattrs: dict[str, str] = {}
    if row.torrent_id is not None:
        xattrs["user.rdfs.torrent_id"] = row.torrent_id
        if row.torrent_hash:
            xattrs["user.rdfs.hash"] = row.torrent_hash
        if row.torrent_status:
            xattrs["user.rdfs.status"] = row.torrent_status
    if row.file_id is not None:
        xattrs["user.rdfs.file_id"] = str(row.file_id)
    if row.download_id is not None:
        xattrs["user.rdfs.download_id"] = row.download_id
    if row.hoster_link is not None:
        xattrs["user.rdfs.link"] = row.hoster_link
    return Node(
        inode=row.inode,
        parent=row.parent,
        name=row.name,
        kind=row.kind,
        size=row.size,
        mtime=row.mtime,
        nlink=row.nlink,
        torrent_id=row.torrent_id,
        file_id=row.file_id,
        download_id=row.download_id,
        hoster_link=row.hoster_link,
        link_offset=row.link_offset,
        files_pending=bool(row.files_pending),
        xattrs=xattrs,
    )


class Namespace:
    """Reads of the materialized tree; each method is one indexed query of the cache."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def node(self, inode: int) -> Node | None:
        row = self.cache.entry(inode)
        return _node(row) if row else None

    def lookup(self, parent_inode: int, name: str) -> Node | None:
        row = self.cache.lookup_entry(parent_inode, name)
        if row is None:
            normalized = unicodedata.normalize("NFC", name)
            if normalized != name:
                row = self.cache.lookup_entry(parent_inode, normalized)
        return _node(row) if row else None

    def children(
        self, inode: int, offset: int = 0, limit: int = 1000, *, after: int | None = None
    ) -> list[Node]:
        """A page of a directory's entries.

        By default in name order, skipping ``offset`` entries. With ``after`` (an inode), in
        inode order starting after it: a cursor that stays valid while a sync adds or removes
        entries, so a resumed readdir never repeats or skips the others.
        """
        return [_node(row) for row in self.cache.child_entries(inode, offset, limit, after=after)]

    def child_stats(self, inode: int, after: int, limit: int) -> list[ChildStat]:
        """A page of a directory's entries in inode order after ``after``, as the tuples
        readdir answers from: ``(inode, name, kind, size, mtime, nlink, in_torrent)``."""
        return self.cache.child_stats(inode, after, limit)

    def stat_row(self, inode: int) -> ChildStat | None:
        """An entry as :meth:`child_stats` gives it, None if the inode is unknown."""
        return self.cache.entry_stat(inode)

    def head(self, inode: int) -> EntryHead | None:
        """``(kind, files_pending, torrent_id, parent)`` of an entry, None if the inode is
        unknown."""
        return self.cache.entry_head(inode)

    def path(self, inode: int) -> str | None:
        """The path relative to the mountpoint ("" for the root), None if the inode is unknown."""
        parts: list[str] = []
        while inode != ROOT_INODE:
            place = self.cache.entry_place(inode)
            if place is None:
                return None
            inode, name = place
            parts.append(name)
        return "/".join(reversed(parts))

    def totals(self) -> Totals:
        count, size = self.cache.entry_totals()
        return Totals(entries=count, bytes=size)
