"""The ``rdfs`` command line: one-line errors, ``--help`` on every command."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import trio

from rdfs import __version__, logs
from rdfs import config as configuration
from rdfs.api.auth import (
    Credentials,
    OAuthSession,
    StaticToken,
    TokenProvider,
    poll_device_login,
)
from rdfs.api.client import RDClient
from rdfs.api.errors import RDError, UnknownResource
from rdfs.api.models import DeviceCode, Torrent, User
from rdfs.control.actions import (
    SELECTION_POLICIES,
    ActionError,
    Added,
    InvalidInput,
    Magnet,
    Target,
    TorrentFile,
    add_items,
    delete_targets,
    looks_like_id,
    parse_magnet,
    parse_torrent_file,
)
from rdfs.fuse.mountpoint import is_fuse_mount, rdfs_mounts
from rdfs.store.metadata import CONTROL_DIR, DOWNLOADS_DIR, TORRENTS_DIR, Cache

log = logging.getLogger("rdfs")

T = TypeVar("T")

MOUNT_WAIT = 60.0  # seconds the daemonising parent waits for the child's mount to appear


class UsageError(Exception):
    """A user error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """Argument errors are one line too (argparse prints the whole usage first), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"rdfs: error: {message} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    """A duration flag: a finite number of seconds, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite, non-negative number of seconds, got {text!r}"
        )
    return value


