"""RD's OAuth2 endpoints (``/oauth/v2``) and the user's side of them (``/device``).

Approval: tests call ``emu.approve_device(user_code)``; a browser (or a client standing in
for the user) can open ``direct_verification_url``, which approves at once. ``/oauth/v2/auth``
approves the authorization-code flow at once and redirects with the code, like a logged-in
user clicking "Allow".
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .model import Refusal, missing
from .responses import api_route, form, json_response

if TYPE_CHECKING:
    from .core import Emulator

PREFIX = "/oauth/v2"


def routes(emu: Emulator) -> list[BaseRoute]:
    async def device_code(request: Request) -> Response:
        client_id = request.query_params.get("client_id")
        if not client_id:
            raise missing("client_id")
        grant = emu.device_code(client_id, request.query_params.get("new_credentials") == "yes")
        return json_response(
            request,
            {
                "device_code": grant.device_code,
                "user_code": grant.user_code,
                "interval": 5,
                "expires_in": 600,
                "verification_url": f"{emu.base_url}/device",
                "direct_verification_url": f"{emu.base_url}/device?code={grant.user_code}",
            },
        )

    async def device_credentials(request: Request) -> Response:
        for name in ("client_id", "code"):
            if not request.query_params.get(name):
                raise missing(name)
        credentials = emu.device_credentials(
            request.query_params["client_id"], request.query_params["code"]
        )
        return json_response(request, credentials)

    async def token(request: Request) -> Response:
        return json_response(request, emu.oauth_token(await form(request)))

    async def authorize(request: Request) -> Response:
        params = request.query_params
        for name in ("client_id", "redirect_uri", "response_type"):
            if not params.get(name):
                raise missing(name)
        if params["response_type"] != "code":
            raise Refusal("wrong_parameter", "response_type must be code")
        code = emu.authorization_code(params["client_id"], params["redirect_uri"])
        query = {"code": code}
        if "state" in params:
            query["state"] = params["state"]
        separator = "&" if "?" in params["redirect_uri"] else "?"
        return RedirectResponse(
            params["redirect_uri"] + separator + urlencode(query), status_code=302
        )

    table = [
        ("GET", "/device/code", device_code),
        ("GET", "/device/credentials", device_credentials),
        ("POST", "/token", token),
        ("GET", "/auth", authorize),
    ]
    return [
        api_route(emu, method, path, handler, auth=False, prefix=PREFIX)
        for method, path, handler in table
    ]


def verification_route(emu: Emulator) -> Route:
    """``/device``: the page where the user enters ``user_code`` (approves on submit)."""

    async def device_page(request: Request) -> Response:
        code = request.query_params.get("code", "").strip()
        if not code:
            return HTMLResponse(
                '<form method="get"><label>Code <input name="code"></label>'
                "<button>Allow</button></form>"
            )
        try:
            emu.approve_device(code)
        except KeyError:
            return HTMLResponse("<p>Unknown or expired code</p>", status_code=404)
        return HTMLResponse(
            f"<p>Application allowed ({html.escape(code)}). You can close this window.</p>"
        )

    return Route("/device", device_page, methods=["GET"])
