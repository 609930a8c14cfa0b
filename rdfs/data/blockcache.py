"""The in-memory block cache: every byte read or read ahead, in fixed-size blocks, LRU-bounded."""

from __future__ import annotations

from collections import OrderedDict

KiB = 1024
MiB = 1024 * KiB

BLOCK_SIZE = 32 * KiB
DEFAULT_CACHE_BYTES = 128 * MiB

# A cached block: its own bytes, or a view of the response piece it arrived in (no copy).
Block = bytes | memoryview


class BlockCache:
    """LRU of file blocks, bounded by total bytes, shared by every handle of the pool."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._blocks: OrderedDict[tuple[str, int], Block] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: str, index: int, touch: bool = True) -> Block | None:
        """The block, made the most recently used unless ``touch`` is False.

        A block that is a view of a larger response piece becomes a copy of its own when touched:
        kept on past its neighbours, it must not keep the whole piece in memory.
        """
        data = self._blocks.get((key, index))
        if data is not None and touch:
            if isinstance(data, memoryview) and len(data.obj) > len(data):  # type: ignore[arg-type]
                data = self._blocks[(key, index)] = bytes(data)
            self._blocks.move_to_end((key, index))
        return data

    def __contains__(self, item: tuple[str, int]) -> bool:
        return item in self._blocks

    def put(self, key: str, index: int, data: Block) -> None:
        old = self._blocks.pop((key, index), None)
        if old is not None:
            self.size -= len(old)
        self._blocks[(key, index)] = data
        self.size += len(data)
        while self.size > self.max_bytes and len(self._blocks) > 1:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(evicted)
