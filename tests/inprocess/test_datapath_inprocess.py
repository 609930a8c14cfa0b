"""Hostile downloads in-process (issue 15): the resolver and the reader against the emulator over
real HTTP on 127.0.0.1, with short stall deadlines so each case runs in seconds.

Every case checks the outcome (the error the read gets, the bytes it returns, the emulator's
counters, what the stores hold) and that other files keep reading exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from rdfs.api.client import RDClient
from rdfs.api.errors import BadLink, GatewayError, InfringingFile
from rdfs.api.models import Download
from rdfs.data.blockcache import BLOCK_SIZE
from rdfs.data.download import DownloadError, DownloadStalled
from rdfs.data.links import BadDownloadURL, LinkGone, LinkResolver, checked_url
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.emulator import Emulator, FileSpec
from rdfs.store.metadata import Cache, StoredLink
from rdfs.store.probecache import ProbeCache, file_key

KiB = 1024
MiB = 1024 * KiB
UNRESTRICT = "POST /unrestrict/link"
STALL = 0.5  # the tests' stall deadline (the mount's is STALL_TIMEOUT)


@dataclass
class Env:
    emu: Emulator
    rd: RDClient
    cache: Cache
    nursery: trio.Nursery
    probe: ProbeCache

    def add(self, size: int, name: str = "Movie") -> tuple[str, FileSource]:
        torrent_id = self.emu.add_torrent(name, [FileSpec(f"/{name}.mkv", size)])
        link = self.emu.torrent_json(torrent_id)["links"][0]
        return torrent_id, FileSource(
            key=torrent_id, hoster_link=link, size=size, name=f"{name}.mkv"
        )

    def pool(self, resolver: LinkResolver | None = None) -> ReaderPool:
        return ReaderPool(
            resolver or LinkResolver(self.rd, self.cache),
            nursery=self.nursery,
            probe=self.probe,
            retry_wait_initial=0.01,
            retry_wait_max=0.05,
            stall_timeout=STALL,
        )

    async def read(
        self, pool: ReaderPool, source: FileSource, offset: int = 0, size: int = 4096
    ) -> bytes:
        handle = pool.open(source)
        try:
            return bytes(await handle.read(offset, size))
        finally:
            await handle.close()


@pytest.fixture
async def env(
    emulator: Emulator, rd_client: RDClient, cache_db: Cache, tmp_path: Path
) -> AsyncIterator[Env]:
    probe = ProbeCache(tmp_path / "probe.db", head_bytes=MiB, tail_bytes=MiB)
    try:
        async with trio.open_nursery() as nursery:
            yield Env(emulator, rd_client, cache_db, nursery, probe)
            nursery.cancel_scope.cancel()
    finally:
        probe.close()


# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "wire"),
    [
        ("https://abc.download.real-debrid.com/d/X/Movie%20(2020).mkv", None),
        ("http://bücher.example/ä b?x=ü", "http://xn--bcher-kva.example/%C3%A4%20b?x=%C3%BC"),
        ("http://[::1]:8080/d/1/x.mkv", None),
        ("HTTP://Host.Example:81/x", "http://host.example:81/x"),
    ],
)
def test_usable_urls_in_wire_form(url: str, wire: str | None) -> None:
    assert checked_url(url) == (wire or url)


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.com/d/1",  # a host that is no host name
        "http://ex\u2028ample.com/d/1",  # does not encode with IDNA
        "http://[::1/d/1",  # broken IPv6 literal
        "http://[zz::1]/d/1",
        "http://[fe80::1%25eth0]/d/1",  # zone ids are local to a machine
        "ftp://host/d/1",
        "http:///d/1",
        "http://user:secret@host/d/1",
        "http://host:99999/d/1",
        "http://host/d/1\r\nX-Injected: 1",
        "",
    ],
)
def test_unusable_urls_refused_without_the_url_in_the_message(url: str) -> None:
    with pytest.raises(BadDownloadURL) as refused:
        checked_url(url)
    assert "/d/1" not in str(refused.value)


# --- the resolver --------------------------------------------------------------------------------


class Scripted:
    """An ``Unrestricter`` that raises the scripted errors first, then asks the emulator."""

    def __init__(self, rd: RDClient, *errors: Exception) -> None:
        self.rd = rd
        self.errors = list(errors)
        self.calls = 0

    async def unrestrict_link(self, link: str) -> Download:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return await self.rd.unrestrict_link(link)


def gateway() -> GatewayError:
    return GatewayError(
        502, None, "", "Gateway error, with a non-JSON body (166 bytes)", endpoint="unrestrict/link"
    )


async def test_gateway_pages_on_unrestrict_wait_and_are_no_verdict(env: Env) -> None:
    torrent_id, source = env.add(100 * KiB)
    client = Scripted(env.rd, gateway(), gateway(), gateway())
    resolver = LinkResolver(client, env.cache, busy_wait_initial=0.01, busy_wait_max=0.02)
    verdicts: list[str] = []
    resolver.on_gone = lambda link, error: verdicts.append(link)
    data = await env.read(env.pool(resolver), source, 0, 100 * KiB)
    assert data == env.emu.file_bytes(torrent_id, 1, 0, 100 * KiB)
    assert client.calls == 4 and verdicts == []


async def test_gateway_outage_longer_than_the_wait_fails_the_read_then_recovers(env: Env) -> None:
    torrent_id, source = env.add(50 * KiB)
    client = Scripted(env.rd, *(gateway() for _ in range(1000)))
    resolver = LinkResolver(
        client, env.cache, busy_timeout=0.2, busy_wait_initial=0.01, busy_wait_max=0.02
    )
    verdicts: list[str] = []
    resolver.on_gone = lambda link, error: verdicts.append(link)
    pool = env.pool(resolver)
    with pytest.raises(GatewayError):
        await env.read(pool, source)
    client.errors.clear()  # the outage is over: the very next read works, nothing was remembered
    assert await env.read(pool, source) == env.emu.file_bytes(torrent_id, 1, 0, 4096)
    assert verdicts == [] and resolver.stats.gone == 0


async def test_infringing_file_is_gone_and_negative_cached(env: Env) -> None:
    _, source = env.add(50 * KiB)
    client = Scripted(
        env.rd, InfringingFile(451, 35, "infringing_file", endpoint="unrestrict/link")
    )
    resolver = LinkResolver(client, env.cache)
    verdicts: list[str] = []
    resolver.on_gone = lambda link, error: verdicts.append(link)
    pool = env.pool(resolver)
    for _ in range(5):
        with pytest.raises(LinkGone, match="infringing_file"):
            await env.read(pool, source)
    assert client.calls == 1 and verdicts == [source.hoster_link]
    assert env.cache.get_link(source.hoster_link) is None


class FailingStore:
    """A link store whose disk is full: every write fails."""

    def __init__(self) -> None:
        self.writes = 0

    def get_link(self, hoster_link: str) -> StoredLink | None:
        return None

    def put_link(self, link: StoredLink) -> None:
        self.writes += 1
        raise OSError(28, "No space left on device")

    def drop_link(self, hoster_link: str) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failing_store_keeps_links_in_memory(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    torrent_id, source = env.add(50 * KiB)
    store = FailingStore()
    resolver = LinkResolver(env.rd, store)
    pool = env.pool(resolver)
    with caplog.at_level(logging.WARNING, logger="rdfs.data.links"):
        for offset in (0, 8 * KiB, 40 * KiB):
            assert await env.read(pool, source, offset, 1000) == env.emu.file_bytes(
                torrent_id, 1, offset, 1000
            )
    assert env.emu.counters[UNRESTRICT] == 1 and store.writes == 1
    assert sum("link store" in r.getMessage() for r in caplog.records) == 1


# --- download URLs that cannot be used -----------------------------------------------------------


def serve_bad_urls(emu: Emulator, url: str) -> None:
    """Every unrestrict answers ``url`` as the download URL (and stores it so)."""
    unrestrict = emu.unrestrict

    def bad(link: str):  # type: ignore[no-untyped-def]
        entry = unrestrict(link)
        entry.download = url
        return entry

    emu.unrestrict = bad  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "url", ["http://bad host.example/d/x", "http://[::1/d/x", "http://ex\u2028ample.com/d/x"]
)
async def test_unrestrict_answering_a_bad_url_fails_that_file_only(env: Env, url: str) -> None:
    good_id, good = env.add(80 * KiB, "Good")
    _, bad = env.add(80 * KiB, "Bad")
    pool = env.pool()
    assert await env.read(pool, good) == env.emu.file_bytes(good_id, 1, 0, 4096)
    serve_bad_urls(env.emu, url)
    for _ in range(3):
        # The API client refuses it first (BadLink); the resolver's own check is the second line.
        with pytest.raises((BadLink, BadDownloadURL)):
            await env.read(pool, bad)
    assert env.emu.counters[UNRESTRICT] == 2  # one for each file: the bad answer is remembered
    assert env.cache.get_link(bad.hoster_link) is None  # never persisted
    assert await env.read(pool, good, 40 * KiB) == env.emu.file_bytes(good_id, 1, 40 * KiB, 4096)


async def test_a_bad_stored_link_is_dropped_and_unrestricted_again(env: Env) -> None:
    torrent_id, source = env.add(80 * KiB)
    env.cache.put_link(
        StoredLink(
            source.hoster_link, "http://[::1/d/x/Movie.mkv", "OLD", 80 * KiB, time.time() + 3600
        )
    )
    assert await env.read(env.pool(), source) == env.emu.file_bytes(torrent_id, 1, 0, 4096)
    stored = env.cache.get_link(source.hoster_link)
    assert env.emu.counters[UNRESTRICT] == 1
    assert (
        stored is not None and stored.download_id != "OLD" and checked_url(stored.url) == stored.url
    )


@pytest.mark.parametrize(
    "location", ["http://bad host.example/d/x", "http://[::1/d/x", "gopher://h/x"]
)
async def test_redirect_to_a_bad_url_fails_that_read(env: Env, location: str) -> None:
    good_id, good = env.add(80 * KiB, "Good")
    _, bad = env.add(80 * KiB, "Bad")
    pool = env.pool()
    env.emu.faults.download_redirect_location = location
    with pytest.raises(BadDownloadURL):
        await env.read(pool, bad)
    assert env.emu.counters["download_redirects"] == 1
    env.emu.faults.download_redirect_location = None
    assert await env.read(pool, good) == env.emu.file_bytes(good_id, 1, 0, 4096)


# --- servers that refuse, drip or encode ------------------------------------------------------


@pytest.mark.parametrize("status", [403, 200])  # 200: RD's HTML "no longer valid" page
async def test_refusing_even_fresh_links_costs_two_unrestricts_not_two_per_read(
    env: Env, status: int
) -> None:
    _, source = env.add(80 * KiB)
    good_id, good = env.add(80 * KiB, "Good")
    pool = env.pool()
    env.emu.faults.download_error_rate = 1.0
    env.emu.faults.download_error_status = status
    for _ in range(10):
        with pytest.raises(LinkGone, match="refuses even a fresh link"):
            await env.read(pool, source)
    assert env.emu.counters[UNRESTRICT] == 2
    assert len(env.emu.list_downloads(0, 100)[0]) == 2
    env.emu.faults.download_error_rate = 0.0
    assert await env.read(pool, good) == env.emu.file_bytes(good_id, 1, 0, 4096)


async def test_links_that_served_data_are_refreshed_as_often_as_they_expire(env: Env) -> None:
    """Not a refusal of fresh links: each refreshed URL worked before it expired."""
    torrent_id, source = env.add(MiB)
    pool = env.pool()
    for offset in (0, 300 * KiB, 700 * KiB, 100 * KiB):
        env.emu.expire_links()
        assert await env.read(pool, source, offset, 1000) == env.emu.file_bytes(
            torrent_id, 1, offset, 1000
        )
    assert env.emu.counters[UNRESTRICT] == 4


async def test_a_dripping_server_fails_the_read_within_the_stall_bound(env: Env) -> None:
    torrent_id, source = env.add(2 * MiB)
    other_id, other = env.add(2 * MiB, "Other")
    pool = env.pool()
    env.emu.faults.download_drip_interval = (
        STALL / 4
    )  # a byte now and then: never 32 KiB in STALL s
    with trio.fail_after(60):  # generous: without the deadline the read never ends
        with pytest.raises(DownloadStalled):
            await env.read(pool, source, MiB, 64 * KiB)
    stats = pool.stats
    assert stats.stalls == 2 and stats.stalled == 1 and stats.stalling == 0
    assert (
        stats.last_stall is not None
        and stats.last_stall["file"] == "Movie.mkv"
        and stats.last_stall["gave_up"]
    )
    assert env.emu.counters["download_drip_bytes"] > 0
    env.emu.faults.download_drip_interval = 0.0
    assert await env.read(pool, other, MiB, 300 * KiB) == env.emu.file_bytes(
        other_id, 1, MiB, 300 * KiB
    )
    assert await env.read(pool, source, MiB, 300 * KiB) == env.emu.file_bytes(
        torrent_id, 1, MiB, 300 * KiB
    )


async def test_a_stalled_stream_does_not_hang_the_reads_waiting_for_it(env: Env) -> None:
    size = 32 * MiB
    torrent_id, source = env.add(size)
    pool = env.pool()
    handle = pool.open(source)
    try:
        # A sequential reader starts a read-ahead stream; then the server starts dripping.
        for offset in range(0, MiB, 128 * KiB):
            assert bytes(await handle.read(offset, 128 * KiB)) == env.emu.file_bytes(
                torrent_id, 1, offset, 128 * KiB
            )
        env.emu.faults.download_drip_interval = STALL / 4
        with trio.fail_after(60):
            with pytest.raises(DownloadStalled):
                offset = MiB
                while True:  # the blocks already read ahead are served; then the read fails
                    await handle.read(offset, 128 * KiB)
                    offset += 128 * KiB
                    assert offset < size, "read past everything although the server drips"
    finally:
        await handle.close()
    assert pool.stats.stalled >= 1


async def test_gzip_bodies_are_refused_and_never_cached(env: Env) -> None:
    torrent_id, source = env.add(300 * KiB)
    pool = env.pool()
    env.emu.faults.download_content_encoding = "gzip"
    for offset in (0, 280 * KiB):  # head and tail: what the probe cache would keep
        with pytest.raises(DownloadError, match="gzip"):
            await env.read(pool, source, offset, 4096)
    await pool.aclose()  # writes whatever the probe cache still waits for
    assert env.emu.counters["download_encoded"] == 2
    assert env.probe.blocks(file_key(source.hoster_link, 0, source.size)) == set()
    env.emu.faults.download_content_encoding = None
    pool = env.pool()
    assert await env.read(pool, source, 280 * KiB, 4096) == env.emu.file_bytes(
        torrent_id, 1, 280 * KiB, 4096
    )


async def test_a_block_promised_by_a_silent_download_is_fetched_after_the_bound(env: Env) -> None:
    torrent_id, source = env.add(MiB)
    pool = env.pool()
    handle = pool.open(source)
    try:
        handle.file.pending[5] = trio.Event()  # another download promised block 5, then went silent
        with trio.fail_after(30):  # generous: without the bound the read waits forever
            data = bytes(await handle.read(5 * BLOCK_SIZE + 100, 1000))
    finally:
        await handle.close()
    assert data == env.emu.file_bytes(torrent_id, 1, 5 * BLOCK_SIZE + 100, 1000)
    assert pool.stats.cache_waits == 1