def _path(text: str) -> Path:
    """A path flag; an empty one would silently mean the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a path with a NUL byte")
    return Path(text)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="RD REST base URL (env RDFS_API_URL)")
    parser.add_argument("--oauth-url", help="RD OAuth base URL (env RDFS_OAUTH_URL)")
    parser.add_argument(
        "--token",
        help="private API token (safer: env RD_API_TOKEN or `rdfs login`; "
        "command lines are visible to all users)",
    )
    parser.add_argument(
        "--config", type=_path, help="config file (default $XDG_CONFIG_HOME/rdfs/config.toml)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rdfs", description="Mount a Real-Debrid account as a filesystem.")
    parser.add_argument("--version", action="version", version=f"rdfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    mount = commands.add_parser(
        "mount", help="mount the account", description="Mount the account at MOUNTPOINT."
    )
    mount.add_argument("mountpoint", type=_path)
    _add_connection_flags(mount)
    mount.add_argument(
        "--cache-dir", type=_path, help="metadata cache (default $XDG_CACHE_HOME/rdfs)"
    )
    mount.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground (tests, systemd)"
    )
    mount.add_argument(
        "--allow-other", action="store_true", default=None, help="let other users see the mount"
    )
    mount.add_argument(
        "--allow-delete",
        action="store_true",
        default=None,
        help="let rm -r delete torrents upstream",
    )
    mount.add_argument("--sync-interval", type=float, help="seconds between syncs (default 15)")
    mount.add_argument("--rate-limit", type=int, help="API requests per minute (default 250)")
    mount.add_argument(
        "--chunk-cache-mb", type=int, help="memory for the shared read cache (default 128)"
    )
    mount.add_argument(
        "--page-cache",
        action="store_true",
        default=None,
        help="read through the kernel page cache (for mmap MAP_SHARED)",
    )
    mount.add_argument(
        "--downloads",
        choices=("own", "all"),
        help="downloads/ shows your own hoster downloads (own, default) "
        "or also the unrestricts of torrent files (all)",
    )
    mount.add_argument(
        "--log-file", type=_path, help="log file (default: stderr in the foreground)"
    )
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser("umount", help="unmount (also clears a stale mount)")
    umount.add_argument("mountpoint", type=_path)
    umount.set_defaults(func=cmd_umount)

    _add_management_commands(commands)

    emulator = commands.add_parser(
        "emulator", help="run the built-in Real-Debrid emulator", add_help=False, prefix_chars="\0"
    )
    emulator.add_argument("args", nargs=argparse.REMAINDER)
    emulator.set_defaults(func=cmd_emulator)
    return parser


def _config(args: argparse.Namespace) -> configuration.Config:
    flags = {
        name: getattr(args, name, None)
        for name in (
            "api_url",
            "oauth_url",
            "token",
            "cache_dir",
            "sync_interval",
            "allow_other",
            "allow_delete",
            "rate_limit",
            "chunk_cache_mb",
            "page_cache",
            "downloads",
            "log_file",
        )
    }
    config = configuration.load(flags, config_file=getattr(args, "config", None))
    logs.register_secret(config.token)
    return config


# Exit statuses (README "Signals, stopping and restarts").
EXIT_OK = 0
EXIT_USER_ERROR = 1  # a bad setting, a refused mountpoint, RD refusing: one line on stderr
EXIT_USAGE = 2  # a malformed command line (argparse): one line on stderr
EXIT_INTERNAL_ERROR = 3  # an unexpected error: one line; a mount is left stale, not emptied
EXIT_INTERRUPTED = 130


def cmd_mount(args: argparse.Namespace) -> int:
    from rdfs.fuse import mount

    config = _config(args)
    mountpoint = args.mountpoint.expanduser().resolve()
    mount.check_mountpoint(mountpoint)
    log_file = config.log_file or (None if args.foreground else config.cache_dir / "rdfs.log")
    _check_outside(mountpoint, ("cache_dir", config.cache_dir), ("log_file", log_file))
    _check_writable_dir(config.cache_dir, "cache dir")
    if log_file is not None:
        _check_writable_dir(log_file.parent, "log file directory")
    if not args.foreground:
        return _daemonize(args, config, mountpoint)
    try:
        logs.setup("DEBUG" if args.verbose else config.log_level, config.log_file)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {config.log_file}: {exc.strerror}") from None
    try:
        trio.run(mount.run, config, mountpoint)
    except Exception as exc:
        if isinstance(_single(exc), _user_errors()):
            raise _single(exc) from None
        # One line, never a traceback on stderr (it is at debug level in the log). The mount is
        # left stale on purpose: ENOTCONN fails loudly where an empty directory empties libraries.
        what = _describe_unexpected(exc)
        if is_fuse_mount(mountpoint):
            log.critical(
                "stopped by an unexpected error: %s; %s left stale: clear it with: rdfs umount %s",
                what,
                mountpoint,
                mountpoint,
            )
        else:
            log.critical("stopped by an unexpected error: %s", what)
        log.debug("the unexpected error", exc_info=exc)
        return EXIT_INTERNAL_ERROR
    return EXIT_OK


def _describe_unexpected(exc: BaseException) -> str:
    leaf = _single(exc)
    text = logs.redact(str(leaf)).strip().splitlines()
    return f"{type(leaf).__name__}: {text[0]}" if text else type(leaf).__name__


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups of one (trio nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _check_outside(mountpoint: Path, *paths: tuple[str, Path | None]) -> None:
    """Refuse a cache dir or log file inside the mountpoint: hidden by the mount, and the next
    mount finds the mountpoint not empty (or rdfs writes its log into itself)."""
    for name, path in paths:
        if path is None:
            continue
        resolved = Path(os.path.realpath(path))
        if resolved == mountpoint or mountpoint in resolved.parents:
            raise UsageError(
                f"{name} {path} is inside the mountpoint {mountpoint}; choose a path outside it"
            )


def _check_writable_dir(path: Path, what: str) -> None:
    """Prove a file can be created in ``path``, or in the nearest existing directory above it
    when it does not exist yet (a read-only filesystem stops root too). Nothing is left behind:
    a refused mount creates no directory."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = path if existing == path else existing
        raise UsageError(f"cannot use {path} as the {what}: {where} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        verb = "write in" if existing == path else "create"
        raise UsageError(f"cannot {verb} the {what} {path}: {exc.strerror}") from None


def _daemonize(args: argparse.Namespace, config: configuration.Config, mountpoint: Path) -> int:
    """Start ``rdfs mount --foreground`` detached and wait until the mount is there."""
    log_file = config.log_file or config.cache_dir / "rdfs.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "rdfs"] + _without_token(
        [a for a in sys.argv[1:] if a not in ("--foreground", "-f")]
    )
    # The token reaches the child through its environment: a command line is readable by every user.
    env = dict(os.environ, RD_API_TOKEN=config.token) if config.token else None
    if "--log-file" not in argv:
        argv += ["--log-file", str(log_file)]
    argv.insert(argv.index("mount") + 1, "--foreground")
    with open(os.devnull, "rb") as devnull, open(log_file, "ab") as out:
        child = subprocess.Popen(
            argv, stdin=devnull, stdout=out, stderr=out, start_new_session=True, env=env
        )
    deadline = time.monotonic() + MOUNT_WAIT
    while time.monotonic() < deadline:
        if is_fuse_mount(mountpoint):
            print(f"rdfs: mounted at {mountpoint} (log: {log_file})")
            return 0
        if child.poll() is not None:
            raise UsageError(f"mount failed: {_last_error(log_file)} (see {log_file})")
        time.sleep(0.1)
    raise UsageError(f"mount did not appear within {MOUNT_WAIT:.0f}s (see {log_file})")


