"""Selecting the files of a torrent RD has just added, once RD is ready for it.

Used by adds (control: ``.rdfs/add``, ``rdfs add``) and by repair (a dead torrent re-added).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, Protocol

import trio

from rdfs.api.models import TorrentInfo

log = logging.getLogger(__name__)

FileChoice = Callable[[TorrentInfo], Literal["all"] | list[int]]
"""Which files of the torrent to select: ``"all"`` or file ids, chosen from its info."""


class SelectingClient(Protocol):
    """What selecting needs from the API client (``RDClient``)."""

    async def torrent_info(self, id: str) -> TorrentInfo: ...

    async def select_files(self, id: str, files: Literal["all"] | list[int]) -> None: ...


async def select_when_ready(
    client: SelectingClient,
    torrent_id: str,
    choose: FileChoice,
    *,
    timeout: float = 0.0,
    poll: float = 1.0,
) -> TorrentInfo:
    """Select the files of ``torrent_id`` when RD waits for that; the torrent's info after.

    While RD converts a magnet (``magnet_conversion``) the torrent is looked at again every
    ``poll`` seconds for up to ``timeout`` (0: one look), so the info returned may still be
    converting. In any other status nothing is selected (RD selected already, or it failed).
    """
    deadline = trio.current_time() + timeout
    while True:
        info = await client.torrent_info(torrent_id)
        if info.status == "waiting_files_selection":
            files = choose(info)
            log.info(
                "selecting %s of torrent %s",
                files if files == "all" else f"{len(files)} files",
                torrent_id,
            )
            await client.select_files(torrent_id, files)
            return await client.torrent_info(torrent_id)
        if info.status != "magnet_conversion" or trio.current_time() + poll > deadline:
            return info
        await trio.sleep(poll)
