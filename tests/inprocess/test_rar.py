"""RAR-packed torrents: the archive as its .rar, and its stored members as regular files."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rarfile
import trio

from rdfs.data import rar
from rdfs.api.client import RDClient
from rdfs.sync.archives import ArchiveIndexer
from rdfs.store.metadata import Cache
from rdfs.emulator import Emulator, FileSpec
from rdfs.emulator import rar as emurar
from rdfs.emulator.content import Segment, read_segments
from rdfs.data.links import LinkResolver
from rdfs.data.reader import FileSource, ReaderPool
from rdfs.sync.syncer import Syncer
from rdfs.tree.specs import Namespace
from tests import mountutil

KiB = 1024
MiB = 1024 * KiB

FILES = [
    FileSpec("/Show.S01E01.mkv", 3 * MiB + 17),
    FileSpec("/Show.S01E02.mkv", 2 * MiB + 5),
    FileSpec("/Subs/en.srt", 4000),
    FileSpec("/info.nfo", 300),
]


def reader_of(data: bytes):
    async def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return read


async def test_members_of_a_stored_archive_match_rarfile() -> None:
    members = [(f.path.lstrip("/"), Segment(f.size, seed=f.path)) for f in FILES]
    segments = emurar.archive(members)
    data = read_segments(segments, 0, sum(s.size for s in segments))
    listed = await rar.list_members(reader_of(data), len(data))
    archive = rarfile.RarFile(io.BytesIO(data))
    assert [m.name for m in listed] == archive.namelist()
    for member, (name, segment) in zip(listed, members):
        assert member.stored and not member.is_dir and member.size == segment.size
        assert data[member.data_offset : member.data_offset + member.size] == archive.read(name)


async def test_compressed_member_is_not_stored() -> None:
    name = b"movie.mkv"
    compressed = 3 << 7  # method 3 ("normal"), version 0
    fields = emurar._vint(0) + emurar._vint(1000) + emurar._vint(0o644) + emurar._vint(compressed)
    fields += emurar._vint(1) + emurar._vint(len(name)) + name
    header = emurar._header(emurar._FILE, fields, data_size=600)
    data = emurar.SIGNATURE + emurar._header(emurar._MAIN, emurar._vint(0)) + header + bytes(600)
    data += emurar._header(emurar._END, emurar._vint(0))
    [member] = await rar.list_members(reader_of(data), len(data))
    assert member.name == "movie.mkv" and member.size == 1000 and member.packed_size == 600
    assert not member.stored


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Rar!\x1a\x07\x00" + bytes(100), "RAR 1.5-4.x"),
        (b"PK\x03\x04" + bytes(100), "not a RAR"),
        (emurar.SIGNATURE + b"\x00\x00\x00\x00\x03\x01\x00\x00" + bytes(10), "checksum"),
    ],
)
async def test_unreadable_archives(data: bytes, reason: str) -> None:
    with pytest.raises(rar.RarError, match=reason):
        await rar.list_members(reader_of(data), len(data))


@dataclass
class Env:
    emu: Emulator
    cache: Cache
    syncer: Syncer
    pool: ReaderPool
    indexer: ArchiveIndexer


@pytest.fixture
async def env(emulator: Emulator, rd_client: RDClient, cache_db: Cache) -> AsyncIterator[Env]:
    rd, cache = rd_client, cache_db
    async with trio.open_nursery() as nursery:
        resolver = LinkResolver(rd, cache)
        pool = ReaderPool(resolver, nursery=nursery)
        syncer = Syncer(rd, cache)
        indexer = ArchiveIndexer(cache, pool, resolver, syncer.tree, syncer.bus)
        try:
            yield Env(emulator, cache, syncer, pool, indexer)
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


def tree_of(namespace: Namespace, inode: int, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for node in namespace.children(inode):
        path = prefix + node.name
        out[path] = node
        if node.kind == "dir":
            out.update(tree_of(namespace, node.inode, path + "/"))
    return out


async def test_packed_torrent_shows_rar_and_stored_members(env: Env) -> None:
    torrent_id = env.emu.add_torrent("Show.S01", FILES, packed=True)
    link = env.emu.torrent_json(torrent_id)["links"][0]
    await env.syncer.sync_once()
    namespace = Namespace(env.cache)
    folder = namespace.lookup(2, "Show.S01")
    assert folder is not None
    assert list(tree_of(namespace, folder.inode)) == ["Show.S01.rar"]
    env.emu.reset_counters()
    assert await env.indexer.index_pending() == 1
    assert await env.indexer.index_pending() == 0  # indexed once, remembered
    assert env.emu.counters["POST /unrestrict/link"] == 1
    tree = tree_of(namespace, folder.inode)
    assert sorted(tree) == sorted(["Show.S01.rar", "Show.S01E01.mkv", "Show.S01E02.mkv", "Subs", "Subs/en.srt", "info.nfo"])
    archive_size = len(env.emu.link_bytes(link))
    assert tree["Show.S01.rar"].size == archive_size
    for file_id, spec in enumerate(FILES, start=1):
        node = tree[spec.path.lstrip("/")]
        assert node.size == spec.size and node.hoster_link == link and node.link_offset > 0
        handle = env.pool.open(FileSource(str(node.inode), link, node.size, node.link_offset, node.name))
        try:
            assert await handle.read(0, node.size + 10) == env.emu.file_bytes(torrent_id, file_id)
            assert await handle.read(node.size - 100, 100) == env.emu.file_bytes(torrent_id, file_id, node.size - 100)
        finally:
            await handle.close()
    assert env.emu.counters["POST /unrestrict/link"] == 1  # the archive's one link, reused


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.mount
def test_rar_members_through_the_mount(emulator_proc, tmp_path: Path) -> None:
    control = emulator_proc.control
    torrent_id = control.add_torrent("Packed.Show.S01", FILES, packed=True)
    link = control.torrent_json(torrent_id)["links"][0]
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        folder = mounted.path / "torrents" / "Packed.Show.S01"
        mountutil.wait_for(lambda: (folder / "Subs" / "en.srt").exists(), timeout=20, what="archive members")
        rar_path = folder / "Packed.Show.S01.rar"
        assert rar_path.read_bytes() == control.link_bytes(link)
        assert rarfile.RarFile(str(rar_path)).namelist() == [f.path.lstrip("/") for f in FILES]
        for file_id, spec in enumerate(FILES, start=1):
            path = folder / spec.path.lstrip("/")
            assert os.stat(path).st_size == spec.size
            assert sha256_of(path) == hashlib.sha256(control.file_bytes(torrent_id, file_id)).hexdigest()
        with open(folder / "Show.S01E01.mkv", "rb") as f:
            f.seek(2 * MiB + 3)
            assert f.read(5000) == control.file_bytes(torrent_id, 1, 2 * MiB + 3, 5000)