def _without_token(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--token":
            skip = True
        elif not arg.startswith("--token="):
            kept.append(arg)
    return kept


def _last_error(log_file: Path) -> str:
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "unknown error"
    if not lines:
        return "unknown error"
    last = lines[-1]
    if "rdfs: error: " in last:
        return last.split("rdfs: error: ", 1)[1]
    # The child's last log line, e.g.
    # "<date> <time> CRITICAL rdfs: stopped by an unexpected error: ..."
    fields = last.split(" ", 4)
    return fields[4] if len(fields) == 5 and fields[2].isupper() else last


def cmd_umount(args: argparse.Namespace) -> int:
    from rdfs.fuse import mount

    mount.unmount(args.mountpoint.expanduser().resolve())
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from rdfs.emulator.server import run_cli

    return run_cli(args.args)


# --- management commands: login, status, add, rm, ls, user, traffic, hosts ------------------------


def _add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _add_management_commands(commands: argparse._SubParsersAction) -> None:
    login = commands.add_parser(
        "login",
        help="log in to Real-Debrid (OAuth device flow, or --token)",
        description="Log in with RD's device flow: open the URL shown, enter the code, wait. "
        "With --token, store a private API token instead (from real-debrid.com/apitoken).",
    )
    login.add_argument(
        "--token", dest="login_token", nargs="?", const="-", metavar="TOKEN",
        help="store a private API token (without a value: read it from stdin)",
    )  # fmt: skip
    login.add_argument("--api-url", help="RD REST base URL (env RDFS_API_URL)")
    login.add_argument("--oauth-url", help="RD OAuth base URL (env RDFS_OAUTH_URL)")
    login.add_argument(
        "--config", type=_path, help="config file (default $XDG_CONFIG_HOME/rdfs/config.toml)"
    )
    login.add_argument(
        "--poll-interval", type=_seconds, metavar="S", help="seconds between approval checks"
    )
    login.set_defaults(func=cmd_login)

    logout = commands.add_parser("logout", help="revoke and forget the stored login")
    logout.add_argument("--api-url", help="RD REST base URL (env RDFS_API_URL)")
    logout.add_argument("--oauth-url", help="RD OAuth base URL (env RDFS_OAUTH_URL)")
    logout.add_argument("--config", type=_path, help="config file")
    logout.set_defaults(func=cmd_logout)

    status = commands.add_parser(
        "status", help="state of a mount (or of the account)",
        description="Show MOUNTPOINT/.rdfs/status; without MOUNTPOINT, every rdfs mount, "
        "or the account if none.",
    )  # fmt: skip
    status.add_argument("mountpoint", type=_path, nargs="?")
    status.add_argument(
        "--watch", action="store_true", help="redraw every second (e.g. during a first sync)"
    )
    _add_output_flag(status)
    _add_connection_flags(status)
    status.set_defaults(func=cmd_status)

    add = commands.add_parser(
        "add", help="add magnets, info hashes or .torrent files",
        description="Add torrents (magnet URIs, 40-hex or base32 info hashes, .torrent files); "
        "all of them or none. Hashes already in the account are not added twice.",
    )  # fmt: skip
    add.add_argument("items", nargs="+", metavar="MAGNET|HASH|FILE.torrent")
    add.add_argument(
        "--select", choices=SELECTION_POLICIES, default="all", help="files to select (default all)"
    )
    add.add_argument(
        "--wait",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="wait for magnet conversion (default 60)",
    )
    add.add_argument(
        "--mount", type=_path, metavar="MOUNTPOINT", help="rdfs mount to refresh afterwards"
    )
    _add_output_flag(add)
    _add_connection_flags(add)
    add.set_defaults(func=cmd_add)

    rm = commands.add_parser(
        "rm", help="delete torrents or downloads",
        description="Delete torrents (by id, torrents/<name>, or a torrent directory in a mount) "
        "and downloads (downloads/<name>, or a file in a mount's downloads/) from the account.",
    )  # fmt: skip
    rm.add_argument("targets", nargs="+", metavar="ID|PATH")
    rm.add_argument(
        "--mount",
        type=_path,
        metavar="MOUNTPOINT",
        help="rdfs mount to resolve names in and refresh",
    )
    _add_output_flag(rm)
    _add_connection_flags(rm)
    rm.set_defaults(func=cmd_rm)

    removed = commands.add_parser(
        "removed", help="list the torrents removed from the account (the removal record)",
        description="List every torrent rdfs saw removed (by RD or by you), newest first, "
        "from the cache; no API call. Re-add one with `rdfs add <hash>` and select the same files.",
    )  # fmt: skip
    removed.add_argument(
        "--cache-dir", type=Path, help="the mount's cache directory (default from the config)"
    )
    _add_output_flag(removed)
    removed.set_defaults(func=cmd_removed)

    cache = commands.add_parser(
        "cache",
        help="show what the metadata cache holds (tables, rows, size, schema version)",
        description="Show the last-used account's metadata cache: its file, size and schema "
        "version, then one line per table with its rows. No API call.",
    )
    cache.add_argument(
        "--cache-dir", type=Path, help="the mount's cache directory (default from the config)"
    )
    _add_output_flag(cache)
    cache.set_defaults(func=cmd_cache)

    for name, func, text in (
        ("ls", cmd_ls, "list torrents with status, progress and size"),
        ("user", cmd_user, "show the account"),
        ("traffic", cmd_traffic, "show the traffic left per host"),
        ("hosts", cmd_hosts, "list the supported hosters and their status"),
    ):
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _add_output_flag(parser)
        _add_connection_flags(parser)
        parser.set_defaults(func=func)


CLI_RETRIES = (
    2  # a command someone waits for fails fast in an outage instead of backing off for a minute
)


def _client(config: configuration.Config, auth: TokenProvider | None) -> RDClient:
    return RDClient(
        api_url=config.api_url,
        oauth_url=config.oauth_url,
        auth=auth,
        rate_limit_per_minute=config.rate_limit,
        max_retries=CLI_RETRIES,
    )


def _quiet_logging(args: argparse.Namespace) -> None:
    """Management commands print results and one-line errors; log lines only with ``-v``."""
    logs.setup("DEBUG" if args.verbose else "ERROR")


def _with_client(args: argparse.Namespace, work: Callable[[RDClient], Awaitable[T]]) -> T:
    """Run ``work`` with an authenticated client.

    The credentials come from the flags, the environment or the stored login.
    """
    from rdfs.credentials import auth_for

    _quiet_logging(args)
    config = _config(args)
    auth = auth_for(config)

    async def run() -> T:
        async with _client(config, auth) as client:
            return await work(client)

    return trio.run(run)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        )


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """A time left, to the minute: "about 5 h 51 min", "about 3 min", "less than a minute"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute"
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"about {minutes} min"
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"


def fill_line(fill: dict) -> str | None:
    """The file-list fill in one line while it runs, e.g.
    "12,345 of 100,000 (250/min, about 5 h 51 min left)"; None when every list is there."""
    done, total = fill.get("done", 0), fill.get("total", 0)
    if done >= total:
        return None
    line = f"{done:,} of {total:,}"
    rate, eta = fill.get("per_minute"), fill.get("eta_seconds")
    if rate and eta is not None:
        pace = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
        return f"{line} ({pace}/min, {human_duration(eta)} left)"
    return f"{line} (starting)"


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _refresh_mounts(args: argparse.Namespace) -> None:
    """After a change made through the API, let the mount(s) sync at once."""
    mounts = [args.mount.expanduser()] if args.mount else rdfs_mounts()
    for mountpoint in mounts:
        try:
            (mountpoint / CONTROL_DIR / "refresh").write_text("1\n")
        except OSError as exc:
            if args.mount:
                raise UsageError(f"cannot refresh {mountpoint}: {exc.strerror}") from None


# login / logout


def cmd_login(args: argparse.Namespace) -> int:
    from rdfs import credentials

    _quiet_logging(args)
    config = _config(args)
    if args.login_token is not None:
        token = args.login_token
        if token == "-":
            token = (
                getpass.getpass("API token: ")
                if sys.stdin.isatty()
                else sys.stdin.readline().strip()
            )
        if not token:
            raise UsageError("no token given")
        logs.register_secret(token)

        async def check_token() -> User:
            async with _client(config, StaticToken(token)) as client:
                return await client.user()

        user = trio.run(check_token)
        credentials.save_token(token)
        print(f"rdfs: logged in as {user.username} with a private API token ({credentials.path()})")
        return 0

    def show(code: DeviceCode) -> None:
        print(f"Open {code.verification_url} and enter the code: {code.user_code}", flush=True)
        if code.direct_verification_url:
            print(f"(or open {code.direct_verification_url})", flush=True)
        print("Waiting for approval...", flush=True)

    async def device_login() -> tuple[Credentials, User]:
        async with _client(config, None) as client:
            login = await poll_device_login(
                client.oauth, on_code=show, poll_interval=args.poll_interval
            )
        for secret in (login.client_secret, login.access_token, login.refresh_token):
            logs.register_secret(secret)
        async with _client(config, StaticToken(login.access_token)) as client:
            return login, await client.user()

    login, user = trio.run(device_login)
    credentials.save_oauth(login)
    print(f"rdfs: logged in as {user.username} ({credentials.path()})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from rdfs import credentials

    _quiet_logging(args)
    config = _config(args)
    stored = credentials.load()
    if stored is None:
        print("rdfs: not logged in")
        return 0
    if isinstance(stored, Credentials):
        # A private API token is left valid (other apps may use it); an OAuth login is revoked.
        async def revoke() -> None:
            async with _client(config, OAuthSession(stored)) as client:
                await client.disable_access_token()

        try:
            trio.run(revoke)
        except RDError as exc:
            print(
                f"rdfs: could not revoke the access token ({exc}); forgetting it anyway",
                file=sys.stderr,
            )
    credentials.forget()
    print("rdfs: logged out")
    return 0


# status


def cmd_status(args: argparse.Namespace) -> int:
    mounts = [args.mountpoint.expanduser()] if args.mountpoint else _live_mounts()
    if not mounts:
        return _account_status(args)
    while True:
        reports = {str(m): _read_status(m) for m in mounts}
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J", end="")
        if args.json:
            _print_json(reports if len(reports) > 1 else next(iter(reports.values())))
        else:
            for mountpoint, report in reports.items():
                _show_status(mountpoint, report)
        if not args.watch:
            return 0
        time.sleep(1.0)


def _live_mounts() -> list[Path]:
    """The rdfs mounts whose status can be read (a stale one is mentioned and skipped)."""
    live = []
    for mountpoint in rdfs_mounts():
        try:
            (mountpoint / CONTROL_DIR / "status").stat()
        except OSError as exc:
            print(f"rdfs: skipping {mountpoint}: {exc.strerror}", file=sys.stderr)
            continue
        live.append(mountpoint)
    return live


def _read_status(mountpoint: Path) -> dict:
    path = mountpoint / CONTROL_DIR / "status"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{mountpoint} is not an rdfs mount") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{path} is not valid JSON") from None


def _show_status(mountpoint: str, report: dict) -> None:
    api = report.get("api", {})
    print(f"mount       {mountpoint}")
    reachable = "API reachable" if api.get("reachable") else "API unreachable"
    print(
        f"health      {report.get('health')} ({reachable}, "
        f"{api.get('rate_limit_budget')} requests left this minute)"
    )
    if report.get("stalled_for"):
        print(
            f"stalled     the running sync started {report['stalled_for']:.0f} s ago "
            "and has not finished"
        )
    print(
        f"last sync   {_when(report.get('last_sync'))} "
        f"({report.get('last_outcome') or 'no sync yet'})"
    )
    known, with_files = report.get("torrents_known", 0), report.get("torrents_with_files", 0)
    downloaded = report.get("torrents_downloaded", 0)
    line = f"torrents    {known} known, {downloaded} downloaded, {with_files} with files"
    if report.get("files_pending"):
        line += f" ({report['files_pending']} file lists loading)"
    print(line)
    fill = fill_line(report.get("fill") or {})
    if fill is not None:
        print(f"file lists  {fill}")
    print(f"downloads   {report.get('downloads_known', 0)}")
    for host, traffic in (report.get("traffic") or {}).items():
        print(f"traffic     {host}: {human_size(traffic['left'])} left")
    if report.get("pending_deletions"):
        print(
            f"held back   {report['pending_deletions']} "
            "(missing upstream: removal waiting for confirmation)"
        )
    if report.get("held_directories"):
        print(
            f"kept        {report['held_directories']} torrent directories "
            "whose torrent left 'downloaded'"
        )
    removed = report.get("removed") or {}
    if removed.get("count"):
        print(
            f"removed     {removed['count']} torrents recorded "
            "(re-add one with magnet:?xt=urn:btih:<hash>):"
        )
        _table(
            [
                (_when(r["time"]), r["by"], r["id"], r["hash"], r["name"])
                for r in removed.get("recent", [])[:10]
            ],
            ("  when", "by", "id", "hash", "name"),
        )
    active = report.get("in_progress") or []
    if active:
        print("in progress:")
        _table(
            [(t["id"], t["status"], f"{t['progress']:.0f}%", t["name"]) for t in active],
            ("  id", "status", "progress", "name"),
        )
    errors = report.get("recent_errors") or []
    if errors:
        print("recent errors:")
        for error in errors[-5:]:
            print(f"  {_when(error['time'])}  {error['where']}: {error['error']}")


def _account_status(args: argparse.Namespace) -> int:
    async def gather(client: RDClient) -> dict:
        user = await client.user()
        traffic = await client.traffic()
        active = await client.active_count()
        return {
            "user": user.username,
            "premium_seconds": user.premium,
            "active_torrents": active.nb,
            "active_limit": active.limit,
            "traffic": {
                h: {"left": t.left, "bytes": t.bytes, "limit": t.limit} for h, t in traffic.items()
            },
            "mounts": [],
        }

    report = _with_client(args, gather)
    if args.json:
        _print_json(report)
        return 0
    print("no rdfs mount; account:")
    print(f"user        {report['user']} (premium: {report['premium_seconds'] // 86400} days left)")
    print(f"active      {report['active_torrents']} of {report['active_limit']} torrents")
    for host, traffic in report["traffic"].items():
        print(f"traffic     {host}: {human_size(traffic['left'])} left")
    return 0


# add / rm


def cmd_add(args: argparse.Namespace) -> int:
    items: list[Magnet | TorrentFile] = []
    bad: list[str] = []
    for item in args.items:
        is_file = item.lower().endswith(".torrent") or (
            os.path.isfile(item) and not item.startswith("magnet:")
        )
        try:
            items.append(parse_torrent_file(_read_file(item)) if is_file else parse_magnet(item))
        except InvalidInput as exc:
            bad.append(f"{item}: {exc}" if is_file else str(exc))
    if bad:
        raise InvalidInput("nothing added: " + "; ".join(bad))

    async def work(client: RDClient) -> list[Added]:
        known = {t.hash.lower(): t.id async for t in client.iter_torrents()}
        return await add_items(
            client, items, policy=args.select, known_hashes=known, convert_timeout=args.wait
        )

    results = _with_client(args, work)
    _refresh_mounts(args)
    if args.json:
        _print_json([a.to_json() for a in results])
        return 0
    for added in results:
        if added.duplicate:
            print(f"{added.id}  already in the account ({added.info_hash})")
        elif not added.selected:
            print(
                f"{added.id}  added, {added.status}: files not selected yet "
                "(mount it to have them selected)"
            )
        else:
            print(f"{added.id}  added: {added.name} ({added.status})")
    return 0


def _read_file(name: str) -> bytes:
    try:
        return Path(name).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read it: {exc.strerror}") from None


def _xattr(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode()
    except OSError:
        return None


def _target_from_path(path: Path) -> Target | None:
    """A torrent directory or a downloads/ file of a mount, named by its real path."""
    if not path.exists():
        return None
    torrent_id = _xattr(path, "user.rdfs.torrent_id")
    download_id = _xattr(path, "user.rdfs.download_id")
    if download_id:
        return Target("download", download_id, str(path))
    if torrent_id:
        if path.is_dir() and _xattr(path.parent, "user.rdfs.torrent_id") is None:
            return Target("torrent", torrent_id, str(path))
        raise InvalidInput(
            f"{path} is inside torrent {torrent_id}: name the torrent directory to delete it"
        )
    return None


def _resolve_targets(args: argparse.Namespace) -> tuple[list[Target], list[str]]:
    """Targets found without the API, and the names left to look up in the account's lists."""
    targets: list[Target] = []
    by_name: list[str] = []
    bad: list[str] = []
    for text in args.targets:
        try:
            candidates = [Path(text).expanduser()]
            if args.mount:
                candidates.insert(0, args.mount.expanduser() / text)
            target = next((t for t in map(_target_from_path, candidates) if t is not None), None)
        except InvalidInput as exc:
            bad.append(str(exc))
            continue
        if target is not None:
            targets.append(target)
        elif looks_like_id(text):
            targets.append(Target("torrent", text, text))
        elif (
            text.strip("/").split("/", 1)[0] in (TORRENTS_DIR, DOWNLOADS_DIR)
            and text.strip("/").count("/") == 1
        ):
            by_name.append(text.strip("/"))
        else:
            bad.append(
                f"{text}: not a torrent id, torrents/<name>, downloads/<name> "
                "or an entry of a mount"
            )
    if bad:
        raise InvalidInput("nothing deleted: " + "; ".join(bad))
    return targets, by_name


