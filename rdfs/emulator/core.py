"""The emulator's state and behaviour: accounts, torrents, links, downloads and OAuth grants.

``Emulator`` is both what the HTTP routes call and the Python control API tests call directly
(in-process, on the same trio loop). Everything here is synchronous and non-blocking; the HTTP
layer lives in ``app.py`` and ``download.py``.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import trio

from . import names, rar
from .bencode import BencodeError, parse_torrent
from .content import Segment, read_segments, read_source, synthetic_bytes
from .model import (
    HOST,
    HOSTER_LINK_PREFIX,
    AccessToken,
    Content,
    DeviceGrant,
    DownloadRec,
    DownloadUnavailable,
    EmuFile,
    Faults,
    FileSpec,
    LinkTarget,
    Refusal,
    Schedule,
    TorrentRec,
    make_id,
    missing,
    rd_date,
)

log = logging.getLogger(__name__)

STATUSES = frozenset(
    {
        "magnet_error",
        "magnet_conversion",
        "waiting_files_selection",
        "queued",
        "downloading",
        "downloaded",
        "error",
        "virus",
        "compressing",
        "uploading",
        "dead",
    }
)
ACTIVE = frozenset({"magnet_conversion", "queued", "downloading", "compressing", "uploading"})
OPEN_SOURCE_CLIENT_ID = "X245A4XAIBGVM"
DEVICE_GRANT = "http://oauth.net/grant_type/device/1.0"
_HOSTER_LINK = re.compile(r"^https?://(?:www\.)?real-debrid\.com/d/([A-Za-z0-9]+)", re.IGNORECASE)
_BTIH = re.compile(r"^[0-9a-fA-F]{40}$|^[A-Za-z2-7]{32}$")


def _secret(length: int) -> str:
    return base64.b32encode(secrets.token_bytes(length)).decode()[:length]


def _url_name(filename: str) -> str:
    """The filename as the last URL segment; a name of dots is escaped so no client drops it."""
    quoted = quote(filename, safe="")
    return quoted.replace(".", "%2E") if quoted.strip(".") == "" else quoted


def _now() -> datetime:
    return datetime.now(UTC)


class Emulator:
    """A Real-Debrid account on 127.0.0.1: state, control API, and the server (``serve``).

    ``token`` is the private API token (random when omitted). Torrents added through the API
    go through RD's status machine with the given durations (seconds; 0 = instant):
    ``magnet_conversion_time`` before waiting_files_selection, then after selectFiles
    ``queue_time`` queued and ``download_time`` downloading. All of these, ``link_ttl``,
    ``access_token_ttl`` and ``active_limit`` are plain attributes tests may change at any time.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        link_ttl: float = 4 * 3600,
        access_token_ttl: float = 3600,
        magnet_conversion_time: float = 0.0,
        queue_time: float = 0.0,
        download_time: float = 0.0,
        active_limit: int = 25,
        rate_limit_per_minute: int | None = None,
        seed: str = "rdfs-emulator",
    ) -> None:
        self.token = token or _secret(52)
        self.link_ttl = link_ttl
        self.access_token_ttl = access_token_ttl
        self.magnet_conversion_time = magnet_conversion_time
        self.queue_time = queue_time
        self.download_time = download_time
        self.active_limit = active_limit
        # When set, a link whose body is one real file under ``download_root`` is handed out as
        # ``download_base_url/<path relative to download_root>`` (a static server such as nginx,
        # for benchmarks); everything else stays served by the emulator.
        self.download_base_url: str | None = None
        self.download_root: Path | None = None
        self.faults = Faults(rate_limit_per_minute=rate_limit_per_minute)
        self.counters: collections.Counter[str] = collections.Counter()
        self.base_url = ""
        self.api_url = ""
        self.oauth_url = ""
        self.rng = random.Random(seed)
        self._salt = seed
        self._seq = 0
        self._torrents: dict[str, TorrentRec] = {}
        self._order: list[TorrentRec] | None = None  # newest first, rebuilt lazily
        self._pending: set[str] = set()  # torrents with a scheduled transition
        self._catalog: dict[str, Content] = {}
        self._links: dict[str, LinkTarget] = {}
        self._downloads: dict[str, DownloadRec] = {}  # listed in /downloads, oldest first
        self._urls: dict[str, DownloadRec] = {}  # every download URL handed out
        self._tokens: dict[str, AccessToken] = {self.token: AccessToken("private", None)}
        self._refresh: dict[str, str] = {}  # refresh token -> client id
        self._apps: dict[str, str] = {}  # client id -> client secret
        self._grants: dict[str, DeviceGrant] = {}  # by device code
        self._auth_codes: dict[str, tuple[str, str]] = {}  # code -> (client id, redirect uri)
        self.api_hits: collections.deque[float] = collections.deque()
        self.add_hits: collections.deque[float] = collections.deque()
        self.traffic: collections.Counter[str] = collections.Counter()  # YYYY-MM-DD -> bytes
        self.user: dict[str, Any] = {
            "id": 4242,
            "username": "emulator",
            "email": "emulator@example.invalid",
            "points": 1000,
            "locale": "en",
            "avatar": "https://fcdn.real-debrid.com/images/forum/empty.png",
            "type": "premium",
            "premium": 180 * 86400,
        }
        self.settings: dict[str, Any] = {
            "download_port": "normal",
            "locale": "en",
            "streaming_language_preference": "eng",
            "streaming_quality": "original",
            "mobile_streaming_quality": "1080",
            "streaming_cast_audio_preference": "ac3",
        }

    def __repr__(self) -> str:
        return f"Emulator(base_url={self.base_url!r}, torrents={len(self._torrents)})"

    # ------------------------------------------------------------------ server

    async def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled: ``emu = await nursery.start(emu.serve)``."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from .app import build_app

        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.keep_alive_timeout = 120
        config.keep_alive_max_requests = 1_000_000
        config.graceful_timeout = 0.5
        async with trio.open_nursery() as nursery:
            # hypercorn's ASGI type is narrower than Starlette's app type; they are compatible.
            app: Any = build_app(self)
            binds = await nursery.start(functools.partial(serve, app, config))
            self.base_url = binds[0]
            self.api_url = f"{self.base_url}/rest/1.0"
            self.oauth_url = f"{self.base_url}/oauth/v2"
            log.info("RD emulator listening on %s", self.base_url)
            task_status.started(self)

    # ------------------------------------------------------------------ ids and time

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_id(self, kind: str, taken: dict[str, Any]) -> str:
        while True:
            ident = make_id(self._salt, kind, self._next_seq())
            if ident not in taken:
                return ident

    # ------------------------------------------------------------------ accounts and tokens

    def authenticate(self, token: str | None) -> str:
        """Check a bearer token; returns it, or raises ``bad_token``."""
        entry = self._tokens.get(token or "")
        if entry is None or (entry.expires_at is not None and time.monotonic() >= entry.expires_at):
            raise Refusal("bad_token")
        return token or ""

    def disable_token(self, token: str) -> None:
        self._tokens.pop(token, None)
        log.info("access token disabled")

    def user_json(self) -> dict[str, Any]:
        body = dict(self.user)
        body["expiration"] = rd_date(_now() + timedelta(seconds=body["premium"]))
        return body

    # ------------------------------------------------------------------ torrents: control API

    def _content(self, name: str, files: Sequence[FileSpec], info_hash: str | None) -> Content:
        if info_hash is None:
            digest = hashlib.sha1(name.encode())
            for spec in files:
                digest.update(f"\0{spec.path}\0{spec.size}".encode())
            info_hash = digest.hexdigest()
        info_hash = info_hash.lower()
        emu_files = []
        for number, spec in enumerate(files, start=1):
            if not spec.path.startswith("/"):
                raise ValueError(f"file path must start with '/': {spec.path!r}")
            emu_files.append(
                EmuFile(
                    number,
                    spec.path,
                    spec.size,
                    spec.source,
                    spec.seed or f"{info_hash}:{spec.path}",
                )
            )
        content = Content(name=name, hash=info_hash, files=tuple(emu_files))
        self._catalog[info_hash] = content
        return content

    def _insert(
        self,
        content: Content,
        status: str,
        *,
        selected: Iterable[int] | None = None,
        packed: bool = False,
        added: datetime | None = None,
    ) -> TorrentRec:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = _now()
        rec = TorrentRec(
            id=self._new_id("torrent", self._torrents),
            seq=self._seq,
            content=content,
            status=status,
            added=added or now,
            packed=packed,
        )
        if status not in ("magnet_conversion", "waiting_files_selection", "magnet_error"):
            rec.selected = (
                frozenset(selected)
                if selected is not None
                else frozenset(f.id for f in content.files)
            )
        if status in ("downloaded", "dead"):
            rec.progress = 100
            rec.ended = rec.added
            self._make_links(rec)
        self._torrents[rec.id] = rec
        self._order = None
        return rec

    def add_torrent(
        self,
        name: str,
        files: Sequence[FileSpec],
        *,
        status: str = "downloaded",
        selected: Iterable[int] | None = None,
        packed: bool = False,
        added: datetime | str | None = None,
        info_hash: str | None = None,
    ) -> str:
        """Add a torrent as if it had been added on RD; returns its id.

        ``selected`` holds RD file ids (1-based; default: all files). ``packed`` makes one
        link (a RAR archive) cover every selected file.
        """
        if isinstance(added, str):
            added = datetime.fromisoformat(added.replace("Z", "+00:00"))
        rec = self._insert(
            self._content(name, files, info_hash),
            status,
            selected=selected,
            packed=packed,
            added=added,
        )
        log.debug("added torrent %s (%s, %d files, %s)", rec.id, name, len(files), status)
        return rec.id

    def bulk_add_torrents(
        self, count: int, files_per_torrent: int = 5, file_size: int = 100 * 1024 * 1024
    ) -> list[str]:
        """Add ``count`` downloaded torrents of synthetic files quickly (older first)."""
        start = _now() - timedelta(seconds=count)
        ids = []
        for index in range(count):
            stem = f"Bulk.Release.{self._seq + 1:06d}"
            info_hash = hashlib.sha1(f"{self._salt}:bulk:{self._seq + 1}".encode()).hexdigest()
            files = [
                EmuFile(
                    number, f"/{stem}.part{number}.mkv", file_size, None, f"{info_hash}:{number}"
                )
                for number in range(1, files_per_torrent + 1)
            ]
            content = Content(name=stem, hash=info_hash, files=tuple(files))
            self._catalog[info_hash] = content
            ids.append(
                self._insert(content, "downloaded", added=start + timedelta(seconds=index)).id
            )
        log.info("bulk-added %d torrents of %d files", count, files_per_torrent)
        return ids

    def add_synthetic_library(self, count: int) -> list[str]:
        """Add ``count`` downloaded torrents with realistic movie/show names (synthetic bytes)."""
        start = _now() - timedelta(hours=count)
        return [
            self.add_torrent(
                *names.release(f"{self._salt}:library:{index}"),
                added=start + timedelta(hours=index),
            )
            for index in range(count)
        ]

    def add_media_dir(self, directory: Path) -> list[str]:
        """Each subdirectory (or file) of ``directory`` becomes a downloaded torrent of real
        files."""
        ids = []
        for entry in sorted(Path(directory).iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                specs = [
                    FileSpec(
                        "/" + path.relative_to(entry).as_posix(), path.stat().st_size, source=path
                    )
                    for path in sorted(entry.rglob("*"))
                    if path.is_file()
                ]
            else:
                specs = [FileSpec("/" + entry.name, entry.stat().st_size, source=entry)]
            if specs:
                ids.append(self.add_torrent(entry.name, specs))
        return ids

    def _get(self, torrent_id: str) -> TorrentRec:
        rec = self._torrents.get(torrent_id)
        if rec is None:
            raise Refusal("unknown_ressource")
        self._advance(rec, time.monotonic())
        return rec

    def remove_torrent(self, torrent_id: str) -> None:
        """The torrent disappears, as if deleted upstream (e.g. in RD's web UI)."""
        self._torrents.pop(torrent_id, None)
        self._pending.discard(torrent_id)
        self._order = None

    def set_status(self, torrent_id: str, status: str, progress: float | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        rec = self._get(torrent_id)
        rec.schedule = None
        self._pending.discard(rec.id)
        rec.status = status
        if status == "downloaded":
            self._finish(rec)
        elif status == "waiting_files_selection":
            rec.selected, rec.links, rec.ended, rec.progress = frozenset(), [], None, 0
        elif status in ACTIVE and not rec.selected and status != "magnet_conversion":
            rec.selected = frozenset(f.id for f in rec.content.files)
        if progress is not None:
            rec.progress = progress

    def kill_torrent(self, torrent_id: str) -> None:
        """Status ``dead``: unrestricting its links answers 503 hoster_unavailable, its URLs 404."""
        self.set_status(torrent_id, "dead")

    def torrent_json(self, torrent_id: str) -> dict[str, Any]:
        return self._get(torrent_id).info_json()

    def file_bytes(
        self, torrent_id: str, file_id: int, offset: int = 0, length: int | None = None
    ) -> bytes:
        """The source bytes of a file (for assertions)."""
        rec = self._torrents[torrent_id]
        emu_file = next((f for f in rec.content.files if f.id == file_id), None)
        if emu_file is None:
            raise KeyError(f"torrent {torrent_id} has no file {file_id}")
        if length is None:
            length = max(0, emu_file.size - offset)
        length = max(0, min(length, emu_file.size - offset))
        if emu_file.source is not None:
            return read_source(emu_file.source, offset, length)
        return synthetic_bytes(emu_file.seed, offset, length)

    def torrent_ids(self) -> list[str]:
        """Ids of every torrent, newest first."""
        return [rec.id for rec in self._ordered()]

    # ------------------------------------------------------------------ status machine

    def _make_links(self, rec: TorrentRec) -> None:
        chosen = [f.id for f in rec.selected_files()]
        groups = [tuple(chosen)] if rec.packed and chosen else [(file_id,) for file_id in chosen]
        rec.links = []
        for group in groups:
            link_id = make_id(self._salt, "link", rec.id, *group)
            self._links[link_id] = LinkTarget(rec.id, group)
            rec.links.append(HOSTER_LINK_PREFIX + link_id)

    def _finish(self, rec: TorrentRec) -> None:
        rec.status = "downloaded"
        rec.progress = 100
        rec.ended = _now()
        rec.schedule = None
        rec.speed = rec.seeders = 0
        self._pending.discard(rec.id)
        self._make_links(rec)

    def _advance(self, rec: TorrentRec, now: float) -> None:
        schedule = rec.schedule
        if schedule is None:
            return
        if (
            rec.status == "magnet_conversion"
            and schedule.converted_at is not None
            and now >= schedule.converted_at
        ):
            rec.status = "waiting_files_selection"
            rec.schedule = None
            self._pending.discard(rec.id)
            return
        if (
            rec.status == "queued"
            and schedule.started_at is not None
            and now >= schedule.started_at
        ):
            rec.status = "downloading"
        if (
            rec.status == "downloading"
            and schedule.finished_at is not None
            and schedule.started_at is not None
        ):
            if now >= schedule.finished_at:
                self._finish(rec)
                return
            span = max(schedule.finished_at - schedule.started_at, 1e-9)
            rec.progress = round(100 * max(0.0, now - schedule.started_at) / span, 2)
            rec.speed = int(rec.bytes() / span)
            rec.seeders = 12

    def _advance_all(self) -> None:
        now = time.monotonic()
        for torrent_id in list(self._pending):
            rec = self._torrents.get(torrent_id)
            if rec is None:
                self._pending.discard(torrent_id)
            else:
                self._advance(rec, now)

    def _ordered(self) -> list[TorrentRec]:
        if self._order is None:
            self._order = sorted(
                self._torrents.values(), key=lambda r: (r.added, r.seq), reverse=True
            )
        return self._order

    def _active(self) -> list[TorrentRec]:
        self._advance_all()
        return [rec for rec in self._torrents.values() if rec.status in ACTIVE]

    # ------------------------------------------------------------------ torrents: REST

    def list_torrents(
        self, offset: int, limit: int, active_first: bool
    ) -> tuple[list[dict[str, Any]], int]:
        self._advance_all()
        ordered = self._ordered()
        if active_first:
            ordered = sorted(ordered, key=lambda r: r.status not in ACTIVE)
        return [rec.list_json() for rec in ordered[offset : offset + limit]], len(ordered)

    def active_count(self) -> dict[str, Any]:
        active = self._active()
        return {
            "nb": len(active),
            "limit": self.active_limit,
            "list": [rec.content.hash for rec in active],
        }

    def _check_active_limit(self) -> None:
        if len(self._active()) >= self.active_limit:
            raise Refusal("too_many_active_downloads")

    def _added_by_user(self, content: Content) -> str:
        self._check_active_limit()
        if self.magnet_conversion_time > 0:
            rec = self._insert(content, "magnet_conversion")
            rec.schedule = Schedule(converted_at=time.monotonic() + self.magnet_conversion_time)
            rec.seeders = 7
            self._pending.add(rec.id)
        else:
            rec = self._insert(content, "waiting_files_selection")
        log.debug("user added torrent %s (%s)", rec.id, content.hash)
        return rec.id

    def add_magnet(self, magnet: str) -> str:
        """``/torrents/addMagnet``: known hashes get their content, unknown ones synthetic files."""
        query = parse_qs(urlsplit(magnet).query) if magnet.startswith("magnet:?") else {}
        topics = [
            xt[len("urn:btih:") :]
            for xt in query.get("xt", [])
            if xt.lower().startswith("urn:btih:")
        ]
        if not topics or not _BTIH.match(topics[0]):
            raise Refusal("wrong_parameter", "Invalid magnet link")
        info_hash = topics[0]
        if len(info_hash) == 32:
            info_hash = base64.b32decode(info_hash.upper()).hex()
        info_hash = info_hash.lower()
        content = self._catalog.get(info_hash)
        if content is None:
            name, specs = names.release(info_hash)
            content = self._content(query.get("dn", [name])[0], specs, info_hash)
        return self._added_by_user(content)

    def add_torrent_file(self, data: bytes) -> str:
        """``/torrents/addTorrent``: the raw .torrent body."""
        try:
            meta = parse_torrent(data)
        except BencodeError as error:
            raise Refusal("torrent_file_invalid") from error
        content = self._catalog.get(meta.info_hash)
        if content is None:
            content = self._content(
                meta.name, [FileSpec(path, size) for path, size in meta.files], meta.info_hash
            )
        return self._added_by_user(content)

    def select_files(self, torrent_id: str, files: str) -> None:
        rec = self._get(torrent_id)
        if rec.status != "waiting_files_selection":
            raise Refusal("action_already_done")
        known = {f.id for f in rec.content.files}
        if files.strip().lower() == "all":
            chosen = known
        else:
            try:
                chosen = {int(part) for part in files.split(",") if part.strip()}
            except ValueError:
                raise Refusal("wrong_parameter", "Invalid file id(s)", status=404) from None
            if not chosen or not chosen <= known:
                raise Refusal("wrong_parameter", "Invalid file id(s)", status=404)
        self._check_active_limit()
        rec.selected = frozenset(chosen)
        if self.queue_time <= 0 and self.download_time <= 0:
            self._finish(rec)
            return
        now = time.monotonic()
        started = now + self.queue_time
        rec.schedule = Schedule(started_at=started, finished_at=started + self.download_time)
        rec.status = "queued" if self.queue_time > 0 else "downloading"
        self._pending.add(rec.id)
        self._advance(rec, now)

    def delete_torrent(self, torrent_id: str) -> None:
        self._get(torrent_id)
        self.remove_torrent(torrent_id)

    # ------------------------------------------------------------------ links and downloads

    def _target(self, link: str) -> tuple[str, LinkTarget]:
        match = _HOSTER_LINK.match(link.strip())
        if match is None:
            if not link.lower().startswith(("http://", "https://")):
                raise Refusal("wrong_parameter", "Invalid link")
            raise Refusal("hoster_unsupported")
        link_id = match.group(1).upper()[:13]
        target = self._links.get(link_id)
        if target is None:
            raise Refusal("unavailable_file")
        return link_id, target

    def _link_body(self, target: LinkTarget) -> tuple[TorrentRec, str, tuple[Segment, ...]]:
        """(torrent, filename, body segments) behind a hoster link; raises like RD."""
        rec = self._torrents.get(target.torrent_id)
        if rec is None:
            raise Refusal("unavailable_file")
        self._advance(rec, time.monotonic())
        if rec.status == "dead":
            raise Refusal("hoster_unavailable")
        files = [f for f in rec.content.files if f.id in target.file_ids]
        members = [
            (f.path.lstrip("/"), Segment(f.size, seed=f.seed, source=f.source)) for f in files
        ]
        if len(target.file_ids) > 1 or rec.packed:
            return rec, f"{rec.content.name}.rar", rar.archive(members)
        return rec, PurePosixPath(files[0].path).name, (members[0][1],)

    def check_link(self, link: str) -> dict[str, Any]:
        _, target = self._target(link)
        _, filename, segments = self._link_body(target)
        size = sum(segment.size for segment in segments)
        return {"host": HOST, "link": link, "filename": filename, "filesize": size, "supported": 1}

    def link_bytes(self, link: str, offset: int = 0, length: int | None = None) -> bytes:
        """What the download URL of hoster ``link`` serves (e.g. a packed torrent's RAR archive)."""
        _, target = self._target(link)
        _, _, segments = self._link_body(target)
        size = sum(segment.size for segment in segments)
        length = size - offset if length is None else min(length, size - offset)
        return read_segments(segments, offset, max(0, length))

    def unrestrict(self, link: str) -> DownloadRec:
        """``/unrestrict/link``: a new download URL served by the emulator, and a /downloads
        entry."""
        link_id, target = self._target(link)
        rec, filename, segments = self._link_body(target)
        download_id = self._new_id("download", self._urls)
        entry = DownloadRec(
            id=download_id,
            seq=self._seq,
            filename=filename,
            filesize=sum(segment.size for segment in segments),
            link=HOSTER_LINK_PREFIX + link_id,
            download=self._download_url(download_id, filename, segments),
            generated=_now(),
            expires_at=time.monotonic() + self.link_ttl,
            torrent_id=rec.id,
            segments=segments,
        )
        self._downloads[download_id] = entry
        self._urls[download_id] = entry
        return entry

    def add_hoster_download(self, filename: str, size: int, link: str, host: str) -> str:
        """A download the user made from a file hoster's ``link`` (not from a torrent), as if
        unrestricted on RD's site; returns its id. Its URL serves synthetic bytes."""
        download_id = self._new_id("download", self._urls)
        segments = (Segment(size, seed=f"{self._salt}:hoster:{download_id}"),)
        entry = DownloadRec(
            id=download_id,
            seq=self._seq,
            filename=filename,
            filesize=size,
            link=link,
            download=self._download_url(download_id, filename, segments),
            generated=_now(),
            expires_at=time.monotonic() + self.link_ttl,
            torrent_id="",
            segments=segments,
            host=host,
        )
        self._downloads[download_id] = entry
        self._urls[download_id] = entry
        return download_id

    def _download_url(self, download_id: str, filename: str, segments: tuple[Segment, ...]) -> str:
        if self.download_base_url and self.download_root is not None and len(segments) == 1:
            source = segments[0].source
            root = self.download_root.resolve()
            if source is not None and source.resolve().is_relative_to(root):
                relative = source.resolve().relative_to(root).as_posix()
                return f"{self.download_base_url.rstrip('/')}/{quote(relative)}"
        return f"{self.base_url}/d/{download_id}/{_url_name(filename)}"

    def resolve_download(self, download_id: str) -> DownloadRec:
        """The entry behind a download URL, or ``DownloadUnavailable`` with RD's status."""
        entry = self._urls.get(download_id)
        if entry is None:
            raise DownloadUnavailable(404, "unknown download")
        # A download URL already handed out outlives its torrent's deletion (it is an entry of
        # /downloads of its own) until it expires; a dead torrent's data is gone at once.
        rec = self._torrents.get(entry.torrent_id)
        if rec is not None and rec.status == "dead":
            raise DownloadUnavailable(404, "torrent dead")
        if time.monotonic() >= entry.expires_at:
            raise DownloadUnavailable(403, "link expired")
        return entry

    def expire_links(self) -> None:
        """Every download URL handed out so far stops working."""
        for entry in self._urls.values():
            entry.expires_at = 0.0

    def list_downloads(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        newest_first = list(reversed(self._downloads.values()))
        return [entry.json() for entry in newest_first[offset : offset + limit]], len(newest_first)

    def download_entry(self, download_id: str) -> DownloadRec:
        entry = self._downloads.get(download_id)
        if entry is None:
            raise Refusal("unknown_ressource")
        return entry

    def delete_download(self, download_id: str) -> None:
        """Removes the /downloads entry; the URL keeps working until it expires (as on RD)."""
        self.download_entry(download_id)
        del self._downloads[download_id]

    # ------------------------------------------------------------------ OAuth

    def register_app(self, client_id: str, client_secret: str) -> None:
        """An app created in the control panel (for the device and authorization-code flows)."""
        self._apps[client_id] = client_secret

    def device_code(self, client_id: str, new_credentials: bool) -> DeviceGrant:
        grant = DeviceGrant(
            device_code=_secret(36),
            user_code=_secret(8),
            client_id=client_id,
            new_credentials=new_credentials,
            expires_at=time.monotonic() + 600,
        )
        self._grants[grant.device_code] = grant
        return grant

    def approve_device(self, user_code: str) -> None:
        """The user typed ``user_code`` on the verification page and authorized the app."""
        grant = next((g for g in self._grants.values() if g.user_code == user_code.upper()), None)
        if grant is None:
            raise KeyError(f"unknown user code {user_code!r}")
        grant.approved = True
        if grant.new_credentials:
            grant.issued_client_id = _secret(13)
            grant.issued_client_secret = _secret(40)
            self._apps[grant.issued_client_id] = grant.issued_client_secret
        log.info("device grant approved for client %s", grant.client_id)

    def _grant(self, device_code: str) -> DeviceGrant:
        grant = self._grants.get(device_code)
        if grant is None or time.monotonic() >= grant.expires_at:
            raise Refusal("wrong_parameter", "Invalid or expired device code")
        return grant

    def device_credentials(self, client_id: str, device_code: str) -> dict[str, str]:
        grant = self._grant(device_code)
        if grant.client_id != client_id or not grant.new_credentials:
            raise Refusal("wrong_parameter", "Bad client_id for this code")
        if not grant.approved or grant.issued_client_id is None:
            raise Refusal("permission_denied", "authorization_pending")
        return {
            "client_id": grant.issued_client_id,
            "client_secret": grant.issued_client_secret or "",
        }

    def authorization_code(self, client_id: str, redirect_uri: str) -> str:
        """The user approved the app on ``/oauth/v2/auth``; the code for ``redirect_uri``."""
        if client_id not in self._apps:
            raise Refusal("wrong_parameter", "Unknown client_id")
        code = _secret(36)
        self._auth_codes[code] = (client_id, redirect_uri)
        return code

    def _issue(self, client_id: str, refresh_token: str | None = None) -> dict[str, Any]:
        access = _secret(52)
        refresh = refresh_token or _secret(52)
        self._refresh[refresh] = client_id
        self._tokens[access] = AccessToken(
            "oauth", time.monotonic() + self.access_token_ttl, refresh
        )
        return {
            "access_token": access,
            "expires_in": int(self.access_token_ttl),
            "token_type": "Bearer",
            "refresh_token": refresh,
        }

    def oauth_token(self, params: dict[str, str]) -> dict[str, Any]:
        """``/oauth/v2/token`` for the device, refresh and authorization-code grants."""
        grant_type = params.get("grant_type", "")
        for name in ("client_id", "code", "grant_type"):
            if not params.get(name):
                raise missing(name)
        client_id, code = params["client_id"], params["code"]
        if grant_type not in (DEVICE_GRANT, "authorization_code"):
            raise Refusal("permission_denied", "Unsupported grant_type for this client")
        if self._apps.get(client_id) != params.get("client_secret"):
            raise Refusal("permission_denied", "Invalid client credentials")
        if grant_type == "authorization_code":
            issued = self._auth_codes.pop(code, None)
            if (
                issued is None
                or issued[0] != client_id
                or issued[1] != params.get("redirect_uri", issued[1])
            ):
                raise Refusal("permission_denied", "Invalid authorization code")
            return self._issue(client_id)
        if code in self._refresh:
            if self._refresh[code] != client_id:
                raise Refusal("permission_denied", "Invalid refresh token")
            return self._issue(client_id, refresh_token=code)
        grant = self._grants.get(code)
        if grant is None:
            raise Refusal("permission_denied", "Invalid code")
        if time.monotonic() >= grant.expires_at:
            raise Refusal("wrong_parameter", "Expired device code")
        if not grant.approved:
            raise Refusal("permission_denied", "authorization_pending")
        if client_id not in (grant.client_id, grant.issued_client_id):
            raise Refusal("permission_denied", "Invalid client credentials")
        del self._grants[code]
        return self._issue(client_id)

    def expire_access_tokens(self) -> None:
        """Every OAuth access token expires now (refresh tokens stay valid)."""
        for entry in self._tokens.values():
            if entry.kind == "oauth":
                entry.expires_at = 0.0

    def revoke_oauth(self) -> None:
        """The user revoked the app: OAuth access and refresh tokens stop working."""
        self._refresh.clear()
        self._tokens = {
            token: entry for token, entry in self._tokens.items() if entry.kind != "oauth"
        }

    # ------------------------------------------------------------------ counters and faults

    def reset_counters(self) -> None:
        self.counters.clear()

    def counters_json(self) -> dict[str, int]:
        return dict(self.counters)

    def set_faults(self, **changes: Any) -> None:
        """Change some fault fields (same names as ``Faults``)."""
        for name, value in changes.items():
            if name not in Faults.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}")
            setattr(self.faults, name, value)

    def reset_faults(self) -> None:
        self.faults = Faults()

    def faults_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self.faults)
