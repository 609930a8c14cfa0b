"""The emulator's ASGI app: REST API, OAuth, download server and the ``/_emu`` control API."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import download, oauth, rest
from .model import FileSpec, Refusal
from .responses import rd_error_for_http

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)

# Control methods callable over HTTP: POST /_emu/call/<name> with a JSON object of arguments.
CONTROL_METHODS = frozenset(
    {
        "add_torrent",
        "bulk_add_torrents",
        "add_synthetic_library",
        "add_media_dir",
        "add_hoster_download",
        "remove_torrent",
        "set_status",
        "kill_torrent",
        "torrent_json",
        "torrent_ids",
        "file_bytes",
        "link_bytes",
        "expire_links",
        "approve_device",
        "register_app",
        "expire_access_tokens",
        "revoke_oauth",
        "reset_counters",
        "set_faults",
        "reset_faults",
        "faults_json",
        "counters_json",
    }
)


class VerbOverride:
    """``X-HTTP-Verb`` replaces the request's method, as RD documents for limited clients."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-http-verb":
                    scope = dict(scope, method=value.decode("latin-1").strip().upper())
                    break
        await self.app(scope, receive, send)


def _control_arguments(method: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if method == "add_torrent":
        arguments["files"] = [
            FileSpec(
                f["path"], f["size"], Path(f["source"]) if f.get("source") else None, f.get("seed")
            )
            for f in arguments.get("files", [])
        ]
    if method == "add_media_dir":
        arguments["directory"] = Path(arguments["directory"])
    return arguments


def _control_route(emu: Emulator) -> Route:
    async def call(request: Request) -> Response:
        method = request.path_params["method"]
        if method not in CONTROL_METHODS:
            return JSONResponse({"error": f"unknown control method {method}"}, status_code=404)
        body = await request.body()
        arguments = json.loads(body) if body else {}
        try:
            result = getattr(emu, method)(**_control_arguments(method, arguments))
        except (KeyError, ValueError, TypeError, Refusal) as error:
            return JSONResponse({"error": f"{type(error).__name__}: {error}"}, status_code=400)
        if isinstance(result, bytes):
            return JSONResponse({"bytes": base64.b64encode(result).decode()})
        return JSONResponse({"result": result})

    return Route("/_emu/call/{method}", call, methods=["POST"])


def build_app(emu: Emulator) -> ASGIApp:
    async def http_error(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 500
        if request.url.path.startswith((rest.PREFIX, oauth.PREFIX)):
            return rd_error_for_http(status)
        return Response(status_code=status)

    app = Starlette(
        routes=[
            Mount(rest.PREFIX, routes=rest.routes(emu)),
            Mount(oauth.PREFIX, routes=oauth.routes(emu)),
            download.route(emu),
            oauth.verification_route(emu),
            _control_route(emu),
        ],
        exception_handlers={404: http_error, 405: http_error},
    )
    return VerbOverride(app)