async def _targets_by_name(client: RDClient, names: list[str]) -> list[Target]:
    """Match ``torrents/<name>`` / ``downloads/<name>`` against the names a mount would show."""
    from rdfs.tree.specs import download_specs, torrent_dir_specs

    if not names:
        return []
    shown: dict[str, Target] = {}
    if any(n.startswith(TORRENTS_DIR + "/") for n in names):
        torrents = [t async for t in client.iter_torrents()]
        for spec in torrent_dir_specs(torrents, set()):
            assert spec.torrent_id is not None
            shown[f"{TORRENTS_DIR}/{spec.name}"] = Target(
                "torrent", spec.torrent_id, f"{TORRENTS_DIR}/{spec.name}"
            )
    if any(n.startswith(DOWNLOADS_DIR + "/") for n in names):
        downloads = [d async for d in client.iter_downloads()]
        for spec in download_specs(downloads):
            assert spec.download_id is not None
            shown[f"{DOWNLOADS_DIR}/{spec.name}"] = Target(
                "download", spec.download_id, f"{DOWNLOADS_DIR}/{spec.name}"
            )
    missing = [n for n in names if n not in shown]
    if missing:
        raise InvalidInput(f"nothing deleted: not in the account: {', '.join(missing)}")
    return [shown[n] for n in names]


