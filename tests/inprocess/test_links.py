"""LinkResolver against the emulator over real HTTP: lazy, single-flight, persisted unrestricts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.errors import RDError
from rdfs.api.transport import RetryPolicy
from rdfs.store.metadata import Cache, StoredLink
from rdfs.emulator import Emulator, FileSpec
from rdfs.data.links import LinkGone, LinkResolver

UNRESTRICT = "POST /unrestrict/link"
NO_RETRY = RetryPolicy(max_retries=0, wait_initial=0, wait_max=0, wait_jitter=0)


@pytest.fixture
async def rd(emulator: Emulator) -> AsyncIterator[RDClient]:
    async with RDClient(
        api_url=emulator.api_url, oauth_url=emulator.oauth_url, auth=StaticToken(emulator.token), retry=NO_RETRY
    ) as client:
        yield client


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    store = Cache(tmp_path / "rdfs.db")
    yield store
    store.close()


def hoster_link(emu: Emulator, size: int = 1000, name: str = "Movie") -> tuple[str, str]:
    torrent_id = emu.add_torrent(name, [FileSpec(f"/{name}.mkv", size)])
    return torrent_id, emu.torrent_json(torrent_id)["links"][0]


async def test_resolves_lazily_once_and_reuses(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator, size=12345)
    resolver = LinkResolver(rd, cache)
    assert emulator.counters[UNRESTRICT] == 0  # constructing does nothing
    first = await resolver.resolve(link)
    second = await resolver.resolve(link)
    assert first == second
    assert first.filesize == 12345
    assert first.url.startswith(emulator.base_url)
    assert first.url not in repr(first)  # the URL is a credential
    assert emulator.counters[UNRESTRICT] == 1
    stored = cache.get_link(link)
    assert stored is not None and stored.url == first.url and stored.expires_at == first.expires_at


async def test_concurrent_callers_share_one_unrestrict(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    emulator.faults.api_latency = 0.05  # every caller arrives while the first call is in flight
    resolver = LinkResolver(rd, cache)
    results = []

    async def ask() -> None:
        results.append(await resolver.resolve(link))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(ask)
    assert len(results) == 20 and len({r.url for r in results}) == 1
    assert emulator.counters[UNRESTRICT] == 1


async def test_forced_refresh_is_single_flight(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    resolver = LinkResolver(rd, cache)
    old = await resolver.resolve(link)
    emulator.faults.api_latency = 0.05
    results = []

    async def refresh() -> None:
        results.append(await resolver.resolve(link, force=True, stale_url=old.url))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(refresh)
    # Callers that come after the refresh landed see a URL different from the stale one.
    results.append(await resolver.resolve(link, force=True, stale_url=old.url))
    assert {r.url for r in results} != {old.url} and len({r.url for r in results}) == 1
    assert emulator.counters[UNRESTRICT] == 2
    assert resolver.stats.forced == 1
    assert cache.get_link(link).url == results[0].url  # type: ignore[union-attr]


async def test_persisted_links_survive_a_restart(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    url = (await LinkResolver(rd, cache).resolve(link)).url
    again = await LinkResolver(rd, cache).resolve(link)  # a new process, same database
    assert again.url == url
    assert emulator.counters[UNRESTRICT] == 1


async def test_expired_link_is_unrestricted_again(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    cache.put_link(StoredLink(link, "http://127.0.0.1:9/d/OLD/x", "OLD", 1000, expires_at=1.0))
    resolved = await LinkResolver(rd, cache, default_ttl=3600).resolve(link)
    assert resolved.download_id != "OLD"
    assert emulator.counters[UNRESTRICT] == 1


async def test_dead_link_raises_link_gone_and_is_remembered(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    torrent_id, link = hoster_link(emulator)
    resolver = LinkResolver(rd, cache)
    await resolver.resolve(link)
    emulator.kill_torrent(torrent_id)
    with pytest.raises(LinkGone) as caught:
        await resolver.resolve(link, force=True)
    assert caught.value.hoster_link == link
    assert "hoster_unavailable" in caught.value.reason
    assert cache.get_link(link) is None
    calls = emulator.counters[UNRESTRICT]
    with pytest.raises(LinkGone):  # a scanner retrying the dead file does not hammer RD
        await resolver.resolve(link)
    assert emulator.counters[UNRESTRICT] == calls


async def test_outage_is_retryable_not_gone(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    resolver = LinkResolver(rd, cache, busy_timeout=0.3, busy_wait_initial=0.02, busy_wait_max=0.05)
    emulator.faults.api_down = True
    with pytest.raises(RDError) as caught:
        await resolver.resolve(link)
    assert not isinstance(caught.value, LinkGone)
    emulator.faults.api_down = False
    assert (await resolver.resolve(link)).filesize == 1000


async def test_unrestrict_waits_through_a_short_outage(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    """A read must wait for RD to come back, not fail: the unrestrict retries while RD is busy."""
    _, link = hoster_link(emulator)
    resolver = LinkResolver(rd, cache, busy_wait_initial=0.02, busy_wait_max=0.05)
    emulator.faults.api_down = True

    async def recover() -> None:
        await trio.sleep(0.3)
        emulator.faults.api_down = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(recover)
        resolved = await resolver.resolve(link)
    assert resolved.filesize == 1000
    assert emulator.counters["POST /unrestrict/link"] >= 2


async def test_cancelled_leader_does_not_strand_followers(emulator: Emulator, rd: RDClient, cache: Cache) -> None:
    _, link = hoster_link(emulator)
    emulator.faults.api_latency = 0.2
    resolver = LinkResolver(rd, cache)
    got = []

    async def leader() -> None:
        with trio.move_on_after(0.05):
            await resolver.resolve(link)

    async def follower() -> None:
        await trio.sleep(0.01)
        got.append(await resolver.resolve(link))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        nursery.start_soon(follower)
    assert len(got) == 1 and got[0].filesize == 1000
