"""Shared HTTP plumbing of the emulator's API: RD-style JSON answers, ETags, form parsing,
and the pipeline every API request goes through (counters, faults, rate limit, auth)."""

from __future__ import annotations

import collections
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .model import Refusal

if TYPE_CHECKING:
    from .core import Emulator

_PATH_PARAM = re.compile(r"/\{[^}]+\}")
Handler = Callable[[Request], Awaitable[Any]]

# Bodies for injected errors that are not RD answers (e.g. a proxy's 502).
_STATUS_ERRORS = {
    401: "bad_token",
    403: "permission_denied",
    429: "too_many_requests",
    500: "internal_error",
}


# A raw JSON value travels through json.dumps as this marker string, then replaces it.
_RAW_MARK = "\x00raw:"
_RAW_ENCODED = re.compile(rb'"\\u0000raw:([0-9a-f]*)\\u0000"')


def raw_json(text: str) -> str:
    """A placeholder that ``encode_json`` replaces by ``text`` verbatim (hostile answers)."""
    return f"{_RAW_MARK}{text.encode().hex()}\x00"


def encode_json(data: Any) -> bytes:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    if b"\\u0000raw:" in body:
        body = _RAW_ENCODED.sub(lambda m: bytes.fromhex(m.group(1).decode()), body)
    return body


def with_raw_fields(body: dict[str, Any], fields: dict[str, str], *, info: bool) -> dict[str, Any]:
    """``body`` with the hostile overrides of ``Faults.torrent_fields`` / ``unrestrict_fields``.

    A plain key applies to every answer; ``info.<key>`` and ``files.<n>.<key>`` only when
    ``info`` (a ``/torrents/info`` answer)."""
    body = dict(body)
    for key, text in fields.items():
        head, _, rest = key.partition(".")
        if head == "info":
            if info:
                body[rest] = raw_json(text)
        elif head == "files" and rest:
            index, _, name = rest.partition(".")
            files = body.get("files")
            if info and isinstance(files, list) and index.isdigit() and int(index) < len(files):
                files = body["files"] = list(files)
                files[int(index)] = dict(files[int(index)], **{name: raw_json(text)})
        else:
            body[key] = raw_json(text)
    return body


def hostile_torrent(emu: Emulator, body: dict[str, Any], *, info: bool) -> dict[str, Any]:
    fields = emu.faults.torrent_fields.get(str(body.get("id")))
    return with_raw_fields(body, fields, info=info) if fields else body


def hostile_unrestrict(
    emu: Emulator, link: str, unrestrict: Callable[[str], Any]
) -> dict[str, Any]:
    """``unrestrict(link).json()`` unless a hostile error is set for ``link`` (then no entry is
    made)."""
    error = emu.faults.unrestrict_errors.get(link)
    if error is not None:
        raise Refusal(error)
    body = unrestrict(link).json()
    fields = emu.faults.unrestrict_fields.get(link) or emu.faults.unrestrict_fields.get("*")
    return with_raw_fields(body, fields, info=False) if fields else body


def _dripped(response: Response, interval: float) -> Response:
    """The same answer, one byte every ``interval`` seconds (a server that never quite stalls)."""
    body = bytes(response.body)

    async def drip() -> Any:
        for index in range(len(body)):
            await trio.sleep(interval)
            yield body[index : index + 1]

    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return StreamingResponse(drip(), status_code=response.status_code, headers=headers)


def refusal_response(refusal: Refusal) -> Response:
    return Response(
        encode_json(refusal.body()), status_code=refusal.status, media_type="application/json"
    )


