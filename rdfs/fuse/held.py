"""What the kernel holds: per inode, a lookup count and the stat it was last answered, flat.

The kernel may keep every inode it has looked up (a media server's scan of the whole library keeps
hundreds of thousands), and the adapter must count those lookups until ``forget`` (lookup, create
and each readdirplus entry add one). Names, links and xattrs are read from the store when asked;
only the stat last answered is kept, so that an inode removed upstream while the kernel holds it
(a shell's working directory, a file stat'ed through an open descriptor) still answers getattr
until the kernel forgets it: the store has nothing left to say about it, and a change reports
removals by name only.

Parallel arrays indexed by inode (inodes are allocated densely and never reused, see
``rdfs.store.metadata``): 26 bytes per inode up to the highest one held, 10 MB for 400,000
entries, where a ``Node`` with its xattr dict cost ~600 bytes. Inodes past :data:`DENSE_LIMIT`
(none today) go to a dict, so a stray huge number cannot grow the arrays.
"""

from __future__ import annotations

import stat
from array import array
from dataclasses import dataclass

# Past this inode, entries go to a dict instead of growing the arrays (26 bytes * this at most).
DENSE_LIMIT = 1 << 22
_MAX_COUNT = 2**32 - 1  # the count array's item; no kernel holds an inode that many times


@dataclass(frozen=True, slots=True)
class Stat:
    """The attributes last answered for an inode."""

    mode: int
    nlink: int
    size: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class HeldInodes:
    """The kernel's lookup count of each inode it holds (absent: 0), and its last stat."""

    def __init__(self) -> None:
        self._count = array("I")
        self._mode = array("H")
        self._nlink = array("I")
        self._size = array("q")
        self._mtime = array("q")
        self._sparse: dict[int, tuple[int, Stat]] = {}
        self._held = 0  # inodes with a count > 0

    def __len__(self) -> int:
        """Inodes the kernel holds."""
        return self._held

    def __contains__(self, inode: int) -> bool:
        return self.count(inode) > 0

    def count(self, inode: int) -> int:
        if 0 <= inode < len(self._count):
            return self._count[inode]
        entry = self._sparse.get(inode)
        return entry[0] if entry else 0

    def stat(self, inode: int) -> Stat | None:
        """The stat last answered for a held inode (None if the kernel does not hold it)."""
        if 0 <= inode < len(self._count):
            if not self._count[inode]:
                return None
            return Stat(
                self._mode[inode], self._nlink[inode], self._size[inode], self._mtime[inode]
            )
        entry = self._sparse.get(inode)
        return entry[1] if entry else None

    def looked_up(self, inode: int, answered: Stat) -> None:
        """The kernel took one more lookup of ``inode``, answered with ``answered``."""
        self.took(inode, answered.mode, answered.nlink, answered.size, answered.mtime_ns)

    def took(self, inode: int, mode: int, nlink: int, size: int, mtime_ns: int) -> None:
        """:meth:`looked_up` from the stat's fields (readdirplus: once per entry, no object)."""
        if 0 <= inode < DENSE_LIMIT:
            if inode >= len(self._count):
                self._grow(inode)
            old = self._count[inode]
            self._count[inode] = min(old + 1, _MAX_COUNT)
            self._mode[inode] = mode
            self._nlink[inode] = min(nlink, _MAX_COUNT)
            self._size[inode] = size
            self._mtime[inode] = mtime_ns
        else:
            old = self._sparse[inode][0] if inode in self._sparse else 0
            self._sparse[inode] = (old + 1, Stat(mode, nlink, size, mtime_ns))
        if old == 0:
            self._held += 1

    def answered(self, inode: int, answered: Stat) -> None:
        """A getattr answered ``inode`` anew: keep that stat if the kernel holds it."""
        if 0 <= inode < len(self._count):
            if self._count[inode]:
                self._store(inode, answered)
        elif inode in self._sparse:
            self._sparse[inode] = (self._sparse[inode][0], answered)

    def forget(self, inode: int, count: int) -> int:
        """The kernel dropped ``count`` lookups of ``inode``; returns how many it still holds."""
        old = self.count(inode)
        left = max(old - count, 0)
        if 0 <= inode < len(self._count):
            self._count[inode] = left
        elif left:
            self._sparse[inode] = (left, self._sparse[inode][1])
        else:
            self._sparse.pop(inode, None)
        if old and not left:
            self._held -= 1
        return left

    def nbytes(self) -> int:
        """Memory of the table (array items; roughly, the dict's entries)."""
        arrays = (self._count, self._mode, self._nlink, self._size, self._mtime)
        return sum(a.itemsize * len(a) for a in arrays) + 200 * len(self._sparse)

    def _store(self, inode: int, answered: Stat) -> None:
        self._mode[inode] = answered.mode
        self._nlink[inode] = min(answered.nlink, _MAX_COUNT)
        self._size[inode] = answered.size
        self._mtime[inode] = answered.mtime_ns

    def _grow(self, inode: int) -> None:
        new = min(max(inode + 1, 2 * len(self._count), 1024), DENSE_LIMIT) - len(self._count)
        for column in (self._count, self._mode, self._nlink, self._size, self._mtime):
            column.frombytes(bytes(column.itemsize * new))
