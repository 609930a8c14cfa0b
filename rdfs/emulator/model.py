"""The emulator's state records, its RD-shaped JSON and RD's error answers."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .content import Segment

HOST = "real-debrid.com"
HOSTER_LINK_PREFIX = f"https://{HOST}/d/"
ID_LENGTH = 13

# RD's error answers: name -> (HTTP status, error_code), as seen in the field.
ERRORS: dict[str, tuple[int, int]] = {
    "internal_error": (500, -1),
    "parameter_missing": (400, 1),
    "wrong_parameter": (400, 2),
    "unknown_method": (404, 3),
    "method_not_allowed": (405, 4),
    "unknown_ressource": (404, 7),
    "bad_token": (401, 8),
    "permission_denied": (403, 9),
    "hoster_unsupported": (503, 16),
    "hoster_unavailable": (503, 19),
    "too_many_active_downloads": (509, 21),
    "unavailable_file": (503, 24),
    "service_unavailable": (503, 25),
    "torrent_file_invalid": (400, 30),
    "action_already_done": (202, 31),
    "too_many_requests": (429, 34),
    "infringing_file": (451, 35),
    "fair_usage_limit": (503, 36),
    "disabled_endpoint": (403, 37),
}


class Refusal(Exception):
    """An RD error answer: ``{"error": name, "error_code": N}`` with RD's HTTP status."""

    def __init__(
        self, error: str, details: str | None = None, *, status: int | None = None
    ) -> None:
        default_status, code = ERRORS[error]
        super().__init__(error)
        self.error = error
        self.code = code
        self.status = status if status is not None else default_status
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "error_code": self.code}
        if self.details is not None:
            body["error_details"] = self.details
        return body


class DownloadUnavailable(Exception):
    """A download URL that no longer serves: ``status`` is the HTTP status of RD's error page."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def missing(name: str) -> Refusal:
    return Refusal("parameter_missing", f"The parameter {name} is missing")


def rd_date(moment: datetime) -> str:
    """Javascript ``date.toJSON`` format: ``2024-01-02T03:04:05.000Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_id(*parts: object) -> str:
    """A 13-character A-Z2-7 identifier derived from ``parts`` (RD's id alphabet)."""
    digest = hashlib.sha1("\0".join(map(str, parts)).encode()).digest()
    return base64.b32encode(digest[:10]).decode()[:ID_LENGTH]


def mime_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


@dataclass(slots=True)
class FileSpec:
    """A file to put in an emulated torrent. ``path`` starts with ``/`` (RD's file paths).

    Contents come from ``source`` (a real file) when given, else synthetic bytes of ``seed``
    (default: derived from the torrent's hash and the path).
    """

    path: str
    size: int
    source: Path | None = None
    seed: str | None = None


@dataclass(slots=True)
class EmuFile:
    id: int  # RD file ids start at 1
    path: str
    size: int
    source: Path | None
    seed: str


@dataclass(slots=True)
class Content:
    """What a torrent's hash stands for; shared by every torrent added with that hash."""

    name: str
    hash: str
    files: tuple[EmuFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(slots=True)
class Schedule:
    """Monotonic times at which an added torrent moves on (``None``: waits for an action)."""

    converted_at: float | None = None  # magnet_conversion -> waiting_files_selection
    started_at: float | None = None  # queued -> downloading
    finished_at: float | None = None  # downloading -> downloaded


@dataclass(slots=True)
class TorrentRec:
    id: str
    seq: int
    content: Content
    status: str
    added: datetime
    selected: frozenset[int] = frozenset()
    progress: float = 0.0
    ended: datetime | None = None
    links: list[str] = field(default_factory=list)
    packed: bool = False
    schedule: Schedule | None = None
    speed: int = 0
    seeders: int = 0

    def selected_files(self) -> list[EmuFile]:
        return [f for f in self.content.files if f.id in self.selected]

    def filename(self) -> str:
        chosen = self.selected_files()
        if len(chosen) == 1 and len(self.content.files) > 1:
            return PurePosixPath(chosen[0].path).name
        return self.content.name

    def bytes(self) -> int:
        chosen = self.selected_files()
        return sum(f.size for f in chosen) if chosen else self.content.size

    def list_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "filename": self.filename(),
            "hash": self.content.hash,
            "bytes": self.bytes(),
            "host": HOST,
            "split": 2000,
            "progress": round(self.progress)
            if self.progress == int(self.progress)
            else round(self.progress, 2),
            "status": self.status,
            "added": rd_date(self.added),
            "links": list(self.links),
        }
        if self.ended is not None:
            body["ended"] = rd_date(self.ended)
        if self.status in ("downloading", "compressing", "uploading"):
            body["speed"] = self.speed
        if self.status in ("downloading", "magnet_conversion"):
            body["seeders"] = self.seeders
        return body

    def info_json(self) -> dict[str, Any]:
        body = self.list_json()
        body["original_filename"] = self.content.name
        body["original_bytes"] = self.content.size
        body["files"] = [
            {"id": f.id, "path": f.path, "bytes": f.size, "selected": int(f.id in self.selected)}
            for f in self.content.files
        ]
        return body


