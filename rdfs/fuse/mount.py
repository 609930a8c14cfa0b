"""Mount lifecycle: one trio nursery runs the FUSE loop, the sync task and the readers.

``run(config, mountpoint)`` returns when the filesystem is unmounted: by SIGINT/SIGTERM/SIGQUIT
(clean unmount) or by ``fusermount3 -u`` / ``rdfs umount`` from outside. An error that ends the
run anyway leaves the mount stale (ENOTCONN) instead of unmounting it: a media server then sees
failing reads, not an empty library it would trash (borg and s3ql reason the same way).
Background tasks run under a :class:`Supervisor`: their failures are logged and the task
restarted, never the end of the mount.
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
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pyfuse3
import trio

from rdfs import logs
from rdfs.api.client import RDClient
from rdfs.config import Config
from rdfs.control.files import Control
from rdfs.credentials import auth_for, identity
from rdfs.data.links import LinkResolver
from rdfs.data.reader import ReaderPool
from rdfs.data.streaming import StreamingExtras
from rdfs.events import ChangeBus, StatusBoard
from rdfs.fuse.mountpoint import entry_at, is_fuse_mount
from rdfs.fuse.operations import KERNEL_DIR_CACHE, Operations
from rdfs.store.metadata import Accounts, Cache, CacheError
from rdfs.store.probecache import open_probe_cache
from rdfs.sync.archives import ArchiveIndexer
from rdfs.sync.hooks import HookError, UpdateHook, load_hook
from rdfs.sync.repair import Repairer, RepairPolicy
from rdfs.sync.syncer import Syncer, policy_options
from rdfs.sync.views import Views, ViewsError, load_views
from rdfs.tree.specs import Namespace

log = logging.getLogger(__name__)

# A pyfuse3 built with patches/pyfuse3-busy-poll.patch answers requests whose handler does not
# suspend in the task that read them, and takes busy_poll_ns (see Config.busy_poll_us).
BUSY_POLL = bool(getattr(pyfuse3, "BUSY_POLL_SUPPORT", False))


def _fuse_loop_args(config: Config) -> dict[str, int]:
    """pyfuse3.main's arguments. Busy polling only where this pyfuse3 has it and the process
    may run on two CPUs: on one, the poll would only keep the client from sending."""
    if not (config.busy_poll_us and BUSY_POLL and len(os.sched_getaffinity(0)) > 1):
        return {}
    return {"busy_poll_ns": config.busy_poll_us * 1000}


class MountError(Exception):
    """The mount cannot start; the message is one line for the user."""


def check_mountpoint(path: Path) -> None:
    """Refuse a missing, stale, busy, non-directory or non-empty mountpoint with a clear reason."""
    if is_fuse_mount(path):
        try:
            os.statvfs(path)  # always answered by the process behind the mount, never from a cache
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise MountError(
                    f"{path} is a stale mount (its process died); clear it with: rdfs umount {path}"
                ) from None
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
        errors.append(
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else command[0]
        )
    raise MountError(f"could not unmount {path}: {errors[-1]}")


def tune_kernel(mountpoint: Path, read_ahead_kb: int, max_background: int) -> bool:
    """Raise the mount's kernel readahead and background-request limits (root only).

    pyfuse3 cannot negotiate these itself; the defaults (128 KiB, 12) cap streaming under
    latency at ~12 MB/s (see shared perf notes). Failures are logged, not fatal. Returns whether
    the readahead setting is in force.
    """
    entry = entry_at(mountpoint)
    if entry is None:
        return False
    major, minor = entry.device.split(":")
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
        return (
            int(Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb").read_text()) == read_ahead_kb
        )
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
        log.info(
            "kernel readahead could not be raised (needs root); "
            "streaming under latency will be slower"
        )
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
    """Mount and serve until unmounted or stopped by SIGINT, SIGTERM or SIGQUIT."""
    mountpoint = mountpoint.resolve()
    check_mountpoint(mountpoint)
    with trio.CancelScope() as serving, _handle_signals(serving):
        await _connect_and_serve(config, mountpoint)


async def _connect_and_serve(config: Config, mountpoint: Path) -> None:
    auth = auth_for(config)
    async with RDClient(
        api_url=config.api_url,
        oauth_url=config.oauth_url,
        auth=auth,
        rate_limit_per_minute=config.rate_limit,
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
    # The composition root: every component gets the bus and the board it publishes on and
    # reports to in its constructor; subscriptions are made here, in the order they run.
    bus = ChangeBus(namespace.path)
    board = StatusBoard()
    async with trio.open_nursery() as nursery:
        syncer = Syncer(
            client, cache, bus=bus, board=board, interval=config.sync_interval,
            keep_dead=config.repair, **policy_options(config),
        )  # fmt: skip
        repair_policy = RepairPolicy(
            enabled=config.repair,
            per_hour=config.repair_per_hour,
            check_every=max(config.sync_interval, 30.0),
        )
        repairer = Repairer(client, cache, syncer, syncer.tree, bus, repair_policy, board=board)
        resolver = LinkResolver(
            client, cache, default_ttl=config.link_ttl, on_gone=repairer.link_gone
        )
        probe = open_probe_cache(config, cache)
        readers = ReaderPool(resolver, cache_bytes=config.chunk_cache_mb * 1024 * 1024, probe=probe)
        board.register("cache", cache.status)
        board.register(
            "reads", lambda: {"page_cache": config.page_cache, **readers.stats.as_dict()}
        )
        if probe is not None:
            board.register("probe_cache", probe.status)
        control = Control(
            namespace, syncer, client, cache, bus=bus, board=board,
            allow_delete=config.allow_delete, selection=config.selection,
        )  # fmt: skip
        ops = Operations(
            namespace,
            syncer,
            readers,
            control,
            allow_delete=config.allow_delete,
            extras=StreamingExtras(client, resolver),
            page_cache=config.page_cache,
            kernel_dir_cache=config.dir_cache and KERNEL_DIR_CACHE,
        )
        if config.dir_cache and not KERNEL_DIR_CACHE:
            log.info(
                "this pyfuse3 cannot let the kernel keep listings "
                "(scripts/bootstrap builds one that can: patches/pyfuse3-no-opendir.patch)"
            )
        if config.busy_poll_us and not BUSY_POLL:
            log.info(
                "this pyfuse3 cannot poll for the next request (busy_poll_us) "
                "(scripts/bootstrap builds one that can: patches/pyfuse3-busy-poll.patch)"
            )
        loop_args = _fuse_loop_args(config)
        board.register(
            "fuse",
            lambda: ops.status() | {"busy_poll_us": loop_args.get("busy_poll_ns", 0) // 1000},
        )
        bus.subscribe(ops.invalidate)
        views = Views(cache, views_config, bus)
        bus.subscribe(views.mark_dirty)
        hook = None
        if hook_config is not None:
            hook = UpdateHook(hook_config, mountpoint, board=board)
            bus.subscribe(hook.on_change)
        archives = ArchiveIndexer(
            cache, readers, resolver, syncer.tree, bus, interval=config.sync_interval
        )
        supervisor = Supervisor(board=board)
        _mount_session(ops, mountpoint, fuse_options(config))
        log.info("mounted %s (api %s)", mountpoint, config.api_url)
        run_state = _RUN.get(None)
        actions = run_state.actions if run_state is not None else {}
        actions[signal.SIGUSR1] = functools.partial(_report_resources, ops)
        actions[signal.SIGHUP] = functools.partial(_sync_and_reopen_log, syncer)
        stopped_cleanly = False
        try:
            if sys.stderr.isatty():
                nursery.start_soon(
                    supervisor.run, "progress", functools.partial(_show_progress, syncer)
                )
            # Every background task has the shape ``run(*, task_status)`` and runs supervised.
            # Those the FUSE requests need, or cheap at start, start now (views: nothing to do
            # while current, a rebuild spaces its steps); the others scan the library on their
            # first round (the fill queue, the archives to index) and start once the mount serves.
            serving: list[tuple[str, Callable[..., Awaitable[object]]]] = [
                ("cache retry", cache.retry_pending),
                ("reads", readers.run),  # hosts the read-ahead streams and probe-cache writes
                ("control", control.run),
                ("views", views.run),
            ]
            later: list[tuple[str, Callable[..., Awaitable[object]]]] = [
                ("sync", syncer.run),
                ("archives", archives.run),
                ("repair", repairer.run),
            ]
            if hook is not None:
                later.append(("update_hook", hook.run))
            for name, task in serving:
                await nursery.start(supervisor.run, name, task)
            nursery.start_soon(_start_when_serving, nursery, supervisor, ops.serving, later)
            if config.page_cache:  # direct I/O has no kernel readahead to tune
                tune = functools.partial(
                    _tune_after_init, mountpoint, config.read_ahead_kb, config.max_background
                )
                nursery.start_soon(supervisor.run, "tune", tune)
            await pyfuse3.main(**loop_args)
            # main() returns when the kernel unmounted us (fusermount -u): stop everything else.
            stopped_cleanly = True
            nursery.cancel_scope.cancel()
        except BaseException as exc:
            # Only a requested stop (a stop signal) is a clean one. Anything else ending the loop,
            # a crashed task included (its nursery cancels everything), leaves the mount stale.
            stopped_cleanly = (
                run_state.stop.cancel_called if run_state is not None else _only_cancelled(exc)
            )
            raise
        finally:
            actions.pop(signal.SIGUSR1, None)
            actions.pop(signal.SIGHUP, None)
            try:
                with trio.CancelScope(shield=True):
                    await readers.aclose()
            finally:
                pyfuse3.close(unmount=stopped_cleanly)
                if probe is not None:
                    probe.close()
                if stopped_cleanly:
                    log.info("unmounted %s", mountpoint)


# After the kernel's INIT, the first requests (a stat, a listing of the top) are answered before
# the background tasks' first rounds, which block the loop for a while on a large library.
START_GRACE = 0.3


async def _start_when_serving(
    nursery: trio.Nursery,
    supervisor: Supervisor,
    serving: trio.Event,
    tasks: list[tuple[str, Callable[..., Awaitable[object]]]],
) -> None:
    """Start ``tasks`` (supervised) once the mount serves: a warm start shows the whole cached
    tree first; none of them is needed to answer from the cache, and the sync's first API call
    comes an interval later on a warm cache anyway."""
    await serving.wait()
    await trio.sleep(START_GRACE)
    log.debug("mount serving: starting %s", ", ".join(name for name, _ in tasks))
    for name, task in tasks:
        await nursery.start(supervisor.run, name, task)


def _mount_session(ops: Operations, mountpoint: Path, options: set[str]) -> None:
    """``pyfuse3.init``, with a failure reported as one line that starts with libfuse's own
    reason (it writes the kernel's or fusermount's answer to stderr, then raises a bare
    RuntimeError "fuse_session_mount failed")."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        failure: BaseException | None = None
        try:
            pyfuse3.init(ops, str(mountpoint), options)
        except (RuntimeError, OSError) as exc:
            failure = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = [
            line.strip()
            for line in captured.read().decode(errors="replace").splitlines()
            if line.strip()
        ]
    if failure is None:
        for line in said:
            log.warning("libfuse: %s", line)
        return
    reason = "; ".join(said)
    detail = f"{reason} ({failure})" if reason else str(failure) or type(failure).__name__
    raise MountError(f"cannot mount {mountpoint}: {detail}")


