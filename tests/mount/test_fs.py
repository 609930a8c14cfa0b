"""The filesystem through a real FUSE mount, against the emulator over real HTTP on loopback."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil
from rdfs.emulator.samples import make_media, probe

pytestmark = pytest.mark.mount

MiB = 1024 * 1024
GiB = 1024 * MiB


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def source_sha256(control, torrent_id: str, file_id: int, size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, 8 * MiB):
        digest.update(control.file_bytes(torrent_id, file_id, offset, min(8 * MiB, size - offset)))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def library(emulator_module, tmp_path_factory):
    """An account with synthetic torrents (one multi-GiB sparse file) and real media files."""
    control = emulator_module.control
    media_root = tmp_path_factory.mktemp("media")
    make_media(media_root)
    torrents = {}
    torrents["synthetic"] = control.add_torrent(
        "Synthetic Pack",
        [
            FileSpec("/a.bin", 3 * MiB + 123),
            FileSpec("/sub/b.bin", 1),
            FileSpec("/sub/c.bin", 5 * MiB),
            FileSpec("/skipped.nfo", 100),
        ],
        selected=[1, 2, 3],
    )
    torrents["huge"] = control.add_torrent("Huge", [FileSpec("/huge.bin", 3 * GiB + 17)])
    for folder in sorted(p for p in media_root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir())
        torrents[folder.name] = control.add_torrent(
            folder.name,
            [FileSpec(f"/{p.name}", p.stat().st_size, source=p) for p in files],
        )
    control.add_torrent("Still Downloading", [FileSpec("/x.mkv", 1000)], status="downloading")
    return {"control": control, "torrents": torrents, "media_root": media_root}


@pytest.fixture(scope="module")
def mnt(emulator_module, library, tmp_path_factory):
    base = tmp_path_factory.mktemp("fs")
    with mountutil.mount(emulator_module.api_url, emulator_module.token, base) as mounted:
        mountutil.wait_for(lambda: len(os.listdir(mounted.path / "torrents")) >= 4, what="torrents listed")
        yield mounted


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_and_names(mnt, library):
    root = mnt.path
    assert {"torrents", "downloads"} <= set(os.listdir(root))
    names = set(os.listdir(root / "torrents"))
    assert {"Synthetic Pack", "Huge", "Big Test Movie (2024)", "Test Show S01"} <= names
    assert "Still Downloading" not in names  # only downloaded torrents are readable
    pack = root / "torrents" / "Synthetic Pack"
    assert sorted(str(p.relative_to(pack)) for p in pack.rglob("*")) == ["a.bin", "sub", "sub/b.bin", "sub/c.bin"]
    st = os.stat(pack / "a.bin")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 3 * MiB + 123
    assert st.st_blocks * 512 >= st.st_size
    assert st.st_mtime > 1_000_000_000
    assert stat.S_ISDIR(os.stat(pack / "sub").st_mode)


def test_every_file_matches_source(mnt, library):
    control = library["control"]
    checked = 0
    for name, torrent_id in library["torrents"].items():
        if name == "huge":
            continue
        info = control.torrent_json(torrent_id)
        folder = mnt.path / "torrents" / info["filename"]
        for f in info["files"]:
            if not f["selected"]:
                continue
            path = folder / f["path"].lstrip("/")
            assert sha256_of(path) == source_sha256(control, torrent_id, f["id"], f["bytes"]), path
            checked += 1
    assert checked >= 7


def test_shell_tools(mnt, library, tmp_path):
    root = mnt.path
    found = subprocess.run(["find", str(root / "torrents")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert str(root / "torrents" / "Synthetic Pack" / "sub" / "c.bin") in found
    ls = subprocess.run(["ls", "-lR", str(root)], capture_output=True, text=True, check=True).stdout
    assert "a.bin" in ls and "Huge" in ls
    du = subprocess.run(["du", "-sb", str(root / "torrents" / "Synthetic Pack")], capture_output=True, text=True)
    assert int(du.stdout.split()[0]) >= 3 * MiB + 123 + 1 + 5 * MiB
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root / "torrents" / "Synthetic Pack"), str(copy)], check=True)
    for original in all_files(root / "torrents" / "Synthetic Pack"):
        assert (copy / original.relative_to(root / "torrents" / "Synthetic Pack")).read_bytes() == original.read_bytes()
    tail = subprocess.run(["tail", "-c", "1000", str(root / "torrents" / "Synthetic Pack" / "a.bin")], capture_output=True, check=True)
    torrent_id = library["torrents"]["synthetic"]
    assert tail.stdout == library["control"].file_bytes(torrent_id, 1, 3 * MiB + 123 - 1000, 1000)


def test_random_offsets_on_huge_sparse_file(mnt, library):
    control = library["control"]
    torrent_id = library["torrents"]["huge"]
    path = mnt.path / "torrents" / "Huge" / "huge.bin"
    size = 3 * GiB + 17
    assert os.stat(path).st_size == size
    rng = random.Random(7)
    offsets = [0, size - 1, size - 4096, 2 * GiB - 3, GiB] + [rng.randrange(0, size - 70_000) for _ in range(12)]
    for offset in offsets:
        length = min(rng.choice([1, 4096, 65536, 70_000]), size - offset)
        result = subprocess.run(
            ["dd", f"if={path}", "bs=1", f"skip={offset}", f"count={length}", "iflag=skip_bytes,count_bytes", "status=none"],
            capture_output=True,
            check=True,
        )
        assert result.stdout == control.file_bytes(torrent_id, 1, offset, length), offset


def rdfs_reads(mounted) -> int:
    """Reads that reached rdfs (its status file), as opposed to ones the kernel served itself."""
    return json.loads((mounted.path / ".rdfs" / "status").read_text())["reads"]["reads"]


def read_twice_and_map(mounted, library, flags: int) -> tuple[int, int]:
    """Read a.bin twice and through a map of ``flags``, comparing bytes; the rdfs reads each pass made."""
    control = library["control"]
    path = mounted.path / "torrents" / "Synthetic Pack" / "a.bin"
    want = control.file_bytes(library["torrents"]["synthetic"], 1)
    passes = []
    for _ in range(2):
        before = rdfs_reads(mounted)
        assert path.read_bytes() == want
        passes.append(rdfs_reads(mounted) - before)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == want
    return passes[0], passes[1]


def test_direct_io_reads_reach_rdfs_and_private_maps_work(mnt, library):
    """The default: every read reaches rdfs (its read-ahead and cache serve it, the kernel keeps
    no copy); a private map works, a shared one is refused as for every direct-I/O file."""
    first, second = read_twice_and_map(mnt, library, mmap.MAP_PRIVATE)
    assert first > 0 and second > 0
    path = mnt.path / "torrents" / "Synthetic Pack" / "a.bin"
    with open(path, "rb") as f, pytest.raises(OSError) as refused:
        mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    assert refused.value.errno == errno.ENODEV


def test_page_cache_mode_rereads_from_the_kernel_and_shares_maps(emulator_module, library, tmp_path):
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path, "--page-cache") as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Synthetic Pack" / "a.bin").exists(), what="a.bin")
        first, second = read_twice_and_map(mounted, library, mmap.MAP_SHARED)
        assert first > 0 and second == 0  # the second pass came from the page cache (keep_cache)
        device = os.stat(mounted.path).st_dev
        bdi = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        # The kernel readahead rdfs sets for this mode, shortly after mounting; it stays.
        mountutil.wait_for(lambda: bdi.read_text().strip() == "512", what="read_ahead_kb 512")
        time.sleep(2.5)
        assert bdi.read_text().strip() == "512"


def test_concurrent_readers_share_one_unrestrict(emulator_module, library, tmp_path):
    control = library["control"]
    torrent_id = control.add_torrent(
        "Concurrent", [FileSpec(f"/f{i}.bin", 4 * MiB + i) for i in range(3)]
    )
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        folder = mounted.path / "torrents" / "Concurrent"
        mountutil.wait_for(folder.exists, what="torrent dir")
        control.reset_counters()
        targets = [folder / f"f{i % 3}.bin" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            digests = list(pool.map(sha256_of, targets))
        for i, digest in enumerate(digests):
            assert digest == source_sha256(control, torrent_id, i % 3 + 1, 4 * MiB + i % 3)
        assert control.counters.get("POST /unrestrict/link", 0) == 3


def test_faults_during_reads_still_exact(emulator_module, library, tmp_path):
    control = library["control"]
    size = 12 * MiB + 5
    torrent_id = control.add_torrent("Faulty", [FileSpec("/f.bin", size)])
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        path = mounted.path / "torrents" / "Faulty" / "f.bin"
        mountutil.wait_for(path.exists, what="file")
        control.set_faults(download_drop_rate=0.3)
        try:
            with open(path, "rb") as f:
                first = f.read(size // 2)
                control.expire_links()
                rest = f.read()
        finally:
            control.set_faults(download_drop_rate=0.0)
        assert first + rest == control.file_bytes(torrent_id, 1, 0, size)


def test_read_only(mnt, library):
    control = library["control"]
    before = control.counters
    pack = mnt.path / "torrents" / "Synthetic Pack"
    attempts = [
        lambda: open(pack / "new.txt", "w"),
        lambda: open(pack / "a.bin", "r+b"),
        lambda: open(pack / "a.bin", "ab"),
        lambda: os.truncate(pack / "a.bin", 0),
        lambda: os.rename(pack / "a.bin", pack / "renamed.bin"),
        lambda: os.mkdir(pack / "dir"),
        lambda: os.unlink(pack / "a.bin"),
        lambda: shutil.rmtree(pack),
        lambda: os.symlink("a.bin", pack / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES), info.value
    after = control.counters
    for key in ("DELETE /torrents/delete", "POST /torrents/addMagnet", "PUT /torrents/addTorrent"):
        assert after.get(key, 0) == before.get(key, 0)
    assert sorted(p.name for p in pack.rglob("*")) == ["a.bin", "b.bin", "c.bin", "sub"]


def test_xattrs(mnt, library):
    torrent_id = library["torrents"]["synthetic"]
    folder = mnt.path / "torrents" / "Synthetic Pack"
    assert os.getxattr(folder, "user.rdfs.torrent_id").decode() == torrent_id
    file_attrs = {name: os.getxattr(folder / "a.bin", name).decode() for name in os.listxattr(folder / "a.bin")}
    assert file_attrs["user.rdfs.torrent_id"] == torrent_id
    assert file_attrs["user.rdfs.link"].startswith("https://real-debrid.com/d/")
    assert file_attrs["user.rdfs.file_id"] == "1"


@pytest.mark.parametrize("relative", [
    "Big Test Movie (2024)/Big.Test.Movie.2024.1080p.mkv",
    "Test Show S01/Test.Show.S01E01.mp4",
    "Test Show S01/Test.Show.S01E02.mp4",
])  # fmt: skip
def test_ffprobe_through_mount(mnt, library, relative):
    original = library["media_root"] / relative
    mounted = mnt.path / "torrents" / relative
    assert probe(mounted) == probe(original)


def test_listing_stays_responsive_while_streaming(emulator_module, library, tmp_path):
    control = library["control"]
    control.add_torrent("Slow", [FileSpec(f"/s{i}.bin", 2 * MiB) for i in range(8)])
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        folder = mounted.path / "torrents" / "Slow"
        mountutil.wait_for(folder.exists, what="torrent dir")
        names = sorted(os.listdir(folder))
        control.set_faults(download_latency=3.0)
        try:
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(lambda n=n: (folder / n).read_bytes()) for n in names]
                # While all eight readers wait for their first byte, the tree still answers.
                listing = os.listdir(mounted.path / "torrents")
                stat_ok = os.stat(folder / names[0]).st_size == 2 * MiB
                readers_pending = not any(f.done() for f in futures)
                results = [f.result() for f in futures]
        finally:
            control.set_faults(download_latency=0.0)
        assert "Slow" in listing and stat_ok
        assert readers_pending
        assert all(len(r) == 2 * MiB for r in results)


def test_upstream_changes_appear_and_open_handles_survive(emulator_module, library, tmp_path):
    control = library["control"]
    keep = control.add_torrent("Keeper", [FileSpec("/k.bin", MiB)])
    expected = control.file_bytes(keep, 1, 0, MiB)
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        torrents = mounted.path / "torrents"
        mountutil.wait_for(lambda: "Keeper" in os.listdir(torrents), what="Keeper")
        handle = open(torrents / "Keeper" / "k.bin", "rb")
        try:
            head = handle.read(1000)
            new_id = control.add_torrent("Arrived Later", [FileSpec("/n.bin", 10)])
            mountutil.wait_for(lambda: "Arrived Later" in os.listdir(torrents), what="new torrent in ls")
            control.remove_torrent(keep)
            mountutil.wait_for(lambda: "Keeper" not in os.listdir(torrents), what="removed torrent gone")
            rest = handle.read()  # the handle opened before the removal still reads
        finally:
            handle.close()
        assert head + rest == expected
        assert (torrents / "Arrived Later" / "n.bin").read_bytes() == control.file_bytes(new_id, 1, 0, 10)


def test_inodes_stable_across_restart(emulator_module, library, tmp_path):
    def inodes(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): p.stat().st_ino for p in (root / "torrents").rglob("*")}

    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        mountutil.wait_for(lambda: (mounted.path / "torrents" / "Synthetic Pack").exists(), what="tree")
        first = inodes(mounted.path)
    with mountutil.mount(emulator_module.api_url, emulator_module.token, tmp_path) as mounted:
        second = inodes(mounted.path)
    assert first == second and len(first) > 8


def test_buffered_readers_get_large_reads(mnt, library):
    """Direct I/O hands rdfs every read as made: stdio and Python size theirs by st_blksize."""
    path = mnt.path / "torrents" / "Synthetic Pack" / "a.bin"
    assert os.stat(path).st_blksize == 128 * 1024
    with open(path, "rb") as f:
        assert f.read(100) == library["control"].file_bytes(library["torrents"]["synthetic"], 1, 0, 100)
        assert f.raw.tell() == 128 * 1024  # one read filled a st_blksize buffer


def test_statfs(mnt):
    st = os.statvfs(mnt.path)
    assert st.f_namemax == 255 and st.f_blocks * st.f_frsize >= 3 * GiB
