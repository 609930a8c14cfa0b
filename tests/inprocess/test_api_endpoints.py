"""Every REST endpoint of the client against the emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from datetime import date, datetime

import pytest

from rdfs.api import RDClient, RetryPolicy, StaticToken, UnexpectedResponse
from rdfs.api import errors
from rdfs.api.models import Download, Torrent
from rdfs.emulator import Emulator, FileSpec

pytestmark = pytest.mark.timeout(60)

NO_WAIT = RetryPolicy(max_retries=3, wait_initial=0, wait_max=0, wait_jitter=0)


@pytest.fixture
async def rd(emulator: Emulator) -> AsyncIterator[RDClient]:
    async with RDClient(
        emulator.api_url, emulator.oauth_url, auth=StaticToken(emulator.token), retry=NO_WAIT
    ) as client:
        yield client


def _movie(emu: Emulator, name: str = "Movie (2020)", size: int = 3 << 20) -> str:
    return emu.add_torrent(name, [FileSpec(f"/{name.replace(' ', '.')}.1080p.mkv", size)])


def _torrent_file(name: bytes, length: int) -> bytes:
    info = b"d6:lengthi%de4:name%d:%s12:piece lengthi16384e6:pieces20:%se" % (length, len(name), name, b"\x01" * 20)
    return b"d8:announce13:http://x/anno4:info" + info + b"e"


async def test_time_and_user(rd: RDClient, emulator: Emulator) -> None:
    assert isinstance(await rd.time(), datetime)
    iso = await rd.time_iso()
    assert iso.tzinfo is not None
    user = await rd.user()
    assert (user.id, user.username, user.type) == (4242, "emulator", "premium")
    assert user.expiration is not None
    assert emulator.counters["GET /time"] == emulator.counters["GET /time/iso"] == emulator.counters["GET /user"] == 1


async def test_torrent_lifecycle(rd: RDClient, emulator: Emulator) -> None:
    name = "Cafe\u0301 Society (2016)"  # NFD: the client must send it NFC-normalised
    created = await rd.add_magnet(f"magnet:?xt=urn:btih:{'ab' * 20}&dn={name}")
    assert created.id and created.uri.endswith(created.id)
    info = await rd.torrent_info(created.id)
    assert info.status == "waiting_files_selection" and info.files
    assert info.hash == "ab" * 20
    assert info.original_filename == unicodedata.normalize("NFC", name)
    count = await rd.active_count()
    assert count.limit == emulator.active_limit
    await rd.select_files(created.id, [f.id for f in info.files])
    done = await rd.torrent_info(created.id)
    assert done.status == "downloaded" and all(f.selected for f in done.files)
    assert len(done.links) >= 1
    await rd.select_files(created.id, "all")  # 202 action_already_done is a success
    page = await rd.torrents()
    assert [t.id for t in page.items] == [created.id] and page.total == 1
    await rd.delete_torrent(created.id)
    with pytest.raises(errors.UnknownResource) as raised:
        await rd.torrent_info(created.id)
    assert (raised.value.status, raised.value.code, raised.value.error) == (404, 7, "unknown_ressource")
    assert emulator.torrent_ids() == []


async def test_add_torrent_file(rd: RDClient, emulator: Emulator) -> None:
    hosts = await rd.available_hosts()
    assert hosts and hosts[0].host == "real-debrid.com"
    created = await rd.add_torrent(_torrent_file(b"single.bin", 123456), host=hosts[0].host)
    info = await rd.torrent_info(created.id)
    assert info.original_filename == "single.bin"
    assert [(f.path, f.bytes) for f in info.files] == [("/single.bin", 123456)]
    with pytest.raises(errors.TorrentFileInvalid):
        await rd.add_torrent(b"not a torrent")
    assert emulator.counters["PUT /torrents/addTorrent"] == 2


async def test_instant_availability_is_disabled(rd: RDClient) -> None:
    with pytest.raises(errors.DisabledEndpoint) as raised:
        await rd.instant_availability("AB" * 20, "cd" * 20)
    assert (raised.value.status, raised.value.code) == (403, 37)


async def test_unrestrict_downloads_and_streaming(rd: RDClient, emulator: Emulator) -> None:
    torrent_id = _movie(emulator)
    info = await rd.torrent_info(torrent_id)
    link = info.links[0]
    check = await rd.unrestrict_check(link)
    assert (check.filename, check.filesize, check.supported) == ("Movie.(2020).1080p.mkv", 3 << 20, 1)
    download = await rd.unrestrict_link(link, remote=False)
    assert download.filename == "Movie.(2020).1080p.mkv" and download.filesize == 3 << 20
    assert download.download.startswith(emulator.base_url)
    page = await rd.downloads()
    assert [d.id for d in page.items] == [download.id] and page.total == 1
    transcode = await rd.streaming_transcode(download.id)
    assert transcode["liveMP4"]["full"] == download.download
    media = await rd.streaming_media_infos(download.id)
    assert (media.type, media.year, media.size) == ("movie", "2020", 3 << 20)
    assert media.details["video"]
    await rd.delete_download(download.id)
    assert (await rd.downloads()).items == []
    with pytest.raises(errors.UnknownResource):
        await rd.delete_download(download.id)


async def test_unrestrict_folder_and_containers(rd: RDClient, emulator: Emulator) -> None:
    assert await rd.unrestrict_folder("https://1fichier.com/dir/abc") == []
    links = await rd.unrestrict_container_file(b"https://real-debrid.com/d/AAAA\nhttps://real-debrid.com/d/BBBB\n")
    assert links == ["https://real-debrid.com/d/AAAA", "https://real-debrid.com/d/BBBB"]
    with pytest.raises(errors.ServiceUnavailable):
        await rd.unrestrict_container_link("https://example.com/list.dlc")


async def test_traffic(rd: RDClient, emulator: Emulator) -> None:
    today = date.today()
    emulator.traffic[today.isoformat()] = 123_456
    traffic = await rd.traffic()
    assert traffic["remote"].bytes == 123_456 and traffic["remote"].type == "bytes"
    details = await rd.traffic_details(start=today, end=today.isoformat())
    assert details[today.isoformat()].bytes == 123_456
    assert details[today.isoformat()].hosts == {"real-debrid.com": 123_456}
    with pytest.raises(errors.BadParameter):
        await rd.traffic_details(start="2020-01-01", end="2020-06-01")


async def test_hosts(rd: RDClient) -> None:
    hosts = await rd.hosts()
    assert hosts["real-debrid.com"].name == "Real-Debrid"
    status = await rd.hosts_status()
    assert status["real-debrid.com"].status == "up" and status["real-debrid.com"].check_time is not None
    assert "real-debrid.com" in await rd.hosts_domains()
    assert any("real-debrid" in regex for regex in await rd.hosts_regex())
    assert len(await rd.hosts_regex_folder()) == 1


async def test_settings(rd: RDClient, emulator: Emulator) -> None:
    settings = await rd.settings()
    assert settings.locale == "en" and "download_ports" in settings.raw
    await rd.settings_update("locale", "fr")
    assert (await rd.settings()).locale == "fr"
    with pytest.raises(errors.BadParameter):
        await rd.settings_update("locale", "xx")
    points = emulator.user["points"]
    await rd.settings_convert_points()
    assert emulator.user["points"] == points - 1000
    await rd.settings_change_password()
    await rd.settings_avatar_file(b"\x89PNG fake image")
    assert emulator.user["avatar"].endswith("/4242.png")
    await rd.settings_avatar_delete()
    assert emulator.user["avatar"].endswith("/empty.png")
    assert emulator.counters["PUT /settings/avatarFile"] == emulator.counters["DELETE /settings/avatarDelete"] == 1


async def test_disable_access_token(rd: RDClient) -> None:
    await rd.disable_access_token()
    with pytest.raises(errors.BadToken):
        await rd.user()


async def test_verb_override_and_query_token(emulator: Emulator) -> None:
    torrent_id = _movie(emulator)
    async with RDClient(
        emulator.api_url, emulator.oauth_url, auth=StaticToken(emulator.token), verb_override=True, token_in_query=True
    ) as rd:
        assert (await rd.user()).id == 4242
        await rd.delete_torrent(torrent_id)  # sent as POST + X-HTTP-Verb: DELETE
    assert emulator.torrent_ids() == []
    assert emulator.counters["DELETE /torrents/delete"] == 1


async def test_pagination(rd: RDClient, emulator: Emulator) -> None:
    ids = emulator.bulk_add_torrents(23, files_per_torrent=1)
    seen = [t.id async for t in rd.iter_torrents(page_size=10)]
    assert seen == list(reversed(ids))  # newest first, each once
    assert emulator.counters["GET /torrents"] == 3
    page = await rd.torrents(page=2, limit=10)
    assert len(page.items) == 10 and page.total == 23
    offset = await rd.torrents(offset=20, limit=10)
    assert [t.id for t in offset.items] == seen[20:]
    end = await rd.torrents(page=4, limit=10)  # past the end: 204 with no body
    assert end.items == [] and end.total == 23 and not end.not_modified


async def test_pagination_exact_multiple_and_204(rd: RDClient, emulator: Emulator) -> None:
    emulator.bulk_add_torrents(20, files_per_torrent=1)
    assert len([t async for t in rd.iter_torrents(page_size=10)]) == 20
    assert emulator.counters["GET /torrents"] == 2  # X-Total-Count says there is no third page
    emulator.faults.empty_lists = True
    emulator.faults.empty_lists_status = 204
    assert [t async for t in rd.iter_torrents(page_size=10)] == []
    assert emulator.counters["GET /torrents"] == 3
    assert [d async for d in rd.iter_downloads()] == []


async def test_iter_downloads(rd: RDClient, emulator: Emulator) -> None:
    info = await rd.torrent_info(_movie(emulator))
    made = [await rd.unrestrict_link(info.links[0]) for _ in range(5)]
    listed = [d async for d in rd.iter_downloads(page_size=2)]
    assert all(isinstance(d, Download) for d in listed)
    assert [d.id for d in listed] == [d.id for d in reversed(made)]
    assert emulator.counters["GET /downloads"] == 3


async def test_not_modified(rd: RDClient, emulator: Emulator) -> None:
    _movie(emulator, "First (2001)")
    first = await rd.torrents(limit=10)
    again = await rd.torrents(limit=10)
    assert not first.not_modified and again.not_modified
    assert again.items == first.items and again.total == 1
    assert all(isinstance(t, Torrent) for t in again.items)
    assert rd.stats.not_modified == 1
    _movie(emulator, "Second (2002)")
    changed = await rd.torrents(limit=10)
    assert not changed.not_modified and len(changed.items) == 2
    settings = await rd.settings()
    assert await rd.settings() == settings and rd.stats.not_modified == 2
    assert emulator.counters["GET /torrents"] == 3 and emulator.counters["GET /settings"] == 2


async def test_list_with_a_non_array_body_is_an_error(emulator: Emulator) -> None:
    # A base URL ending in "/user?next=" makes "GET torrents" reach /user, which answers an object.
    async with RDClient(f"{emulator.api_url}/user?next=", auth=StaticToken(emulator.token)) as rd:
        with pytest.raises(UnexpectedResponse) as raised:
            await rd.torrents()
    assert raised.value.endpoint == "torrents" and raised.value.status == 200
    assert emulator.counters["GET /user"] == 1


async def test_stats_count_every_request(rd: RDClient, emulator: Emulator) -> None:
    await rd.user()
    await rd.hosts()
    with pytest.raises(errors.UnknownResource):
        await rd.torrent_info("AAAAAAAAAAAAA")
    assert rd.stats.requests == {"user": 1, "hosts": 1, "torrents/info": 1}
    assert rd.stats.total == emulator.counters["api_total"] == 3
    assert rd.stats.errors == 1
    assert rd.stats.as_dict()["total"] == 3