def cmd_rm(args: argparse.Namespace) -> int:
    targets, by_name = _resolve_targets(args)

    async def work(client: RDClient) -> list[Target]:
        wanted = targets + await _targets_by_name(client, by_name)
        # Every target is checked before the first deletion: an unknown id deletes nothing.
        for target in wanted:
            if target.kind == "torrent":
                try:
                    await client.torrent_info(target.id)
                except UnknownResource:
                    raise InvalidInput(f"nothing deleted: no torrent with id {target.id}") from None
        return await delete_targets(client, wanted)

    done = _with_client(args, work)
    _refresh_mounts(args)
    if args.json:
        _print_json([t.to_json() for t in done])
    else:
        for target in done:
            print(f"deleted {target.kind} {target.id} ({target.label})")
    return 0


def _read_cache(args: argparse.Namespace, read: Callable[[Cache], T]) -> T:
    """What ``read`` finds in the last account's cache, for the commands that only look at it."""
    _quiet_logging(args)
    config = _config(args)
    cache = Cache.open_warm(config.cache_dir)
    if cache is None:
        raise InvalidInput(f"no rdfs cache in {config.cache_dir}: nothing was ever mounted with it")
    try:
        return read(cache)
    finally:
        cache.close()


def cmd_removed(args: argparse.Namespace) -> int:
    record = _read_cache(args, lambda cache: cache.removals())
    if args.json:
        _print_json(record)
        return 0
    if not record:
        print("no torrent was removed")
        return 0
    rows = []
    for entry in record:
        files = "?" if entry["selection"] is None else str(len(entry["selection"]))
        rows.append(
            (_when(entry["time"]), entry["by"], entry["id"], entry["hash"], files, entry["name"])
        )
    _table(rows, ("when", "by", "id", "hash", "files", "name"))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from rdfs.store.overview import overview

    found = _read_cache(args, overview)
    if args.json:
        _print_json(found.as_json())
        return 0
    print(
        f"{found.path}: account {found.user_id}, schema version {found.schema_version}, "
        f"{human_size(found.file_bytes)}"
    )
    _table([(name, str(rows)) for name, rows in found.tables.items()], ("table", "rows"))
    return 0


