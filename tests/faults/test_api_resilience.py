"""Error mapping, rate limiting and retries against the emulator's injected faults."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio

from rdfs.api import NetworkError, RateLimiter, RDClient, RetryPolicy, StaticToken
from rdfs.api import errors
from rdfs.emulator import Emulator, FileSpec

pytestmark = pytest.mark.timeout(60)


def _policy(max_retries: int = 5) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, wait_initial=0, wait_max=0, wait_jitter=0)


@pytest.fixture
async def rd(emulator: Emulator) -> AsyncIterator[RDClient]:
    async with RDClient(
        emulator.api_url,
        emulator.oauth_url,
        auth=StaticToken(emulator.token),
        retry=_policy(),
        rate_limit_per_minute=60_000,
    ) as client:
        yield client


def _magnet(n: int) -> str:
    return f"magnet:?xt=urn:btih:{n:040x}&dn=Release.{n}"


async def test_error_mapping(rd: RDClient, emulator: Emulator) -> None:
    with pytest.raises(errors.UnknownResource) as unknown:
        await rd.torrent_info("AAAAAAAAAAAAA")
    assert (unknown.value.status, unknown.value.code, unknown.value.endpoint) == (404, 7, "torrents/info")
    with pytest.raises(errors.DisabledEndpoint):
        await rd.instant_availability("a" * 40)
    with pytest.raises(errors.BadParameter) as bad:
        await rd.add_magnet("not a magnet")
    assert (bad.value.status, bad.value.code, bad.value.details) == (400, 2, "Invalid magnet link")
    created = await rd.add_magnet(_magnet(1))
    with pytest.raises(errors.BadParameter) as bad_ids:
        await rd.select_files(created.id, [999])
    assert bad_ids.value.status == 404  # RD's "wrong parameter (invalid file ids)" comes as a 404
    emulator.active_limit = 1
    await rd.select_files(created.id, "all")
    emulator.set_status(created.id, "downloading")
    with pytest.raises(errors.TooManyActiveDownloads) as busy:
        await rd.add_magnet(_magnet(2))
    assert (busy.value.status, busy.value.code) == (509, 21)


async def test_hoster_unavailable_is_an_answer(rd: RDClient, emulator: Emulator) -> None:
    torrent_id = emulator.add_torrent("Gone (1999)", [FileSpec("/Gone.1999.mkv", 1 << 20)])
    link = (await rd.torrent_info(torrent_id)).links[0]
    emulator.kill_torrent(torrent_id)
    with pytest.raises(errors.HosterUnavailable) as raised:
        await rd.unrestrict_check(link)  # idempotent, yet a 503 with an error_code is not retried
    assert (raised.value.status, raised.value.code) == (503, 19)
    with pytest.raises(errors.HosterUnavailable):
        await rd.unrestrict_link(link)
    assert emulator.counters["POST /unrestrict/check"] == emulator.counters["POST /unrestrict/link"] == 1
    assert rd.stats.retries == 0


@pytest.mark.parametrize("status", [503, 502])
async def test_gets_survive_injected_server_errors(rd: RDClient, emulator: Emulator, status: int) -> None:
    emulator.add_torrent("Movie (2020)", [FileSpec("/Movie.2020.mkv", 1 << 20)])
    emulator.faults.api_error_status = status
    emulator.faults.api_error_rate = 0.4
    for _ in range(15):
        assert (await rd.user()).id == 4242
        assert len((await rd.torrents()).items) == 1
    injected = emulator.counters["injected_errors"]
    assert injected > 0 and rd.stats.retries == injected
    assert emulator.counters["GET /user"] + emulator.counters["GET /torrents"] == 30 + injected


async def test_add_magnet_is_never_repeated_after_a_503(rd: RDClient, emulator: Emulator) -> None:
    emulator.faults.api_error_rate = 1.0  # every request: 503
    for n in range(3):
        with pytest.raises(errors.APIError) as raised:
            await rd.add_magnet(_magnet(n))
        assert raised.value.status == 503
        assert emulator.counters["POST /torrents/addMagnet"] == n + 1  # exactly one per call
    emulator.faults.api_error_status = 502  # a proxy's bare 502: RD may have acted, still no repeat
    with pytest.raises(errors.APIError):
        await rd.add_magnet(_magnet(9))
    assert emulator.counters["POST /torrents/addMagnet"] == 4
    assert rd.stats.retries == 0
    emulator.faults.api_error_rate = 0.0
    assert emulator.torrent_ids() == []


async def test_add_magnet_is_retried_after_a_429(emulator: Emulator) -> None:
    # RD refused a 429'd request, so it is safe to send again, even for addMagnet.
    emulator.faults.api_error_status = 429
    emulator.faults.api_error_rate = 0.5
    async with RDClient(
        emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(12), rate_limit_per_minute=60_000
    ) as rd:
        created = [await rd.add_magnet(_magnet(n)) for n in range(8)]
    injected = emulator.counters["injected_errors"]
    assert injected > 0 and rd.stats.rate_limited == rd.stats.retries == injected
    assert emulator.counters["POST /torrents/addMagnet"] == 8 + injected
    assert sorted(emulator.torrent_ids()) == sorted(c.id for c in created)  # one torrent per call


async def test_burst_is_held_to_the_window(emulator: Emulator) -> None:
    """A burst uses RD's whole window at once; the rest waits in the limiter and never earns a 429."""
    emulator.faults.rate_limit_per_minute = 20  # RD's sliding window, scaled down
    limiter = RateLimiter(per_minute=20)
    async with RDClient(emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(0), limiter=limiter) as rd:
        results: list[int] = []
        budget_spent = trio.Event()

        async def one() -> None:
            results.append((await rd.user()).id)
            if len(results) == 20:
                budget_spent.set()

        async with trio.open_nursery() as nursery:
            for _ in range(25):
                nursery.start_soon(one)
            await budget_spent.wait()
            # The other 5 are held back: a send would need a slot in the 60 s window.
            assert limiter.acquired == 20 and limiter.budget_left() == 0
            nursery.cancel_scope.cancel()
    assert results == [4242] * 20  # all succeeded with no retry allowed
    assert emulator.counters["rate_limited"] == 0 and rd.stats.rate_limited == 0
    assert emulator.counters["GET /user"] == rd.stats.total == 20
    # The limiter used the whole window: one more request past it is refused.
    async with RDClient(emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(0)) as other:
        with pytest.raises(errors.TooManyRequests):
            await other.user()