@dataclass(slots=True)
class LinkTarget:
    """What a hoster link ``https://real-debrid.com/d/<id>`` points at."""

    torrent_id: str
    file_ids: tuple[int, ...]  # one file, or every selected file of a packed torrent


@dataclass(slots=True)
class DownloadRec:
    """An entry of ``/downloads``; ``id`` is also the download URL's token."""

    id: str
    seq: int
    filename: str
    filesize: int
    link: str
    download: str
    generated: datetime
    expires_at: float  # monotonic
    torrent_id: str
    segments: tuple[Segment, ...]  # the body served at the download URL
    host: str = HOST  # the hoster of ``link`` (RD itself for a torrent's links)

    def json(self) -> dict[str, Any]:
        mime = mime_type(self.filename)
        return {
            "id": self.id,
            "filename": self.filename,
            "mimeType": mime,
            "filesize": self.filesize,
            "link": self.link,
            "host": self.host,
            "host_icon": "https://fcdn.real-debrid.com/0830/images/hosters/realdebrid.png",
            "chunks": 32,
            "crc": 1,
            "download": self.download,
            "streamable": int(mime.startswith(("video/", "audio/"))),
            "generated": rd_date(self.generated),
        }


@dataclass(slots=True)
class AccessToken:
    kind: str  # "private" or "oauth"
    expires_at: float | None  # monotonic; None: never
    refresh_token: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class DeviceGrant:
    device_code: str = field(repr=False)
    user_code: str
    client_id: str
    new_credentials: bool
    expires_at: float  # monotonic
    approved: bool = False
    issued_client_id: str | None = None
    issued_client_secret: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class Faults:
    """Faults the emulator injects; mutate the fields of ``emu.faults`` at any time."""

    api_latency: float = 0.0  # seconds added before every API answer
    api_error_rate: float = 0.0  # fraction of API requests answered with api_error_status
    api_error_status: int = 503
    api_down: bool = False  # every API request fails with 503 service_unavailable
    empty_lists: bool = False  # /torrents and /downloads look empty, as in an outage
    empty_lists_status: int = 200  # 200 with [] or 204 with no body
    download_latency: float = 0.0  # seconds before a download's first byte
    download_drop_rate: float = 0.0  # fraction of download bodies cut mid-way
    download_bytes_per_second: int | None = None  # per-stream bandwidth cap
    download_error_rate: float = 0.0  # fraction of downloads refused with download_error_status
    download_error_status: int = 503
    ignore_range: bool = False  # downloads answer 200 with the full body
    download_redirect: bool = False  # each download is first answered 302 to the same file (?hop=1)
    content_range_shift: int = (
        0  # a ranged download starts this many bytes early (truthful Content-Range)
    )
    malformed_json_rate: float = 0.0  # fraction of JSON API answers cut in half (200, invalid JSON)
    rate_limit_per_minute: int | None = None  # sliding 60 s window, 429 too_many_requests beyond
    # Adds (addMagnet, addTorrent) allowed in a sliding window of this many seconds, 429 beyond:
    # RD throttles adds harder than the global limit (field notes: ~20 per 10 s).
    add_limit: tuple[int, float] | None = None
    # hostile downloads (issue 15)
    download_drip_interval: float = 0.0  # > 0: download bodies come one byte per this many seconds
    download_redirect_location: str | None = None  # every download is answered 302 to this Location
    download_content_encoding: str | None = None  # e.g. "gzip": bodies compressed, with that header
    # hostile API answers (issue 15): values are raw JSON text, spliced as sent ("1e400",
    # "Infinity", "18446744073709551616", "-5", "12345" for a number id, "[[[...]]]").
    # Per torrent id: field -> raw JSON in its /torrents item and its /torrents/info answer;
    # "info.<field>" changes the info answer only, "files.<n>.<field>" file n (0-based) of it.
    torrent_fields: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per hoster link ("*": every link): field -> raw JSON in its /unrestrict/link answer.
    unrestrict_fields: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per hoster link: an RD error name (ERRORS) /unrestrict/link answers instead, e.g.
    # "infringing_file".
    unrestrict_errors: dict[str, str] = field(default_factory=dict)
    # Per endpoint counter name ("GET /torrents/info"): [status, body] answered instead of a
    # success (a body starting with "<" is served as text/html).
    api_raw_bodies: dict[str, tuple[int, str]] = field(default_factory=dict)
    # Per endpoint counter name ("*": every endpoint): seconds between the bytes of its answers.
    api_drip: dict[str, float] = field(default_factory=dict)
    # hostile listings (issue 15): /torrents and /downloads only
    list_total: str | None = (
        None  # X-Total-Count sent instead of the truth; "page": the page's limit
    )
    list_ignore_page: bool = False  # page and offset ignored: every page is the first one
    list_hidden_ids: tuple[str, ...] = ()  # left out of listings (and their totals), still upstream
    list_drip_seconds: float = 0.0  # list bodies are sent one byte every this many seconds
