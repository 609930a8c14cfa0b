"""Adding and deleting torrents: the logic shared by the ``.rdfs/`` control files and the CLI.

Every batch is all-or-nothing as far as RD allows: every line is validated before the first API
call, and when a call fails half-way the torrents this batch created are deleted again before
the error is raised. Deletions cannot be undone, so a failed delete batch says exactly which
entries were deleted before the failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio

from rdfs.api.client import RDClient
from rdfs.api.errors import RDError, UnknownResource
from rdfs.api.models import FAILED_STATUSES, TorrentInfo
from rdfs.sync.selection import select_when_ready
from rdfs.tree.specs import split_extension

log = logging.getLogger(__name__)

SELECTION_POLICIES = ("all", "video")
VIDEO_EXTENSIONS = frozenset(
    (
        ".mkv .mp4 .m4v .avi .mov .wmv .mpg .mpeg .m2ts .mts .ts .webm .flv .vob .ogv .divx .iso"
    ).split()
)
SUBTITLE_EXTENSIONS = frozenset(".srt .ass .ssa .sub .idx .vtt .sup .smi".split())
ROLLBACK_TIMEOUT = 30.0  # seconds a rollback may take before it gives up (an outage)

_HEX_HASH = re.compile(r"[0-9a-fA-F]{40}")
_B32_HASH = re.compile(r"[A-Za-z2-7]{32}")
_RD_ID = re.compile(r"[A-Z2-7]{13,26}")


class ActionError(Exception):
    """An add or delete did not happen (or not completely); the message is one line for the user."""


class InvalidInput(ActionError):
    """The request itself is wrong (a bad line, a broken .torrent): nothing was sent to RD."""


class TruncatedTorrent(InvalidInput):
    """The bytes are a valid beginning of a .torrent, cut short (maybe still being written)."""


class ActionFailed(ActionError):
    """RD failed during the batch.

    ``done`` lists what did happen (for deletes) before the failure.
    """

    def __init__(
        self, message: str, *, cause: RDError | None = None, done: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.done = list(done)


# --- input --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Magnet:
    info_hash: str  # 40 lower-case hex digits
    uri: str  # what is sent to addMagnet


def normalize_hash(text: str) -> str | None:
    """A 40-hex or 32-char base32 info hash as 40 lower-case hex digits; None if it is neither."""
    text = text.strip()
    if _HEX_HASH.fullmatch(text):
        return text.lower()
    if _B32_HASH.fullmatch(text):
        try:
            return base64.b32decode(text.upper()).hex()
        except binascii.Error:
            return None
    return None


def parse_magnet(text: str) -> Magnet:
    """A magnet URI (``xt=urn:btih:…``) or a bare info hash; raises ``InvalidInput``."""
    text = text.strip()
    info_hash = normalize_hash(text)
    if info_hash is not None:
        return Magnet(info_hash, f"magnet:?xt=urn:btih:{info_hash}")
    if not text.lower().startswith("magnet:?"):
        raise InvalidInput(f"not a magnet link or info hash: {_shorten(text)!r}")
    query = urllib.parse.parse_qs(text[len("magnet:?") :])
    for topic in query.get("xt", []):
        if topic.lower().startswith("urn:btih:"):
            info_hash = normalize_hash(topic[len("urn:btih:") :])
            if info_hash is not None:
                return Magnet(info_hash, text)
    raise InvalidInput(f"magnet link without a valid btih info hash: {_shorten(text)!r}")


def parse_lines(text: str) -> list[str]:
    """The meaningful lines of a control-file write: stripped, without blanks and ``#`` comments."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def parse_magnets(lines: Iterable[str]) -> list[Magnet]:
    """Every line parsed, or ``InvalidInput`` naming every bad line (so none of them is added)."""
    magnets: list[Magnet] = []
    bad: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            magnets.append(parse_magnet(line))
        except InvalidInput as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        raise InvalidInput("; ".join(bad))
    return magnets


def looks_like_id(text: str) -> bool:
    """Whether ``text`` has the shape of an RD torrent or download id (13+ chars of A-Z, 2-7)."""
    return bool(_RD_ID.fullmatch(text))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- .torrent files -----------------------------------------------------------------------------
# The emulator keeps a decoder of its own on purpose (rdfs/emulator/bencode.py says why).


MAX_BENCODE_DEPTH = (
    64  # lists and dictionaries nested deeper than this are refused (real ones: < 10)
)
MAX_INTEGER_DIGITS = 32  # a real .torrent's integers fit in 64 bits
_BENCODE_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_BENCODE_LENGTH = re.compile(rb"0|[1-9][0-9]*")
_BENCODE_INT_START = re.compile(rb"-?(?:0|[1-9][0-9]*)?")


class _Truncated(ValueError):
    """The data ends inside a value that was well-formed so far."""


