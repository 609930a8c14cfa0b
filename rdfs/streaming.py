"""RD's streaming extras as extended attributes of media files, fetched only when asked for.

* ``user.rdfs.mediainfo``: JSON of ``/streaming/mediaInfos/{id}`` (type movie/show, season,
  episode, year, duration, bitrate, video/audio/subtitle streams) — what RD's own probe found,
  free of any download.
* ``user.rdfs.transcode``: JSON of ``/streaming/transcode/{id}`` (HLS ``apple``, ``dash``,
  ``liveMP4``, ``h264WebM`` links by quality) for players that prefer RD's transcodes. The links
  are credentials for the file: they are never logged.

Both need the file's download id, so the first read of either unrestricts the file's link (once:
the resolver persists it). They are *not* listed by ``listxattr``: tools that copy every
attribute (``cp -a``, ``rsync -X``) would otherwise call the API for every file. Answers are
kept in memory for ``ttl`` seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Protocol

from rdfs.links import LinkResolver

log = logging.getLogger(__name__)

MEDIAINFO = "user.rdfs.mediainfo"
TRANSCODE = "user.rdfs.transcode"
NAMES = frozenset({MEDIAINFO, TRANSCODE})
DEFAULT_TTL = 3600.0


class StreamingClient(Protocol):
    async def streaming_media_infos(self, id: str) -> Any: ...

    async def streaming_transcode(self, id: str) -> dict[str, dict[str, str]]: ...


class StreamingExtras:
    """``await extras.get(name, hoster_link)`` -> the attribute's JSON text."""

    names = NAMES

    def __init__(self, client: StreamingClient, resolver: LinkResolver, *, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self.resolver = resolver
        self.ttl = ttl
        self._answers: dict[tuple[str, str], tuple[float, str]] = {}

    async def get(self, name: str, hoster_link: str) -> str:
        """Raises ``KeyError`` for an unknown name, ``RDError`` when RD has no answer."""
        if name not in NAMES:
            raise KeyError(name)
        known = self._answers.get((name, hoster_link))
        if known is not None and known[0] > time.monotonic():
            return known[1]
        download_id = (await self.resolver.resolve(hoster_link)).download_id
        if name == MEDIAINFO:
            info = await self.client.streaming_media_infos(download_id)
            data = {k: v for k, v in dataclasses.asdict(info).items() if k != "raw"}
        else:
            data = await self.client.streaming_transcode(download_id)
        text = json.dumps(data, sort_keys=True)
        self._answers[(name, hoster_link)] = (time.monotonic() + self.ttl, text)
        log.debug("%s of download %s fetched", name, download_id)
        return text
