"""Authentication: private API tokens and RD's OAuth2 flows.

Token providers (what ``RDClient(auth=...)`` takes) implement two coroutines:
``token()`` returns the access token to send, and ``rejected(token)`` is called when RD answered
``bad_token`` for it; it returns True when a new token is available (the request is then sent
once more). ``StaticToken`` wraps a private API token; ``OAuthSession`` refreshes its access
token before it expires and once after a rejection, one refresh at a time however many requests
are waiting, and reports new credentials through ``on_update`` so they can be persisted.

``OAuthClient`` speaks the OAuth endpoints (device code, credentials, token, refresh,
authorization code); ``poll_device_login`` runs the whole open-source-app device flow.
"""

from __future__ import annotations

import inspect
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self

import trio

from rdfs.api.errors import APIError, LoginExpired, ReauthRequired, UnexpectedResponse
from rdfs.api.models import ClientCredentials, DeviceCode, Token, decode_json
from rdfs.api.transport import Transport

log = logging.getLogger(__name__)

DEFAULT_OAUTH_URL = "https://api.real-debrid.com/oauth/v2"
OPEN_SOURCE_CLIENT_ID = "X245A4XAIBGVM"
DEVICE_GRANT_TYPE = "http://oauth.net/grant_type/device/1.0"


@dataclass(frozen=True)
class Credentials:
    """Everything needed to keep an OAuth login alive; ``expires_at`` is a UNIX time."""

    client_id: str
    client_secret: str
    access_token: str
    refresh_token: str
    expires_at: float = 0.0

    @classmethod
    def from_token(cls, client_id: str, client_secret: str, token: Token) -> Self:
        return cls(
            client_id, client_secret, token.access_token, token.refresh_token, token.expires_at
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            client_id=str(data["client_id"]),
            client_secret=str(data["client_secret"]),
            access_token=str(data.get("access_token", "")),
            refresh_token=str(data["refresh_token"]),
            expires_at=float(data.get("expires_at", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
        }

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, expires_at={self.expires_at!r})"


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    async def rejected(self, token: str) -> bool: ...


class StaticToken:
    """A private API token (or any access token that is never refreshed)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    async def rejected(self, token: str) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticToken(***)"


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class OAuthClient:
    """RD's OAuth2 endpoints (``/device/code``, ``/device/credentials``, ``/token``, ``/auth``)."""

    def __init__(self, transport: Transport, oauth_url: str = DEFAULT_OAUTH_URL) -> None:
        self._transport = transport
        self.oauth_url = oauth_url.rstrip("/")

    async def _json(
        self, method: str, path: str, *, idempotent: bool, **kwargs: Any
    ) -> dict[str, Any]:
        endpoint = f"oauth/{path}"
        response = await self._transport.request(
            method, f"{self.oauth_url}/{path}", endpoint=endpoint, idempotent=idempotent, **kwargs
        )
        data = None
        if response.content:
            data = decode_json(response.content, endpoint=endpoint, status=response.status_code)
        if not isinstance(data, dict):
            raise UnexpectedResponse(
                f"{endpoint}: expected a JSON object",
                endpoint=endpoint,
                status=response.status_code,
            )
        return data

    async def device_code(
        self, client_id: str = OPEN_SOURCE_CLIENT_ID, *, new_credentials: bool = False
    ) -> DeviceCode:
        params = {"client_id": client_id}
        if new_credentials:
            params["new_credentials"] = "yes"
        return DeviceCode.from_json(
            await self._json("GET", "device/code", idempotent=True, params=params)
        )

    async def device_credentials(
        self, device_code: str, client_id: str = OPEN_SOURCE_CLIENT_ID
    ) -> ClientCredentials | None:
        """The user-bound client id/secret, or None while the user has not approved the code yet."""
        try:
            data = await self._json(
                "GET",
                "device/credentials",
                idempotent=True,
                params={"client_id": client_id, "code": device_code},
            )
        except APIError as exc:
            if 400 <= exc.status < 500:
                return None
            raise
        credentials = ClientCredentials.from_json(data)
        if not credentials.client_id or not credentials.client_secret:
            return None
        return credentials

    async def _token(self, form: dict[str, str], *, idempotent: bool) -> Token:
        data = await self._json("POST", "token", idempotent=idempotent, data=form)
        token = Token.from_json(data, now=time.time())
        if not token.access_token:
            raise UnexpectedResponse(
                "oauth/token: answer has no access_token", endpoint="oauth/token", status=200
            )
        return token

    async def token_from_device_code(
        self, client_id: str, client_secret: str, device_code: str
    ) -> Token:
        """Exchange an approved device code for tokens.

        The mobile flow; step 7 of the open-source flow.
        """
        form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "code": device_code,
            "grant_type": DEVICE_GRANT_TYPE,
        }
        return await self._token(form, idempotent=False)

    async def refresh(self, client_id: str, client_secret: str, refresh_token: str) -> Token:
        """A new access token from a refresh token; ``ReauthRequired`` when RD refuses the grant."""
        form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "code": refresh_token,
            "grant_type": DEVICE_GRANT_TYPE,
        }
        try:
            # A repeated refresh is harmless: the refresh token lives until the grant is revoked.
            return await self._token(form, idempotent=True)
        except APIError as exc:
            if exc.status in (400, 401, 403):
                reason = exc.error or f"HTTP {exc.status}"
                raise ReauthRequired(
                    f"Real-Debrid refused to refresh the access token ({reason}): "
                    "the authorization was revoked or expired; log in again"
                ) from exc
            raise

    def authorization_url(self, client_id: str, redirect_uri: str, state: str) -> str:
        """The URL to send the user's browser to (three-legged flow)."""
        query = urllib.parse.urlencode(
            {
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "state": state,
            }
        )
        return f"{self.oauth_url}/auth?{query}"

    async def token_from_authorization_code(
        self, client_id: str, client_secret: str, code: str, redirect_uri: str
    ) -> Token:
        form = {
            "client_id": client_id,
            "client_secret": client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
            "grant_type": "authorization_code",
        }
        return await self._token(form, idempotent=False)