def _bdecode(
    data: bytes, pos: int, spans: dict[bytes, tuple[int, int]] | None = None, depth: int = 0
) -> tuple[Any, int]:
    """The bencoded value at ``pos`` and the position after it.

    ``spans`` gets the byte spans of the top-level dictionary's values.

    Any malformed input raises ``ValueError``: integers and string lengths are checked against
    the grammar (``int()`` alone would take ``b" 1_0"``), dictionary keys must be strings (a list
    as a key used to escape as ``TypeError``), and nesting is bounded, so no input reaches the
    recursion limit.
    """
    if depth > MAX_BENCODE_DEPTH:
        raise ValueError(f"nested deeper than {MAX_BENCODE_DEPTH} levels")
    lead = data[pos : pos + 1]
    if not lead:
        raise _Truncated("truncated")
    if lead == b"i":
        limit = pos + 2 + MAX_INTEGER_DIGITS
        end = data.find(b"e", pos + 1, limit)
        if end < 0 and len(data) < limit and _BENCODE_INT_START.fullmatch(data, pos + 1):
            raise _Truncated("truncated integer")
        if (
            end < 0
            or not _BENCODE_INT.fullmatch(data, pos + 1, end)
            or data[pos + 1 : end] == b"-0"
        ):
            raise ValueError(f"malformed integer at {pos}")
        return int(data[pos + 1 : end]), end + 1
    if lead in (b"l", b"d"):
        pos += 1
        items: list[Any] = []
        keys: set[bytes] = set()
        while True:
            if pos >= len(data):
                raise _Truncated("truncated")
            if data[pos : pos + 1] == b"e":
                break
            start = pos
            item, pos = _bdecode(data, pos, None, depth + 1)
            if lead == b"d" and len(items) % 2 == 0:
                if not isinstance(item, bytes):
                    raise ValueError(f"dictionary key at {start} is not a string")
                if item in keys:
                    raise ValueError(f"duplicate dictionary key at {start}")
                keys.add(item)
            elif spans is not None and lead == b"d":
                spans[items[-1]] = (start, pos)
            items.append(item)
        if lead == b"l":
            return items, pos + 1
        if len(items) % 2:
            raise ValueError("dictionary key without a value")
        return dict(zip(items[::2], items[1::2], strict=True)), pos + 1
    if lead.isdigit():
        colon = data.find(b":", pos, pos + 1 + MAX_INTEGER_DIGITS)
        if colon < 0 and len(data) < pos + 1 + MAX_INTEGER_DIGITS and data[pos:].isdigit():
            raise _Truncated("truncated string length")
        if colon < 0 or not _BENCODE_LENGTH.fullmatch(data, pos, colon):
            raise ValueError(f"malformed string length at {pos}")
        end = colon + 1 + int(data[pos:colon])
        if end > len(data):
            raise _Truncated("truncated string")
        return data[colon + 1 : end], end
    raise ValueError(f"unexpected byte at {pos}")


@dataclass(frozen=True)
class TorrentFile:
    info_hash: str
    name: str
    data: bytes


def parse_torrent_file(data: bytes) -> TorrentFile:
    """Check a .torrent's structure and compute its info hash.

    Raises ``TruncatedTorrent`` for a well-formed beginning of one (a copy still being written),
    ``InvalidInput`` for anything else that is not a .torrent.
    """
    spans: dict[bytes, tuple[int, int]] = {}
    try:
        meta, end = _bdecode(data, 0, spans)
        if not isinstance(meta, dict):
            raise ValueError("not a dictionary")
        if end != len(data):
            raise ValueError("trailing data")
        info = meta.get(b"info")
        if not isinstance(info, dict) or b"info" not in spans:
            raise ValueError("no info dictionary")
        if not isinstance(info.get(b"piece length"), int) or not (
            b"length" in info or b"files" in info
        ):
            raise ValueError("incomplete info dictionary")
    except _Truncated as exc:
        raise TruncatedTorrent(f"not a valid .torrent file ({exc})") from None
    except ValueError as exc:
        raise InvalidInput(f"not a valid .torrent file ({exc})") from None
    start, stop = spans[b"info"]
    name = info.get(b"name", b"")
    return TorrentFile(
        info_hash=hashlib.sha1(data[start:stop]).hexdigest(),
        name=name.decode("utf-8", "replace") if isinstance(name, bytes) else "",
        data=data,
    )


# --- selection ----------------------------------------------------------------------------------


def check_policy(policy: str) -> str:
    if policy not in SELECTION_POLICIES:
        raise InvalidInput(
            f"unknown selection policy {policy!r} (choose from {', '.join(SELECTION_POLICIES)})"
        )
    return policy


def choose_files(info: TorrentInfo, policy: str) -> Literal["all"] | list[int]:
    """The files to select: ``all``, or for ``video`` the video files and subtitles.

    A torrent without any video file gets everything selected rather than nothing.
    """
    if check_policy(policy) == "all":
        return "all"
    wanted = VIDEO_EXTENSIONS | SUBTITLE_EXTENSIONS
    ids = [
        f.id for f in info.files if split_extension(f.path.rsplit("/", 1)[-1])[1].lower() in wanted
    ]
    has_video = any(
        split_extension(f.path.rsplit("/", 1)[-1])[1].lower() in VIDEO_EXTENSIONS
        for f in info.files
    )
    return ids if has_video else "all"


# --- adding -------------------------------------------------------------------------------------


