"""What the kernel says is mounted where: /proc/self/mountinfo, read without touching a mount.

No FUSE request is made here (no stat of a mountpoint): a request to a mount whose loop does not
run yet deadlocks, and one to a stale mount hangs or fails. This module does not import pyfuse3,
so the CLI can use it without loading the FUSE stack.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
RDFS_FSTYPE = "fuse.rdfs"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo (see proc(5)); paths are unescaped."""

    device: str  # "major:minor", as in /sys/class/bdi/<device> (minor: the FUSE connection)
    path: str  # the mount point
    fstype: str  # "fuse.rdfs", "ext4", ...
    super_options: frozenset[str]  # "rw", "user_id=0", "allow_other", ...

    @property
    def is_fuse(self) -> bool:
        return self.fstype.startswith("fuse")  # fuse, fuse.<subtype>, fuseblk


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), field)


def parse_line(line: str) -> MountEntry | None:
    """The entry of one mountinfo line, or None for a line of an unknown shape."""
    fields = line.split()
    try:
        separator = fields.index("-", 6)  # optional fields end with a lone "-"
        return MountEntry(
            device=fields[2],
            path=_unescape(fields[4]),
            fstype=fields[separator + 1],
            super_options=frozenset(fields[separator + 3].split(",")),
        )
    except (ValueError, IndexError):
        return None


def mount_entries() -> list[MountEntry]:
    """The mounts of this process's namespace, bottom first ([] when mountinfo is unreadable)."""
    try:
        text = MOUNTINFO.read_text(errors="surrogateescape")  # paths are bytes, like os.fsdecode
    except OSError:
        return []
    return [entry for entry in map(parse_line, text.splitlines()) if entry is not None]


def entry_at(path: Path) -> MountEntry | None:
    """The mount on top at ``path``, if ``path`` is a mount point.

    Only the parent directory is resolved: touching the mountpoint itself would send a request to
    the filesystem, which deadlocks before the FUSE loop runs and hangs on a stale mount.
    """
    absolute = os.path.abspath(path)
    target = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    found = None
    for entry in mount_entries():
        if entry.path == target:
            found = entry  # the last one wins: it is on top
    return found


def is_fuse_mount(path: Path) -> bool:
    entry = entry_at(path)
    return entry is not None and entry.is_fuse


def rdfs_mounts() -> list[Path]:
    """The rdfs mounts of this system (stale ones included)."""
    return [Path(entry.path) for entry in mount_entries() if entry.fstype == RDFS_FSTYPE]
