"""Mount lifecycle: one trio nursery runs the FUSE loop, the sync task and the readers.

``run(config, mountpoint)`` returns when the filesystem is unmounted: by SIGINT/SIGTERM (clean
unmount), by ``fusermount3 -u`` / ``rdfs umount`` from outside, or by an error.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pyfuse3
import trio

from rdfs.api.client import RDClient
from rdfs.archives import ArchiveIndexer
from rdfs.cache import Accounts, Cache, CacheError
from rdfs.config import Config
from rdfs.control import Control
from rdfs.credentials import auth_for, identity
from rdfs.fs import Operations
from rdfs.hooks import HookError, UpdateHook, load_hook
from rdfs.links import LinkResolver
from rdfs.probecache import open_probe_cache
from rdfs.reader import ReaderPool
from rdfs.repair import Repairer, RepairPolicy
from rdfs.streaming import StreamingExtras
from rdfs.sync import Syncer, TreeChange
from rdfs.tree import Namespace
from rdfs.views import Views, ViewsError, load_views

log = logging.getLogger(__name__)


class MountError(Exception):
    """The mount cannot start; the message is one line for the user."""


def check_mountpoint(path: Path) -> None:
    """Refuse a missing, stale, busy, non-directory or non-empty mountpoint with a clear reason."""
    if is_fuse_mount(path):
        try:
            os.statvfs(path)  # always answered by the process behind the mount, never from a cache
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise MountError(f"{path} is a stale mount (its process died); clear it with: rdfs umount {path}") from None
        raise MountError(f"{path} is already mounted; unmount it first with: rdfs umount {path}")
    try:
        os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise MountError(f"cannot use {path} as mountpoint: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if any(os.scandir(path)):
        raise MountError(f"mountpoint {path} is not empty")


def _mountinfo_entry(path: Path) -> list[str] | None:
    """The /proc/self/mountinfo fields of the mount at ``path``.

    Only the parent directory is resolved: touching the mountpoint itself would send a request to
    the filesystem, which deadlocks before the FUSE loop runs and hangs on a stale mount.
    """
    absolute = os.path.abspath(path)
    target = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    found = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        mount_point = fields[4].encode().decode("unicode_escape")
        if mount_point == target:
            found = fields  # the last one wins: it is on top
    return found


def is_fuse_mount(path: Path) -> bool:
    fields = _mountinfo_entry(path)
    if fields is None:
        return False
    fstype = fields[fields.index("-") + 1]
    return fstype.startswith("fuse")


def unmount(path: Path) -> None:
    """Unmount ``path``, also when the rdfs process behind it died (a stale mount)."""
    if not is_fuse_mount(path):
        raise MountError(f"{path} is not a FUSE mount")
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = []
    if fusermount:
        commands += [[fusermount, "-u", str(path)], [fusermount, "-u", "-z", str(path)]]
    commands.append(["umount", "-l", str(path)])
    errors = []
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 and not is_fuse_mount(path):
            return
        errors.append(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else command[0])
    raise MountError(f"could not unmount {path}: {errors[-1]}")


def tune_kernel(mountpoint: Path, read_ahead_kb: int, max_background: int) -> bool:
    """Raise the mount's kernel readahead and background-request limits (root only).

    pyfuse3 cannot negotiate these itself; the defaults (128 KiB, 12) cap streaming under
    latency at ~12 MB/s (see shared perf notes). Failures are logged, not fatal. Returns whether
    the readahead setting is in force.
    """
    fields = _mountinfo_entry(mountpoint)
    if fields is None:
        return False
    major, minor = fields[2].split(":")
    settings = {Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"): read_ahead_kb}
    connections = Path("/sys/fs/fuse/connections")
    if not (connections / minor).exists() and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], capture_output=True)
    settings[connections / minor / "max_background"] = max_background
    settings[connections / minor / "congestion_threshold"] = max(1, max_background * 3 // 4)
    for path, value in settings.items():
        try:
            path.write_text(str(value))
        except OSError as exc:
            log.info("could not set %s=%s: %s", path, value, exc.strerror)
    try:
        return int(Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb").read_text()) == read_ahead_kb
    except (OSError, ValueError):
        return False


async def _tune_after_init(mountpoint: Path, read_ahead_kb: int, max_background: int) -> None:
    """The kernel applies the FUSE INIT reply's limits when the loop answers INIT, overwriting
    earlier settings. This task starts with the loop: tune until the setting holds, then once
    more after start-up settled, in case INIT was answered after the first write."""
    for _ in range(10):
        await trio.sleep(0.1)
        if tune_kernel(mountpoint, read_ahead_kb, max_background):
            break
    else:
        log.info("kernel readahead could not be raised (needs root); streaming under latency will be slower")
        return
    await trio.sleep(2.0)
    if tune_kernel(mountpoint, read_ahead_kb, max_background):
        log.debug("kernel readahead %d KiB, max_background %d", read_ahead_kb, max_background)


def fuse_options(config: Config) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=rdfs", "subtype=rdfs", "noatime"}
    if config.allow_other:
        options.add("allow_other")
    return options


async def run(config: Config, mountpoint: Path) -> None:
    """Mount and serve until unmounted, SIGINT or SIGTERM."""
    mountpoint = mountpoint.resolve()
    check_mountpoint(mountpoint)
    with trio.CancelScope() as serving, _stop_on_signals(serving):
        await _connect_and_serve(config, mountpoint)


async def _connect_and_serve(config: Config, mountpoint: Path) -> None:
    auth = auth_for(config)
    async with RDClient(
        api_url=config.api_url, oauth_url=config.oauth_url, auth=auth, rate_limit_per_minute=config.rate_limit
    ) as client:
        # A cache is shown only to the account it belongs to: a known credential names it without
        # an API call (a warm start); an unknown one asks /user first.
        accounts = Accounts(config.cache_dir)
        credential = await identity(auth)
        user_id = accounts.user_for(credential)
        if user_id is None:
            user_id = str((await client.user()).id)
        try:
            cache = Cache.open(config.cache_dir, user_id)
        except CacheError as exc:
            raise MountError(str(exc)) from None
        accounts.remember(credential, user_id)
        try:
            await _serve(config, mountpoint, client, cache)
        finally:
            cache.close()


async def _serve(config: Config, mountpoint: Path, client: RDClient, cache: Cache) -> None:
    namespace = Namespace(cache)
    try:
        views_config = load_views(config.config_path)
        hook_config = load_hook(config.config_path)
    except (ViewsError, HookError) as exc:
        raise MountError(str(exc)) from None
    async with trio.open_nursery() as nursery:
        resolver = LinkResolver(client, cache, default_ttl=config.link_ttl)
        probe = open_probe_cache(config, cache)
        readers = ReaderPool(
            resolver, cache_bytes=config.chunk_cache_mb * 1024 * 1024, nursery=nursery, probe=probe
        )
        syncer = Syncer(client, cache, interval=config.sync_interval, max_delete_fraction=config.max_delete_fraction)
        control = Control(
            namespace, syncer, client, cache, allow_delete=config.allow_delete, selection=config.selection,
            invalidate_entry=lambda parent, name: ops.invalidate(TreeChange([(parent, name)], [], [])),
        )  # fmt: skip
        ops = Operations(
            namespace,
            syncer,
            readers,
            control,
            allow_delete=config.allow_delete,
            extras=StreamingExtras(client, resolver),
            page_cache=config.page_cache,
        )
        syncer.on_change = ops.invalidate
        views = Views(cache, views_config, syncer.publish)
        syncer.listeners.append(views.mark_dirty)
        hook = UpdateHook(hook_config, mountpoint) if hook_config is not None else None
        if hook is not None:
            syncer.listeners.append(hook.on_change)
            syncer.reporters["update_hook"] = lambda: dataclasses.asdict(hook.status)
        repairer = Repairer(client, cache, syncer, RepairPolicy(enabled=config.repair, per_hour=config.repair_per_hour))
        resolver.on_gone = repairer.link_gone
        syncer.keep_dead = config.repair
        syncer.reporters["repair"] = repairer.status
        syncer.reporters["cache"] = cache.status
        syncer.reporters["reads"] = lambda: {"page_cache": config.page_cache, **readers.stats.as_dict()}
        if probe is not None:
            syncer.reporters["probe_cache"] = probe.status
        archives = ArchiveIndexer(cache, readers, resolver, syncer.refresh_files, interval=config.sync_interval)
        pyfuse3.init(ops, str(mountpoint), fuse_options(config))
        log.info("mounted %s (api %s)", mountpoint, config.api_url)
        try:
            nursery.start_soon(_report_on_signal, ops)
            if sys.stderr.isatty():
                nursery.start_soon(_show_progress, syncer)
            nursery.start_soon(cache.retry_pending)
            await nursery.start(syncer.run)
            await nursery.start(control.run)
            nursery.start_soon(archives.run)
            nursery.start_soon(views.run)
            if hook is not None:
                nursery.start_soon(hook.run)
            nursery.start_soon(functools.partial(repairer.run, interval=max(config.sync_interval, 30.0)))
            if config.page_cache:  # direct I/O has no kernel readahead to tune
                nursery.start_soon(_tune_after_init, mountpoint, config.read_ahead_kb, config.max_background)
            await pyfuse3.main()
            # main() returns when the kernel unmounted us (fusermount -u): stop everything else.
            nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await readers.aclose()
            pyfuse3.close(unmount=True)
            if probe is not None:
                probe.close()
            log.info("unmounted %s", mountpoint)


async def _show_progress(syncer: Syncer) -> None:
    """On a terminal, a long first sync shows how many torrents are known and have their files."""
    shown = False
    while True:
        status = syncer.status()
        done = status["last_sync"] is not None and status["files_pending"] == 0
        if shown or not done:
            line = f"rdfs: {status['torrents_known']} torrents known, {status['torrents_with_files']} with files"
            sys.stderr.write("\r" + line + ("\n" if done else ""))
            sys.stderr.flush()
            shown = True
        if done:
            return
        await trio.sleep(1)


@contextlib.contextmanager
def _stop_on_signals(scope: trio.CancelScope) -> Iterator[None]:
    """SIGINT and SIGTERM cancel ``scope``: a clean unmount. One arriving while rdfs unmounts is
    logged and otherwise ignored: Ctrl-C reaches every process of the terminal's group, and users
    press it twice. (``trio.open_signal_receiver`` re-raises the signals still pending when it
    closes: a second Ctrl-C would interrupt the cleanup with KeyboardInterrupt.)"""
    token = trio.lowlevel.current_trio_token()

    def on_signal(signum: int) -> None:  # in the trio loop
        name = signal.Signals(signum).name
        if scope.cancel_called:
            log.info("received %s again: already unmounting", name)
        else:
            log.info("received %s, unmounting", name)
            scope.cancel()

    def handler(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(on_signal, signum)  # signal-safe; the rest runs in the loop

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def task_counts() -> collections.Counter[str]:
    """The live trio tasks of this run, by name."""
    counts: collections.Counter[str] = collections.Counter()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        counts[task.name] += 1
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return counts


async def _report_on_signal(ops: Operations) -> None:
    """SIGUSR1 logs the live resources as one JSON line (leak hunting, ``scripts/soak``)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            tasks = task_counts()
            report = {"tasks": sum(tasks.values()), "open_files": ops.open_files, "by_task": dict(tasks)}
            log.info("resources: %s", json.dumps(report, sort_keys=True))