REFUSED_RETRY = 300.0  # seconds a refused refresh is remembered before RD is asked again


class OAuthSession:
    """An OAuth login that keeps its access token fresh.

    ``on_update(credentials)`` (plain function or coroutine function) is called after every
    refresh. ``oauth`` may be left out: ``RDClient`` binds its own ``OAuthClient``.

    A refused refresh (the user revoked the app) is remembered for ``refused_retry`` seconds:
    meanwhile every request fails at once with the same ``ReauthRequired`` (one warning line, no
    refresh sent each sync), and the mount keeps serving what it has.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        on_update: Callable[[Credentials], Any] | None = None,
        oauth: OAuthClient | None = None,
        refresh_margin: float = 60.0,
        refused_retry: float = REFUSED_RETRY,
    ) -> None:
        self._credentials = credentials
        self._on_update = on_update
        self._oauth = oauth
        self._margin = refresh_margin
        self._lock = trio.Lock()
        self.refreshes = 0
        self.refused_retry = refused_retry
        self._refused: tuple[float, ReauthRequired] | None = None  # (monotonic retry time, error)

    def bind(self, oauth: OAuthClient) -> None:
        if self._oauth is None:
            self._oauth = oauth

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def _expiring(self) -> bool:
        return (
            not self._credentials.access_token
            or time.time() >= self._credentials.expires_at - self._margin
        )

    async def token(self) -> str:
        if self._expiring():
            await self._refresh_if(self._expiring)
        return self._credentials.access_token

    async def rejected(self, token: str) -> bool:
        await self._refresh_if(lambda: self._credentials.access_token == token)
        return True

    async def refresh(self) -> Credentials:
        """Refresh now (whatever the expiry) and return the new credentials."""
        await self._refresh_if(lambda: True)
        return self._credentials

    async def _refresh_if(self, still_needed: Callable[[], bool]) -> None:
        # Single flight: the first waiter refreshes; the others find a fresh token and return.
        async with self._lock:
            if not still_needed():
                return
            if self._oauth is None:
                raise ReauthRequired(
                    "OAuthSession is not bound to an OAuthClient: cannot refresh the access token"
                )
            if self._refused is not None:
                retry_at, refusal = self._refused
                if time.monotonic() < retry_at:
                    raise ReauthRequired(str(refusal))
            old = self._credentials
            try:
                token = await self._oauth.refresh(
                    old.client_id, old.client_secret, old.refresh_token
                )
            except ReauthRequired as exc:
                if self._refused is None:
                    log.warning(
                        "%s (run `rdfs login`; asking again in %g s)", exc, self.refused_retry
                    )
                self._refused = (time.monotonic() + self.refused_retry, exc)
                raise
            self._refused = None
            self._credentials = Credentials(
                old.client_id,
                old.client_secret,
                token.access_token,
                token.refresh_token or old.refresh_token,
                token.expires_at,
            )
            self.refreshes += 1
            log.info("access token refreshed (valid for %d s)", token.expires_in)
            if self._on_update is not None:
                await _maybe_await(self._on_update(self._credentials))

    def __repr__(self) -> str:
        return f"OAuthSession({self._credentials!r})"


async def poll_device_login(
    oauth: OAuthClient,
    *,
    on_code: Callable[[DeviceCode], Awaitable[Any] | Any],
    client_id: str = OPEN_SOURCE_CLIENT_ID,
    poll_interval: float | None = None,
) -> Credentials:
    """Run the open-source-app flow: device code → wait for approval → credentials → tokens.

    ``on_code`` is called once with the ``DeviceCode`` (show ``verification_url`` and
    ``user_code``). Polls every ``interval`` seconds (RD's, unless ``poll_interval`` is given)
    until RD's ``expires_in``; raises ``LoginExpired`` if the user did not approve in time.
    """
    code = await oauth.device_code(client_id, new_credentials=True)
    await _maybe_await(on_code(code))
    interval = poll_interval if poll_interval is not None else float(max(1, code.interval))
    deadline = trio.current_time() + code.expires_in
    while True:
        credentials = await oauth.device_credentials(code.device_code, client_id)
        if credentials is not None:
            break
        if trio.current_time() + interval > deadline:
            raise LoginExpired(
                f"the code {code.user_code} was not approved within {code.expires_in} s"
            )
        await trio.sleep(interval)
    token = await oauth.token_from_device_code(
        credentials.client_id, credentials.client_secret, code.device_code
    )
    log.info("device login approved; access token valid for %d s", token.expires_in)
    return Credentials.from_token(credentials.client_id, credentials.client_secret, token)
