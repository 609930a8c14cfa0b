"""The client's edge: decoding and validating what RD sends (issue 15, "validation at the edge").

Unit tests of the decoder and the validators, then the client against the in-process emulator's
hostile mode (``Faults.torrent_fields`` and friends): one bad record is dropped or clamped with
one warning, every other record comes through unchanged, and every failure is an ``RDError``.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from rdfs.api import errors
from rdfs.api.auth import OAuthClient
from rdfs.api.client import Page, RDClient, _total
from rdfs.api.errors import BadLink, BadRecord, UnexpectedResponse
from rdfs.api.models import (
    MAX_SIZE,
    NON_FINITE,
    DeviceCode,
    Download,
    MediaInfo,
    Token,
    Torrent,
    TorrentInfo,
    check_id,
    check_size,
    check_url,
    decode_json,
)
from rdfs.api.ratelimit import RateLimiter
from rdfs.api.transport import RetryPolicy, Transport
from rdfs.emulator import Emulator, FileSpec

DEEP = "[" * 100_000 + "]" * 100_000


# ------------------------------------------------------------------ decoder


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN", "1e400", "-1e400"])
def test_non_finite_numbers_decode_to_the_marker(text: str) -> None:
    assert decode_json(f'{{"bytes": {text}, "ok": 1.5}}'.encode()) == {"bytes": NON_FINITE, "ok": 1.5}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (DEEP.encode(), "nested too deep"),
        (b"<html>502</html>", "non-JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"{", "non-JSON"),
    ],
)
def test_undecodable_bodies_are_unexpected_response(body: bytes, reason: str) -> None:
    with pytest.raises(UnexpectedResponse, match=reason) as caught:
        decode_json(body, endpoint="torrents/info", status=200)
    assert caught.value.endpoint == "torrents/info"


def test_error_answer_nested_too_deep_is_still_an_api_error() -> None:
    error = errors.error_for(503, DEEP.encode(), endpoint="unrestrict/link")
    assert isinstance(error, errors.GatewayError)


# ------------------------------------------------------------------ validators


@pytest.mark.parametrize("value", [-5, -1, 2**63, 2**64, NON_FINITE, True, "12", 1.5, None, [1], {"a": 1}])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(BadRecord):
        check_size(value, "bytes")


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (MAX_SIZE, MAX_SIZE), (12.0, 12), (2**40, 2**40)])
def test_good_sizes(value: object, expected: int) -> None:
    assert check_size(value, "bytes") == expected


def test_ids() -> None:
    assert check_id("ABCDEFGHIJKLM") == "ABCDEFGHIJKLM"
    assert check_id(12345) == "12345"  # a JSON number id: its decimal string
    for bad in (True, 1.5, "", None, [], {}, NON_FINITE, -3, "a/b", "x\ny", "..", ".", "a\\b"):
        with pytest.raises(BadRecord):
            check_id(bad)


@pytest.mark.parametrize(
    "url",
    [
        "https://download.real-debrid.com/d/ABC/file.mkv",
        "http://127.0.0.1:8080/d/x",
        "https://[::1]:8443/d/x",
        "https://exämple.com/d/x",  # a non-ASCII host that IDNA encodes
    ],
)
def test_good_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://\u2603\u2603.com/d/x",  # refused by IDNA 2008
        "https://xn--/d/x",  # a malformed A-label
        "http://[::1/d/x",  # a broken IPv6 literal
        "http://[zz::1]/d/x",
        "http://[fe80::1%25eth0]/d/x",  # a zone id
        "https://a..b/d/x",  # an empty label
        "https://host:99999/d/x",
        "ftp://host/d/x",
        "file:///etc/passwd",
        "https:///d/x",
        "https://host/a b",
        "https://host/\x00",
        "//host/x",
        123,
    ],
)
def test_bad_urls(url: object) -> None:
    with pytest.raises(BadRecord):
        check_url(url)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3000", 3000), ("0", 0), ("-1", None), ("garbage", None), ("1e3", None), ("", None), ("9" * 30, None)],
)
def test_total_count(value: str, expected: int | None) -> None:
    assert _total(httpx.Headers({"X-Total-Count": value})) == expected


# ------------------------------------------------------------------ records


def _torrent(**changes: object) -> dict:
    body = {
        "id": "AAAAAAAAAAAAA", "filename": "Movie", "hash": "ab" * 20, "bytes": 30, "host": "real-debrid.com",
        "split": 2000, "progress": 100, "status": "downloaded", "added": "2024-01-02T03:04:05.000Z",
        "links": ["https://real-debrid.com/d/L1", "https://real-debrid.com/d/L2", "https://real-debrid.com/d/L3"],
        "files": [
            {"id": 1, "path": "/a.mkv", "bytes": 10, "selected": 1},
            {"id": 2, "path": "/b.mkv", "bytes": 10, "selected": 1},
            {"id": 3, "path": "/c.mkv", "bytes": 10, "selected": 1},
        ],
    }  # fmt: skip
    body.update(changes)
    return body


def test_torrent_bytes_out_of_range_is_clamped_with_a_problem() -> None:
    for value in (2**64, NON_FINITE, -5):
        torrent = Torrent.from_json(_torrent(bytes=value))
        assert torrent.bytes == 0 and len(torrent.problems) == 1 and "taken as 0" in torrent.problems[0]
    assert Torrent.from_json(_torrent()).problems == ()


def test_number_id_becomes_its_decimal_string_and_bad_ids_drop_the_record() -> None:
    assert Torrent.from_json(_torrent(id=42)).id == "42"
    for bad in ("", None, 1.5, True):
        with pytest.raises(BadRecord):
            Torrent.from_json(_torrent(id=bad))


def test_a_bad_file_is_dropped_with_its_link_slot() -> None:
    files = _torrent()["files"]
    files[1] = dict(files[1], bytes=-5)
    info = TorrentInfo.from_json(_torrent(files=files))
    assert [f.path for f in info.files] == ["/a.mkv", "/c.mkv"]
    # links[i] still belongs to the i-th selected file: c.mkv keeps L3, not L2.
    assert info.links == ("https://real-debrid.com/d/L1", "https://real-debrid.com/d/L3")
    assert len(info.problems) == 1 and "/b.mkv" in info.problems[0]


def test_packed_torrent_keeps_its_links_when_a_file_is_dropped() -> None:
    files = _torrent()["files"]
    files[0] = dict(files[0], bytes=NON_FINITE)
    info = TorrentInfo.from_json(_torrent(files=files, links=["https://real-debrid.com/d/RAR"]))
    assert [f.path for f in info.files] == ["/b.mkv", "/c.mkv"]
    assert info.links == ("https://real-debrid.com/d/RAR",)


def test_download_with_bad_size_or_url_is_refused() -> None:
    good = {"id": "D1", "filename": "a.mkv", "filesize": 10, "link": "https://real-debrid.com/d/L1",
            "host": "real-debrid.com", "download": "https://dl.example.com/d/D1/a.mkv"}  # fmt: skip
    assert Download.from_json(good).filesize == 10
    for change in ({"filesize": 2**64}, {"filesize": NON_FINITE}, {"download": "http://[::1/x"}, {"id": None}):
        with pytest.raises(BadRecord):
            Download.from_json(dict(good, **change))


def test_mediainfo_details_are_json_safe() -> None:
    stream = {"rate": NON_FINITE, "deep": json.loads("[" * 50 + "]" * 50)}
    info = MediaInfo.from_json({"duration": NON_FINITE, "details": {"video": {"a": stream}}})
    assert info.duration == 0.0
    json.dumps(info.details)  # no marker, no depth beyond what json.dumps handles
    assert info.details["video"]["a"]["rate"] is None


@pytest.mark.parametrize("value", [0, -5, NON_FINITE, 2**64, "soon", None])
def test_odd_token_and_device_durations_fall_back_to_defaults(value: object) -> None:
    token = Token.from_json({"access_token": "a", "refresh_token": "r", "expires_in": value}, now=1000.0)
    assert token.expires_in == 3600 and token.expires_at == 4600.0
    code = DeviceCode.from_json({"device_code": "d", "user_code": "U", "interval": value, "expires_in": value})
    assert (code.interval, code.expires_in) == (5, 600)


# ------------------------------------------------------------------ through the client (emulator's hostile mode)


async def _library(emulator: Emulator, count: int = 4) -> list[str]:
    return [emulator.add_torrent(f"Movie {i}", [FileSpec(f"/movie{i}.mkv", 1000 + i)]) for i in range(count)]


@pytest.mark.parametrize("raw", ["18446744073709551616", "9223372036854775808", "Infinity", "1e400", "-5"])
async def test_bad_torrent_bytes_in_listing_clamped_once(
    emulator: Emulator, rd_client: RDClient, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await _library(emulator)
    emulator.set_faults(torrent_fields={ids[1]: {"bytes": raw}})
    caplog.set_level(logging.WARNING, logger="rdfs.api.client")
    for _ in range(3):  # three syncs, one warning
        page = await rd_client.torrents(limit=100)
    assert sorted(t.id for t in page.items) == sorted(ids)
    assert {t.id: t.bytes for t in page.items}[ids[1]] == 0
    by_name = sorted(page.items, key=lambda t: t.filename)  # "Movie 0" ... "Movie 3"
    assert [t.bytes for t in by_name] == [0 if t.id == ids[1] else 1000 + i for i, t in enumerate(by_name)]
    warnings = [r.getMessage() for r in caplog.records if ids[1] in r.getMessage()]
    assert len(warnings) == 1
    assert "bytes" in warnings[0] and "taken as 0" in warnings[0]


async def test_number_ids_stay_distinct(emulator: Emulator, rd_client: RDClient) -> None:
    ids = await _library(emulator)
    emulator.set_faults(torrent_fields={ids[0]: {"id": "1001"}, ids[1]: {"id": "1002"}, ids[2]: {"id": "true"}})
    page = await rd_client.torrents(limit=100)
    assert sorted(t.id for t in page.items) == sorted(["1001", "1002", ids[3]])  # the bool id is dropped alone


async def test_deep_record_fails_the_answer_not_the_caller(emulator: Emulator, rd_client: RDClient) -> None:
    ids = await _library(emulator)
    emulator.set_faults(torrent_fields={ids[0]: {"info.bytes": DEEP}})
    with pytest.raises(UnexpectedResponse, match="nested too deep"):
        await rd_client.torrent_info(ids[0])
    info = await rd_client.torrent_info(ids[1])  # the other torrents are untouched
    assert [f.bytes for f in info.files] == [1001]


@pytest.mark.parametrize("raw", ["Infinity", "1e400", "9223372036854775808", "-5", '"big"'])
async def test_bad_file_size_in_info_drops_that_file(emulator: Emulator, rd_client: RDClient, raw: str) -> None:
    files = [FileSpec("/e1.mkv", 100), FileSpec("/e2.mkv", 200), FileSpec("/e3.mkv", 300)]
    torrent_id = emulator.add_torrent("Show", files)
    emulator.set_faults(torrent_fields={torrent_id: {"files.1.bytes": raw}})
    info = await rd_client.torrent_info(torrent_id)
    assert [(f.path, f.bytes) for f in info.files] == [("/e1.mkv", 100), ("/e3.mkv", 300)]
    links = emulator.torrent_json(torrent_id)["links"]
    assert info.links == (links[0], links[2])


@pytest.mark.parametrize(
    "fields",
    [
        {"download": '"https://\u2603\u2603.example/d/x"'},
        {"download": '"http://[::1/d/x"'},
        {"download": '"ftp://example.com/x"'},
        {"filesize": "Infinity"},
        {"filesize": "18446744073709551616"},
        {"filesize": "1e400"},
    ],
)
async def test_unusable_unrestrict_answer_is_bad_link(emulator: Emulator, rd_client: RDClient, fields: dict) -> None:
    ids = await _library(emulator, 2)
    bad, good = (emulator.torrent_json(i)["links"][0] for i in ids)
    emulator.set_faults(unrestrict_fields={bad: fields})
    with pytest.raises(BadLink):
        await rd_client.unrestrict_link(bad)
    download = await rd_client.unrestrict_link(good)
    assert download.filesize == 1001 and download.download.startswith("http://127.0.0.1")


async def test_raw_bodies_are_client_errors(emulator: Emulator, rd_client: RDClient) -> None:
    (torrent_id,) = await _library(emulator, 1)
    for body in ("1e400", "Infinity", DEEP, "<html>oops</html>", "[1, 2"):
        emulator.set_faults(api_raw_bodies={"GET /torrents/info": [200, body]})
        with pytest.raises(UnexpectedResponse):
            await rd_client.torrent_info(torrent_id)


async def test_oauth_answer_nested_too_deep_is_unexpected_response(emulator: Emulator) -> None:
    emulator.set_faults(api_raw_bodies={"GET /oauth/v2/device/code": [200, DEEP]})
    async with httpx.AsyncClient() as http:
        oauth = OAuthClient(Transport(http, RateLimiter(600), retry=RetryPolicy(max_retries=0)), emulator.oauth_url)
        with pytest.raises(UnexpectedResponse):
            await oauth.device_code()


async def test_a_dropped_record_does_not_make_a_page_look_short(emulator: Emulator, rd_client: RDClient) -> None:
    ids = await _library(emulator, 6)
    newest = emulator.list_torrents(0, 1, False)[0][0]["id"]
    emulator.set_faults(torrent_fields={newest: {"id": "null"}})  # dropped from page 1
    page = await rd_client.torrents(page=1, limit=3)
    assert len(page.items) == 2 and page.received == 3
    listed = [t.id async for t in rd_client.iter_torrents(page_size=3)]
    assert sorted(listed) == sorted(set(ids) - {newest})  # page 2 was still fetched


async def test_paging_stops_when_a_page_adds_nothing_new(
    emulator: Emulator, rd_client: RDClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _library(emulator, 4)
    real = rd_client.torrents

    async def ignores_page(offset=None, page=None, limit=None, filter=None):
        # A server that ignores ``page`` and sends no usable total: only "nothing new" can stop it.
        answer = await real(page=1, limit=limit, filter=filter)
        return Page(answer.items, None, answer.not_modified, received=answer.received)

    monkeypatch.setattr(rd_client, "torrents", ignores_page)
    listed = [t.id async for t in rd_client.iter_torrents(page_size=2)]
    assert len(listed) == 2 and set(listed) <= set(ids)
    assert emulator.counters["GET /torrents"] == 2  # page 1, then a repeat of it: stop


async def test_a_total_smaller_than_what_was_seen_is_not_believed(
    emulator: Emulator, rd_client: RDClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _library(emulator, 5)
    real = rd_client.torrents

    async def lying_total(offset=None, page=None, limit=None, filter=None):
        answer = await real(page=page, limit=limit, filter=filter)
        return Page(answer.items, 0, answer.not_modified, received=answer.received)  # "X-Total-Count: 0"

    monkeypatch.setattr(rd_client, "torrents", lying_total)
    assert sorted([t.id async for t in rd_client.iter_torrents(page_size=2)]) == sorted(ids)