# ls / user / traffic / hosts


def cmd_ls(args: argparse.Namespace) -> int:
    async def work(client: RDClient) -> list[Torrent]:
        return [t async for t in client.iter_torrents()]

    torrents = _with_client(args, work)
    if args.json:
        _print_json(
            [
                {"id": t.id, "name": t.filename, "status": t.status, "progress": t.progress,
                 "bytes": t.bytes, "hash": t.hash,
                 "added": t.added.isoformat() if t.added else None}
                for t in torrents
            ]
        )  # fmt: skip
        return 0
    rows = [
        (t.id, t.status, f"{t.progress:.0f}%", human_size(t.bytes), t.filename) for t in torrents
    ]
    _table(rows, ("id", "status", "progress", "size", "name"))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    user = _with_client(args, lambda client: client.user())
    if args.json:
        _print_json({k: v for k, v in dataclasses.asdict(user).items() if k != "raw"})
        return 0
    print(f"user        {user.username} (id {user.id})")
    print(f"email       {user.email}")
    print(f"type        {user.type}, {user.premium // 86400} days of premium left")
    if user.expiration:
        print(f"expires     {user.expiration:%Y-%m-%d}")
    print(f"points      {user.points}")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    traffic = _with_client(args, lambda client: client.traffic())
    if args.json:
        _print_json(
            {
                h: {k: v for k, v in dataclasses.asdict(t).items() if k != "raw"}
                for h, t in traffic.items()
            }
        )
        return 0
    rows = [
        (h, t.type, human_size(t.left), human_size(t.bytes), t.reset)
        for h, t in sorted(traffic.items())
    ]
    _table(rows, ("host", "type", "left", "used", "reset"))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = _with_client(args, lambda client: client.hosts_status())
    if args.json:
        _print_json({d: {"name": h.name, "status": h.status} for d, h in sorted(hosts.items())})
        return 0
    _table([(d, h.name, h.status) for d, h in sorted(hosts.items())], ("domain", "name", "status"))
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from rdfs.fuse.mount import MountError

    return (UsageError, configuration.ConfigError, MountError, RDError, ActionError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        error = _single(exc)
        if isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        if isinstance(error, _user_errors()):
            message = logs.redact(str(error)) or type(error).__name__
            status = EXIT_USER_ERROR
        elif isinstance(error, Exception):
            # A bug: still one line (the traceback with -v), never a wall of text for the user.
            message = f"internal error: {_describe_unexpected(error)}"
            status = EXIT_INTERNAL_ERROR
            if args.verbose:
                import traceback

                traceback.print_exception(exc)
        else:
            raise
        # One line on stderr; a daemonised mount's stderr is its log file, which the parent
        # reads.
        print(f"rdfs: error: {message}", file=sys.stderr)
        return status
