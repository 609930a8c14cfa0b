"""Deadlines and definite answers at the API edge (issue 15 item 4, API side; issue 14 item 6).

A server that drips its answer never holds a request past the client's deadline; RD's "no
metadata" is final (one request, not six) and remembered by ``StreamingExtras``; a gateway
page without an ``error_code`` stays transient: retried, never cached as a verdict.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rdfs.api.auth import StaticToken
from rdfs.api.client import RDClient
from rdfs.api.errors import GatewayError, NetworkError, RDError, ServiceUnavailable
from rdfs.api.transport import RetryPolicy
from rdfs.emulator import Emulator, FileSpec
from rdfs.data.links import LinkResolver
from rdfs.data.streaming import MEDIAINFO, StreamingExtras

NO_WAIT = dict(wait_initial=0, wait_max=0, wait_jitter=0)


@pytest.fixture
async def retrying_client(emulator: Emulator) -> AsyncIterator[RDClient]:
    """A client with the default five retries (no waits between them) and a 2 s deadline."""
    async with RDClient(
        api_url=emulator.api_url,
        oauth_url=emulator.oauth_url,
        auth=StaticToken(emulator.token),
        retry=RetryPolicy(max_retries=5, **NO_WAIT),
        deadline=2.0,
    ) as client:
        yield client


async def test_dripping_answer_fails_as_network_error_at_the_deadline(emulator: Emulator) -> None:
    emulator.set_faults(api_drip={"GET /user": 0.2})  # ~300 bytes: a minute to send it all
    async with RDClient(
        api_url=emulator.api_url,
        oauth_url=emulator.oauth_url,
        auth=StaticToken(emulator.token),
        retry=RetryPolicy(max_retries=1, **NO_WAIT),
        deadline=1.0,
    ) as client:
        with pytest.raises(NetworkError, match="no complete answer within 1 s") as caught:
            await client.user()
        assert caught.value.reached  # RD may have acted: only idempotent requests are sent again
        assert emulator.counters["GET /user"] == 2  # a GET: retried once, then given up
        emulator.set_faults(api_drip={})
        assert (await client.user()).username  # the client is fine afterwards


async def test_dripping_unrestrict_is_not_sent_twice(emulator: Emulator, retrying_client: RDClient) -> None:
    torrent_id = emulator.add_torrent("Movie", [FileSpec("/movie.mkv", 1000)])
    link = emulator.torrent_json(torrent_id)["links"][0]
    emulator.set_faults(api_drip={"POST /unrestrict/link": 0.2})
    with pytest.raises(NetworkError):
        await retrying_client.unrestrict_link(link)
    assert emulator.counters["POST /unrestrict/link"] == 1  # not idempotent: a second try would add a download


async def _download_id(emulator: Emulator, client: RDClient, name: str) -> str:
    torrent_id = emulator.add_torrent(name, [FileSpec(f"/{name}", 1000)])
    return (await client.unrestrict_link(emulator.torrent_json(torrent_id)["links"][0])).id


async def test_no_metadata_is_final_not_retried(emulator: Emulator, retrying_client: RDClient) -> None:
    download_id = await _download_id(emulator, retrying_client, "notes.txt")  # not a video: RD has no metadata
    with pytest.raises(ServiceUnavailable):
        await retrying_client.streaming_media_infos(download_id)
    assert emulator.counters["GET /streaming/mediaInfos"] == 1


async def test_gateway_page_on_mediainfos_is_retried(emulator: Emulator, retrying_client: RDClient) -> None:
    download_id = await _download_id(emulator, retrying_client, "movie.mkv")
    emulator.set_faults(api_raw_bodies={"GET /streaming/mediaInfos": [502, "<html><h1>502 Bad Gateway</h1></html>"]})
    with pytest.raises(GatewayError):
        await retrying_client.streaming_media_infos(download_id)
    assert emulator.counters["GET /streaming/mediaInfos"] == 6  # transient: the five retries were spent
    emulator.set_faults(api_raw_bodies={})
    assert (await retrying_client.streaming_media_infos(download_id)).type == "movie"


async def test_streaming_extras_remember_a_definite_miss(emulator: Emulator, retrying_client: RDClient) -> None:
    torrent_id = emulator.add_torrent("Docs", [FileSpec("/notes.txt", 1000)])
    link = emulator.torrent_json(torrent_id)["links"][0]
    extras = StreamingExtras(retrying_client, LinkResolver(retrying_client, None))
    for _ in range(3):  # a media scanner asking again and again
        with pytest.raises(ServiceUnavailable):
            await extras.get(MEDIAINFO, link)
    assert emulator.counters["GET /streaming/mediaInfos"] == 1
    assert emulator.counters["POST /unrestrict/link"] == 1
    extras.miss_ttl = 0.0  # once the miss expires, RD is asked again
    extras._misses.clear()
    with pytest.raises(ServiceUnavailable):
        await extras.get(MEDIAINFO, link)
    assert emulator.counters["GET /streaming/mediaInfos"] == 2


async def test_streaming_extras_do_not_cache_a_gateway_page(emulator: Emulator, retrying_client: RDClient) -> None:
    torrent_id = emulator.add_torrent("Film", [FileSpec("/film.mkv", 1000)])
    link = emulator.torrent_json(torrent_id)["links"][0]
    extras = StreamingExtras(retrying_client, LinkResolver(retrying_client, None))
    emulator.set_faults(api_raw_bodies={"GET /streaming/mediaInfos": [504, "<html>Gateway Timeout</html>"]})
    with pytest.raises(RDError):
        await extras.get(MEDIAINFO, link)
    emulator.set_faults(api_raw_bodies={})
    assert '"type": "movie"' in await extras.get(MEDIAINFO, link)  # asked again at once, and answered
