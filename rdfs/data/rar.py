"""Reading the member list of a RAR5 archive through ranged reads, without downloading it.

RD packs some torrents into a RAR archive. Media is nearly always *stored* (method 0, no
compression) in such archives, so a member's bytes are one contiguous range of the archive: the
filesystem can expose the member as a regular file that reads that range (``link_offset``).

A RAR5 archive is a chain of blocks: ``CRC32, header size, type, flags, [extra size],
[data size], fields…`` followed by ``data size`` bytes of data. Walking the chain costs one small
read per member (the headers sit between the members' data). Only what is needed here is decoded:
file headers (type 2), the encryption header (type 4, which makes the archive unreadable) and the
end of archive (type 5). RAR 1.5-4.x archives (another signature) are not decoded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SIGNATURE5 = b"Rar!\x1a\x07\x01\x00"
SIGNATURE4 = b"Rar!\x1a\x07\x00"

_FILE, _SERVICE, _ENCRYPTION, _END = 2, 3, 4, 5
_HAS_EXTRA, _HAS_DATA, _SPLIT_BEFORE, _SPLIT_AFTER = 0x0001, 0x0002, 0x0008, 0x0010
_FILE_IS_DIR, _FILE_HAS_MTIME, _FILE_HAS_CRC = 0x0001, 0x0002, 0x0004
_EXTRA_ENCRYPTION = 0x01
# A header is small; this much is read at once, and more only for an unusually long one.
_HEADER_READ = 4096
MAX_HEADER = 2 * 1024 * 1024

Read = Callable[[int, int], Awaitable[bytes | memoryview]]  # a bytes-like answer


class RarError(Exception):
    """The bytes are not a RAR5 archive this module can list."""


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of the archive."""

    name: str  # path inside the archive, "/"-separated
    size: int  # unpacked size
    data_offset: int  # where its (packed) data starts in the archive
    packed_size: int
    is_dir: bool
    stored: bool  # data is the file itself: not compressed, not encrypted, not split over volumes


def _vint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise RarError("truncated or invalid variable-length integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encrypted(extra: bytes) -> bool:
    pos = 0
    while pos < len(extra):
        size, pos = _vint(extra, pos)
        kind, _ = _vint(extra, pos)
        if kind == _EXTRA_ENCRYPTION:
            return True
        pos += size
    return False


def _file_member(
    fields: bytes, extra: bytes, flags: int, data_offset: int, data_size: int
) -> Member:
    file_flags, pos = _vint(fields, 0)
    size, pos = _vint(fields, pos)
    _attributes, pos = _vint(fields, pos)
    if file_flags & _FILE_HAS_MTIME:
        pos += 4
    if file_flags & _FILE_HAS_CRC:
        pos += 4
    compression, pos = _vint(fields, pos)
    _host_os, pos = _vint(fields, pos)
    name_length, pos = _vint(fields, pos)
    raw_name = fields[pos : pos + name_length]
    if len(raw_name) != name_length:
        raise RarError("truncated file name")
    method = (compression >> 7) & 0x7
    stored = (
        method == 0
        and data_size == size
        and not flags & (_SPLIT_BEFORE | _SPLIT_AFTER)
        and not _encrypted(extra)
    )
    return Member(
        name=raw_name.decode("utf-8", "replace"),
        size=size,
        data_offset=data_offset,
        packed_size=data_size,
        is_dir=bool(file_flags & _FILE_IS_DIR),
        stored=stored,
    )


async def list_members(read: Read, archive_size: int) -> list[Member]:
    """Every file header of the RAR5 archive that ``read(offset, length)`` gives access to."""
    head = bytes(await read(0, len(SIGNATURE5)))
    if head[: len(SIGNATURE4)] == SIGNATURE4:
        raise RarError("RAR 1.5-4.x archive: members are not listed")
    if head != SIGNATURE5:
        raise RarError("not a RAR archive")
    members: list[Member] = []
    pos = len(SIGNATURE5)
    while pos < archive_size:
        buf = bytes(await read(pos, min(_HEADER_READ, archive_size - pos)))
        if len(buf) < 5:
            raise RarError(f"truncated header at byte {pos}")
        header_size, body = _vint(buf, 4)
        total = body + header_size
        if header_size == 0 or total > MAX_HEADER:
            raise RarError(f"implausible header size {header_size} at byte {pos}")
        if total > len(buf):
            buf = bytes(await read(pos, total))
            if len(buf) < total:
                raise RarError(f"truncated header at byte {pos}")
        (crc,) = struct.unpack_from("<I", buf)
        if zlib.crc32(buf[4:total]) != crc:
            raise RarError(f"bad header checksum at byte {pos}")
        kind, cursor = _vint(buf, body)
        flags, cursor = _vint(buf, cursor)
        extra_size = data_size = 0
        if flags & _HAS_EXTRA:
            extra_size, cursor = _vint(buf, cursor)
        if flags & _HAS_DATA:
            data_size, cursor = _vint(buf, cursor)
        fields = buf[cursor : total - extra_size]
        extra = buf[total - extra_size : total]
        data_offset = pos + total
        if kind == _ENCRYPTION:
            raise RarError("encrypted archive headers")
        if kind == _FILE:
            members.append(_file_member(fields, extra, flags, data_offset, data_size))
        if kind == _END:
            break
        pos = data_offset + data_size
    return members
