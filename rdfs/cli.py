"""The ``rdfs`` command line: one-line errors, ``--help`` on every command."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import trio

from rdfs import __version__
from rdfs import config as configuration
from rdfs import logs
from rdfs.api.errors import RDError

log = logging.getLogger("rdfs")

MOUNT_WAIT = 60.0  # seconds the daemonising parent waits for the child's mount to appear


class UsageError(Exception):
    """A user error: printed as one line, exit status 1."""


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="RD REST base URL (env RDFS_API_URL)")
    parser.add_argument("--oauth-url", help="RD OAuth base URL (env RDFS_OAUTH_URL)")
    parser.add_argument("--token", help="private API token (env RD_API_TOKEN; default: stored login)")
    parser.add_argument("--config", type=Path, help="config file (default $XDG_CONFIG_HOME/rdfs/config.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdfs", description="Mount a Real-Debrid account as a filesystem.")
    parser.add_argument("--version", action="version", version=f"rdfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    mount = commands.add_parser("mount", help="mount the account", description="Mount the account at MOUNTPOINT.")
    mount.add_argument("mountpoint", type=Path)
    _add_connection_flags(mount)
    mount.add_argument("--cache-dir", type=Path, help="metadata cache (default $XDG_CACHE_HOME/rdfs)")
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground (tests, systemd)")
    mount.add_argument("--allow-other", action="store_true", default=None, help="let other users see the mount")
    mount.add_argument("--allow-delete", action="store_true", default=None, help="let rm -r delete torrents upstream")
    mount.add_argument("--sync-interval", type=float, help="seconds between syncs (default 15)")
    mount.add_argument("--rate-limit", type=int, help="API requests per minute (default 250)")
    mount.add_argument("--chunk-cache-mb", type=int, help="memory for the shared read cache (default 256)")
    mount.add_argument("--log-file", type=Path, help="log file (default: stderr in the foreground)")
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser("umount", help="unmount (also clears a stale mount)")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(func=cmd_umount)

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
            "log_file",
        )
    }
    config = configuration.load(flags, config_file=getattr(args, "config", None))
    logs.register_secret(config.token)
    return config


def cmd_mount(args: argparse.Namespace) -> int:
    from rdfs import mount

    config = _config(args)
    mountpoint = args.mountpoint.expanduser().resolve()
    mount.check_mountpoint(mountpoint)
    if not args.foreground:
        return _daemonize(args, config, mountpoint)
    logs.setup("DEBUG" if args.verbose else config.log_level, config.log_file)
    trio.run(mount.run, config, mountpoint)
    return 0


def _daemonize(args: argparse.Namespace, config: configuration.Config, mountpoint: Path) -> int:
    """Start ``rdfs mount --foreground`` detached and wait until the mount is there."""
    from rdfs import mount

    log_file = config.log_file or config.cache_dir / "rdfs.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "rdfs"] + [a for a in sys.argv[1:] if a not in ("--foreground", "-f")]
    if "--log-file" not in argv:
        argv += ["--log-file", str(log_file)]
    argv.insert(argv.index("mount") + 1, "--foreground")
    with open(os.devnull, "rb") as devnull, open(log_file, "ab") as out:
        child = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + MOUNT_WAIT
    while time.monotonic() < deadline:
        if mount.is_fuse_mount(mountpoint):
            print(f"rdfs: mounted at {mountpoint} (log: {log_file})")
            return 0
        if child.poll() is not None:
            raise UsageError(f"mount failed: {_last_error(log_file)} (see {log_file})")
        time.sleep(0.1)
    raise UsageError(f"mount did not appear within {MOUNT_WAIT:.0f}s (see {log_file})")


def _last_error(log_file: Path) -> str:
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "unknown error"
    return lines[-1].split("rdfs: error: ", 1)[-1] if lines else "unknown error"


def cmd_umount(args: argparse.Namespace) -> int:
    from rdfs import mount

    mount.unmount(args.mountpoint.expanduser().resolve())
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from rdfs.emulator.server import run_cli

    return run_cli(args.args)


def _user_errors() -> tuple[type[BaseException], ...]:
    from rdfs.mount import MountError

    return (UsageError, configuration.ConfigError, MountError, RDError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except _user_errors() as exc:
        message = logs.redact(str(exc)) or type(exc).__name__
        print(f"rdfs: error: {message}", file=sys.stderr)
        if getattr(args, "foreground", False):
            log.error("%s", message)
        return 1

