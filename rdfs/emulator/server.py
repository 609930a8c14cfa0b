"""Running the emulator standalone: ``python -m rdfs.emulator`` / ``rdfs emulator``.

Prints ``export`` lines for ``eval`` once it listens, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import trio

from .core import Emulator

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdfs emulator", description="Run a Real-Debrid emulator on 127.0.0.1."
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: any free port)"
    )
    parser.add_argument("--token", help="the private API token to accept (default: random)")
    parser.add_argument(
        "--media", type=Path, help="each subdirectory or file of DIR becomes a torrent"
    )
    parser.add_argument(
        "--synthetic", type=int, default=0, metavar="N", help="add N torrents of synthetic files"
    )
    parser.add_argument(
        "--link-ttl", type=float, default=4 * 3600, metavar="S", help="download URL lifetime"
    )
    parser.add_argument(
        "--api-latency", type=float, default=0.0, metavar="S", help="seconds added to API answers"
    )
    parser.add_argument(
        "--download-latency", type=float, default=0.0, metavar="S", help="time to first byte"
    )
    parser.add_argument(
        "--download-base-url",
        metavar="URL",
        help="hand out URL/<path under --media DIR> for real files "
        "(a static server such as nginx serves them)",
    )
    parser.add_argument(
        "--user-id",
        type=int,
        default=4242,
        metavar="N",
        help="the account's RD user id (default: 4242)",
    )
    parser.add_argument(
        "--rate-limit", type=int, metavar="N", help="API requests per minute (default: none)"
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    return parser


def build_emulator(args: argparse.Namespace) -> Emulator:
    emu = Emulator(args.token, link_ttl=args.link_ttl, rate_limit_per_minute=args.rate_limit)
    emu.user["id"] = args.user_id
    emu.faults.api_latency = args.api_latency
    emu.faults.download_latency = args.download_latency
    if args.media is not None:
        emu.add_media_dir(args.media)
        if args.download_base_url:
            emu.download_base_url = args.download_base_url
            emu.download_root = args.media
    if args.synthetic:
        emu.add_synthetic_library(args.synthetic)
    return emu


async def _serve(emu: Emulator, port: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.serve, port)
        print(f"export RDFS_API_URL={shlex.quote(emu.api_url)}", flush=True)
        print(f"export RD_API_TOKEN={shlex.quote(emu.token)}", flush=True)
        print(f"export RDFS_OAUTH_URL={shlex.quote(emu.oauth_url)}", flush=True)
        print(f"export RDFS_EMULATOR_URL={shlex.quote(emu.base_url)}", flush=True)


def run_cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if args.media is not None and not args.media.is_dir():
        print(f"rdfs emulator: --media {args.media} is not a directory", file=sys.stderr)
        return 2
    emu = build_emulator(args)
    try:
        trio.run(_serve, emu, args.port)
    except* KeyboardInterrupt:
        log.info("interrupted, stopping")
    return 0
