"""The Real-Debrid emulator over real HTTP on 127.0.0.1 (plain httpx, no client code)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import rarfile
import trio

from rdfs.emulator import Emulator, FileSpec, synthetic_bytes
from rdfs.emulator.bencode import encode
from rdfs.emulator.content import BLOCK_SIZE
from rdfs.emulator.core import DEVICE_GRANT, OPEN_SOURCE_CLIENT_ID
from rdfs.emulator.server import build_parser, build_emulator

GIB = 1 << 30


@pytest.fixture
async def rd(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client on the emulator's REST API, with the private token."""
    async with httpx.AsyncClient(
        base_url=emulator.api_url, headers={"Authorization": f"Bearer {emulator.token}"}, timeout=10
    ) as client:
        yield client


def add_movie(emu: Emulator, **kwargs: object) -> str:
    return emu.add_torrent(
        "Movie (2020)",
        [FileSpec("/Movie.2020.1080p.mkv", 3 * GIB + 12345), FileSpec("/Movie.2020.nfo", 1000)],
        **kwargs,  # type: ignore[arg-type]
    )


async def unrestrict(rd: httpx.AsyncClient, link: str) -> dict:
    response = await rd.post("/unrestrict/link", data={"link": link})
    assert response.status_code == 200, response.text
    return response.json()


async def first_download(emu: Emulator, rd: httpx.AsyncClient, torrent_id: str, index: int = 0) -> dict:
    info = (await rd.get(f"/torrents/info/{torrent_id}")).json()
    return await unrestrict(rd, info["links"][index])


def default_seed(emu: Emulator, torrent_id: str, file_id: int) -> str:
    """A file without an explicit seed has the synthetic content of ``<info hash>:<path>``."""
    info = emu.torrent_json(torrent_id)
    return f"{info['hash']}:{info['files'][file_id - 1]['path']}"


# ---------------------------------------------------------------- content


def test_synthetic_bytes_any_range_is_consistent() -> None:
    whole = synthetic_bytes("seed", 0, 3 * BLOCK_SIZE)
    assert len(whole) == 3 * BLOCK_SIZE
    for offset, length in [(0, 10), (BLOCK_SIZE - 5, 10), (BLOCK_SIZE * 2 - 1, BLOCK_SIZE + 1), (123, 0)]:
        assert synthetic_bytes("seed", offset, length) == whole[offset : offset + length]
    assert whole[:BLOCK_SIZE] != whole[BLOCK_SIZE : 2 * BLOCK_SIZE]
    assert synthetic_bytes("other", 0, 4096) != whole[:4096]
    far = 7 * GIB + 999
    assert synthetic_bytes("seed", far, 5000)[1000:] == synthetic_bytes("seed", far + 1000, 4000)


# ---------------------------------------------------------------- torrents and lists


