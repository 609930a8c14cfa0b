"""RAR5 archives of stored (uncompressed) files, laid out as segments and never built in memory.

RD packs some torrents into one RAR archive. The emulator serves a real, valid RAR5 archive
for them: headers are a few bytes each and the members' data are the members' own segments,
so any range is computable directly. Member data carry no CRC32 (optional in RAR5), which
keeps multi-GiB archives free to build.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from .content import Segment

SIGNATURE = b"Rar!\x1a\x07\x01\x00"
_MAIN, _FILE, _END = 1, 2, 5
_HAS_DATA = 0x0002
_UNIX = 1
_MODE = 0o100644


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(kind: int, fields: bytes, data_size: int | None = None) -> bytes:
    flags = _HAS_DATA if data_size is not None else 0
    body = (
        _vint(kind) + _vint(flags) + (_vint(data_size) if data_size is not None else b"") + fields
    )
    sized = _vint(len(body)) + body
    return struct.pack("<I", zlib.crc32(sized)) + sized


def _file_header(name: str, size: int) -> bytes:
    encoded = name.encode()
    # file flags (no mtime, no CRC), unpacked size, attributes, compression (v0, stored), host OS
    fields = (
        _vint(0)
        + _vint(size)
        + _vint(_MODE)
        + _vint(0)
        + _vint(_UNIX)
        + _vint(len(encoded))
        + encoded
    )
    return _header(_FILE, fields, data_size=size)


def archive(members: Sequence[tuple[str, Segment]]) -> tuple[Segment, ...]:
    """The segments of a RAR5 archive holding ``members`` (name inside the archive, data)."""
    segments = [Segment(len(SIGNATURE), data=SIGNATURE)]
    main = _header(_MAIN, _vint(0))
    segments.append(Segment(len(main), data=main))
    for name, data in members:
        header = _file_header(name, data.size)
        segments.append(Segment(len(header), data=header))
        segments.append(data)
    end = _header(_END, _vint(0))
    segments.append(Segment(len(end), data=end))
    return tuple(segments)
