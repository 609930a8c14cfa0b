"""A hostile RD API through a real mount (issue 15 item 1; issue 14 item 6).

One mount of a library where some records carry what RD could send on a bad day (sizes of
2^64, ``Infinity``, ``1e400``, negative sizes, number ids, a body nested 100k deep, download URLs
that do not encode, an infringing file). What must hold: the mount stays up, every other torrent
and file is listed and reads its exact bytes, the bad record is dropped or clamped with one
warning line in the log however many syncs see it, and a bad link fails that file alone (EIO).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def hostile_api(emulator_module, tmp_path_factory):
    control = emulator_module.control
    control.reset_faults()
    add = control.add_torrent
    t = {
        "good": add("Good Movie", [FileSpec("/Good.Movie.2020.mkv", 300_000), FileSpec("/extra.srt", 2_000)]),
        "huge": add("Huge Bytes", [FileSpec("/huge.mkv", 5_000)]),
        "e400": add("E400 Bytes", [FileSpec("/e400.mkv", 5_001)]),
        "inf_file": add("Inf File", [FileSpec("/bad.mkv", 4_000), FileSpec("/fine.mkv", 4_001)]),
        "negative": add("Negative File", [FileSpec("/neg.mkv", 3_000), FileSpec("/pos.mkv", 3_001)]),
        "deep": add("Deep Info", [FileSpec("/deep.mkv", 2_500)]),
        "num1": add("Number Id One", [FileSpec("/n1.mkv", 1_500)]),
        "num2": add("Number Id Two", [FileSpec("/n2.mkv", 1_501)]),
        "idna": add("Bad Host", [FileSpec("/idna.mkv", 7_000)]),
        "ipv6": add("Bad IPv6", [FileSpec("/ipv6.mkv", 7_001)]),
        "fsize": add("Bad Filesize", [FileSpec("/fsize.mkv", 7_002)]),
        "infringing": add("Infringing", [FileSpec("/dmca.mkv", 7_003)]),
        "docs": add("Docs", [FileSpec("/readme.txt", 900)]),
    }
    link = {name: control.torrent_json(tid)["links"] for name, tid in t.items()}
    control.set_faults(
        torrent_fields={
            t["huge"]: {"bytes": str(2**64)},
            t["e400"]: {"bytes": "1e400"},
            t["inf_file"]: {"files.0.bytes": "Infinity"},
            t["negative"]: {"files.0.bytes": "-5"},
            t["deep"]: {"info.original_bytes": DEEP},
            t["num1"]: {"id": "1001"},
            t["num2"]: {"id": "1002"},
        },
        unrestrict_fields={
            link["idna"][0]: {"download": '"https://\u2603\u2603.example/d/x/idna.mkv"'},
            link["ipv6"][0]: {"download": '"http://[::1/d/x/ipv6.mkv"'},
            link["fsize"][0]: {"filesize": "Infinity"},
        },
        unrestrict_errors={link["infringing"][0]: "infringing_file"},
    )
    base = tmp_path_factory.mktemp("hostile_api")
    try:
        with mountutil.mount(emulator_module.api_url, emulator_module.token, base, "--rate-limit", "3000") as mounted:
            torrents = mounted.path / "torrents"
            mountutil.wait_for(lambda: len(os.listdir(torrents)) == len(t), timeout=60, what="every torrent listed")
            yield {"control": control, "t": t, "link": link, "mounted": mounted, "torrents": torrents}
    finally:
        control.reset_faults()


def _read(path: Path) -> bytes | int:
    """The file's bytes, or the errno its read failed with."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc.errno


def _alive(env) -> None:
    assert env["mounted"].process.poll() is None, env["mounted"].log()[-3000:]
    control, t = env["control"], env["t"]
    good = env["torrents"] / "Good Movie"
    assert (good / "Good.Movie.2020.mkv").read_bytes() == control.file_bytes(t["good"], 1)
    assert (good / "extra.srt").read_bytes() == control.file_bytes(t["good"], 2)


def _wait_for_syncs(env, count: int = 3) -> None:
    """Let the mount list the torrents ``count`` more times (each sees the bad records again)."""
    control = env["control"]
    start = control.counters["GET /torrents"]
    mountutil.wait_for(lambda: control.counters["GET /torrents"] >= start + count, timeout=60, what="more syncs")


