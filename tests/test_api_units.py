"""Client pieces that need no server: error mapping, the rate limiter (on trio's mock clock)."""

from __future__ import annotations

import pytest
import trio

from rdfs.api import errors
from rdfs.api.auth import Credentials, OAuthClient, StaticToken
from rdfs.api.client import RDClient
from rdfs.api.ratelimit import RateLimiter

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
        (502, b"<html>Bad gateway</html>", errors.APIError, None),
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


async def test_rate_limiter_paces_a_burst(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=60, burst=6)
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(120):
            nursery.start_soon(one)
    assert len(times) == 120 and limiter.acquired == 120
    # No 60-second window ever holds more than per_minute acquisitions.
    times.sort()
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + 60)
        assert in_window <= 60
    assert times[5] - start == 0  # the burst goes at once
    assert limiter.budget_left() == 0


async def test_rate_limiter_penalty_blocks(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=600)
    assert limiter.budget_left() == 60
    limiter.penalize(7.0)
    assert limiter.budget_left() == 0
    start = trio.current_time()
    await limiter.acquire()
    assert trio.current_time() - start >= 7.0