def json_response(
    request: Request, data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON with an ETag for GETs; 304 with no body when ``If-None-Match`` matches."""
    body = encode_json(data)
    headers = dict(headers or {})
    if request.method in ("GET", "HEAD") and status == 200:
        etag = hashlib.sha1(body).hexdigest()
        headers["ETag"] = etag
        wanted = request.headers.get("if-none-match", "")
        if etag in {tag.strip().removeprefix("W/").strip('"') for tag in wanted.split(",")}:
            return Response(status_code=304, headers=headers)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=204, headers=headers)


async def form(request: Request) -> dict[str, str]:
    """Parameters of a POST (urlencoded body), with the query string as a fallback."""
    params = {key: value for key, value in request.query_params.items() if key != "auth_token"}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        body = (await request.body()).decode("utf-8", errors="replace")
        params.update(
            {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}
        )
    return params


def int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise Refusal("wrong_parameter", f"{name} must be an integer") from None


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query_params.get("auth_token")


def _injected_error(status: int) -> Response:
    name = _STATUS_ERRORS.get(status, "service_unavailable" if status == 503 else "")
    if name:
        return refusal_response(Refusal(name, status=status))
    return Response(
        f"<html><body><h1>{status}</h1></body></html>", status_code=status, media_type="text/html"
    )


def counter_name(method: str, path: str) -> str:
    """``GET /torrents/info/{id}`` -> ``GET /torrents/info``."""
    return f"{method} {_PATH_PARAM.sub('', path) or '/'}"


_ADDS = frozenset({"POST /torrents/addMagnet", "PUT /torrents/addTorrent"})


def _count_hit(emu: Emulator, hits: collections.deque[float], limit: int, window: float) -> None:
    """Record a request in a sliding window; refuse it (429) when the window holds too many."""
    now = time.monotonic()
    while hits and hits[0] <= now - window:
        hits.popleft()
    hits.append(now)  # refused requests count too, as on RD
    if len(hits) > limit:
        emu.counters["rate_limited"] += 1
        raise Refusal("too_many_requests")


def api_route(
    emu: Emulator, method: str, path: str, handler: Handler, *, auth: bool = True, prefix: str = ""
) -> Route:
    """A route through the API pipeline; ``handler`` returns a Response or raises ``Refusal``."""
    name = counter_name(method, prefix + path)

    async def endpoint(request: Request) -> Response:
        emu.counters[name] += 1
        emu.counters["api_total"] += 1
        faults = emu.faults
        try:
            if faults.api_down:
                raise Refusal("service_unavailable")
            if faults.rate_limit_per_minute is not None:
                _count_hit(emu, emu.api_hits, faults.rate_limit_per_minute, 60.0)
            if faults.add_limit is not None and name in _ADDS:
                _count_hit(emu, emu.add_hits, *faults.add_limit)
            if faults.api_latency > 0:
                await trio.sleep(faults.api_latency)
            if faults.api_error_rate > 0 and emu.rng.random() < faults.api_error_rate:
                emu.counters["injected_errors"] += 1
                return _injected_error(faults.api_error_status)
            if auth:
                emu.authenticate(bearer(request))
            response = await handler(request)
        except Refusal as refusal:
            return refusal_response(refusal)
        emu.counters["api_answered"] += 1  # requests that got past faults, limits and auth
        if (
            faults.malformed_json_rate > 0
            and response.status_code == 200
            and response.media_type == "application/json"
            and emu.rng.random() < faults.malformed_json_rate
        ):
            emu.counters["malformed_json"] += 1
            return Response(response.body[: len(response.body) // 2], media_type="application/json")
        raw = faults.api_raw_bodies.get(name)
        if raw is not None and 200 <= response.status_code < 300:
            status, text = raw
            media = "text/html" if text.startswith("<") else "application/json"
            response = Response(text.encode(), status_code=status, media_type=media)
        interval = faults.api_drip.get(name, faults.api_drip.get("*", 0.0))
        if interval > 0:
            emu.counters["dripped"] += 1
            return _dripped(response, interval)
        return response

    return Route(path, endpoint, methods=[method])


def rd_error_for_http(status: int) -> Response:
    """RD's answer for an unknown method (404) or a wrong HTTP verb (405)."""
    error = {404: "unknown_method", 405: "method_not_allowed"}.get(status)
    if error is None:
        return Response(status_code=status)
    return refusal_response(Refusal(error))
