"""Run ``rdfs mount --foreground`` as a child process against an emulator, and clean up after."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rdfs.fuse.mount import is_fuse_mount

MOUNT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Mounted:
    path: Path
    cache_dir: Path
    log_file: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def force_unmount(path: Path) -> None:
    if is_fuse_mount(path):
        fusermount = shutil.which("fusermount3") or "fusermount"
        subprocess.run([fusermount, "-u", "-z", str(path)], capture_output=True)


TRACEBACK = "Traceback (most recent call last):"
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # how rdfs.logs starts each record


def unexpected_tracebacks(log: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """The tracebacks in a mount's log whose text matches none of the ``allowed`` regexes.

    A traceback in the log means a request or a task failed in a way nobody planned for (the
    FUSE boundary logs those at ERROR): a mount test fails on one unless it provokes it on purpose.
    Each traceback is taken with the log line before it (its record's message) up to the next
    line that starts a new log record."""
    found = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if TRACEBACK not in line:
            continue
        end = index + 1
        while end < len(lines) and end - index < 400 and not _RECORD.match(lines[end]):
            end += 1
        block = "\n".join(lines[max(0, index - 1) : end])
        if not any(re.search(pattern, block) for pattern in allowed):
            found.append(block)
    return found


def check_log(mounted: Mounted, allowed: tuple[str, ...] = ()) -> None:
    """Fail when the mount's log holds an unexpected traceback (see :func:`unexpected_tracebacks`)."""
    found = unexpected_tracebacks(mounted.log(), allowed)
    if found:
        raise AssertionError(f"the mount's log holds {len(found)} unexpected traceback(s):\n" + "\n---\n".join(found))


def stop(mounted: Mounted, sig: int = signal.SIGTERM) -> int | None:
    """Stop the mount process (SIGTERM: clean unmount), then make sure nothing is left mounted."""
    proc = mounted.process
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    force_unmount(mounted.path)
    return proc.returncode


@contextlib.contextmanager
def mount(
    api_url: str,
    token: str,
    base: Path,
    *extra: str,
    cache_dir: Path | None = None,
    name: str = "mnt",
    env: dict[str, str] | None = None,
    allowed_tracebacks: tuple[str, ...] = (),
    popen: dict[str, Any] | None = None,
) -> Iterator[Mounted]:
    """Mount at ``base/name``; unmount and stop the process on exit, also when the test failed.

    A test that passed fails when the log holds a traceback none of ``allowed_tracebacks`` (regexes)
    matches. ``popen``: more arguments for ``subprocess.Popen`` (``user=``/``group=`` for a mount
    made by another user)."""
    mountpoint = base / name
    mountpoint.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or base / "cache"
    log_file = base / f"{name}.log"
    argv = [
        sys.executable, "-m", "rdfs", "mount", "--foreground",
        "--api-url", api_url, "--token", token, "--cache-dir", str(cache_dir),
        "--sync-interval", "1", *extra, str(mountpoint),
    ]  # fmt: skip
    child_env = dict(os.environ, RDFS_CONFIG=str(base / "no-config.toml"), **(env or {}))
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env, **(popen or {})
        )
    mounted = Mounted(mountpoint, cache_dir, log_file, process)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_fuse_mount(mountpoint):
            if process.poll() is not None:
                raise AssertionError(f"rdfs mount exited with {process.returncode}:\n{mounted.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mount did not appear:\n{mounted.log()}")
            time.sleep(0.05)
        yield mounted
    except BaseException:
        stop(mounted)
        raise
    stop(mounted)
    check_log(mounted, allowed_tracebacks)
