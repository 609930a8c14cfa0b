"""Client pieces that need no server: error mapping, the rate limiter (on trio's mock clock)."""

from __future__ import annotations

import bisect

import pytest
import trio

from rdfs.api import errors
from rdfs.api.auth import Credentials, OAuthClient, StaticToken
from rdfs.api.client import RDClient
from rdfs.api.ratelimit import WINDOW, RateLimiter

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (404, b'{"error": "unknown_ressource", "error_code": 7}', errors.UnknownResource, 7),
        (401, b'{"error": "bad_token", "error_code": 8}', errors.BadToken, 8),
        (403, b'{"error": "disabled_endpoint", "error_code": 37}', errors.DisabledEndpoint, 37),
        (503, b'{"error": "hoster_unavailable", "error_code": 19}', errors.HosterUnavailable, 19),
        (500, b'{"error": "internal", "error_code": -1}', errors.InternalError, -1),
        (451, b'{"error": "infringing_file", "error_code": 35}', errors.InfringingFile, 35),
        (429, b"", errors.TooManyRequests, 34),
        (509, b"<html>Bandwidth</html>", errors.TooManyActiveDownloads, 21),
        (400, b'{"error": "something_new", "error_code": 99}', errors.APIError, 99),
        (502, b"<html>Bad gateway</html>", errors.GatewayError, None),
        (400, b'{"error": "parameter_missing", "error_code": "1", "error_details": "magnet"}', errors.MissingParameter, 1),
    ],
)
def test_error_mapping(status: int, body: bytes, cls: type[errors.APIError], code: int | None) -> None:
    error = errors.error_for(status, body, endpoint="torrents/addMagnet")
    assert type(error) is cls
    assert (error.status, error.code) == (status, code)
    assert "torrents/addMagnet" in str(error)
    assert f"HTTP {status}" in str(error)


def test_every_documented_code_has_a_class() -> None:
    for code in range(-1, 38):
        if code == 0:
            continue
        cls = errors.ERRORS_BY_CODE[code]
        assert issubclass(cls, errors.APIError) and cls is not errors.APIError and cls.code == code
    details = errors.error_for(400, b'{"error": "parameter_missing", "error_code": 1, "error_details": "x"}')
    assert (details.error, details.details) == ("parameter_missing", "x")


def test_secrets_stay_out_of_reprs() -> None:
    assert "sekrit" not in repr(StaticToken("sekrit-token-value"))
    creds = Credentials("CID", "sekrit-secret", "sekrit-access", "sekrit-refresh", 1.0)
    assert "sekrit" not in repr(creds)
    assert Credentials.from_json(creds.to_json()) == creds


def test_plain_http_only_on_loopback() -> None:
    with pytest.raises(ValueError):
        RDClient(api_url="http://api.example.com/rest/1.0")
    RDClient(api_url="http://127.0.0.1:9/rest/1.0", oauth_url="http://localhost:9/oauth/v2")


def test_authorization_url() -> None:
    rd = RDClient(oauth_url="https://api.real-debrid.com/oauth/v2/")
    assert isinstance(rd.oauth, OAuthClient)
    url = rd.oauth.authorization_url("ABC", "https://example.com/cb?x=1", "st ate")
    assert url == (
        "https://api.real-debrid.com/oauth/v2/auth?client_id=ABC"
        "&redirect_uri=https%3A%2F%2Fexample.com%2Fcb%3Fx%3D1&response_type=code&state=st+ate"
    )


async def _acquire_all(limiter: RateLimiter, count: int) -> list[float]:
    """Start ``count`` concurrent acquisitions; return their times, sorted."""
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return sorted(times)


async def test_rate_limiter_spends_the_full_window_at_once(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=250)
    start = trio.current_time()
    times = await _acquire_all(limiter, 250)
    assert times == [start] * 250  # a library scan's unrestricts all go out at once
    assert limiter.waited == 0 and limiter.budget_left() == 0
    await limiter.acquire()  # the 251st waits for the first to leave the window
    assert trio.current_time() == start + WINDOW
    assert limiter.acquired == 251


async def test_rate_limiter_never_exceeds_the_window(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=250)
    start = trio.current_time()
    times = await _acquire_all(limiter, 600)
    assert limiter.acquired == 600
    # No 60-second span ever holds more than per_minute acquisitions ...
    for i, t in enumerate(times):
        assert bisect.bisect_left(times, t + 60) - i <= 250
    # ... and the budget is used in full: 250 at once, 250 a window later, the last 100 after two.
    assert times == [start] * 250 + [start + WINDOW] * 250 + [start + 2 * WINDOW] * 100


async def test_rate_limiter_budget_left(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=100)
    assert limiter.budget_left() == 100
    for _ in range(30):
        await limiter.acquire()
    await trio.sleep(30)
    for _ in range(50):
        await limiter.acquire()
    assert limiter.budget_left() == 20
    await trio.sleep(WINDOW - 30)  # the first 30 leave the window
    assert limiter.budget_left() == 50
    await trio.sleep(30)
    assert limiter.budget_left() == 100


async def test_rate_limiter_penalty_blocks(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=600)
    assert limiter.budget_left() == 600
    limiter.penalize(7.0)
    assert limiter.budget_left() == 0 and limiter.per_minute == 300
    start = trio.current_time()
    await limiter.acquire()
    assert trio.current_time() == start + 7.0
    assert limiter.budget_left() == 299


async def test_rate_limiter_penalty_opens_no_burst(autojump_clock: trio.testing.MockClock) -> None:
    """The halved pace counts the sends already in the window: no burst right after the block."""
    limiter = RateLimiter(per_minute=250)
    start = trio.current_time()
    await _acquire_all(limiter, 200)
    limiter.penalize(5.0)
    assert limiter.per_minute == 125
    assert limiter.budget_left() == 0
    await trio.sleep(10)
    assert limiter.budget_left() == 0  # block over, but 200 sends still in the window
    await limiter.acquire()
    assert trio.current_time() == start + WINDOW


async def test_rate_limiter_success_restores_the_pace(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=40)
    limiter.penalize(0.0)
    limiter.penalize(0.0)
    assert limiter.per_minute == 10 and limiter.budget_left() == 10
    for _ in range(5):
        limiter.succeeded()
    assert limiter.per_minute == 15 and limiter.budget_left() == 15
    for _ in range(100):
        limiter.succeeded()
    assert limiter.per_minute == limiter.limit == 40  # never above what was configured
    assert limiter.budget_left() == 40
