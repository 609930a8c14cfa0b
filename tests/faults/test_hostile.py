"""Hostile upstream data through a real mount: odd names, huge lists, broken JSON and bad ranges.

Whatever RD sends, nothing may escape the mount (every name is one safe path component), the
mount keeps running, every listed file reads its own bytes or fails with EIO, and the log says why.
"""

from __future__ import annotations

import errno
import json
import os
import unicodedata
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount

MiB = 1024 * 1024
HUGE_LIST = 20_000

HOSTILE_TORRENTS = [
    "a/b/../c",
    "..",
    ".",
    "/",
    "",
    "nul\x00byte",
    "x" * 300,
    "é" * 200,
    "Cafe\u0301 NFD",
    "\U0001f3ac Emoji \U0001f37f Movie",
    "ctrl\x1b[31m\x07\tname\n",
    "Same Name",
    "Same Name",
    "Same Name\u200b",
]
HOSTILE_PATHS = [
    "/../../../escape.txt",
    "/..",
    "/sub/./x.bin",
    "/sub/",
    "/dup.bin",
    "/dup.bin",
    "/" + "é" * 200 + ".mkv",
    "/a\x00b.bin",
    "/na\u0308me.bin",
    "/ctrl\x01\x7f\u0085.bin",
    "//double//slash.bin",
]


@pytest.fixture(scope="module")
def hostile(emulator_module, tmp_path_factory):
    control = emulator_module.control
    torrents = {}
    for index, name in enumerate(HOSTILE_TORRENTS):
        torrents[f"t{index}"] = control.add_torrent(name, [FileSpec(f"/file{index}.bin", 1000 + index)])
    torrents["files"] = control.add_torrent(
        "Hostile Files", [FileSpec(path, 2000 + i) for i, path in enumerate(HOSTILE_PATHS)]
    )
    torrents["huge"] = control.add_torrent("Huge List", [FileSpec(f"/f{i:05d}.bin", 1 + i % 7) for i in range(HUGE_LIST)])
    for name, size in (("range", 24 * MiB), ("shift", 4 * MiB), ("json", MiB)):
        torrents[name] = control.add_torrent(f"Plain {name}", [FileSpec(f"/{name}.bin", size)])
    base = tmp_path_factory.mktemp("hostile")
    with mountutil.mount(emulator_module.api_url, emulator_module.token, base, "--rate-limit", "3000") as mounted:
        mountutil.wait_for(
            lambda: len(os.listdir(mounted.path / "torrents")) == len(torrents), timeout=60, what="every torrent"
        )
        yield {"control": control, "torrents": torrents, "mounted": mounted, "base": base}


def check_name(name: str) -> None:
    assert name not in ("", ".", "..")
    assert "/" not in name and "\x00" not in name
    assert len(name.encode("utf-8")) <= 255
    assert unicodedata.is_normalized("NFC", name)
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in name), repr(name)


def walk(root: Path) -> list[Path]:
    """Every entry below ``root`` (lexically), each checked to be a safe name resolving inside."""
    found = []
    prefix = os.path.realpath(root) + os.sep
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            check_name(name)
            path = Path(dirpath) / name
            assert os.path.realpath(path).startswith(prefix), path
            found.append(path)
    return found


def test_names_are_safe_and_nothing_escapes(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    entries = walk(mounted.path / "torrents")
    dirs = os.listdir(mounted.path / "torrents")
    assert len(dirs) == len(hostile["torrents"]) == len(set(dirs))  # none lost, none merged
    assert mounted.process.poll() is None
    # Every torrent directory reads its own file (identified through the xattrs).
    by_id = {os.getxattr(mounted.path / "torrents" / d, "user.rdfs.torrent_id").decode(): d for d in dirs}
    for index, _ in enumerate(HOSTILE_TORRENTS):
        torrent_id = hostile["torrents"][f"t{index}"]
        folder = mounted.path / "torrents" / by_id[torrent_id]
        (leaf,) = os.listdir(folder)
        assert (folder / leaf).read_bytes() == control.file_bytes(torrent_id, 1), leaf
    # Nothing was created outside the mountpoint: the base holds what the harness made, no more.
    outside = []
    for dirpath, dirnames, filenames in os.walk(hostile["base"]):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d != mounted.path]
        outside += filenames
    assert "escape.txt" not in outside and not any("escape" in name for name in outside)
    assert len(entries) > len(dirs)


