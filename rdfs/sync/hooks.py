"""The library update hook: after a sync changed the tree, run a user command with what changed.

Media servers can rescan a single folder (Plex: ``/library/sections/N/refresh?path=…``,
Jellyfin/Emby: ``POST /Library/Media/Updated``), which is far cheaper than a library scan. The
hook reports the *directories whose listing changed* (an entry appeared, vanished or was
renamed in them), as absolute paths under the mountpoint, collected over ``settle`` seconds so a
burst of sync steps makes one call. The command gets them as arguments and as JSON on stdin::

    {"mountpoint": "/mnt/rd", "paths": ["/mnt/rd/movies", "/mnt/rd/movies/Film (2020)"],
     "relative": ["movies", "movies/Film (2020)"]}

Configured in the ``[hooks]`` table of config.toml::

    [hooks]
    on_change = ["/usr/local/bin/rdfs-jellyfin-scan"]   # argv (or one string, split like a shell)
    # top-level directories to report (default: all but downloads, .rdfs)
    include = ["movies", "shows"]
    settle = 2.0                    # seconds to gather changes before a call
    timeout = 300.0                 # a call running longer is killed

Calls never overlap; changes arriving during a call make the next one. A failing command is
logged (its exit status and the end of its stderr) and does not stop later calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from rdfs.config import read_table
from rdfs.events import StatusBoard, TreeChange

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE = ("downloads", ".rdfs")


class HookError(Exception):
    """The ``[hooks]`` configuration is invalid; the message is one line for the user."""


@dataclass(frozen=True)
class HookConfig:
    command: tuple[str, ...]
    include: tuple[str, ...] | None = None  # None: every top-level directory but DEFAULT_EXCLUDE
    settle: float = 2.0
    timeout: float = 300.0

    def reports(self, relative: str) -> bool:
        if not relative:
            return False  # the root changes only with the views configured: nothing to scan
        top = relative.split("/", 1)[0]
        if self.include is None:
            return top not in DEFAULT_EXCLUDE
        return top in self.include


def parse_hook(table: dict[str, Any]) -> HookConfig | None:
    command = table.get("on_change")
    if not command:
        return None
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    include = table.get("include")
    try:
        settle = float(table.get("settle", 2.0))
        timeout = float(table.get("timeout", 300.0))
    except (TypeError, ValueError):
        raise HookError("hooks: settle and timeout must be numbers") from None
    if settle < 0 or timeout <= 0:
        raise HookError("hooks: settle must be >= 0 and timeout > 0")
    return HookConfig(
        tuple(argv), None if include is None else tuple(str(i) for i in include), settle, timeout
    )


def load_hook(path: Path | None) -> HookConfig | None:
    """The hook configured in ``path`` (config.toml), None when there is none."""
    table = read_table(path, "hooks")
    return None if table is None else parse_hook(table)


@dataclass
class HookStatus:
    runs: int = 0
    failures: int = 0
    last_run: float | None = None
    last_exit: int | None = None
    last_paths: list[str] = field(default_factory=list)


class UpdateHook:
    """``on_change`` is a subscriber of the change bus; ``run`` calls the command (in the mount's
    nursery). Its status section is ``update_hook``."""

    def __init__(
        self, config: HookConfig, mountpoint: Path, *, board: StatusBoard | None = None
    ) -> None:
        self.config = config
        self.mountpoint = Path(mountpoint)
        self.status = HookStatus()
        self._pending: set[str] = set()
        self._wake = trio.Event()
        if board is not None:
            board.register("update_hook", self._report)

    def _report(self) -> dict[str, Any]:
        return dataclasses.asdict(self.status)

    def on_change(self, change: TreeChange) -> None:
        paths = {p for p in change.paths if self.config.reports(p)}
        if paths:
            self._pending |= paths
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the command for each settled batch of changed paths, until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            await trio.sleep(self.config.settle)
            self._wake = trio.Event()
            batch, self._pending = sorted(self._pending), set()
            await self.call(batch)

    async def call(self, relative: list[str]) -> int | None:
        """Run the command once for ``relative`` paths; its exit status (None if killed)."""
        absolute = [str(self.mountpoint / p) for p in relative]
        payload = json.dumps(
            {"mountpoint": str(self.mountpoint), "paths": absolute, "relative": relative}
        )
        self.status.runs += 1
        self.status.last_run = time.time()
        self.status.last_paths = absolute
        returncode: int | None = None
        with trio.move_on_after(self.config.timeout):
            try:
                result = await trio.run_process(
                    [*self.config.command, *absolute],
                    stdin=payload.encode(),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:
                log.error("update hook %s cannot run: %s", self.config.command[0], exc)
                self.status.failures += 1
                self.status.last_exit = None
                return None
            returncode = result.returncode
            if returncode != 0:
                tail = result.stderr.decode(errors="replace").strip()[-500:]
                log.warning(
                    "update hook exited with %d for %d paths: %s", returncode, len(absolute), tail
                )
            else:
                log.info("update hook ran for %d changed directories", len(absolute))
        if returncode is None:
            log.warning("update hook killed after %.0f s", self.config.timeout)
        if returncode != 0:
            self.status.failures += 1
        self.status.last_exit = returncode
        return returncode