@pytest.mark.parametrize(("name", "folder"), [("huge", "Huge Bytes"), ("e400", "E400 Bytes")])
def test_torrent_bytes_out_of_range_is_clamped_and_warned_once(hostile_api, name, folder) -> None:
    env = hostile_api
    torrent_id = env["t"][name]
    directory = env["torrents"] / folder
    (leaf,) = os.listdir(directory)
    assert (directory / leaf).read_bytes() == env["control"].file_bytes(torrent_id, 1)
    _wait_for_syncs(env)
    lines = [line for line in env["mounted"].log().splitlines() if torrent_id in line and "taken as 0" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "bytes" in lines[0]
    _alive(env)


def test_infinite_file_size_in_info_drops_that_file_only(hostile_api) -> None:
    env = hostile_api
    directory = env["torrents"] / "Inf File"
    assert os.listdir(directory) == ["fine.mkv"]
    # fine.mkv reads its own bytes: the dropped file's link slot went with it.
    assert (directory / "fine.mkv").read_bytes() == env["control"].file_bytes(env["t"]["inf_file"], 2)
    _wait_for_syncs(env)
    lines = [line for line in env["mounted"].log().splitlines() if "/bad.mkv" in line and "dropped" in line]
    assert len(lines) == 1, lines
    _alive(env)


def test_negative_file_size_drops_that_file_and_stat_works(hostile_api) -> None:
    env = hostile_api
    directory = env["torrents"] / "Negative File"
    assert os.listdir(directory) == ["pos.mkv"]
    assert os.stat(directory / "pos.mkv").st_size == 3_001
    assert (directory / "pos.mkv").read_bytes() == env["control"].file_bytes(env["t"]["negative"], 2)
    _alive(env)


def test_info_nested_100k_deep_fails_that_directory_only(hostile_api) -> None:
    env = hostile_api
    directory = env["torrents"] / "Deep Info"
    try:
        entries = os.listdir(directory)
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        assert entries == []
    assert "nested too deep" in env["mounted"].log()
    assert "RecursionError" not in env["mounted"].log()
    _alive(env)


def test_number_ids_keep_torrents_apart(hostile_api) -> None:
    env = hostile_api
    names = os.listdir(env["torrents"])
    assert "Number Id One" in names and "Number Id Two" in names
    folders = ("Number Id One", "Number Id Two")
    ids = {os.getxattr(env["torrents"] / folder, "user.rdfs.torrent_id").decode() for folder in folders}
    assert ids == {"1001", "1002"}
    _alive(env)


@pytest.mark.parametrize(
    ("folder", "leaf"), [("Bad Host", "idna.mkv"), ("Bad IPv6", "ipv6.mkv"), ("Bad Filesize", "fsize.mkv")]
)
def test_unusable_download_url_fails_that_file_only(hostile_api, folder, leaf) -> None:
    env = hostile_api
    assert _read(env["torrents"] / folder / leaf) == errno.EIO
    assert _read(env["torrents"] / folder / leaf) == errno.EIO  # again: still just EIO, the mount stays
    assert "unusable answer" in env["mounted"].log()
    _alive(env)


def test_infringing_file_is_eio_not_retried(hostile_api) -> None:
    env = hostile_api
    control = env["control"]
    path = env["torrents"] / "Infringing" / "dmca.mkv"
    before = control.counters["POST /unrestrict/link"]
    assert _read(path) == errno.EIO
    assert _read(path) == errno.EIO
    assert control.counters["POST /unrestrict/link"] - before == 1  # RD's verdict: asked once, remembered
    assert "infringing_file" in env["mounted"].log()
    _alive(env)


def test_mediainfo_miss_is_one_request_and_cached(hostile_api) -> None:
    env = hostile_api
    control = env["control"]
    path = env["torrents"] / "Docs" / "readme.txt"  # not a video: RD has no metadata for it
    before = control.counters["GET /streaming/mediaInfos"]
    for _ in range(3):
        with pytest.raises(OSError) as caught:
            os.getxattr(path, "user.rdfs.mediainfo")
        assert caught.value.errno == errno.ENODATA
    assert control.counters["GET /streaming/mediaInfos"] - before == 1
    _alive(env)