@dataclass
class Added:
    id: str
    info_hash: str
    name: str
    status: str
    duplicate: bool = False  # the hash was already in the account: nothing was added
    selected: bool = False  # files were selected (False while RD still converts the magnet)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hash": self.info_hash,
            "name": self.name,
            "status": self.status,
            "duplicate": self.duplicate,
            "selected": self.selected,
        }


async def _add_one(
    client: RDClient,
    payload: Magnet | TorrentFile,
    policy: str,
    convert_timeout: float,
    poll: float,
    created: list[str],
) -> Added:
    """Add one item; its id goes into ``created`` as soon as RD made it (for a rollback)."""
    kind = "magnet" if isinstance(payload, Magnet) else "torrent file"
    if isinstance(payload, Magnet):
        result = await client.add_magnet(payload.uri)
    else:
        result = await client.add_torrent(payload.data)
    created.append(result.id)
    log.info("added %s %s as torrent %s", kind, payload.info_hash, result.id)
    info = await select_when_ready(
        client,
        result.id,
        lambda info: choose_files(info, policy),
        timeout=convert_timeout,
        poll=poll,
    )
    if info.status in FAILED_STATUSES:
        raise ActionFailed(f"RD refused torrent {payload.info_hash}: status {info.status}")
    return Added(
        id=result.id,
        info_hash=payload.info_hash,
        name=info.filename,
        status=info.status,
        selected=info.status not in ("magnet_conversion", "waiting_files_selection"),
    )


async def _rollback(client: RDClient, created: Sequence[str]) -> list[str]:
    """Delete what the failed batch created; the ids that could not be deleted."""
    left = list(created)
    with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
        scope.shield = True
        for torrent_id in created:
            try:
                await client.delete_torrent(torrent_id)
            except UnknownResource:
                pass
            except RDError as exc:
                log.error("could not roll back torrent %s: %s", torrent_id, exc)
                continue
            log.info("rolled back torrent %s", torrent_id)
            left.remove(torrent_id)
    return left


async def add_items(
    client: RDClient,
    items: Sequence[Magnet | TorrentFile],
    *,
    policy: str = "all",
    known_hashes: Mapping[str, str] | None = None,
    convert_timeout: float = 0.0,
    poll_interval: float = 1.0,
    on_progress: Callable[[int], None] | None = None,
) -> list[Added]:
    """Add magnets and .torrent files as one batch; all of it or none of it.

    ``known_hashes`` maps the info hashes already in the account to their torrent ids: those
    are reported as duplicates and not added again. On a failure every torrent this batch
    created is deleted and ``ActionFailed`` raised; when the batch is cancelled, too (within
    ``ROLLBACK_TIMEOUT``). ``on_progress`` gets the number of items
    handled so far after each one (for a queue's status).
    """
    check_policy(policy)
    known = dict(known_hashes or {})
    results: list[Added] = []
    created: list[str] = []
    try:
        for item in items:
            if item.info_hash in known:
                results.append(Added(known[item.info_hash], item.info_hash, "", "", duplicate=True))
            else:
                added = await _add_one(
                    client, item, policy, convert_timeout, poll_interval, created
                )
                known[item.info_hash] = added.id
                results.append(added)
            if on_progress is not None:
                on_progress(len(results))
    except trio.Cancelled:
        # Stopped half-way (the mount stops): all or nothing still holds, within the bound.
        if created:
            log.warning(
                "add batch stopped half-way: removing the %d torrent(s) it had added", len(created)
            )
            await _rollback(client, created)
        raise
    except (RDError, ActionFailed) as exc:
        left = await _rollback(client, created) if created else []
        undone = (
            f"; the {len(created)} torrent(s) this batch had added were removed"
            if created and not left
            else ""
        )
        if left:
            undone = f"; could not remove torrent(s) {', '.join(left)} it had added"
        cause = exc if isinstance(exc, RDError) else exc.cause
        raise ActionFailed(f"adding failed: {exc}{undone}", cause=cause) from None
    return results


# --- deleting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    kind: Literal["torrent", "download"]
    id: str
    label: str  # what the user named it by, for messages

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "label": self.label}


async def delete_targets(
    client: RDClient, targets: Sequence[Target], *, on_progress: Callable[[int], None] | None = None
) -> list[Target]:
    """Delete each target upstream (already gone counts as deleted); ``ActionFailed`` on an error.

    ``on_progress`` gets the number of targets deleted so far after each one."""
    done: list[Target] = []
    for target in dict.fromkeys(targets):
        try:
            if target.kind == "torrent":
                await client.delete_torrent(target.id)
            else:
                await client.delete_download(target.id)
        except UnknownResource:
            log.info("%s %s was already gone upstream", target.kind, target.id)
        except RDError as exc:
            deleted = (
                f" (deleted before the failure: {', '.join(t.label for t in done)})" if done else ""
            )
            raise ActionFailed(
                f"deleting {target.label} failed: {exc}{deleted}",
                cause=exc,
                done=[t.id for t in done],
            ) from None
        else:
            log.info("deleted %s %s (%s)", target.kind, target.id, target.label)
        done.append(target)
        if on_progress is not None:
            on_progress(len(done))
    return done
