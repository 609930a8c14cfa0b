"""The kernel keeps directory listings (issue 18): with rdfs's pyfuse3 (patches/), opendir
answers ENOSYS, a second walk of the tree costs no readdir at all, and a sync that changes a
directory drops its listing at once: a torrent added or removed upstream shows in the next
listing, without waiting for any timeout (a kept listing has none)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rdfs.emulator import FileSpec
from tests import mountutil

pytestmark = pytest.mark.mount


def walk(top: Path) -> list[str]:
    """Every path under ``top``, as ``find`` lists it."""
    found = []
    for parent, dirs, files in os.walk(top):
        found += [os.path.relpath(os.path.join(parent, name), top) for name in dirs + files]
    return sorted(found)


def fuse_status(mounted: mountutil.Mounted) -> dict:  # type: ignore[type-arg]
    return json.loads((mounted.path / ".rdfs" / "status").read_text())["fuse"]


def test_listings_are_kept_until_a_sync_changes_them(emulator_proc, tmp_path) -> None:
    control = emulator_proc.control
    first = control.add_torrent("First Movie (2020)", [FileSpec("/First.Movie.2020.1080p.mkv", 1000)])
    show = control.add_torrent("Some Show S01", [FileSpec(f"/Some.Show.S01E0{i}.mkv", 100) for i in (1, 2)])
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        status = mounted.path / ".rdfs" / "status"
        mountutil.wait_for(lambda: json.loads(status.read_text())["torrents_known"] == 2, what="first sync")
        assert fuse_status(mounted)["kernel_dir_cache"] is True
        # The views are built after the first sync: their listings, kept empty by the kernel
        # if a walk came first, are dropped when they are.
        mountutil.wait_for(
            lambda: any(p.startswith("movies/First Movie (2020)/") for p in walk(mounted.path)),
            timeout=30,
            what="the movies view",
        )
        tree = walk(mounted.path)
        assert "torrents/First Movie (2020)/First.Movie.2020.1080p.mkv" in tree

        def walk_again_asks_no_readdir() -> bool:
            # (a change a sync publishes between two walks drops a listing: walk again)
            nonlocal tree
            listed = fuse_status(mounted)["requests"].get("readdir")
            before, tree = tree, walk(mounted.path)
            return tree == before and fuse_status(mounted)["requests"].get("readdir") == listed

        mountutil.wait_for(walk_again_asks_no_readdir, timeout=30, what="a walk answered by the kernel")
        requests = fuse_status(mounted)["requests"]
        assert requests.get("opendir", 0) <= 1 and "releasedir" not in requests

        torrents = mounted.path / "torrents"
        control.add_torrent("Second Movie (2021)", [FileSpec("/Second.Movie.2021.mkv", 2000)])
        mountutil.wait_for(lambda: "Second Movie (2021)" in os.listdir(torrents), timeout=30, what="added")
        mountutil.wait_for(
            lambda: "torrents/Second Movie (2021)/Second.Movie.2021.mkv" in walk(mounted.path),
            timeout=30,
            what="added file",
        )
        mountutil.wait_for(
            lambda: any(p.startswith("movies/Second Movie (2021)/") for p in walk(mounted.path)),
            timeout=30,
            what="added to the movies view",
        )

        control.remove_torrent(first)
        mountutil.wait_for(lambda: "First Movie (2020)" not in os.listdir(torrents), timeout=60, what="removed")
        mountutil.wait_for(
            lambda: not any("First.Movie" in p for p in walk(mounted.path)), timeout=30, what="removed view"
        )
        assert (torrents / "Second Movie (2021)" / "Second.Movie.2021.mkv").stat().st_size == 2000

        # Deleted through a control file: the listing kept by the kernel goes at once.
        assert "Some Show S01" in os.listdir(torrents)
        (mounted.path / ".rdfs" / "delete").write_text(f"{show}\n")
        mountutil.wait_for(lambda: show not in control.torrent_ids(), timeout=30, what="deleted upstream")
        mountutil.wait_for(lambda: "Some Show S01" not in os.listdir(torrents), timeout=30, what="delete shown")
        assert not any("Some.Show" in p for p in walk(mounted.path))
        mountutil.check_log(mounted)
