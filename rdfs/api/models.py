"""Typed records for the Real-Debrid API.

Every record is a frozen dataclass built with ``from_json``, which takes the
JSON object RD sent, keeps the fields the reference documents, tolerates
missing optional ones and ignores unknown extras (RD adds fields over time).
The untouched JSON stays available as ``raw`` for the few callers that need
an undocumented field.

Validation happens here, at the client's edge, so nothing odd travels further (issue 15):
``decode_json`` turns an answer into Python values without ever producing an infinity or NaN
(``Infinity``, ``NaN`` and ``1e400`` decode to ``NON_FINITE``, a marker no validator accepts) and
maps every decoding failure (not JSON, too deep, not UTF-8) to ``UnexpectedResponse``. The
fields rdfs relies on are checked strictly: sizes are ints with ``0 <= n < 2**63`` (``MAX_SIZE``),
ids are non-empty strings (a JSON integer id becomes its decimal string, RD's own ids being
strings of digits and letters), URLs are http(s) with a host that encodes (``check_url``). A
record that fails raises ``BadRecord``; list endpoints drop such a record, and a torrent's
aggregate ``bytes`` (informational only) is clamped to 0 instead. What was dropped or clamped is
listed in the record's ``problems`` for the client to log once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Self

import httpx

from rdfs.api.errors import BadRecord, UnexpectedResponse

# Torrent statuses from the reference, grouped by what rdfs does with them.
STATUS_DOWNLOADED = "downloaded"
ACTIVE_STATUSES = frozenset(
    {
        "magnet_conversion",
        "waiting_files_selection",
        "queued",
        "downloading",
        "compressing",
        "uploading",
    }
)
FAILED_STATUSES = frozenset({"magnet_error", "error", "virus", "dead"})


MAX_SIZE: Final = 2**63 - 1  # sqlite's INTEGER and off_t: the largest size a file can have
MAX_URL_LENGTH: Final = 8192
_INT64 = range(-(2**63), 2**63)


class _NonFinite:
    """The value of ``Infinity``, ``-Infinity``, ``NaN`` or an overflowing literal (``1e400``)."""

    _instance: _NonFinite | None = None

    def __new__(cls) -> _NonFinite:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NON_FINITE"


NON_FINITE: Final = _NonFinite()


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NON_FINITE


def decode_json(content: bytes, *, endpoint: str = "", status: int = 0) -> Any:
    """Parse an answer body; every failure is ``UnexpectedResponse`` (the client's own error).

    A number that is not finite becomes ``NON_FINITE`` rather than failing the whole answer, so
    one bad record of a list is dropped alone; nesting beyond Python's recursion limit fails
    the answer (``RecursionError`` is caught here, it never reaches the caller).
    """
    try:
        return json.loads(
            content, parse_constant=lambda _name: NON_FINITE, parse_float=_parse_float
        )
    except RecursionError:
        what = "a body nested too deep"
    except UnicodeDecodeError:
        what = "a non-JSON body (not UTF-8)"
    except ValueError:
        what = "a non-JSON body"
    where = f"{endpoint}: " if endpoint else ""
    raise UnexpectedResponse(
        f"{where}HTTP {status} with {what} ({len(content)} bytes)", endpoint=endpoint, status=status
    ) from None


def check_size(value: Any, name: str) -> int:
    """``value`` as a size, else ``BadRecord``.

    A size is an int, or an integral float, with ``0 <= n <= MAX_SIZE``.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRecord(f"{name} is not a number ({_show(value)})")
    if not 0 <= value <= MAX_SIZE:
        raise BadRecord(f"{name} {_show(value)} is out of range (0 to 2^63-1)")
    return value


def check_id(value: Any, name: str = "id") -> str:
    """An RD id as a non-empty string; a JSON integer id becomes its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if (
        isinstance(value, str)
        and value.isprintable()
        and 0 < len(value) <= 256
        and value.strip(".")
    ):
        if "/" in value or "\\" in value:
            raise BadRecord(f"{name} {_show(value)} is not an id (a path separator)")
        return value  # printable, no path separator, not "." or "..": one URL segment as it is
    raise BadRecord(f"{name} {_show(value)} is not an id (a non-empty string)")


def check_url(value: Any, name: str = "download") -> str:
    """An http(s) URL whose host encodes (IDNA) or is a valid IP literal, else ``BadRecord``.

    httpx itself must accept it: a URL it cannot encode would otherwise fail outside the
    client's error types, at the first read.
    """
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{name} is not a URL ({_show(value)})")
    if len(value) > MAX_URL_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
        raise BadRecord(f"{name} is not a URL (control characters, spaces or too long)")
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError when out of range)
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL with a host")
        if ":" in host:
            if "%" in host:
                raise ValueError("an IPv6 zone id")
            ipaddress.IPv6Address(host)
        else:
            host.encode("idna")  # empty or over-long labels
        if not httpx.URL(value).host:
            raise ValueError("no host")
    except (ValueError, UnicodeError, httpx.InvalidURL) as exc:  # idna.IDNAError is a UnicodeError
        raise BadRecord(f"{name} URL refused: {type(exc).__name__}") from None
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` with ``NON_FINITE`` as None and nesting cut at 16 levels.

    The result is safe for ``json.dumps``.
    """
    if value is NON_FINITE or depth > 16:
        return None
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, depth + 1) for v in value]
    return value


