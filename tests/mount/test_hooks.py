"""The library update hook: the command gets exactly the directories a sync changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from rdfs.emulator import FileSpec
from rdfs.sync.hooks import HookConfig, HookError, UpdateHook, parse_hook
from rdfs.events import TreeChange
from tests import mountutil

RECORDER = """
import json, sys
record = {"argv": sys.argv[2:], "stdin": json.loads(sys.stdin.read())}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(record) + "\\n")
"""


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    out = tmp_path / "calls.jsonl"
    return [sys.executable, str(script), str(out)], out


def calls(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def change(*paths: str) -> TreeChange:
    return TreeChange(entries=[], inodes=[], paths=list(paths))


async def test_hook_gets_paths_as_arguments_and_json(tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    hook = UpdateHook(HookConfig(tuple(command), settle=0.05), Path("/mnt/rd"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hook.run)
        hook.on_change(change("movies", "downloads", ".rdfs", ""))
        hook.on_change(change("movies/Film (2020)", "movies"))
        while hook.status.runs == 0 or hook.status.last_exit is None:
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    [call] = calls(out)
    assert call["argv"] == ["/mnt/rd/movies", "/mnt/rd/movies/Film (2020)"]
    assert call["stdin"] == {
        "mountpoint": "/mnt/rd",
        "paths": ["/mnt/rd/movies", "/mnt/rd/movies/Film (2020)"],
        "relative": ["movies", "movies/Film (2020)"],
    }
    assert hook.status.last_exit == 0 and hook.status.failures == 0


async def test_failing_or_missing_command_is_recorded(tmp_path: Path) -> None:
    failing = UpdateHook(HookConfig((sys.executable, "-c", "import sys; sys.exit(3)")), tmp_path)
    assert await failing.call(["movies"]) == 3
    missing = UpdateHook(HookConfig((str(tmp_path / "nope"),)), tmp_path)
    assert await missing.call(["movies"]) is None
    slow = UpdateHook(HookConfig((sys.executable, "-c", "import time; time.sleep(30)"), timeout=0.2), tmp_path)
    assert await slow.call(["movies"]) is None
    assert failing.status.failures == missing.status.failures == slow.status.failures == 1


def test_config_parsing() -> None:
    assert parse_hook({}) is None
    config = parse_hook({"on_change": "/bin/scan --fast", "include": ["movies"], "settle": 1})
    assert config == HookConfig(("/bin/scan", "--fast"), ("movies",), 1.0, 300.0)
    assert config.reports("movies/X") and not config.reports("torrents/X")
    with pytest.raises(HookError):
        parse_hook({"on_change": ["x"], "settle": -1})


@pytest.mark.mount
def test_hook_receives_exactly_the_changed_paths(emulator_proc, tmp_path: Path) -> None:
    control = emulator_proc.control
    control.add_torrent("Old.Movie.1999", [FileSpec("/Old.Movie.1999.mkv", 1000)])
    command, out = recorder(tmp_path)
    (tmp_path / "no-config.toml").write_text(f"[hooks]\non_change = {json.dumps(command)}\nsettle = 0.3\n")
    with mountutil.mount(emulator_proc.api_url, emulator_proc.token, tmp_path) as mounted:
        mountutil.wait_for((mounted.path / "movies" / "Old.Movie.1999" / "Old.Movie.1999.mkv").exists, what="tree")
        mountutil.wait_for(lambda: calls(out), what="first hook call")
        settled = len(calls(out))
        time.sleep(1.5)  # the start-up changes are reported; nothing else moves
        assert len(calls(out)) == settled
        out.unlink()
        control.add_torrent("New.Movie.2024", [FileSpec("/New.Movie.2024.mkv", 2000), FileSpec("/New.nfo", 5)])
        expected = {
            str(mounted.path / p)
            for p in ("torrents", "torrents/New.Movie.2024", "movies", "movies/New.Movie.2024")
        }
        seen: set[str] = set()

        def reported() -> bool:
            seen.clear()
            for call in calls(out):
                seen.update(call["argv"])
                assert call["argv"] == call["stdin"]["paths"]
            return seen >= expected

        mountutil.wait_for(reported, timeout=20, what="hook calls for the new torrent")
        time.sleep(1.5)  # and nothing more arrives
        reported()
        assert seen == expected


@pytest.mark.mount
def test_deletes_on_the_mount_reach_the_views_and_the_hook(emulator_proc, tmp_path: Path) -> None:
    """A delete through ``.rdfs/delete`` or ``rm -r`` removes the torrent from ``torrents/`` at
    once; the views and the update hook must hear of it then, not at the next hourly refresh."""
    control = emulator_proc.control
    control.add_torrent("Kept.Movie.2001", [FileSpec("/Kept.Movie.2001.mkv", 1000)])
    control.add_torrent("Gone.Movie.2002", [FileSpec("/Gone.Movie.2002.mkv", 1000)])
    control.add_torrent("Removed.Movie.2003", [FileSpec("/Removed.Movie.2003.mkv", 1000)])
    command, out = recorder(tmp_path)
    (tmp_path / "no-config.toml").write_text(f"[hooks]\non_change = {json.dumps(command)}\nsettle = 0.3\n")
    # A long sync interval: no sync between the delete and the assertions could explain them.
    with mountutil.mount(
        emulator_proc.api_url, emulator_proc.token, tmp_path, "--allow-delete", "--sync-interval", "600"
    ) as mounted:
        movies = mounted.path / "movies"
        for name in ("Kept.Movie.2001", "Gone.Movie.2002", "Removed.Movie.2003"):
            mountutil.wait_for((movies / name / f"{name}.mkv").exists, what=f"{name} in movies/")
        mountutil.wait_for(lambda: calls(out), what="first hook call")
        time.sleep(1.0)  # the start-up calls are done
        watched = {str(mounted.path / "torrents"), str(movies)}

        def hook_saw_both() -> bool:
            return watched <= {path for call in calls(out) for path in call["argv"]}

        for name, delete in (
            ("Gone.Movie.2002", lambda: (mounted.path / ".rdfs" / "delete").write_text(f"torrents/{name}\n")),
            ("Removed.Movie.2003", lambda: subprocess.run(["rm", "-r", str(mounted.path / "torrents" / name)], check=True)),
        ):  # fmt: skip
            out.unlink(missing_ok=True)
            delete()
            mountutil.wait_for(lambda: name not in os.listdir(movies), timeout=20, what=f"{name} gone from movies/")
            # Its view entries went with the torrent's rows; the views' refresh also recounts movies/.
            mountutil.wait_for(
                lambda: os.stat(movies).st_nlink == 2 + len(os.listdir(movies)), timeout=20, what="movies/ recounted"
            )
            mountutil.wait_for(hook_saw_both, timeout=20, what=f"hook call for {name}")
            assert name not in os.listdir(mounted.path / "torrents")
        assert os.listdir(movies) == ["Kept.Movie.2001"]
        status = json.loads((mounted.path / ".rdfs" / "status").read_text())
        assert status["update_hook"]["runs"] >= 3 and status["update_hook"]["failures"] == 0
        assert [a["outcome"] for a in status["recent_actions"]] == ["done", "done"]