async def test_adds_are_paced_to_their_own_window(emulator: Emulator) -> None:
    """RD throttles adds harder than the global limit: the client keeps them inside their window
    (scaled down here: 4 per second), so none earns a 429 that would halve every other request's pace."""
    emulator.faults.add_limit = (4, 1.0)
    adds = RateLimiter(4, window=1.05)
    async with RDClient(
        emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(0), rate_limit_per_minute=60_000, add_limiter=adds
    ) as rd:
        start = trio.current_time()
        created = [await rd.add_magnet(_magnet(n)) for n in range(10)]
        elapsed = trio.current_time() - start
        assert (await rd.user()).id == 4242
    assert len({c.id for c in created}) == 10 and sorted(emulator.torrent_ids()) == sorted(c.id for c in created)
    assert emulator.counters["rate_limited"] == 0 and rd.limiter.per_minute == 60_000  # global pace untouched
    assert elapsed >= 2 * 1.05  # 4 at once, 4 a window later, 2 another window later
    # Without the pacing, the emulator refuses the fifth add in a second.
    async with RDClient(
        emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(0), add_limiter=RateLimiter(100)
    ) as unpaced:
        await trio.sleep(1.1)
        for n in range(10, 14):
            await unpaced.add_magnet(_magnet(n))
        with pytest.raises(errors.TooManyRequests):
            await unpaced.add_magnet(_magnet(14))


async def test_rate_limited_beyond_retries(emulator: Emulator) -> None:
    emulator.faults.rate_limit_per_minute = 3
    async with RDClient(
        emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(2), rate_limit_per_minute=60_000
    ) as rd:
        for _ in range(3):
            await rd.user()
        with pytest.raises(errors.TooManyRequests) as raised:
            await rd.user()
    assert (raised.value.status, raised.value.code) == (429, 34)
    assert rd.stats.rate_limited == emulator.counters["rate_limited"] == 3  # first try + 2 retries


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connect_errors_are_retried_even_for_add_magnet() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/rest/1.0"
    async with RDClient(url, auth=StaticToken("secret-token-123"), retry=_policy(3)) as rd:
        with pytest.raises(NetworkError) as raised:
            await rd.add_magnet(_magnet(1))
    assert raised.value.reached is False and raised.value.endpoint == "torrents/addMagnet"
    assert rd.stats.retries == 3 and rd.stats.requests["torrents/addMagnet"] == 4
    assert "secret-token-123" not in str(raised.value)


async def test_read_timeout_retries_gets_but_not_add_magnet(emulator: Emulator) -> None:
    emulator.faults.api_latency = 1.0
    async with RDClient(
        emulator.api_url, auth=StaticToken(emulator.token), retry=_policy(2), timeout=0.2
    ) as rd:
        with pytest.raises(NetworkError) as get_error:
            await rd.user()
        with pytest.raises(NetworkError) as add_error:
            await rd.add_magnet(_magnet(1))
    assert get_error.value.reached and add_error.value.reached
    assert emulator.counters["GET /user"] == 3  # first try + 2 retries
    assert emulator.counters["POST /torrents/addMagnet"] == 1  # may have reached RD: never repeated
