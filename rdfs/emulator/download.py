"""The download server: ``/d/<id>/<name>`` URLs handed out by ``/unrestrict/link``.

Single byte ranges (206 + Content-Range, ``bytes=N-``, ``bytes=-N``, 416), HEAD, keep-alive,
bodies streamed chunk by chunk. Faults: latency to first byte, bandwidth cap, bodies cut
mid-way (the connection is dropped), ranges ignored, ranges answered from the wrong offset, and
hostile servers: bodies dripped a byte at a time, redirects to any Location, gzip-encoded bodies.
"""

from __future__ import annotations

import gzip
import logging
from datetime import date
from typing import TYPE_CHECKING
from urllib.parse import quote

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .content import iter_segments, read_segments
from .model import DownloadRec, DownloadUnavailable, mime_type

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)

ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>Real-Debrid</title></head><body>"
    "<p>Your code is not or no longer valid</p></body></html>"
)


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) of a single ``Range``; ``None`` means "send it all".

    Raises ``Unsatisfiable`` for a well-formed range that misses the file. Multiple ranges and
    malformed headers are ignored (a 200 with the full body), as RFC 9110 allows.
    """
    if not header or not header.lower().startswith("bytes="):
        return None
    spec = header[6:].strip()
    if "," in spec:
        return None
    first_text, sep, last_text = spec.partition("-")
    if not sep:
        return None
    try:
        if not first_text.strip():
            suffix = int(last_text)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise Unsatisfiable
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text.strip() else max(first, size - 1)
    except ValueError:
        return None
    if first >= size:
        raise Unsatisfiable
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def _content_disposition(filename: str) -> str:
    ascii_name = "".join(c if " " <= c < "\x7f" and c != '"' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


class DownloadStream:
    """An ASGI response streaming ``length`` bytes of ``entry`` from ``offset``."""

    def __init__(
        self,
        emu: Emulator,
        entry: DownloadRec,
        status: int,
        headers: list[tuple[bytes, bytes]],
        offset: int,
        length: int,
        *,
        head: bool,
        drop_after: int | None,
    ) -> None:
        self.emu = emu
        self.entry = entry
        self.status = status
        self.headers = headers
        self.offset = offset
        self.length = length
        self.head = head
        self.drop_after = drop_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        if self.head or self.length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            await self._stream(send)
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _stream(self, send: Send) -> None:
        counters = self.emu.counters
        rate = self.emu.faults.download_bytes_per_second
        budget = self.drop_after if self.drop_after is not None else self.length
        sent = 0
        day = date.today().isoformat()
        for chunk in iter_segments(self.entry.segments, self.offset, self.length):
            if sent + len(chunk) > budget:
                chunk = chunk[: budget - sent]
            drip = (
                self.emu.faults.download_drip_interval
            )  # looked up per chunk: open responses start too
            if chunk and drip > 0:  # a server that never stops and never gets anywhere
                for index in range(len(chunk)):
                    await send(
                        {
                            "type": "http.response.body",
                            "body": chunk[index : index + 1],
                            "more_body": True,
                        }
                    )
                    counters["download_drip_bytes"] += 1
                    await trio.sleep(drip)
            elif chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                counters["download_bytes"] += len(chunk)
                self.emu.traffic[day] += len(chunk)
                if rate:
                    await trio.sleep(len(chunk) / rate)
            if sent >= budget:
                break
        if self.drop_after is not None:
            # Returning without the final body message makes hypercorn close the connection
            # mid-body: the client sees a truncated response, like a dropped RD stream.
            counters["download_drops"] += 1
            log.debug("dropping download %s after %d bytes", self.entry.id, sent)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def route(emu: Emulator) -> Route:
    async def download(request: Request) -> Response | DownloadStream:
        emu.counters["download_requests"] += 1
        if emu.faults.download_redirect and "hop" not in request.query_params:
            emu.counters["download_redirects"] += 1
            return RedirectResponse(
                f"{request.url.path}?hop=1", status_code=302
            )  # a relative Location
        if emu.faults.download_redirect_location is not None:
            emu.counters["download_redirects"] += 1
            return Response(
                status_code=302, headers={"location": emu.faults.download_redirect_location}
            )
        try:
            entry = emu.resolve_download(request.path_params["id"])
        except DownloadUnavailable as unavailable:
            emu.counters["download_refused"] += 1
            log.debug("download %s refused: %s", request.path_params["id"], unavailable.reason)
            return HTMLResponse(ERROR_PAGE, status_code=unavailable.status)
        faults = emu.faults
        if faults.download_latency > 0:
            await trio.sleep(faults.download_latency)
        if faults.download_error_rate > 0 and emu.rng.random() < faults.download_error_rate:
            emu.counters["download_errors"] += 1
            return HTMLResponse(ERROR_PAGE, status_code=faults.download_error_status)
        size = entry.filesize
        headers = [
            (b"content-type", mime_type(entry.filename).encode()),
            (b"accept-ranges", b"bytes"),
            (b"content-disposition", _content_disposition(entry.filename).encode()),
            (b"cache-control", b"private"),
        ]
        status, offset, length = 200, 0, size
        if not faults.ignore_range:
            try:
                wanted = parse_range(request.headers.get("range"), size)
            except Unsatisfiable:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            if wanted is not None:
                first, last = wanted
                if faults.content_range_shift:
                    # A misbehaving server: another range than asked, with an honest header.
                    shift = min(first, faults.content_range_shift)
                    first, last = first - shift, last - shift
                status, offset, length = 206, first, last - first + 1
                headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        if faults.download_content_encoding:
            # Compressed although the client asked for identity: the header tells, the bytes differ.
            body = gzip.compress(read_segments(entry.segments, offset, length))
            emu.counters["download_encoded"] += 1
            encoded = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}
            encoded["content-encoding"] = faults.download_content_encoding
            return Response(body, status_code=status, headers=encoded)
        headers.append((b"content-length", str(length).encode()))
        head = request.method == "HEAD"
        drop_after = None
        if (
            not head
            and length > 1
            and faults.download_drop_rate > 0
            and emu.rng.random() < faults.download_drop_rate
        ):
            drop_after = length // 2
        return DownloadStream(
            emu, entry, status, headers, offset, length, head=head, drop_after=drop_after
        )

    return Route("/d/{id}/{name:path}", download, methods=["GET", "HEAD"])
