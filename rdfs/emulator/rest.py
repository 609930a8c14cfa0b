"""The 35 endpoints of RD's REST API (``/rest/1.0``), answering like RD does in the field."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from .model import HOST, Refusal, mime_type, missing, rd_date
from .responses import (
    api_route,
    bearer,
    encode_json,
    form,
    hostile_torrent,
    hostile_unrestrict,
    int_param,
    json_response,
    no_content,
)

if TYPE_CHECKING:
    from .core import Emulator

PREFIX = "/rest/1.0"
MAX_LIMIT = 5000
DEFAULT_LIMIT = 50
_EPISODE = re.compile(r"S(\d{1,2})E(\d{1,3})", re.IGNORECASE)
_YEAR = re.compile(r"(?<!\d)(19\d\d|20\d\d)(?!\d)")
_HOSTS = {
    HOST: {
        "id": "rd",
        "name": "Real-Debrid",
        "image": "https://fcdn.real-debrid.com/0830/images/hosters/realdebrid.png",
    },
    "1fichier.com": {
        "id": "1f",
        "name": "1fichier",
        "image": "https://fcdn.real-debrid.com/0830/images/hosters/1fichier.png",
    },
    "rapidgator.net": {
        "id": "rg",
        "name": "Rapidgator",
        "image": "https://fcdn.real-debrid.com/0830/images/hosters/rapidgator.png",
    },
}
_SETTING_VALUES = {
    "download_port": ["normal", "secure"],
    "locale": ["en", "fr", "de", "es", "it"],
    "streaming_language_preference": ["eng", "fre", "ger", "spa", "ita"],
    "streaming_quality": ["original", "2160", "1080", "720", "480"],
    "mobile_streaming_quality": ["original", "1080", "720", "480"],
    "streaming_cast_audio_preference": ["ac3", "aac"],
}


def _page(request: Request, emu: Emulator | None = None) -> tuple[int, int]:
    """(offset, limit) from ``offset``/``page``/``limit``; ``page`` wins over ``offset``.

    With the ``list_ignore_page`` fault of ``emu`` every page is the first one.
    """
    limit = int_param(request, "limit", DEFAULT_LIMIT)
    if limit < 0:
        raise Refusal("wrong_parameter", "limit must be within 0 and 5000")
    limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
    page = int_param(request, "page", 0)
    offset = int_param(request, "offset", 0)
    if page < 0 or offset < 0:
        raise Refusal("wrong_parameter", "page and offset must be positive")
    if page:
        offset = (page - 1) * limit
    if emu is not None and emu.faults.list_ignore_page:
        offset = 0
    return offset, limit


def _list_response(
    request: Request, emu: Emulator, items: list[dict[str, Any]], total: int
) -> Response:
    faults = emu.faults
    if faults.empty_lists:
        items, total = [], 0
        if faults.empty_lists_status == 200:
            return json_response(request, [], headers={"X-Total-Count": "0"})
    if faults.list_hidden_ids:
        hidden = set(faults.list_hidden_ids)
        upstream = emu._downloads if request.url.path.endswith("/downloads") else emu._torrents
        items = [item for item in items if item["id"] not in hidden]
        total -= len(hidden & upstream.keys())
    headers = {"X-Total-Count": str(total)}
    if faults.list_total is not None:
        headers["X-Total-Count"] = (
            str(_page(request)[1]) if faults.list_total == "page" else faults.list_total
        )
    if not items:
        return no_content(headers)
    response = json_response(request, items, headers=headers)
    if faults.list_drip_seconds > 0 and response.status_code == 200:
        body, pause = bytes(response.body), faults.list_drip_seconds

        async def drip() -> AsyncIterator[bytes]:
            for index in range(len(body)):
                yield body[index : index + 1]
                await trio.sleep(pause)

        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return StreamingResponse(drip(), media_type="application/json", headers=headers)
    return response


def _media_infos(entry_json: dict[str, Any]) -> dict[str, Any]:
    filename = entry_json["filename"]
    episode = _EPISODE.search(filename)
    year = _YEAR.search(filename)
    height = 2160 if "2160p" in filename else 720 if "720p" in filename else 1080
    size = entry_json["filesize"]
    duration = 2640.0 if episode else 6300.0
    return {
        "filename": PurePosixPath(filename).stem,
        "hoster": HOST,
        "link": entry_json["link"],
        "type": "show" if episode else "movie",
        "season": str(int(episode.group(1))) if episode else None,
        "episode": str(int(episode.group(2))) if episode else None,
        "year": year.group(1) if year else None,
        "duration": duration,
        "bitrate": int(size * 8 / duration),
        "size": size,
        "details": {
            "video": {
                "und1": {
                    "stream": "0:0",
                    "lang": "Undetermined",
                    "lang_iso": "und",
                    "codec": "h264",
                    "colorspace": "yuv420p",
                    "width": height * 16 // 9,
                    "height": height,
                }
            },
            "audio": {
                "eng1": {
                    "stream": "0:1",
                    "lang": "English",
                    "lang_iso": "eng",
                    "codec": "aac",
                    "sampling": 48000,
                    "channels": 2.0,
                }
            },
            "subtitles": [],
        },
        "poster_path": None,
        "audio_image": None,
        "backdrop_path": None,
    }


def routes(emu: Emulator) -> list[BaseRoute]:
    """Every REST endpoint of the reference, bound to ``emu``."""

    async def disable_access_token(request: Request) -> Response:
        emu.disable_token(bearer(request) or "")
        return no_content()

    async def server_time(request: Request) -> Response:
        return PlainTextResponse(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))

    async def server_time_iso(request: Request) -> Response:
        return PlainTextResponse(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z"))

    async def user(request: Request) -> Response:
        return json_response(request, emu.user_json())

    async def unrestrict_check(request: Request) -> Response:
        params = await form(request)
        if not params.get("link"):
            raise missing("link")
        return json_response(request, emu.check_link(params["link"]))

    async def unrestrict_link(request: Request) -> Response:
        params = await form(request)
        if not params.get("link"):
            raise missing("link")
        return json_response(request, hostile_unrestrict(emu, params["link"], emu.unrestrict))

    async def unrestrict_folder(request: Request) -> Response:
        params = await form(request)
        if not params.get("link"):
            raise missing("link")
        return json_response(request, [])

    async def container_file(request: Request) -> Response:
        # Real containers are encrypted; the emulator accepts a plain list of links.
        text = (await request.body()).decode("utf-8", errors="replace")
        links = re.findall(r"https?://\S+", text)
        if not links:
            raise Refusal("wrong_parameter", "Invalid container file")
        return json_response(request, links)

    async def container_link(request: Request) -> Response:
        params = await form(request)
        if not params.get("link"):
            raise missing("link")
        raise Refusal("service_unavailable", "Container could not be fetched")

    async def traffic(request: Request) -> Response:
        used = sum(emu.traffic.values())
        limit = 2 * 1024**4
        return json_response(
            request,
            {
                "remote": {
                    "left": max(0, limit - used),
                    "bytes": used,
                    "links": len(emu.traffic),
                    "limit": limit,
                    "type": "bytes",
                    "extra": 0,
                    "reset": "daily",
                }
            },
        )

    async def traffic_details(request: Request) -> Response:
        try:
            end = date.fromisoformat(request.query_params.get("end") or date.today().isoformat())
            start = date.fromisoformat(
                request.query_params.get("start") or (end - timedelta(days=7)).isoformat()
            )
        except ValueError:
            raise Refusal("wrong_parameter", "Dates must be YYYY-MM-DD") from None
        if start > end or (end - start).days > 31:
            raise Refusal("wrong_parameter", "The period can not exceed 31 days")
        days = {}
        day = start
        while day <= end:
            used = emu.traffic.get(day.isoformat(), 0)
            if used:
                days[day.isoformat()] = {"host": {HOST: used}, "bytes": used}
            day += timedelta(days=1)
        return json_response(request, days)

    async def transcode(request: Request) -> Response:
        entry = emu.download_entry(request.path_params["id"])
        base = f"{emu.base_url}/t/{entry.id}"
        return json_response(
            request,
            {
                "apple": {"full": f"{base}/full.m3u8"},
                "dash": {"full": f"{base}/full.mpd"},
                "liveMP4": {"full": entry.download},
                "h264WebM": {"full": f"{base}/full.webm"},
            },
        )

    async def media_infos(request: Request) -> Response:
        entry = emu.download_entry(request.path_params["id"]).json()
        if not mime_type(entry["filename"]).startswith("video/"):
            raise Refusal("service_unavailable", "No metadata for this file")
        return json_response(request, _media_infos(entry))

    async def downloads(request: Request) -> Response:
        offset, limit = _page(request, emu)
        items, total = emu.list_downloads(offset, limit)
        return _list_response(request, emu, items, total)

    async def delete_download(request: Request) -> Response:
        emu.delete_download(request.path_params["id"])
        return no_content()

    async def torrents(request: Request) -> Response:
        offset, limit = _page(request, emu)
        items, total = emu.list_torrents(
            offset, limit, request.query_params.get("filter") == "active"
        )
        items = [hostile_torrent(emu, item, info=False) for item in items]
        return _list_response(request, emu, items, total)

    async def torrent_info(request: Request) -> Response:
        return json_response(
            request, hostile_torrent(emu, emu.torrent_json(request.path_params["id"]), info=True)
        )

    async def instant_availability(request: Request) -> Response:
        raise Refusal("disabled_endpoint")

    async def active_count(request: Request) -> Response:
        return json_response(request, emu.active_count())

    async def available_hosts(request: Request) -> Response:
        return json_response(request, [{"host": HOST, "max_file_size": 2000}])

    def created(torrent_id: str) -> Response:
        body = {"id": torrent_id, "uri": f"{emu.api_url}/torrents/info/{torrent_id}"}
        return Response(encode_json(body), status_code=201, media_type="application/json")

    async def add_torrent(request: Request) -> Response:
        data = await request.body()
        if not data:
            raise Refusal("torrent_file_invalid")
        return created(emu.add_torrent_file(data))

    async def add_magnet(request: Request) -> Response:
        params = await form(request)
        if not params.get("magnet"):
            raise missing("magnet")
        return created(emu.add_magnet(params["magnet"]))

    async def select_files(request: Request) -> Response:
        params = await form(request)
        if not params.get("files"):
            raise missing("files")
        emu.select_files(request.path_params["id"], params["files"])
        return no_content()

    async def delete_torrent(request: Request) -> Response:
        emu.delete_torrent(request.path_params["id"])
        return no_content()

    async def hosts(request: Request) -> Response:
        return json_response(request, _HOSTS)

    async def hosts_status(request: Request) -> Response:
        checked = rd_date(datetime.now(UTC))
        return json_response(
            request,
            {
                host: dict(
                    info, supported=1, status="up", check_time=checked, competitors_status={}
                )
                for host, info in _HOSTS.items()
            },
        )

    async def hosts_regex(request: Request) -> Response:
        return json_response(
            request,
            [
                r"/(http|https):\/\/(\w+\.)?real-debrid\.com\/d\/[A-Z0-9]+/",
                r"/(http|https):\/\/(\w+\.)?1fichier\.com\/\?[a-z0-9]+/",
                r"/(http|https):\/\/(\w+\.)?rapidgator\.net\/file\/[a-z0-9]+/",
            ],
        )

    async def hosts_regex_folder(request: Request) -> Response:
        return json_response(request, [r"/(http|https):\/\/(\w+\.)?1fichier\.com\/dir\/[a-z0-9]+/"])

    async def hosts_domains(request: Request) -> Response:
        return json_response(request, sorted(_HOSTS))

    async def settings(request: Request) -> Response:
        body = dict(emu.settings)
        body["download_ports"] = _SETTING_VALUES["download_port"]
        body["locales"] = {code: code.upper() for code in _SETTING_VALUES["locale"]}
        body["streaming_qualities"] = _SETTING_VALUES["streaming_quality"]
        body["streaming_languages"] = {
            code: code for code in _SETTING_VALUES["streaming_language_preference"]
        }
        body["streaming_cast_audio"] = _SETTING_VALUES["streaming_cast_audio_preference"]
        return json_response(request, body)

    async def settings_update(request: Request) -> Response:
        params = await form(request)
        for name in ("setting_name", "setting_value"):
            if not params.get(name):
                raise missing(name)
        allowed = _SETTING_VALUES.get(params["setting_name"])
        if allowed is None or params["setting_value"] not in allowed:
            raise Refusal("wrong_parameter", "Bad setting name or value")
        emu.settings[params["setting_name"]] = params["setting_value"]
        return no_content()

    async def convert_points(request: Request) -> Response:
        if emu.user["points"] < 1000:
            raise Refusal("service_unavailable", "Not enough points")
        emu.user["points"] -= 1000
        emu.user["premium"] += 86400
        return no_content()

    async def change_password(request: Request) -> Response:
        return no_content()

    async def avatar_file(request: Request) -> Response:
        if not await request.body():
            raise Refusal("wrong_parameter", "No image received")
        emu.user["avatar"] = f"https://fcdn.real-debrid.com/images/avatars/{emu.user['id']}.png"
        return no_content()

    async def avatar_delete(request: Request) -> Response:
        emu.user["avatar"] = "https://fcdn.real-debrid.com/images/forum/empty.png"
        return no_content()

    table: list[tuple[str, str, Any, bool]] = [
        ("GET", "/disable_access_token", disable_access_token, True),
        ("GET", "/time", server_time, False),
        ("GET", "/time/iso", server_time_iso, False),
        ("GET", "/user", user, True),
        ("POST", "/unrestrict/check", unrestrict_check, False),
        ("POST", "/unrestrict/link", unrestrict_link, True),
        ("POST", "/unrestrict/folder", unrestrict_folder, True),
        ("PUT", "/unrestrict/containerFile", container_file, True),
        ("POST", "/unrestrict/containerLink", container_link, True),
        ("GET", "/traffic", traffic, True),
        ("GET", "/traffic/details", traffic_details, True),
        ("GET", "/streaming/transcode/{id}", transcode, True),
        ("GET", "/streaming/mediaInfos/{id}", media_infos, True),
        ("GET", "/downloads", downloads, True),
        ("DELETE", "/downloads/delete/{id}", delete_download, True),
        ("GET", "/torrents", torrents, True),
        ("GET", "/torrents/info/{id}", torrent_info, True),
        ("GET", "/torrents/instantAvailability/{hashes:path}", instant_availability, True),
        ("GET", "/torrents/activeCount", active_count, True),
        ("GET", "/torrents/availableHosts", available_hosts, True),
        ("PUT", "/torrents/addTorrent", add_torrent, True),
        ("POST", "/torrents/addMagnet", add_magnet, True),
        ("POST", "/torrents/selectFiles/{id}", select_files, True),
        ("DELETE", "/torrents/delete/{id}", delete_torrent, True),
        ("GET", "/hosts", hosts, False),
        ("GET", "/hosts/status", hosts_status, True),
        ("GET", "/hosts/regex", hosts_regex, False),
        ("GET", "/hosts/regexFolder", hosts_regex_folder, False),
        ("GET", "/hosts/domains", hosts_domains, False),
        ("GET", "/settings", settings, True),
        ("POST", "/settings/update", settings_update, True),
        ("POST", "/settings/convertPoints", convert_points, True),
        ("POST", "/settings/changePassword", change_password, True),
        ("PUT", "/settings/avatarFile", avatar_file, True),
        ("DELETE", "/settings/avatarDelete", avatar_delete, True),
    ]
    return [
        api_route(emu, method, path, handler, auth=auth) for method, path, handler, auth in table
    ]