def parse_date(value: Any) -> datetime | None:
    """Parse RD's ``date.toJSON`` strings (``2024-01-02T03:04:05.000Z``) to aware datetimes."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _int(value: Any, default: int = 0) -> int:
    """A lenient int for fields nothing depends on: ``default`` when absent, odd or not int64."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if number in _INT64 else default


def _bounded(value: Any, default: int, low: int, high: int) -> int:
    """``_int`` for a duration rdfs waits on: ``default`` unless ``low <= value <= high``."""
    number = _int(value, default)
    return number if low <= number <= high else default


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


@dataclass(frozen=True, slots=True)
class Record:
    """Base: ``raw`` keeps the JSON as received, excluded from equality."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    # What validation dropped or clamped (for one warning per record; see the module docstring).
    problems: tuple[str, ...] = field(default=(), repr=False, compare=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class User(Record):
    id: int
    username: str
    email: str = ""
    points: int = 0
    locale: str = ""
    avatar: str = ""
    type: str = ""  # "premium" or "free"
    premium: int = 0  # seconds of premium left
    expiration: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            id=_int(data.get("id")),
            username=_str(data.get("username")),
            email=_str(data.get("email")),
            points=_int(data.get("points")),
            locale=_str(data.get("locale")),
            avatar=_str(data.get("avatar")),
            type=_str(data.get("type")),
            premium=_int(data.get("premium")),
            expiration=parse_date(data.get("expiration")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class TorrentFile(Record):
    """One file of a torrent as ``/torrents/info`` lists it (``path`` starts with ``/``)."""

    id: int
    path: str
    bytes: int
    selected: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Raises ``BadRecord`` when the id or the size is unusable."""
        file_id = data.get("id")
        if not isinstance(file_id, int) or isinstance(file_id, bool) or file_id not in _INT64:
            raise BadRecord(f"file id {_show(file_id)} is not an integer")
        return cls(
            id=file_id,
            path=_str(data.get("path")),
            bytes=check_size(data.get("bytes"), f"file {file_id} bytes"),
            selected=_int(data.get("selected")) == 1,
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Torrent(Record):
    """A torrent as ``/torrents`` lists it (no files)."""

    id: str
    filename: str
    hash: str
    bytes: int
    host: str
    split: int
    progress: float
    status: str
    added: datetime | None
    links: tuple[str, ...]
    ended: datetime | None = None
    speed: int | None = None
    seeders: int | None = None

    @classmethod
    def _fields_from_json(cls, data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
        """Raises ``BadRecord`` for an unusable id.

        A bad ``bytes`` is clamped to 0 (and noted in ``problems``).
        """
        links = data.get("links")
        try:
            size = check_size(data.get("bytes", 0), "bytes")
        except BadRecord as exc:
            problems.append(f"{exc}: taken as 0")
            size = 0
        return dict(
            id=check_id(data.get("id")),
            filename=_str(data.get("filename")),
            hash=_str(data.get("hash")).lower(),
            bytes=size,
            host=_str(data.get("host")),
            split=_int(data.get("split")),
            progress=_float(data.get("progress", 0)),
            status=_str(data.get("status")),
            added=parse_date(data.get("added")),
            links=tuple(link for link in links if isinstance(link, str))
            if isinstance(links, list)
            else (),
            ended=parse_date(data.get("ended")),
            speed=_int(data["speed"]) if "speed" in data else None,
            seeders=_int(data["seeders"]) if "seeders" in data else None,
            raw=data,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        problems: list[str] = []
        fields = cls._fields_from_json(data, problems)
        return cls(**fields, problems=tuple(problems))

    @property
    def is_downloaded(self) -> bool:
        return self.status == STATUS_DOWNLOADED


@dataclass(frozen=True, slots=True)
class TorrentInfo(Torrent):
    """A torrent as ``/torrents/info/{id}`` returns it: with its files."""

    original_filename: str = ""
    original_bytes: int = 0
    files: tuple[TorrentFile, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """A file with an unusable id or size is dropped alone, and so is its link when each
        selected file has its own (``links[i]`` keeps belonging to the i-th selected file)."""
        problems: list[str] = []
        fields = cls._fields_from_json(data, problems)
        raw_files = data.get("files")
        raw_files = (
            [f for f in raw_files if isinstance(f, dict)] if isinstance(raw_files, list) else []
        )
        selected_count = sum(1 for f in raw_files if _int(f.get("selected")) == 1)
        one_link_each = len(fields["links"]) == selected_count
        files: list[TorrentFile] = []
        links: list[str] = []
        selected_index = 0
        for raw_file in raw_files:
            selected = _int(raw_file.get("selected")) == 1
            try:
                files.append(TorrentFile.from_json(raw_file))
                if selected and one_link_each:
                    links.append(fields["links"][selected_index])
            except BadRecord as exc:
                problems.append(f"{exc}: file {_show(_str(raw_file.get('path')))} dropped")
            selected_index += selected
        if one_link_each:
            fields["links"] = tuple(links)
        try:
            original_bytes = check_size(data.get("original_bytes", 0), "original_bytes")
        except BadRecord as exc:
            problems.append(f"{exc}: taken as 0")
            original_bytes = 0
        return cls(
            **fields,
            original_filename=_str(data.get("original_filename")),
            original_bytes=original_bytes,
            files=tuple(files),
            problems=tuple(problems),
        )

    @property
    def selected_files(self) -> tuple[TorrentFile, ...]:
        """Selected files in file order.

        ``links[i]`` belongs to ``selected_files[i]`` unless packed.
        """
        return tuple(f for f in self.files if f.selected)


@dataclass(frozen=True, slots=True)
class Download(Record):
    """An entry of ``/downloads``, also the shape ``/unrestrict/link`` returns."""

    id: str
    filename: str
    filesize: int
    link: str  # the original hoster link
    host: str
    download: str  # the generated (unrestricted) URL
    mime_type: str = ""
    chunks: int = 0
    crc: int = 0
    streamable: int = 0
    generated: datetime | None = None
    type: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Raises ``BadRecord`` for an unusable id, ``filesize`` or ``download`` URL (an empty
        ``download`` is left to the caller: RD's way of saying it has no link)."""
        download = _str(data.get("download"))
        return cls(
            id=check_id(data.get("id")),
            filename=_str(data.get("filename")),
            filesize=check_size(data.get("filesize", 0), "filesize"),
            link=_str(data.get("link")),
            host=_str(data.get("host")),
            download=check_url(data.get("download"))
            if data.get("download") not in (None, "")
            else download,
            mime_type=_str(data.get("mimeType")),
            chunks=_int(data.get("chunks")),
            crc=_int(data.get("crc")),
            streamable=_int(data.get("streamable")),
            generated=parse_date(data.get("generated")),
            type=_str(data.get("type")),
            raw=data,
        )


# /unrestrict/link returns the same shape as a /downloads entry (plus "alternative").
UnrestrictedLink = Download


@dataclass(frozen=True, slots=True)
class LinkCheck(Record):
    """``/unrestrict/check`` result."""

    host: str
    link: str
    filename: str
    filesize: int
    supported: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            host=_str(data.get("host")),
            link=_str(data.get("link")),
            filename=_str(data.get("filename")),
            filesize=_int(data.get("filesize")),
            supported=_int(data.get("supported")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Created(Record):
    """``addMagnet`` / ``addTorrent`` result."""

    id: str
    uri: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(id=check_id(data.get("id")), uri=_str(data.get("uri")), raw=data)


@dataclass(frozen=True, slots=True)
class ActiveCount(Record):
    nb: int
    limit: int
    hashes: tuple[str, ...] = ()  # undocumented "list" seen in the field

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        hashes = data.get("list")
        return cls(
            nb=_int(data.get("nb")),
            limit=_int(data.get("limit")),
            hashes=tuple(h for h in hashes if isinstance(h, str))
            if isinstance(hashes, list)
            else (),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class AvailableHost(Record):
    host: str
    max_file_size: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            host=_str(data.get("host")), max_file_size=_int(data.get("max_file_size")), raw=data
        )


@dataclass(frozen=True, slots=True)
class TrafficHost(Record):
    """One host of ``/traffic``."""

    host: str
    left: int
    bytes: int
    links: int
    limit: int
    type: str
    extra: int
    reset: str

    @classmethod
    def from_json(cls, host: str, data: dict[str, Any]) -> Self:
        return cls(
            host=host,
            left=_int(data.get("left")),
            bytes=_int(data.get("bytes")),
            links=_int(data.get("links")),
            limit=_int(data.get("limit")),
            type=_str(data.get("type")),
            extra=_int(data.get("extra")),
            reset=_str(data.get("reset")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Token(Record):
    """An OAuth token answer from ``/oauth/v2/token``; ``expires_at`` is a UNIX time."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"
    expires_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any], now: float) -> Self:
        expires_in = _bounded(
            data.get("expires_in"), 3600, 1, 10**8
        )  # a token valid 0 s would refresh per request
        return cls(
            access_token=_str(data.get("access_token")),
            refresh_token=_str(data.get("refresh_token")),
            expires_in=expires_in,
            token_type=_str(data.get("token_type"), "Bearer"),
            expires_at=now + expires_in,
            raw=data,
        )

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return f"Token(token_type={self.token_type!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class DeviceCode(Record):
    device_code: str
    user_code: str
    interval: int
    expires_in: int
    verification_url: str
    direct_verification_url: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            device_code=_str(data.get("device_code")),
            user_code=_str(data.get("user_code")),
            interval=_bounded(
                data.get("interval"), 5, 1, 60
            ),  # never a busy poll, never a stuck one
            expires_in=_bounded(data.get("expires_in"), 600, 1, 86400),
            verification_url=_str(data.get("verification_url")),
            direct_verification_url=_str(data.get("direct_verification_url")),
            raw=data,
        )

    def __repr__(self) -> str:
        return (
            f"DeviceCode(user_code={self.user_code!r}, verification_url={self.verification_url!r})"
        )


@dataclass(frozen=True, slots=True)
class ClientCredentials(Record):
    """Per-user ``client_id``/``client_secret`` from ``/oauth/v2/device/credentials``."""

    client_id: str
    client_secret: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            client_id=_str(data.get("client_id")),
            client_secret=_str(data.get("client_secret")),
            raw=data,
        )

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r})"


@dataclass(frozen=True, slots=True)
class TrafficDay(Record):
    """One day of ``/traffic/details``: bytes per host and the day's total."""

    date: str  # YYYY-MM-DD
    hosts: dict[str, int]
    bytes: int

    @classmethod
    def from_json(cls, date: str, data: dict[str, Any]) -> Self:
        hosts = data.get("host")
        return cls(
            date=date,
            hosts={str(k): _int(v) for k, v in hosts.items()} if isinstance(hosts, dict) else {},
            bytes=_int(data.get("bytes")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class MediaInfo(Record):
    """``/streaming/mediaInfos/{id}``.

    ``details`` keeps the video/audio/subtitles streams as sent.
    """

    filename: str
    hoster: str
    link: str
    type: str
    duration: float
    bitrate: int
    size: int
    season: str | None = None
    episode: str | None = None
    year: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    poster_path: str = ""
    backdrop_path: str = ""
    audio_image: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        duration = data.get("duration")
        details = data.get("details")

        def optional(name: str) -> str | None:
            value = data.get(name)
            return None if value is None or value is NON_FINITE else str(value)[:64]

        return cls(
            filename=_str(data.get("filename")),
            hoster=_str(data.get("hoster")),
            link=_str(data.get("link")),
            type=_str(data.get("type")),
            duration=_float(duration),
            bitrate=_int(data.get("bitrate")),
            size=_int(data.get("size")),
            season=optional("season"),
            episode=optional("episode"),
            year=optional("year"),
            details=plain(details) if isinstance(details, dict) else {},
            poster_path=_str(data.get("poster_path")),
            backdrop_path=_str(data.get("backdrop_path")),
            audio_image=_str(data.get("audio_image")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Host(Record):
    """One supported hoster (``/hosts``; ``/hosts/status`` adds the status fields)."""

    domain: str
    id: str
    name: str
    image: str = ""
    supported: int | None = None
    status: str = ""  # "up" / "down" / "unsupported" (``/hosts/status`` only)
    check_time: datetime | None = None

    @classmethod
    def from_json(cls, domain: str, data: dict[str, Any]) -> Self:
        return cls(
            domain=domain,
            id=_str(data.get("id")),
            name=_str(data.get("name")),
            image=_str(data.get("image")),
            supported=_int(data["supported"]) if "supported" in data else None,
            status=_str(data.get("status")),
            check_time=parse_date(data.get("check_time")),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Settings(Record):
    """``/settings``: current values; the possible values stay in ``raw``."""

    download_port: str = ""
    locale: str = ""
    streaming_quality: str = ""
    mobile_streaming_quality: str = ""
    streaming_language_preference: str = ""
    streaming_cast_audio_preference: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            download_port=_str(data.get("download_port")),
            locale=_str(data.get("locale")),
            streaming_quality=_str(data.get("streaming_quality")),
            mobile_streaming_quality=_str(data.get("mobile_streaming_quality")),
            streaming_language_preference=_str(data.get("streaming_language_preference")),
            streaming_cast_audio_preference=_str(data.get("streaming_cast_audio_preference")),
            raw=data,
        )


def replace(record: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that keeps ``raw``."""
    return dataclasses.replace(record, **changes)
