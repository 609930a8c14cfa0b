"""OAuth2 flows and token refresh against the emulator's ``/oauth/v2``."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest
import trio

from rdfs.api import Credentials, OAuthSession, RDClient, ReauthRequired, RetryPolicy, StaticToken, poll_device_login
from rdfs.api import errors
from rdfs.api.auth import OPEN_SOURCE_CLIENT_ID
from rdfs.api.models import DeviceCode
from rdfs.emulator import Emulator

pytestmark = pytest.mark.timeout(60)

NO_WAIT = RetryPolicy(max_retries=2, wait_initial=0, wait_max=0, wait_jitter=0)


def _client(emu: Emulator, auth: object = None) -> RDClient:
    return RDClient(emu.api_url, emu.oauth_url, auth=auth, retry=NO_WAIT, rate_limit_per_minute=6000)  # type: ignore[arg-type]


async def _login(emu: Emulator) -> Credentials:
    """The open-source flow, approved by the user after the first unanswered poll."""
    shown: list[DeviceCode] = []
    async with _client(emu) as rd, trio.open_nursery() as nursery:

        async def approve_after_first_poll() -> None:
            while emu.counters["GET /oauth/v2/device/credentials"] < 1:
                await trio.sleep(0.005)
            emu.approve_device(shown[0].user_code)

        nursery.start_soon(approve_after_first_poll)
        credentials = await poll_device_login(rd.oauth, on_code=shown.append, poll_interval=0.01)
    assert len(shown) == 1 and shown[0].verification_url.endswith("/device")
    return credentials


async def test_open_source_device_flow(emulator: Emulator) -> None:
    credentials = await _login(emulator)
    assert credentials.client_id != OPEN_SOURCE_CLIENT_ID and credentials.client_secret
    assert credentials.access_token and credentials.refresh_token and credentials.expires_at > 0
    assert emulator.counters["GET /oauth/v2/device/code"] == 1
    assert emulator.counters["GET /oauth/v2/device/credentials"] >= 2  # one pending, one approved
    assert emulator.counters["POST /oauth/v2/token"] == 1
    async with _client(emulator, OAuthSession(credentials)) as rd:
        assert (await rd.user()).id == 4242


async def test_device_login_expires(emulator: Emulator, autojump_clock: trio.testing.MockClock) -> None:
    # The emulator's code lives 600 s; on the mock clock the client gives up without real waiting.
    async with _client(emulator) as rd:
        with pytest.raises(errors.LoginExpired):
            await poll_device_login(rd.oauth, on_code=lambda code: None, poll_interval=100)
    assert emulator.counters["GET /oauth/v2/device/credentials"] == 7  # at 0, 100, … 600 s


async def test_mobile_device_flow(emulator: Emulator) -> None:
    emulator.register_app("MYAPPCLIENTID", "my-app-secret")
    async with _client(emulator) as rd:
        code = await rd.oauth.device_code("MYAPPCLIENTID")
        with pytest.raises(errors.PermissionDenied):
            await rd.oauth.token_from_device_code("MYAPPCLIENTID", "my-app-secret", code.device_code)
        emulator.approve_device(code.user_code)
        token = await rd.oauth.token_from_device_code("MYAPPCLIENTID", "my-app-secret", code.device_code)
    assert token.expires_in == 3600 and token.token_type == "Bearer"
    async with _client(emulator, StaticToken(token.access_token)) as rd:
        assert (await rd.user()).username == "emulator"


async def test_authorization_code_flow(emulator: Emulator) -> None:
    emulator.register_app("WEBAPPCLIENT", "web-secret")
    redirect = "https://app.example/callback"
    async with _client(emulator) as rd:
        url = rd.oauth.authorization_url("WEBAPPCLIENT", redirect, "csrf-state")
        answer = await rd.http.get(url)  # the user's browser, already logged in, clicks "Allow"
        assert answer.status_code == 302
        location = httpx.URL(answer.headers["location"])
        query = dict(urllib.parse.parse_qsl(location.query.decode()))
        assert str(location).startswith(redirect) and query["state"] == "csrf-state"
        token = await rd.oauth.token_from_authorization_code("WEBAPPCLIENT", "web-secret", query["code"], redirect)
        with pytest.raises(errors.PermissionDenied):  # a code is good once
            await rd.oauth.token_from_authorization_code("WEBAPPCLIENT", "web-secret", query["code"], redirect)
    async with _client(emulator, StaticToken(token.access_token)) as rd:
        assert (await rd.user()).id == 4242


async def test_refresh_after_expiry(emulator: Emulator) -> None:
    credentials = await _login(emulator)
    updates: list[Credentials] = []
    session = OAuthSession(credentials, on_update=updates.append)
    async with _client(emulator, session) as rd:
        await rd.user()
        emulator.expire_access_tokens()
        assert (await rd.user()).id == 4242  # 401 bad_token -> refresh -> same request again
    assert len(updates) == 1 and updates[0].access_token != credentials.access_token
    assert updates[0].refresh_token == credentials.refresh_token
    assert session.credentials == updates[0]
    assert rd.stats.token_retries == 1 and rd.stats.requests["oauth/token"] == 1
    assert emulator.counters["GET /user"] == 3


async def test_refresh_before_expiry(emulator: Emulator) -> None:
    credentials = await _login(emulator)
    stale = Credentials(credentials.client_id, credentials.client_secret, "", credentials.refresh_token, 0.0)
    updates: list[Credentials] = []

    async def persist(new: Credentials) -> None:
        updates.append(new)

    async with _client(emulator, OAuthSession(stale, on_update=persist)) as rd:
        assert (await rd.user()).id == 4242
    assert len(updates) == 1
    assert emulator.counters["GET /user"] == 1  # refreshed up front: no 401 round trip


async def test_refresh_is_single_flight(emulator: Emulator) -> None:
    credentials = await _login(emulator)
    session = OAuthSession(credentials)
    async with _client(emulator, session) as rd:
        await rd.user()
        emulator.expire_access_tokens()
        tokens_before = emulator.counters["POST /oauth/v2/token"]
        users = []

        async def one() -> None:
            users.append(await rd.user())

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
    assert len(users) == 20
    assert emulator.counters["POST /oauth/v2/token"] - tokens_before == 1
    assert session.refreshes == 1


async def test_revoked_grant_requires_login(emulator: Emulator) -> None:
    credentials = await _login(emulator)
    async with _client(emulator, OAuthSession(credentials)) as rd:
        emulator.revoke_oauth()
        with pytest.raises(ReauthRequired) as raised:
            await rd.user()
    assert credentials.refresh_token not in str(raised.value)
    assert credentials.access_token not in str(raised.value)


async def test_private_token_is_not_refreshed(emulator: Emulator) -> None:
    async with _client(emulator, StaticToken("not-the-token")) as rd:
        with pytest.raises(errors.BadToken) as raised:
            await rd.user()
    assert (raised.value.status, raised.value.code) == (401, 8)
    assert "not-the-token" not in str(raised.value)
    assert emulator.counters["GET /user"] == 1
