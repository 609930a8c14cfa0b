"""File contents served by the emulator: deterministic synthetic bytes, or real files on disk.

Synthetic content needs no disk and any range is computable directly: each seed has a 1 MiB
pseudo-random base block (SHAKE-256 of the seed); block ``k`` of a file is that base block
rotated by a ``k``-dependent amount. A read is then a couple of slices per MiB, so multi-GiB
sparse files stream at memory speed and two different offsets never return the same MiB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BLOCK_SIZE = 1 << 20
# Odd multiplier: rotations of consecutive blocks are spread over the whole block and only
# repeat after 2**20 blocks (1 TiB).
_ROTATION_STEP = 0x9E3779B1
STREAM_CHUNK = 1 << 20


@lru_cache(maxsize=32)
def _base_block(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(BLOCK_SIZE)


def _rotation(block_index: int) -> int:
    return (block_index * _ROTATION_STEP) % BLOCK_SIZE


def synthetic_bytes(seed: str, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the synthetic file identified by ``seed``."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    base = _base_block(seed)
    parts: list[bytes] = []
    end = offset + length
    position = offset
    while position < end:
        block, inner = divmod(position, BLOCK_SIZE)
        take = min(BLOCK_SIZE - inner, end - position)
        start = (inner + _rotation(block)) % BLOCK_SIZE
        if start + take <= BLOCK_SIZE:
            parts.append(base[start : start + take])
        else:
            first = BLOCK_SIZE - start
            parts.append(base[start:])
            parts.append(base[: take - first])
        position += take
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_source(path: Path, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of a real file (short at end of file)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def iter_chunks(seed: str | None, source: Path | None, offset: int, length: int) -> Iterator[bytes]:
    """The range as chunks of at most ``STREAM_CHUNK`` bytes, aligned to block boundaries.

    A real file is read with one open handle for the whole range; a short read (the file
    shrank on disk) ends the iteration early.
    """
    end = offset + length
    if source is not None:
        with open(source, "rb") as handle:
            handle.seek(offset)
            position = offset
            while position < end:
                data = handle.read(min(STREAM_CHUNK, end - position))
                if not data:
                    return
                position += len(data)
                yield data
        return
    assert seed is not None
    position = offset
    while position < end:
        take = min(STREAM_CHUNK - position % STREAM_CHUNK, end - position)
        yield synthetic_bytes(seed, position, take)
        position += take


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a served body: literal ``data``, a real file (``source``) or synthetic
    ``seed``."""

    size: int
    data: bytes | None = None
    seed: str | None = None
    source: Path | None = None


def iter_segments(segments: Sequence[Segment], offset: int, length: int) -> Iterator[bytes]:
    """Bytes ``[offset, offset + length)`` of the concatenated segments, as chunks."""
    end = offset + length
    start = 0
    for segment in segments:
        stop = start + segment.size
        if stop > offset and start < end:
            inner = max(offset, start) - start
            take = min(end, stop) - start - inner
            if segment.data is not None:
                yield segment.data[inner : inner + take]
            else:
                yield from iter_chunks(segment.seed, segment.source, inner, take)
        if stop >= end:
            return
        start = stop


def read_segments(segments: Sequence[Segment], offset: int, length: int) -> bytes:
    return b"".join(iter_segments(segments, offset, length))