async def test_torrent_list_and_info_shapes(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    response = await rd.get("/torrents")
    assert response.status_code == 200
    assert response.headers["x-total-count"] == "1"
    (item,) = response.json()
    assert item["id"] == torrent_id and len(torrent_id) == 13
    assert item["status"] == "downloaded" and item["progress"] == 100
    assert "files" not in item and "ended" in item and "speed" not in item
    assert item["bytes"] == 3 * GIB + 12345 + 1000
    info = (await rd.get(f"/torrents/info/{torrent_id}")).json()
    assert [f["path"] for f in info["files"]] == ["/Movie.2020.1080p.mkv", "/Movie.2020.nfo"]
    assert [f["selected"] for f in info["files"]] == [1, 1]
    assert len(info["links"]) == 2
    assert all(link.startswith("https://real-debrid.com/d/") and len(link.rsplit("/", 1)[1]) == 13 for link in info["links"])
    assert emulator.counters["GET /torrents"] == 1 and emulator.counters["GET /torrents/info"] == 1
    missing = await rd.get("/torrents/info/NOSUCHTORRENT")
    assert (missing.status_code, missing.json()) == (404, {"error": "unknown_ressource", "error_code": 7})


async def test_pagination_total_count_and_204(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    ids = [emulator.add_torrent(f"T{i}", [FileSpec(f"/t{i}.mkv", 100 + i)]) for i in range(5)]
    newest_first = list(reversed(ids))
    page1 = await rd.get("/torrents", params={"page": 1, "limit": 2})
    page3 = await rd.get("/torrents", params={"page": 3, "limit": 2})
    offset = await rd.get("/torrents", params={"offset": 1, "limit": 3})
    past = await rd.get("/torrents", params={"page": 4, "limit": 2})
    assert [t["id"] for t in page1.json()] == newest_first[:2]
    assert [t["id"] for t in page3.json()] == newest_first[4:]
    assert [t["id"] for t in offset.json()] == newest_first[1:4]
    assert past.status_code == 204 and past.content == b"" and past.headers["x-total-count"] == "5"
    assert page1.headers["x-total-count"] == "5"
    big = await rd.get("/torrents", params={"limit": 5000})
    assert len(big.json()) == 5


async def test_empty_account_answers_204(rd: httpx.AsyncClient) -> None:
    for path in ("/torrents", "/downloads"):
        response = await rd.get(path)
        assert (response.status_code, response.content, response.headers["x-total-count"]) == (204, b"", "0")


async def test_etag_and_304(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    add_movie(emulator)
    first = await rd.get("/torrents")
    etag = first.headers["etag"]
    again = await rd.get("/torrents", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    add_movie(emulator)
    changed = await rd.get("/torrents", headers={"If-None-Match": f'"{etag}"'})
    assert changed.status_code == 200 and len(changed.json()) == 2 and changed.headers["etag"] != etag


async def test_bulk_add_and_large_pages(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    ids = emulator.bulk_add_torrents(20_000, files_per_torrent=5)
    assert len(set(ids)) == 20_000
    page = await rd.get("/torrents", params={"limit": 5000, "page": 4})
    assert page.headers["x-total-count"] == "20000"
    assert [t["id"] for t in page.json()] == list(reversed(ids))[15000:20000]
    assert (await rd.get("/torrents", params={"limit": 5000, "page": 5})).status_code == 204
    info = (await rd.get(f"/torrents/info/{ids[0]}")).json()
    assert len(info["files"]) == 5 and len(info["links"]) == 5


# ---------------------------------------------------------------- status machine


async def test_add_magnet_select_files_instant(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    known = add_movie(emulator)
    info_hash = emulator.torrent_json(known)["hash"]
    created = await rd.post("/torrents/addMagnet", data={"magnet": f"magnet:?xt=urn:btih:{info_hash.upper()}"})
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert created.json()["uri"].endswith(f"/torrents/info/{new_id}")
    info = (await rd.get(f"/torrents/info/{new_id}")).json()
    assert info["status"] == "waiting_files_selection" and info["links"] == []
    assert [f["path"] for f in info["files"]] == ["/Movie.2020.1080p.mkv", "/Movie.2020.nfo"]
    bad = await rd.post(f"/torrents/selectFiles/{new_id}", data={"files": "1,9"})
    assert bad.json()["error"] == "wrong_parameter"
    assert (await rd.post(f"/torrents/selectFiles/{new_id}", data={"files": "1"})).status_code == 204
    info = (await rd.get(f"/torrents/info/{new_id}")).json()
    assert info["status"] == "downloaded" and len(info["links"]) == 1
    assert info["filename"] == "Movie.2020.1080p.mkv"
    assert info["bytes"] == 3 * GIB + 12345 and info["original_bytes"] == 3 * GIB + 13345
    # Same content as the original torrent: the repair recipe gets identical bytes.
    assert emulator.file_bytes(new_id, 1, 5000, 100) == emulator.file_bytes(known, 1, 5000, 100)
    again = await rd.post(f"/torrents/selectFiles/{new_id}", data={"files": "all"})
    assert again.status_code == 202
    # RD does not dedupe by hash.
    second = await rd.post("/torrents/addMagnet", data={"magnet": f"magnet:?xt=urn:btih:{info_hash}"})
    assert second.json()["id"] not in (known, new_id)
    assert (await rd.get("/torrents")).headers["x-total-count"] == "3"


async def test_unknown_magnet_gets_deterministic_files(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    magnet = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=Some.Release"
    ids = [(await rd.post("/torrents/addMagnet", data={"magnet": magnet})).json()["id"] for _ in range(2)]
    infos = [(await rd.get(f"/torrents/info/{i}")).json() for i in ids]
    assert infos[0]["files"] and infos[0]["files"] == infos[1]["files"]
    assert infos[0]["filename"] == "Some.Release" and infos[0]["hash"] == "ab" * 20
    bad = await rd.post("/torrents/addMagnet", data={"magnet": "magnet:?xt=urn:btih:nothex"})
    assert (bad.status_code, bad.json()["error_code"]) == (400, 2)
    missing = await rd.post("/torrents/addMagnet", data={})
    assert missing.json()["error"] == "parameter_missing" and "error_details" in missing.json()


async def test_timed_status_machine(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    emulator.magnet_conversion_time = 0.2
    emulator.queue_time = 0.2
    emulator.download_time = 0.4
    torrent_id = (await rd.post("/torrents/addMagnet", data={"magnet": "magnet:?xt=urn:btih:" + "cd" * 20})).json()["id"]
    seen = [(await rd.get(f"/torrents/info/{torrent_id}")).json()["status"]]
    active = (await rd.get("/torrents/activeCount")).json()
    assert active["nb"] == 1 and active["list"] == ["cd" * 20] and active["limit"] > 0
    while seen[-1] != "waiting_files_selection":
        await trio.sleep(0.05)
        seen.append((await rd.get(f"/torrents/info/{torrent_id}")).json()["status"])
    assert (await rd.post(f"/torrents/selectFiles/{torrent_id}", data={"files": "all"})).status_code == 204
    progress = []
    while seen[-1] != "downloaded":
        await trio.sleep(0.05)
        info = (await rd.get(f"/torrents/info/{torrent_id}")).json()
        seen.append(info["status"])
        if info["status"] == "downloading":
            assert "speed" in info and "seeders" in info and info["links"] == []
            progress.append(info["progress"])
    statuses = list(dict.fromkeys(seen))
    assert statuses == ["magnet_conversion", "waiting_files_selection", "queued", "downloading", "downloaded"]
    assert progress == sorted(progress) and all(0 <= p < 100 for p in progress)
    info = (await rd.get(f"/torrents/info/{torrent_id}")).json()
    assert info["progress"] == 100 and len(info["links"]) == len(info["files"])
    assert (await rd.get("/torrents/activeCount")).json()["nb"] == 0


async def test_set_status_and_failed_statuses(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator, status="downloading")
    emulator.set_status(torrent_id, "downloading", progress=42)
    info = (await rd.get(f"/torrents/info/{torrent_id}")).json()
    assert (info["status"], info["progress"], info["links"]) == ("downloading", 42, [])
    emulator.set_status(torrent_id, "downloaded")
    assert len((await rd.get(f"/torrents/info/{torrent_id}")).json()["links"]) == 2
    for status in ("magnet_error", "error", "virus", "dead"):
        emulator.set_status(torrent_id, status)
        assert (await rd.get(f"/torrents/info/{torrent_id}")).json()["status"] == status


async def test_add_torrent_file(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    info = {
        "name": "Show.S01",
        "piece length": 262144,
        "pieces": b"\0" * 20,
        "files": [{"length": 1000, "path": ["Show.S01E01.mkv"]}, {"length": 2000, "path": ["Extras", "b.mkv"]}],
    }
    body = encode({"announce": "http://tracker.invalid/announce", "info": info})
    response = await rd.put("/torrents/addTorrent", content=body)
    assert response.status_code == 201
    torrent = (await rd.get(f"/torrents/info/{response.json()['id']}")).json()
    assert torrent["hash"] == hashlib.sha1(encode(info)).hexdigest()
    assert torrent["filename"] == "Show.S01" and torrent["status"] == "waiting_files_selection"
    assert [(f["path"], f["bytes"]) for f in torrent["files"]] == [("/Show.S01E01.mkv", 1000), ("/Extras/b.mkv", 2000)]
    invalid = await rd.put("/torrents/addTorrent", content=b"not bencode")
    assert (invalid.status_code, invalid.json()["error_code"]) == (400, 30)


async def test_delete_and_remove_torrent(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    first, second = add_movie(emulator), add_movie(emulator)
    assert (await rd.delete(f"/torrents/delete/{first}")).status_code == 204
    assert (await rd.delete(f"/torrents/delete/{first}")).status_code == 404
    link = emulator.torrent_json(second)["links"][0]
    emulator.remove_torrent(second)
    assert (await rd.get(f"/torrents/info/{second}")).status_code == 404
    assert (await rd.get("/torrents")).status_code == 204
    gone = await rd.post("/unrestrict/link", data={"link": link})
    assert (gone.status_code, gone.json()["error"]) == (503, "unavailable_file")


# ---------------------------------------------------------------- downloads


async def test_ranges_head_and_416(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    size = 3 * GIB + 12345
    seed = default_seed(emulator, torrent_id, 1)
    download = await first_download(emulator, rd, torrent_id)
    assert download["filename"] == "Movie.2020.1080p.mkv" and download["filesize"] == size
    assert download["mimeType"] == "video/x-matroska" and download["host"] == "real-debrid.com"
    url = download["download"]
    assert url.startswith(emulator.base_url + "/d/")
    cases = {
        "bytes=0-99": (0, 100),
        f"bytes={2 * GIB - 10}-{2 * GIB + 10}": (2 * GIB - 10, 21),
        f"bytes={size - 50}-": (size - 50, 50),
        "bytes=-70": (size - 70, 70),
        f"bytes={size - 5}-{size + 100}": (size - 5, 5),
    }
    async with httpx.AsyncClient(timeout=10) as http:
        for header, (offset, length) in cases.items():
            response = await http.get(url, headers={"Range": header})
            assert response.status_code == 206, header
            assert response.headers["content-range"] == f"bytes {offset}-{offset + length - 1}/{size}"
            assert response.headers["accept-ranges"] == "bytes"
            assert response.content == synthetic_bytes(seed, offset, length)
            assert response.content == emulator.file_bytes(torrent_id, 1, offset, length)
        for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
            response = await http.get(url, headers={"Range": header})
            assert response.status_code == 416 and response.headers["content-range"] == f"bytes */{size}"
        head = await http.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(size) and head.headers["accept-ranges"] == "bytes"
        ranged_head = await http.head(url, headers={"Range": "bytes=10-19"})
        assert ranged_head.status_code == 206 and ranged_head.headers["content-length"] == "10"
        nfo = await unrestrict(rd, emulator.torrent_json(torrent_id)["links"][1])
        full = await http.get(nfo["download"])
        assert full.status_code == 200 and full.content == emulator.file_bytes(torrent_id, 2)
    assert emulator.counters["download_requests"] == len(cases) + 6
    assert emulator.counters["POST /unrestrict/link"] == 2


async def test_keep_alive_reuses_one_connection(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    url = (await first_download(emulator, rd, torrent_id))["download"]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=10) as http:
        peers = set()
        for index in range(5):
            async with http.stream("GET", url, headers={"Range": f"bytes={index * 1000}-{index * 1000 + 999}"}) as resp:
                assert (await resp.aread()) == emulator.file_bytes(torrent_id, 1, index * 1000, 1000)
                peers.add(resp.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(peers) == 1


async def test_real_files_from_disk(emulator: Emulator, rd: httpx.AsyncClient, tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "Clip (2021)").mkdir(parents=True)
    data = bytes(range(256)) * 4000
    (media / "Clip (2021)" / "clip.mp4").write_bytes(data)
    (media / "single.mkv").write_bytes(b"x" * 300)
    ids = emulator.add_media_dir(media)
    assert len(ids) == 2
    clip = next(i for i in ids if emulator.torrent_json(i)["filename"] == "Clip (2021)")
    url = (await first_download(emulator, rd, clip))["download"]
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url)).content == data
        response = await http.get(url, headers={"Range": "bytes=1000-1999"})
        assert response.status_code == 206 and response.content == data[1000:2000]


async def test_packed_torrent_serves_a_rar_archive(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    files = [FileSpec("/Show.S01E01.mkv", 2 * BLOCK_SIZE + 17), FileSpec("/info.nfo", 300), FileSpec("/Subs/en.srt", 40)]
    torrent_id = emulator.add_torrent("Show.S01", files, packed=True)
    info = emulator.torrent_json(torrent_id)
    assert len(info["links"]) == 1 and len(info["files"]) == 3
    download = await unrestrict(rd, info["links"][0])
    assert download["filename"] == "Show.S01.rar" and download["filesize"] > sum(f.size for f in files)
    async with httpx.AsyncClient(timeout=10) as http:
        body = (await http.get(download["download"])).content
        ranged = await http.get(download["download"], headers={"Range": "bytes=100-4099"})
    assert len(body) == download["filesize"] and body == emulator.link_bytes(info["links"][0])
    assert ranged.status_code == 206 and ranged.content == body[100:4100]
    archive = rarfile.RarFile(io.BytesIO(body))
    assert archive.namelist() == ["Show.S01E01.mkv", "info.nfo", "Subs/en.srt"]
    for file_id, spec in enumerate(files, start=1):
        assert archive.read(spec.path.lstrip("/")) == emulator.file_bytes(torrent_id, file_id)


async def test_downloads_list_grows_and_deletes(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    made = [await first_download(emulator, rd, torrent_id) for _ in range(3)]
    assert len({d["download"] for d in made}) == 3
    listed = await rd.get("/downloads")
    assert listed.headers["x-total-count"] == "3"
    assert [d["id"] for d in listed.json()] == [d["id"] for d in reversed(made)]
    assert "generated" in listed.json()[0]
    assert (await rd.delete(f"/downloads/delete/{made[0]['id']}")).status_code == 204
    assert (await rd.delete(f"/downloads/delete/{made[0]['id']}")).status_code == 404
    assert (await rd.get("/downloads")).headers["x-total-count"] == "2"


async def test_link_expiry(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    url = (await first_download(emulator, rd, torrent_id))["download"]
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url, headers={"Range": "bytes=0-0"})).status_code == 206
        emulator.expire_links()
        expired = await http.get(url, headers={"Range": "bytes=0-0"})
        assert expired.status_code == 403 and b"no longer valid" in expired.content
        fresh = (await first_download(emulator, rd, torrent_id))["download"]
        assert (await http.get(fresh, headers={"Range": "bytes=0-0"})).status_code == 206
        emulator.link_ttl = 0.1
        short = (await first_download(emulator, rd, torrent_id))["download"]
        await trio.sleep(0.2)
        assert (await http.get(short, headers={"Range": "bytes=0-0"})).status_code == 403


async def test_kill_torrent(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    url = (await first_download(emulator, rd, torrent_id))["download"]
    emulator.kill_torrent(torrent_id)
    assert (await rd.get(f"/torrents/info/{torrent_id}")).json()["status"] == "dead"
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url)).status_code == 404
    refused = await rd.post("/unrestrict/link", data={"link": emulator.torrent_json(torrent_id)["links"][0]})
    assert (refused.status_code, refused.json()) == (503, {"error": "hoster_unavailable", "error_code": 19})


async def test_drop_mid_body_errors_and_ignore_range(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = emulator.add_torrent("Small", [FileSpec("/small.bin", 3 * BLOCK_SIZE)])
    url = (await first_download(emulator, rd, torrent_id))["download"]
    async with httpx.AsyncClient(timeout=10) as http:
        emulator.faults.download_drop_rate = 1.0
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream("GET", url) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    received += chunk
        assert 0 < len(received) < 3 * BLOCK_SIZE
        assert bytes(received) == emulator.file_bytes(torrent_id, 1, 0, len(received))
        assert emulator.counters["download_drops"] == 1
        emulator.faults.download_drop_rate = 0.0
        emulator.faults.download_error_rate = 1.0
        refused = await http.get(url)
        assert refused.status_code == 503 and emulator.counters["download_errors"] == 1
        emulator.faults.download_error_rate = 0.0
        emulator.faults.ignore_range = True
        whole = await http.get(url, headers={"Range": "bytes=100-199"})
        assert whole.status_code == 200 and "content-range" not in whole.headers
        assert whole.content == emulator.file_bytes(torrent_id, 1)


async def test_shifted_content_range(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = emulator.add_torrent("Shifted", [FileSpec("/s.bin", 3 * BLOCK_SIZE)])
    url = (await first_download(emulator, rd, torrent_id))["download"]
    emulator.faults.content_range_shift = 1000
    async with httpx.AsyncClient(timeout=10) as http:
        shifted = await http.get(url, headers={"Range": "bytes=5000-5099"})
        near_start = await http.get(url, headers={"Range": "bytes=10-19"})
    assert shifted.status_code == 206 and shifted.headers["content-range"] == f"bytes 4000-4099/{3 * BLOCK_SIZE}"
    assert shifted.content == emulator.file_bytes(torrent_id, 1, 4000, 100)
    assert near_start.headers["content-range"] == f"bytes 0-9/{3 * BLOCK_SIZE}"


async def test_malformed_json(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    add_movie(emulator)
    emulator.faults.malformed_json_rate = 1.0
    cut = await rd.get("/torrents")
    assert cut.status_code == 200 and cut.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        cut.json()
    assert (await rd.get("/torrents/info/NOSUCHTORRENT")).json()["error_code"] == 7  # errors stay intact
    assert emulator.counters["malformed_json"] == 1
    assert emulator.counters["api_answered"] == 1  # a refusal is not an answer
    emulator.faults.malformed_json_rate = 0.0
    assert len((await rd.get("/torrents")).json()) == 1


# ---------------------------------------------------------------- API faults, auth, limits


async def test_auth_token_query_verb_override_and_disable(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=emulator.api_url, timeout=10) as anonymous:
        refused = await anonymous.get("/user")
        assert (refused.status_code, refused.json()) == (401, {"error": "bad_token", "error_code": 8})
        assert (await anonymous.get("/user", params={"auth_token": emulator.token})).json()["type"] == "premium"
        assert (await anonymous.get("/time")).status_code == 200
        torrent_id = add_movie(emulator)
        override = await anonymous.post(
            f"/torrents/delete/{torrent_id}", params={"auth_token": emulator.token}, headers={"X-HTTP-Verb": "DELETE"}
        )
        assert override.status_code == 204 and emulator.counters["DELETE /torrents/delete"] == 1
        wrong_verb = await anonymous.post("/user", params={"auth_token": emulator.token})
        assert (wrong_verb.status_code, wrong_verb.json()["error_code"]) == (405, 4)
    assert (await rd.get("/disable_access_token")).status_code == 204
    assert (await rd.get("/user")).status_code == 401


async def test_rate_limit(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    emulator.faults.rate_limit_per_minute = 3
    statuses = [(await rd.get("/user")).status_code for _ in range(3)]
    limited = await rd.get("/user")
    assert statuses == [200, 200, 200]
    assert (limited.status_code, limited.json()) == (429, {"error": "too_many_requests", "error_code": 34})
    assert emulator.counters["rate_limited"] == 1
    emulator.faults.rate_limit_per_minute = None
    assert (await rd.get("/user")).status_code == 200


async def test_api_faults(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    add_movie(emulator)
    emulator.faults.api_down = True
    down = await rd.get("/torrents")
    assert (down.status_code, down.json()) == (503, {"error": "service_unavailable", "error_code": 25})
    emulator.faults.api_down = False
    emulator.faults.api_error_rate = 1.0
    assert (await rd.get("/torrents")).json()["error_code"] == 25
    emulator.faults.api_error_status = 502
    assert (await rd.get("/torrents")).status_code == 502
    emulator.faults.api_error_rate = 0.0
    emulator.faults.empty_lists = True
    empty = await rd.get("/torrents")
    assert (empty.status_code, empty.json(), empty.headers["x-total-count"]) == (200, [], "0")
    emulator.faults.empty_lists_status = 204
    assert (await rd.get("/torrents")).status_code == 204
    emulator.reset_faults()
    emulator.faults.api_latency = 0.05
    assert len((await rd.get("/torrents")).json()) == 1
    emulator.reset_counters()
    assert emulator.counters == {}


async def test_every_reference_endpoint_answers(emulator: Emulator, rd: httpx.AsyncClient) -> None:
    torrent_id = add_movie(emulator)
    download = await first_download(emulator, rd, torrent_id)
    link = download["link"]
    media = (await rd.get(f"/streaming/mediaInfos/{download['id']}")).json()
    assert media["type"] == "movie" and media["year"] == "2020"
    calls = [
        ("GET", "/time", None, 200), ("GET", "/time/iso", None, 200), ("GET", "/user", None, 200),
        ("POST", "/unrestrict/check", {"link": link}, 200), ("POST", "/unrestrict/folder", {"link": link}, 200),
        ("PUT", "/unrestrict/containerFile", b"https://real-debrid.com/d/AAAAAAAAAAAAA", 200),
        ("POST", "/unrestrict/containerLink", {"link": "https://example.invalid/x.dlc"}, 503),
        ("GET", "/traffic", None, 200), ("GET", "/traffic/details", None, 200),
        ("GET", f"/streaming/transcode/{download['id']}", None, 200),
        ("GET", f"/streaming/mediaInfos/{download['id']}", None, 200),
        ("GET", "/downloads", None, 200), ("GET", "/torrents", None, 200),
        ("GET", f"/torrents/info/{torrent_id}", None, 200),
        ("GET", "/torrents/instantAvailability/" + "ab" * 20, None, 403),
        ("GET", "/torrents/activeCount", None, 200), ("GET", "/torrents/availableHosts", None, 200),
        ("GET", "/hosts", None, 200), ("GET", "/hosts/status", None, 200), ("GET", "/hosts/regex", None, 200),
        ("GET", "/hosts/regexFolder", None, 200), ("GET", "/hosts/domains", None, 200),
        ("GET", "/settings", None, 200),
        ("POST", "/settings/update", {"setting_name": "locale", "setting_value": "fr"}, 204),
        ("POST", "/settings/update", {"setting_name": "locale", "setting_value": "xx"}, 400),
        ("POST", "/settings/convertPoints", {}, 204), ("POST", "/settings/convertPoints", {}, 503),
        ("POST", "/settings/changePassword", {}, 204), ("PUT", "/settings/avatarFile", b"\x89PNG", 204),
        ("DELETE", "/settings/avatarDelete", None, 204),
        ("DELETE", f"/downloads/delete/{download['id']}", None, 204),
    ]
    for method, path, payload, expected in calls:
        kwargs = {"content": payload} if isinstance(payload, bytes) else {"data": payload} if payload is not None else {}
        response = await rd.request(method, path, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        if response.status_code >= 400:
            assert set(response.json()) >= {"error", "error_code"}
    assert (await rd.get("/settings")).json()["locale"] == "fr"


# ---------------------------------------------------------------- OAuth


async def test_oauth_device_flow_for_open_source_apps(emulator: Emulator) -> None:
    emulator.access_token_ttl = 60
    async with httpx.AsyncClient(base_url=emulator.oauth_url, timeout=10) as oauth:
        code = (await oauth.get("/device/code", params={"client_id": OPEN_SOURCE_CLIENT_ID, "new_credentials": "yes"})).json()
        assert code["interval"] == 5 and code["verification_url"] and code["direct_verification_url"]
        pending = await oauth.get("/device/credentials", params={"client_id": OPEN_SOURCE_CLIENT_ID, "code": code["device_code"]})
        assert pending.status_code == 403 and pending.json()["error_code"] == 9
        emulator.approve_device(code["user_code"])
        credentials = (
            await oauth.get("/device/credentials", params={"client_id": OPEN_SOURCE_CLIENT_ID, "code": code["device_code"]})
        ).json()
        grant = {"client_id": credentials["client_id"], "client_secret": credentials["client_secret"], "grant_type": DEVICE_GRANT}
        token = (await oauth.post("/token", data=grant | {"code": code["device_code"]})).json()
        assert token["expires_in"] == 60 and token["token_type"] == "Bearer"
        async with httpx.AsyncClient(base_url=emulator.api_url, timeout=10) as api:
            bearer = {"Authorization": f"Bearer {token['access_token']}"}
            assert (await api.get("/user", headers=bearer)).status_code == 200
            emulator.expire_access_tokens()
            assert (await api.get("/user", headers=bearer)).json()["error"] == "bad_token"
            refreshed = (await oauth.post("/token", data=grant | {"code": token["refresh_token"]})).json()
            assert refreshed["access_token"] != token["access_token"]
            assert (await api.get("/user", headers={"Authorization": f"Bearer {refreshed['access_token']}"})).status_code == 200
            emulator.revoke_oauth()
            assert (await oauth.post("/token", data=grant | {"code": token["refresh_token"]})).status_code == 403
            assert (await api.get("/user", headers={"Authorization": f"Bearer {refreshed['access_token']}"})).status_code == 401


async def test_oauth_device_flow_via_verification_page(emulator: Emulator) -> None:
    emulator.register_app("MYAPPCLIENTID", "s3cret")
    async with httpx.AsyncClient(timeout=10) as http:
        code = (await http.get(f"{emulator.oauth_url}/device/code", params={"client_id": "MYAPPCLIENTID"})).json()
        grant = {"client_id": "MYAPPCLIENTID", "client_secret": "s3cret", "grant_type": DEVICE_GRANT, "code": code["device_code"]}
        assert (await http.post(f"{emulator.oauth_url}/token", data=grant)).status_code == 403
        assert (await http.get(code["direct_verification_url"])).status_code == 200
        token = await http.post(f"{emulator.oauth_url}/token", data=grant)
        assert token.status_code == 200 and token.json()["access_token"]
        wrong = await http.post(f"{emulator.oauth_url}/token", data=grant | {"client_secret": "nope"})
        assert wrong.status_code == 403


async def test_oauth_authorization_code_flow(emulator: Emulator) -> None:
    emulator.register_app("WEBAPPCLIENT1", "websecret")
    async with httpx.AsyncClient(base_url=emulator.oauth_url, timeout=10) as oauth:
        redirect = await oauth.get(
            "/auth",
            params={"client_id": "WEBAPPCLIENT1", "redirect_uri": "http://127.0.0.1:1/cb", "response_type": "code", "state": "xyz"},
        )
        assert redirect.status_code == 302
        query = parse_qs(urlsplit(redirect.headers["location"]).query)
        assert query["state"] == ["xyz"]
        token = await oauth.post(
            "/token",
            data={"client_id": "WEBAPPCLIENT1", "client_secret": "websecret", "code": query["code"][0],
                  "redirect_uri": "http://127.0.0.1:1/cb", "grant_type": "authorization_code"},
        )
        assert token.status_code == 200 and token.json()["refresh_token"]


# ---------------------------------------------------------------- standalone process


def test_cli_options_build_the_library(tmp_path: Path) -> None:
    (tmp_path / "Film (1999)").mkdir()
    (tmp_path / "Film (1999)" / "film.mkv").write_bytes(b"abc")
    emu = build_emulator(build_parser().parse_args(["--media", str(tmp_path), "--synthetic", "6", "--token", "TKN", "--link-ttl", "60"]))
    assert emu.token == "TKN" and emu.link_ttl == 60
    infos = [emu.torrent_json(i) for i in emu.torrent_ids()]
    assert len(infos) == 7
    film = next(info for info in infos if info["filename"] == "Film (1999)")
    assert emu.file_bytes(film["id"], 1) == b"abc"
    synthetic_paths = [f["path"] for info in infos if info is not film for f in info["files"]]
    assert all(path.startswith("/") for path in synthetic_paths)
    assert any(path.endswith(".mkv") for path in synthetic_paths)


def test_download_base_url_points_real_files_at_a_static_server(tmp_path: Path) -> None:
    (tmp_path / "Film (1999)").mkdir()
    (tmp_path / "Film (1999)" / "film 1.mkv").write_bytes(b"abc")
    args = ["--media", str(tmp_path), "--synthetic", "1", "--download-base-url", "http://127.0.0.1:9/files/"]
    emu = build_emulator(build_parser().parse_args(args))
    emu.base_url = "http://127.0.0.1:1"
    film, synthetic = sorted((emu.torrent_json(i) for i in emu.torrent_ids()), key=lambda t: t["filename"] != "Film (1999)")
    assert emu.unrestrict(film["links"][0]).download == "http://127.0.0.1:9/files/Film%20%281999%29/film%201.mkv"
    assert emu.unrestrict(synthetic["links"][0]).download.startswith("http://127.0.0.1:1/d/")


def test_subprocess_and_control_over_http(emulator_proc) -> None:  # type: ignore[no-untyped-def]
    control = emulator_proc.control
    torrent_id = control.add_torrent("Clip", [FileSpec("/clip.mkv", 5 * BLOCK_SIZE + 7)], packed=False)
    assert control.torrent_ids() == [torrent_id]
    with httpx.Client(base_url=emulator_proc.api_url, headers={"Authorization": f"Bearer {emulator_proc.token}"}) as rd:
        (item,) = rd.get("/torrents").json()
        assert item["id"] == torrent_id
        download = rd.post("/unrestrict/link", data={"link": item["links"][0]}).json()
        ranged = rd.get(download["download"], headers={"Range": f"bytes={BLOCK_SIZE - 3}-{BLOCK_SIZE + 2}"})
        assert ranged.status_code == 206
        assert ranged.content == control.file_bytes(torrent_id, 1, BLOCK_SIZE - 3, 6)
        counters = control.counters
        assert counters["GET /torrents"] == 1 and counters["download_bytes"] == 6
        control.set_faults(api_down=True)
        assert control.faults.api_down is True
        assert rd.get("/torrents").status_code == 503
        control.reset_faults()
        control.kill_torrent(torrent_id)
        assert rd.get(download["download"]).status_code == 404
        assert control.torrent_json(torrent_id)["status"] == "dead"
    bulk = control.bulk_add_torrents(10, files_per_torrent=2, file_size=1000)
    assert len(bulk) == 10
    control.reset_counters()
    assert control.counters == {}