@dataclass
class TaskRecord:
    """What status shows of one supervised task."""

    restarts: int = 0
    last_error: str | None = None
    last_failure: float | None = None


# Delays between restarts of a failing background task: doubling from the first to the second.
RESTART_DELAYS = (1.0, 300.0)
HEALTHY_AFTER = 600.0  # a task that ran this long before failing starts again from the first delay


class _StartedOnce:
    """A task status that reaches the parent's ``nursery.start`` once, whatever the restarts."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._status.started(value)


@dataclass
class Supervisor:
    """Runs the mount's background tasks (sync, views, hook, repair, archives ...): an unexpected
    exception in one is logged, with its traceback the first time it is seen, and that task
    restarted after a growing delay. Neither the FUSE loop nor the other tasks are touched. A task
    that returns is done. Its status section, ``background_tasks``, lists the tasks that failed."""

    board: InitVar[StatusBoard | None] = None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)

    def __post_init__(self, board: StatusBoard | None) -> None:
        if board is not None:
            board.register("background_tasks", self.status)

    async def run(
        self,
        name: str,
        task: Callable[..., Awaitable[object]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``task`` under supervision; started with ``nursery.start``, ``task`` gets a task
        status too, and a failure before it is started still lets the mount go on."""
        record = self.tasks.setdefault(name, TaskRecord())
        startable = task_status is not trio.TASK_STATUS_IGNORED
        status = _StartedOnce(task_status)
        first, maximum = RESTART_DELAYS
        delay = first
        seen: set[str] = set()
        while True:
            began = trio.current_time()
            try:
                if startable:
                    await task(task_status=status)
                else:
                    await task()
                return
            except Exception as exc:
                if trio.current_time() - began >= HEALTHY_AFTER:
                    delay = first
                described = _describe(exc)
                record.restarts += 1
                record.last_error = described
                record.last_failure = time.time()
                if described in seen:
                    log.warning(
                        "background task %s failed again: %s; restarting in %.0fs",
                        name,
                        described,
                        delay,
                    )
                else:
                    seen.add(described)
                    log.error(
                        "background task %s failed: %s; restarting in %.0fs",
                        name,
                        described,
                        delay,
                        exc_info=exc,
                    )
            if startable:
                status.started()  # serve the cached tree while the task waits to start again
            await trio.sleep(delay)
            delay = min(delay * 2, maximum)

    def status(self) -> dict[str, Any]:
        return {
            name: dataclasses.asdict(record)
            for name, record in self.tasks.items()
            if record.restarts
        }


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _describe(exc: BaseException) -> str:
    """One line naming an exception; a group of one is named by its member."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = logs.redact(str(exc)).splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def _show_progress(syncer: Syncer) -> None:
    """On a terminal, a long first sync shows how many torrents are known and have their files."""
    shown = False
    while True:
        status = syncer.status()
        done = status["last_sync"] is not None and status["files_pending"] == 0
        if shown or not done:
            known, with_files = status["torrents_known"], status["torrents_with_files"]
            line = f"rdfs: {known} torrents known, {with_files} with files"
            sys.stderr.write("\r" + line + ("\n" if done else ""))
            sys.stderr.flush()
            shown = True
        if done:
            return
        await trio.sleep(1)


# What each signal a user or an init system may send does (the README's signal table).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
# Catchable signals whose default action would end the process (and leave a stale mount):
# logged and ignored. SIGHUP and SIGUSR1 have actions while serving, and are ignored otherwise.
IGNORED_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGUSR2",
        "SIGALRM",
        "SIGPIPE",
        "SIGVTALRM",
        "SIGPROF",
        "SIGIO",
        "SIGPWR",
        "SIGSTKFLT",
        "SIGXCPU",
        "SIGXFSZ",
    )
    if hasattr(signal, name)
) + tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
HANDLED_SIGNALS = STOP_SIGNALS + (signal.SIGHUP, signal.SIGUSR1) + IGNORED_SIGNALS
IGNORED_LOG_EVERY = (
    60.0  # an ignored signal arriving in a burst is logged once per this many seconds
)


@dataclass
class _RunState:
    """What ``run`` shares with ``_serve``: the scope a stop signal cancels, and the actions of
    SIGHUP / SIGUSR1 while a mount is served (registered by ``_serve``, run in the trio loop)."""

    stop: trio.CancelScope
    actions: dict[int, Callable[[], None]] = field(default_factory=dict)


_RUN: ContextVar[_RunState] = ContextVar("rdfs_run")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


@contextlib.contextmanager
def _handle_signals(scope: trio.CancelScope) -> Iterator[None]:
    """One handler for the whole run, for every signal a user or an init system may send.

    SIGINT, SIGTERM and SIGQUIT cancel ``scope``: a clean unmount. One arriving while rdfs
    unmounts is logged and otherwise ignored: Ctrl-C reaches every process of the terminal's
    group, and users press it twice. SIGHUP syncs now and reopens the log file; SIGUSR1 logs a
    resource report; the others are logged and ignored, so none of them leaves a stale mount.
    (``trio.open_signal_receiver`` re-raises the signals still pending when it closes: a second
    Ctrl-C would interrupt the cleanup with KeyboardInterrupt, a late SIGHUP would kill us.)"""
    token = trio.lowlevel.current_trio_token()
    state = _RunState(scope)
    actions = state.actions
    context = _RUN.set(state)
    last_logged: dict[int, float] = {}
    suppressed: collections.Counter[int] = collections.Counter()

    def on_signal(signum: int) -> None:  # in the trio loop
        name = _signal_name(signum)
        if signum in STOP_SIGNALS:
            if scope.cancel_called:
                log.info("received %s again: already unmounting", name)
            else:
                log.info("received %s, unmounting", name)
                scope.cancel()
        elif signum in actions:
            actions[signum]()
        elif signum == signal.SIGHUP:
            reopened = logs.reopen()
            log.info(
                "received SIGHUP%s (not serving: no sync)",
                ", log file reopened" if reopened else "",
            )
        else:
            now = time.monotonic()
            if now - last_logged.get(signum, -IGNORED_LOG_EVERY) < IGNORED_LOG_EVERY:
                suppressed[signum] += 1
                return
            last_logged[signum] = now
            more = (
                f" ({suppressed.pop(signum)} more since the last report)"
                if suppressed[signum]
                else ""
            )
            log.info(
                "received %s: ignored, the mount stays (SIGINT, SIGTERM or SIGQUIT unmount)%s",
                name,
                more,
            )

    def handler(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(on_signal, signum)  # signal-safe; the rest runs in the loop

    previous = {sig: signal.signal(sig, handler) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _RUN.reset(context)


def _sync_and_reopen_log(syncer: Syncer) -> None:
    """SIGHUP: the log file is reopened by its path (logrotate) and a complete sync starts now."""
    reopened = logs.reopen()
    log.info("received SIGHUP: syncing now%s", ", log file reopened" if reopened else "")
    syncer.trigger()


def task_counts() -> collections.Counter[str]:
    """The live trio tasks of this run, by name."""
    counts: collections.Counter[str] = collections.Counter()
    root = trio.lowlevel.current_root_task()
    pending = [root] if root is not None else []
    while pending:
        task = pending.pop()
        counts[task.name] += 1
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return counts


def _report_resources(ops: Operations) -> None:
    """SIGUSR1 logs the live resources as one JSON line (leak hunting, ``scripts/soak``)."""
    tasks = task_counts()
    report = {"tasks": sum(tasks.values()), "open_files": ops.open_files, "by_task": dict(tasks)}
    log.info("resources: %s", json.dumps(report, sort_keys=True))
