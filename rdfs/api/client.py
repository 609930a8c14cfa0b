"""The async Real-Debrid REST client: one method per endpoint of the reference.

All requests share one ``httpx.AsyncClient`` (connection reuse), one ``RateLimiter`` and the
retry rules of ``Transport``. GET answers are cached with their ETag and revalidated with
``If-None-Match``; a 304 serves the cached body (``Page.not_modified`` tells list callers).
Every string sent is NFC-normalised, as the reference asks. Answers are validated for shape:
a list endpoint that answers 200 with a non-array raises ``UnexpectedResponse``; bodies are
decoded by ``models.decode_json`` (no infinities, no ``RecursionError``) and records validated by
the models. A list drops a bad record alone and logs one warning per record (remembered, so a
sync every minute does not repeat it); an ``X-Total-Count`` that is not a non-negative int is
``Page.total = None``.
"""

from __future__ import annotations

import logging
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx

from rdfs.api.auth import DEFAULT_OAUTH_URL, OAuthClient, OAuthSession, TokenProvider
from rdfs.api.errors import (
    APIError,
    BadLink,
    BadRecord,
    BadToken,
    ServiceUnavailable,
    UnexpectedResponse,
)
from rdfs.api.etagcache import CachedAnswer, ETagCache
from rdfs.api.models import (
    MAX_SIZE,
    ActiveCount,
    AvailableHost,
    Created,
    Download,
    Host,
    LinkCheck,
    MediaInfo,
    Settings,
    Torrent,
    TorrentInfo,
    TrafficDay,
    TrafficHost,
    User,
    decode_json,
)
from rdfs.api.ratelimit import ADD_WINDOW, ADDS_PER_WINDOW, RateLimiter
from rdfs.api.transport import DEFAULT_DEADLINE, ClientStats, RetryPolicy, Transport

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.real-debrid.com/rest/1.0"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_PAGE_SIZE = 2500  # the reference's maximum for ``limit``
_WARNED_MAX = 10_000  # records remembered as warned about (then forgotten all at once)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    """One page of a list endpoint; ``not_modified`` when RD answered 304 (items from cache).

    ``received`` counts the entries RD sent, bad ones included: whether a page came back full
    (so more may follow) is ``received >= limit``, never ``len(items)``, which drops bad records.
    """

    items: list[T]
    total: int | None
    not_modified: bool = False
    received: int = -1  # -1: as many as ``items``

    def __post_init__(self) -> None:
        if self.received < 0:
            self.received = len(self.items)


@dataclass
class _Answer:
    status: int
    body: Any  # parsed JSON, text for raw endpoints, None for an empty body
    headers: httpx.Headers
    not_modified: bool = False


def _nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _form(values: dict[str, Any] | None) -> dict[str, str] | None:
    """Drop None values, stringify, NFC-normalise keys and values."""
    if values is None:
        return None
    return {_nfc(str(k)): _nfc(str(v)) for k, v in values.items() if v is not None}


def _segment(value: str | int) -> str:
    text = _nfc(str(value))
    if not text:
        raise ValueError("an empty id cannot be part of a URL")
    return urllib.parse.quote(text, safe="")


def _is_loopback(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_base_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an HTTP(S) URL: {url!r}")
    if parsed.scheme != "https" and not _is_loopback(url):
        raise ValueError(
            f"refusing plain HTTP to a non-loopback host ({host}): tokens would travel in clear"
        )
    return url.rstrip("/")


def _total(headers: httpx.Headers) -> int | None:
    """``X-Total-Count`` when it is a plain non-negative integer; None (unknown) otherwise."""
    value = (headers.get("x-total-count") or "").strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    total = int(value)
    return total if total <= MAX_SIZE else None


def _record_key(raw: dict[str, Any]) -> str:
    """How a log line names a record: its id (and name) as sent, shortened. Never its URLs."""
    ident = raw.get("id")
    name = raw.get("filename")
    text = f"id={ident!r}" if not isinstance(ident, (dict, list)) else "id=<not an id>"
    if isinstance(name, str):
        text += f" {name[:60]!r}"
    return text[:120]


def _as_date(value: date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.strftime("%Y-%m-%d")


class RDClient:
    """``async with RDClient(auth=StaticToken(token)) as rd: user = await rd.user()``."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        oauth_url: str = DEFAULT_OAUTH_URL,
        auth: TokenProvider | None = None,
        rate_limit_per_minute: int = 250,
        max_retries: int = 5,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
        limiter: RateLimiter | None = None,
        *,
        add_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        verb_override: bool = False,
        token_in_query: bool = False,
        user_agent: str = "rdfs",
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        """
        ``retry`` overrides ``max_retries`` and the backoff (e.g. zero waits in tests);
        ``add_limiter`` paces adds (default: 20 in any 10.5 s, see :mod:`rdfs.api.ratelimit`);
        ``verb_override`` sends PUT/DELETE as POST with ``X-HTTP-Verb``; ``token_in_query`` sends
        the token as ``?auth_token=`` instead of an ``Authorization`` header; ``deadline``
        bounds each attempt of a request, body included (see :mod:`rdfs.api.transport`).
        """
        self.api_url = check_base_url(api_url)
        self.oauth_url = check_base_url(oauth_url)
        self._owns_http = http is None
        if http is None:
            # TLS verification stays on (httpx's default, verify=True); nothing here turns it off.
            http = httpx.AsyncClient(
                timeout=timeout,
                headers={"User-Agent": user_agent},
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                verify=True,
            )
        self.http = http
        self.limiter = limiter or RateLimiter(rate_limit_per_minute)
        self.add_limiter = add_limiter or RateLimiter(ADDS_PER_WINDOW, window=ADD_WINDOW)
        self.stats = ClientStats()
        self._transport = Transport(
            http,
            self.limiter,
            retry=retry or RetryPolicy(max_retries=max_retries),
            stats=self.stats,
            deadline=deadline,
        )
        self.oauth = OAuthClient(self._transport, self.oauth_url)
        self.auth = auth
        if isinstance(auth, OAuthSession):
            auth.bind(self.oauth)
        self.verb_override = verb_override
        self.token_in_query = token_in_query
        self._etags = ETagCache()
        self._warned: set[str] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        idempotent: bool | None = None,
        authenticated: bool = True,
        params: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        content: bytes | None = None,
        content_type: str = "application/octet-stream",
        raw_text: bool = False,
        definite: tuple[type[APIError], ...] = (),
    ) -> _Answer:
        """One API call: auth, conditional GET, one retry after a refreshed token, decoding."""
        if idempotent is None:
            idempotent = method == "GET"
        url = f"{self.api_url}/{path}"
        query = _form(params) or {}
        form = _form(data)
        cache_key = (
            f"{url}?{urllib.parse.urlencode(sorted(query.items()))}" if method == "GET" else None
        )
        rejected_once = False
        while True:
            headers: dict[str, str] = {}
            send_query = dict(query)
            token = await self.auth.token() if authenticated and self.auth is not None else None
            if token is not None:
                if self.token_in_query:
                    send_query["auth_token"] = token
                else:
                    headers["Authorization"] = f"Bearer {token}"
            cached = self._etags.get(cache_key) if cache_key else None
            if cached is not None:
                headers["If-None-Match"] = cached.etag
            send_method = method
            if self.verb_override and method in ("PUT", "DELETE"):
                send_method = "POST"
                headers["X-HTTP-Verb"] = method
            if content is not None:
                headers["Content-Type"] = content_type
            try:
                response = await self._transport.request(
                    send_method,
                    url,
                    endpoint=endpoint,
                    idempotent=idempotent,
                    params=send_query or None,
                    data=form,
                    content=content,
                    headers=headers,
                    definite=definite,
                )
            except BadToken:
                # RD refused the token, so it did not act on the request: safe to send once more.
                if (
                    token is None
                    or rejected_once
                    or self.auth is None
                    or not await self.auth.rejected(token)
                ):
                    raise
                rejected_once = True
                self.stats.token_retries += 1
                log.info("%s: token rejected, retrying with a refreshed one", endpoint)
                continue
            return self._decode(
                response, endpoint=endpoint, cache_key=cache_key, cached=cached, raw_text=raw_text
            )

    def _decode(
        self,
        response: httpx.Response,
        *,
        endpoint: str,
        cache_key: str | None,
        cached: CachedAnswer | None,
        raw_text: bool,
    ) -> _Answer:
        status = response.status_code
        if status == 304:
            if cached is None:
                raise UnexpectedResponse(
                    f"{endpoint}: 304 without a cached answer", endpoint=endpoint, status=304
                )
            self.stats.not_modified += 1
            body = self._body(cached.content, endpoint, cached.status, raw_text, response.encoding)
            return _Answer(cached.status, body, cached.headers, not_modified=True)
        content = response.content
        answer = _Answer(
            status,
            self._body(content, endpoint, status, raw_text, response.encoding),
            response.headers,
        )
        etag = response.headers.get("etag")
        if cache_key is not None and etag and status == 200:
            self._etags.put(cache_key, etag, status, response.headers, content)
        return answer

    @staticmethod
    def _body(
        content: bytes, endpoint: str, status: int, raw_text: bool, encoding: str | None
    ) -> Any:
        """An answer's body: parsed JSON, text for raw endpoints, None when empty."""
        if status == 204 or not content:
            return None
        if raw_text:
            return content.decode(encoding or "utf-8", errors="replace")
        return decode_json(content, endpoint=endpoint, status=status)

    async def _object(self, endpoint: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = await self._call(kwargs.pop("method", "GET"), path, endpoint=endpoint, **kwargs)
        if not isinstance(answer.body, dict):
            raise UnexpectedResponse(
                f"{endpoint}: expected a JSON object, got {type(answer.body).__name__}",
                endpoint=endpoint,
                status=answer.status,
            )
        return answer.body

    async def _array(self, endpoint: str, path: str, **kwargs: Any) -> list[Any]:
        answer = await self._call(kwargs.pop("method", "GET"), path, endpoint=endpoint, **kwargs)
        return self._check_array(answer, endpoint)

    @staticmethod
    def _check_array(answer: _Answer, endpoint: str) -> list[Any]:
        if answer.status == 204 or answer.body is None:
            return []
        if not isinstance(answer.body, list):
            raise UnexpectedResponse(
                f"{endpoint}: expected a JSON array, got {type(answer.body).__name__}",
                endpoint=endpoint,
                status=answer.status,
            )
        return answer.body

    async def _strings(self, endpoint: str, path: str, **kwargs: Any) -> list[str]:
        return [
            item for item in await self._array(endpoint, path, **kwargs) if isinstance(item, str)
        ]

    async def _page(
        self, endpoint: str, path: str, parse: Callable[[dict[str, Any]], T], params: dict[str, Any]
    ) -> Page[T]:
        answer = await self._call("GET", path, endpoint=endpoint, params=params)
        items: list[T] = []
        entries = self._check_array(answer, endpoint)
        for raw in entries:
            if not isinstance(raw, dict):
                self._warn_once(endpoint, repr(type(raw).__name__), "not a JSON object: dropped")
                continue
            try:
                item = parse(raw)
            except BadRecord as exc:
                self._warn_once(endpoint, _record_key(raw), f"{exc}: dropped")
                continue
            self._report(endpoint, item)
            items.append(item)
        return Page(items, _total(answer.headers), answer.not_modified, received=len(entries))

    def _report(self, endpoint: str, record: Any) -> None:
        """Warn (once) about what validation clamped or dropped inside a record it kept."""
        for problem in getattr(record, "problems", ()):
            self._warn_once(endpoint, _record_key(record.raw), problem)

    def _warn_once(self, endpoint: str, key: str, problem: str) -> None:
        """One warning per record and problem for the client's lifetime: not one per sync, nor one
        more when ``/torrents/info`` repeats what ``/torrents`` said."""
        seen = f"{key}\0{problem}"
        if seen in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add(seen)
        log.warning("%s: record %s: %s", endpoint, key, problem)

    async def _no_content(self, method: str, path: str, *, endpoint: str, **kwargs: Any) -> None:
        await self._call(method, path, endpoint=endpoint, idempotent=False, **kwargs)

    # ------------------------------------------------------------------ general

    async def disable_access_token(self) -> None:
        """Disable the current access token (RD answers 204)."""
        await self._no_content("GET", "disable_access_token", endpoint="disable_access_token")

    async def time(self) -> datetime:
        """Server time (``Y-m-d H:i:s``, server-local, naive)."""
        text = await self._raw_time("time", "time")
        try:
            return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise UnexpectedResponse(
                f"time: unparsable answer {text[:40]!r}", endpoint="time", status=200
            ) from None

    async def time_iso(self) -> datetime:
        """Server time with its UTC offset (``Y-m-dTH:i:sO``), as an aware datetime."""
        text = await self._raw_time("time/iso", "time/iso")
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise UnexpectedResponse(
                f"time/iso: unparsable answer {text[:40]!r}", endpoint="time/iso", status=200
            ) from None

    async def _raw_time(self, endpoint: str, path: str) -> str:
        answer = await self._call(
            "GET", path, endpoint=endpoint, authenticated=False, raw_text=True
        )
        text = answer.body if isinstance(answer.body, str) else ""
        return text.strip().strip('"')

    async def user(self) -> User:
        return User.from_json(await self._object("user", "user"))

    # ------------------------------------------------------------------ unrestrict

    async def unrestrict_check(self, link: str, password: str | None = None) -> LinkCheck:
        data = await self._object(
            "unrestrict/check",
            "unrestrict/check",
            method="POST",
            idempotent=True,  # a check changes nothing on RD's side
            authenticated=False,
            data={"link": link, "password": password},
        )
        return LinkCheck.from_json(data)

    async def unrestrict_link(
        self, link: str, password: str | None = None, remote: bool | None = None
    ) -> Download:
        """Unrestrict a hoster link.

        Not retried once sent: each call adds a ``/downloads`` entry.
        """
        data = await self._object(
            "unrestrict/link",
            "unrestrict/link",
            method="POST",
            idempotent=False,
            data={
                "link": link,
                "password": password,
                "remote": None if remote is None else int(bool(remote)),
            },
        )
        try:
            return Download.from_json(data)
        except BadRecord as exc:
            # The hoster link is not named: the caller logs it with its own context.
            raise BadLink(
                f"unrestrict/link: unusable answer: {exc}", endpoint="unrestrict/link", status=200
            ) from None

    async def unrestrict_folder(self, link: str) -> list[str]:
        return await self._strings(
            "unrestrict/folder",
            "unrestrict/folder",
            method="POST",
            idempotent=True,
            data={"link": link},
        )

    async def unrestrict_container_file(self, data: bytes) -> list[str]:
        return await self._strings(
            "unrestrict/containerFile",
            "unrestrict/containerFile",
            method="PUT",
            idempotent=True,
            content=data,
        )

    async def unrestrict_container_link(self, link: str) -> list[str]:
        return await self._strings(
            "unrestrict/containerLink",
            "unrestrict/containerLink",
            method="POST",
            idempotent=True,
            data={"link": link},
        )

    # ------------------------------------------------------------------ traffic, streaming

    async def traffic(self) -> dict[str, TrafficHost]:
        data = await self._object("traffic", "traffic")
        return {
            host: TrafficHost.from_json(host, info)
            for host, info in data.items()
            if isinstance(info, dict)
        }

    async def traffic_details(
        self, start: date | str | None = None, end: date | str | None = None
    ) -> dict[str, TrafficDay]:
        data = await self._object(
            "traffic/details",
            "traffic/details",
            params={"start": _as_date(start), "end": _as_date(end)},
        )
        return {
            day: TrafficDay.from_json(day, info)
            for day, info in data.items()
            if isinstance(info, dict)
        }

    async def streaming_transcode(self, id: str) -> dict[str, dict[str, str]]:
        """Transcoding links by format then quality.

        Formats: ``apple``, ``dash``, ``liveMP4``, ``h264WebM``.
        """
        data = await self._object("streaming/transcode", f"streaming/transcode/{_segment(id)}")
        return {
            str(fmt): {str(q): url for q, url in links.items() if isinstance(url, str)}
            for fmt, links in data.items()
            if isinstance(links, dict)
        }

    async def streaming_media_infos(self, id: str) -> MediaInfo:
        """Raises ``ServiceUnavailable`` at once when RD has no metadata for the file (its 503,
        per the reference "problem finding metadata of the media"): a final answer, not retried."""
        data = await self._object(
            "streaming/mediaInfos",
            f"streaming/mediaInfos/{_segment(id)}",
            definite=(ServiceUnavailable,),
        )
        return MediaInfo.from_json(data)

    # ------------------------------------------------------------------ downloads

    async def downloads(
        self, offset: int | None = None, page: int | None = None, limit: int | None = None
    ) -> Page[Download]:
        return await self._page(
            "downloads",
            "downloads",
            Download.from_json,
            {"offset": offset, "page": page, "limit": limit},
        )

    def iter_downloads(self, page_size: int = MAX_PAGE_SIZE) -> AsyncIterator[Download]:
        return self._iterate(lambda page: self.downloads(page=page, limit=page_size), page_size)

    async def delete_download(self, id: str) -> None:
        await self._no_content(
            "DELETE", f"downloads/delete/{_segment(id)}", endpoint="downloads/delete"
        )

    # ------------------------------------------------------------------ torrents

    async def torrents(
        self,
        offset: int | None = None,
        page: int | None = None,
        limit: int | None = None,
        filter: str | None = None,
    ) -> Page[Torrent]:
        params = {"offset": offset, "page": page, "limit": limit, "filter": filter}
        return await self._page("torrents", "torrents", Torrent.from_json, params)

    def iter_torrents(
        self, page_size: int = MAX_PAGE_SIZE, filter: str | None = None
    ) -> AsyncIterator[Torrent]:
        """Every torrent, newest first, one page at a time (each id yielded once)."""
        return self._iterate(
            lambda page: self.torrents(page=page, limit=page_size, filter=filter), page_size
        )

    async def _iterate(self, fetch: Callable[[int], Any], page_size: int) -> AsyncIterator[Any]:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        seen: set[str] = set()
        number = 1
        while True:
            page: Page[Any] = await fetch(number)
            new = 0
            for item in page.items:
                # A torrent added while paging shifts the list: skip what an earlier page gave.
                if item.id not in seen:
                    seen.add(item.id)
                    new += 1
                    yield item
            if page.received < page_size:
                return  # a short page is the last one
            if number > 1 and new == 0:
                log.warning(
                    "listing page %d repeats earlier pages (RD ignores paging?): stopped", number
                )
                return
            # A total is believed only when it is not smaller than what was already seen.
            if page.total is not None and len(seen) <= page.total <= number * page_size:
                return
            number += 1

    async def torrent_info(self, id: str) -> TorrentInfo:
        """Raises ``BadRecord`` for an unusable torrent (bad id); bad files are dropped alone."""
        data = await self._object("torrents/info", f"torrents/info/{_segment(id)}")
        try:
            info = TorrentInfo.from_json(data)
        except BadRecord as exc:
            raise BadRecord(
                f"torrents/info {id}: {exc}", endpoint="torrents/info", status=200
            ) from None
        self._report("torrents/info", info)
        return info

    async def instant_availability(self, *hashes: str) -> dict[str, Any]:
        """Raw availability by hash.

        RD disabled this endpoint in 2024: expect ``DisabledEndpoint``.
        """
        if not hashes:
            raise ValueError("instant_availability needs at least one hash")
        path = "torrents/instantAvailability/" + "/".join(_segment(h.lower()) for h in hashes)
        return await self._object("torrents/instantAvailability", path)

    async def active_count(self) -> ActiveCount:
        return ActiveCount.from_json(
            await self._object("torrents/activeCount", "torrents/activeCount")
        )

    async def available_hosts(self) -> list[AvailableHost]:
        items = await self._array("torrents/availableHosts", "torrents/availableHosts")
        return [AvailableHost.from_json(item) for item in items if isinstance(item, dict)]

    async def add_torrent(self, data: bytes, host: str | None = None) -> Created:
        await self.add_limiter.acquire()
        created = await self._object(
            "torrents/addTorrent",
            "torrents/addTorrent",
            method="PUT",
            idempotent=False,
            params={"host": host},
            content=data,
            content_type="application/x-bittorrent",
        )
        return Created.from_json(created)

    async def add_magnet(self, magnet: str, host: str | None = None) -> Created:
        await self.add_limiter.acquire()
        created = await self._object(
            "torrents/addMagnet",
            "torrents/addMagnet",
            method="POST",
            idempotent=False,
            data={"magnet": magnet, "host": host},
        )
        return Created.from_json(created)

    async def select_files(self, id: str, files: Literal["all"] | Iterable[int]) -> None:
        """Select files (``"all"`` or file ids from ``torrent_info``) to start the torrent."""
        if isinstance(files, str):
            if files != "all":
                raise ValueError('files must be "all" or file ids')
            value = "all"
        else:
            ids = [str(int(f)) for f in files]
            if not ids:
                raise ValueError("select_files needs at least one file id")
            value = ",".join(ids)
        await self._no_content(
            "POST",
            f"torrents/selectFiles/{_segment(id)}",
            endpoint="torrents/selectFiles",
            data={"files": value},
        )

    async def delete_torrent(self, id: str) -> None:
        await self._no_content(
            "DELETE", f"torrents/delete/{_segment(id)}", endpoint="torrents/delete"
        )

    # ------------------------------------------------------------------ hosts

    async def hosts(self) -> dict[str, Host]:
        data = await self._object("hosts", "hosts", authenticated=False)
        return {
            domain: Host.from_json(domain, info)
            for domain, info in data.items()
            if isinstance(info, dict)
        }

    async def hosts_status(self) -> dict[str, Host]:
        data = await self._object("hosts/status", "hosts/status")
        return {
            domain: Host.from_json(domain, info)
            for domain, info in data.items()
            if isinstance(info, dict)
        }

    async def hosts_regex(self) -> list[str]:
        return await self._strings("hosts/regex", "hosts/regex", authenticated=False)

    async def hosts_regex_folder(self) -> list[str]:
        return await self._strings("hosts/regexFolder", "hosts/regexFolder", authenticated=False)

    async def hosts_domains(self) -> list[str]:
        return await self._strings("hosts/domains", "hosts/domains", authenticated=False)

    # ------------------------------------------------------------------ settings

    async def settings(self) -> Settings:
        return Settings.from_json(await self._object("settings", "settings"))

    async def settings_update(self, name: str, value: str | int) -> None:
        await self._no_content(
            "POST",
            "settings/update",
            endpoint="settings/update",
            data={"setting_name": name, "setting_value": value},
        )

    async def settings_convert_points(self) -> None:
        await self._no_content("POST", "settings/convertPoints", endpoint="settings/convertPoints")

    async def settings_change_password(self) -> None:
        await self._no_content(
            "POST", "settings/changePassword", endpoint="settings/changePassword"
        )

    async def settings_avatar_file(self, data: bytes) -> None:
        await self._no_content(
            "PUT", "settings/avatarFile", endpoint="settings/avatarFile", content=data
        )

    async def settings_avatar_delete(self) -> None:
        await self._no_content("DELETE", "settings/avatarDelete", endpoint="settings/avatarDelete")
