"""The stable keys of the tree: who builds them and how they are read back.

An entry's inode is persisted in ``inodes`` under a key that says *what* the entry is, so the
same file keeps its inode across syncs and restarts. Every key is built and parsed here:

=========================  ==================================================================
``root``                   the root of the mount
``top:<name>``             a fixed directory at the top (``torrents``, ``downloads``, ``.rdfs``)
``t:<torrent>``            a torrent's directory in ``torrents/``
``f:<torrent>:<file id>``  a selected file of a torrent
``dir:<torrent>:<path>``   a directory inside a torrent (its safe path below the torrent's)
``r:<torrent>:<index>``    a RAR volume of a packed torrent (one per link)
``a:<torrent>:<member>``   a stored member of a torrent's single RAR archive
``d:<download>``           a file of ``downloads/``
``ctl:<name>``             a control file in ``.rdfs/``
``view:<view>``            a library view's directory
``v:<view>:<key>``         the copy of the ``torrents/`` entry ``<key>`` shown in a view
=========================  ==================================================================

Torrent ids and download ids never contain ``:`` (RD ids are ``[A-Z0-9]``), so the torrent id of
a key is the field after its kind. Paths, member names and view names may contain ``:``.
"""

from __future__ import annotations

import re

ROOT = "root"
TORRENTS = "top:torrents"
DOWNLOADS = "top:downloads"
CONTROL = "top:.rdfs"

TORRENT_PREFIX = "t:"
VIEW_DIR_PREFIX = "view:"
VIEW_COPY_PREFIX = "v:"
_RAR_VOLUME_PREFIX = "r:"
_MEMBER_PREFIX = "a:"

# The kinds of key that carry a torrent id right after their kind (also inside a view's copy).
_TORRENT_KINDS = ("t", "f", "dir", "r", "a")


def torrent(torrent_id: str) -> str:
    return f"{TORRENT_PREFIX}{torrent_id}"


def torrent_file(torrent_id: str, file_id: int) -> str:
    return f"f:{torrent_id}:{file_id}"


def torrent_dir(torrent_id: str, subpath: str) -> str:
    return f"dir:{torrent_id}:{subpath}"


def rar_volume(torrent_id: str, index: int) -> str:
    return f"{_RAR_VOLUME_PREFIX}{torrent_id}:{index}"


def archive_member(torrent_id: str, member: str) -> str:
    return f"{_MEMBER_PREFIX}{torrent_id}:{member}"


def download(download_id: str) -> str:
    return f"d:{download_id}"


def control(name: str) -> str:
    return f"ctl:{name}"


def view_dir(view: str) -> str:
    return f"{VIEW_DIR_PREFIX}{view}"


def view_copy(view: str, key: str) -> str:
    """The key of the copy of the ``torrents/`` entry ``key`` in the view ``view``."""
    return f"{VIEW_COPY_PREFIX}{view}:{key}"


def is_torrent_dir(key: str) -> bool:
    return key.startswith(TORRENT_PREFIX)


def is_rar_volume(key: str) -> bool:
    return key.startswith(_RAR_VOLUME_PREFIX)


def is_archive_member(key: str) -> bool:
    return key.startswith(_MEMBER_PREFIX)


def is_view_dir(key: str) -> bool:
    return key.startswith(VIEW_DIR_PREFIX)


def renamed_torrent(key: str, old_id: str, new_id: str) -> str:
    """``key`` with the torrent id ``old_id`` replaced by ``new_id`` wherever it is the torrent
    of the key (a view's copy included); other keys come back unchanged."""
    kinds = "|".join(_TORRENT_KINDS)
    pattern = rf"(?<![^:])({kinds}):{re.escape(old_id)}(?=:|$)"
    return re.sub(pattern, lambda m: f"{m.group(1)}:{new_id}", key)
