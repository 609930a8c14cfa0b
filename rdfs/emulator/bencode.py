"""Just enough bencode to read a .torrent: its name, files and info hash.

rdfs.control.actions has its own, hardened decoder; this one stays separate on purpose: the
emulator stands in for RD, which parses an upload with its own code, so a decoding bug in rdfs
(a wrong info-hash span, say) cannot agree with itself in the add tests. The emulator also
imports nothing from rdfs outside rdfs.emulator (tests/importcontract.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


class BencodeError(ValueError):
    pass


def _decode(data: bytes, pos: int, spans: dict[bytes, tuple[int, int]] | None) -> tuple[Any, int]:
    """Decode the value at ``pos``; record the byte span of top-level dict values in ``spans``."""
    if pos >= len(data):
        raise BencodeError("truncated")
    lead = data[pos : pos + 1]
    if lead == b"i":
        end = data.index(b"e", pos)
        return int(data[pos + 1 : end]), end + 1
    if lead == b"l":
        pos += 1
        items = []
        while data[pos : pos + 1] != b"e":
            item, pos = _decode(data, pos, None)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        pos += 1
        result: dict[bytes, Any] = {}
        while data[pos : pos + 1] != b"e":
            key, pos = _decode(data, pos, None)
            if not isinstance(key, bytes):
                raise BencodeError("dict key is not a string")
            start = pos
            result[key], pos = _decode(data, pos, None)
            if spans is not None:
                spans[key] = (start, pos)
        return result, pos + 1
    if lead.isdigit():
        colon = data.index(b":", pos)
        length = int(data[pos:colon])
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError("truncated string")
        return data[colon + 1 : end], end
    raise BencodeError(f"unexpected byte {lead!r} at {pos}")


@dataclass(frozen=True, slots=True)
class TorrentMeta:
    name: str
    info_hash: str  # hex SHA-1 of the bencoded info dict
    files: tuple[tuple[str, int], ...]  # (RD path starting with "/", size)


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise BencodeError("expected a string")
    return value.decode("utf-8", errors="replace")


def parse_torrent(data: bytes) -> TorrentMeta:
    """Parse a .torrent file. RD file paths are relative to the torrent's top folder."""
    spans: dict[bytes, tuple[int, int]] = {}
    try:
        root, _ = _decode(data, 0, spans)
    except (IndexError, ValueError) as error:
        raise BencodeError(str(error)) from error
    if not isinstance(root, dict) or not isinstance(root.get(b"info"), dict):
        raise BencodeError("no info dict")
    info = root[b"info"]
    start, stop = spans[b"info"]
    name = _text(info.get(b"name.utf-8", info.get(b"name", b"")))
    if not name:
        raise BencodeError("no name")
    files: list[tuple[str, int]] = []
    if isinstance(info.get(b"files"), list):
        for entry in info[b"files"]:
            parts = entry.get(b"path.utf-8", entry.get(b"path"))
            if (
                not isinstance(parts, list)
                or not parts
                or not isinstance(entry.get(b"length"), int)
            ):
                raise BencodeError("bad file entry")
            files.append(("/" + "/".join(_text(p) for p in parts), entry[b"length"]))
    elif isinstance(info.get(b"length"), int):
        files.append(("/" + name, info[b"length"]))
    else:
        raise BencodeError("no files")
    return TorrentMeta(
        name=name, info_hash=hashlib.sha1(data[start:stop]).hexdigest(), files=tuple(files)
    )


def encode(value: Any) -> bytes:
    """Bencode ``value`` (int, bytes/str, list, dict); used to build .torrent files in tests."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(encode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(encode(k) + encode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")
