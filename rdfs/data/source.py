"""What is read: a file's source, and the state that every open handle of one file shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from rdfs.data.blockcache import BLOCK_SIZE
from rdfs.store.probecache import file_key

# Blocks' leading bytes an open file keeps (see ``OpenFile.partial``): a few readers' latest.
MAX_PARTIAL = 8


@dataclass(frozen=True)
class FileSource:
    """A readable file: ``size`` bytes at ``offset`` inside the content of ``hoster_link``.

    ``key`` identifies the file for the shared cache (e.g. its inode); ``offset`` is non-zero
    for a file stored inside an archive.
    """

    key: str
    hoster_link: str
    size: int
    offset: int = 0
    name: str = ""

    @property
    def label(self) -> str:
        """How logs name the file."""
        return self.name or self.key


@dataclass
class OpenFile:
    """What the handles of one file share: its source and the blocks being downloaded."""

    source: FileSource
    handles: int = 0
    pending: dict[int, trio.Event] = field(default_factory=dict)
    # Blocks of this file held by the persistent probe cache (loaded when the file is opened).
    stored: set[int] = field(default_factory=set)
    # The leading bytes of blocks a read needed only in part (its fetch ended where it ended): a
    # later read of the rest fetches only the rest. The latest MAX_PARTIAL, gone with the file's
    # last handle.
    partial: dict[int, bytes] = field(default_factory=dict)
    # Blocks are cached per file *and* source: a file whose size or link changed starts afresh.
    cache_key: str = field(init=False)
    probe_key: str = field(init=False)
    blocks: int = field(init=False)

    def __post_init__(self) -> None:
        source = self.source
        self.cache_key = f"{source.key}\0{source.hoster_link}\0{source.offset}\0{source.size}"
        self.probe_key = file_key(source.hoster_link, source.offset, source.size)
        self.blocks = (source.size + BLOCK_SIZE - 1) // BLOCK_SIZE

    def keep_partial(self, index: int, data: bytes) -> None:
        """Keep the leading bytes of block ``index``; the oldest go beyond ``MAX_PARTIAL`` (a
        reader needs its latest; random reads must not grow this past the cache's bound)."""
        self.partial.pop(index, None)
        self.partial[index] = data
        while len(self.partial) > MAX_PARTIAL:
            del self.partial[next(iter(self.partial))]