def test_hostile_file_paths_all_readable(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    torrent_id = hostile["torrents"]["files"]
    folder = mounted.path / "torrents" / "Hostile Files"
    files = [p for p in walk(folder) if p.is_file()]
    assert len(files) == len(HOSTILE_PATHS)  # duplicates and collisions disambiguated, none dropped
    seen = set()
    for path in files:
        file_id = int(os.getxattr(path, "user.rdfs.file_id"))
        seen.add(file_id)
        assert path.read_bytes() == control.file_bytes(torrent_id, file_id), path
    assert seen == set(range(1, len(HOSTILE_PATHS) + 1))
    # What RD named "../../../escape.txt" stays below the torrent's directory.
    escaped = [p for p in files if p.name == "escape.txt"]
    assert len(escaped) == 1 and folder in escaped[0].parents


def test_huge_files_list(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    folder = mounted.path / "torrents" / "Huge List"
    names = os.listdir(folder)
    assert len(names) == HUGE_LIST and len(set(names)) == HUGE_LIST
    torrent_id = hostile["torrents"]["huge"]
    assert (folder / "f19999.bin").read_bytes() == control.file_bytes(torrent_id, HUGE_LIST)
    assert os.stat(folder / "f00006.bin").st_size == 7


def _read_or_eio(path: Path, offset: int, size: int) -> bytes | None:
    """The bytes at ``offset``, or None when the read failed with EIO (any other error fails)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return None
    finally:
        os.close(fd)


def test_range_ignored_200_instead_of_206(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    torrent_id = hostile["torrents"]["range"]
    path = mounted.path / "torrents" / "Plain range" / "range.bin"
    control.set_faults(ignore_range=True)
    try:
        near = _read_or_eio(path, 100_000, 4096)
        far = _read_or_eio(path, 20 * MiB, 4096)
    finally:
        control.set_faults(ignore_range=False)
    assert near == control.file_bytes(torrent_id, 1, 100_000, 4096)  # read and discard up to the offset
    assert far is None or far == control.file_bytes(torrent_id, 1, 20 * MiB, 4096)  # never a wrong byte
    if far is None:
        assert "ignores Range" in mounted.log()
        assert _read_or_eio(path, 20 * MiB, 4096) == control.file_bytes(torrent_id, 1, 20 * MiB, 4096)
    assert mounted.process.poll() is None


def test_wrong_content_range(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    torrent_id = hostile["torrents"]["shift"]
    path = mounted.path / "torrents" / "Plain shift" / "shift.bin"
    control.set_faults(content_range_shift=1000)
    try:
        shifted = _read_or_eio(path, 2 * MiB, 4096)
    finally:
        control.set_faults(content_range_shift=0)
    assert shifted is None or shifted == control.file_bytes(torrent_id, 1, 2 * MiB, 4096)
    if shifted is None:
        assert "wrong Content-Range" in mounted.log()
    # Nothing wrong was cached: the same bytes read right once the server behaves.
    assert _read_or_eio(path, 2 * MiB, 4096) == control.file_bytes(torrent_id, 1, 2 * MiB, 4096)
    assert mounted.process.poll() is None


def test_malformed_json(hostile):
    mounted, control = hostile["mounted"], hostile["control"]
    torrents = mounted.path / "torrents"
    before = sorted(os.listdir(torrents))
    path = torrents / "Plain json" / "json.bin"
    control.set_faults(malformed_json_rate=1.0)
    try:
        (mounted.path / ".rdfs" / "refresh").write_text("1\n")
        mountutil.wait_for(lambda: "non-JSON body" in mounted.log(), what="malformed JSON logged")
        head = _read_or_eio(path, 0, 4096)  # its link must be unrestricted: RD's answer is garbage
        assert sorted(os.listdir(torrents)) == before  # a broken answer never empties the tree
        report = json.loads((mounted.path / ".rdfs" / "status").read_text())
        assert any("non-JSON" in error["error"] for error in report["recent_errors"])
    finally:
        control.set_faults(malformed_json_rate=0.0)
    torrent_id = hostile["torrents"]["json"]
    assert head is None or head == control.file_bytes(torrent_id, 1, 0, 4096)
    assert _read_or_eio(path, 0, 4096) == control.file_bytes(torrent_id, 1, 0, 4096)
    added = control.add_torrent("After The Garbage", [FileSpec("/ok.bin", 10)])
    (mounted.path / ".rdfs" / "refresh").write_text("1\n")
    mountutil.wait_for(lambda: "After The Garbage" in os.listdir(torrents), what="recovery")
    assert (torrents / "After The Garbage" / "ok.bin").read_bytes() == control.file_bytes(added, 1)
    assert mounted.process.poll() is None
