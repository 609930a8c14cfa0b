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

RD's definite "no" is remembered too, for ``miss_ttl`` seconds: a 503 of ``mediaInfos`` (RD's
"problem finding metadata of the media", not retried by the client) or any other coded error
answer that is not about load or the token. A media scanner asking every file again then costs
no API call. Gateway pages (no ``error_code``), rate limits and network failures are transient:
never cached.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Protocol

from rdfs.api.errors import (
    APIError,
    BadToken,
    FairUsageLimit,
    GatewayError,
    InternalError,
    RDError,
    ServiceUnavailable,
    SlowDown,
    TooManyRequests,
)
from rdfs.data.links import LinkResolver

log = logging.getLogger(__name__)

MEDIAINFO = "user.rdfs.mediainfo"
TRANSCODE = "user.rdfs.transcode"
NAMES = frozenset({MEDIAINFO, TRANSCODE})
DEFAULT_TTL = 3600.0
DEFAULT_MISS_TTL = 600.0
# Coded answers about RD's load or the session, not about the file: never a cached miss.
_TRANSIENT: tuple[type[APIError], ...] = (
    GatewayError, TooManyRequests, SlowDown, BadToken, InternalError, FairUsageLimit
)  # fmt: skip


def is_definite_miss(name: str, exc: RDError) -> bool:
    """Whether ``exc`` is RD's final answer for attribute ``name`` of this file."""
    if not isinstance(exc, APIError) or isinstance(exc, _TRANSIENT) or exc.code is None:
        return False
    if isinstance(exc, ServiceUnavailable):
        return name == MEDIAINFO  # the reference's "problem finding metadata of the media"
    return True


class StreamingClient(Protocol):
    async def streaming_media_infos(self, id: str) -> Any: ...

    async def streaming_transcode(self, id: str) -> dict[str, dict[str, str]]: ...


class StreamingExtras:
    """``await extras.get(name, hoster_link)`` -> the attribute's JSON text."""

    names = NAMES

    def __init__(
        self,
        client: StreamingClient,
        resolver: LinkResolver,
        *,
        ttl: float = DEFAULT_TTL,
        miss_ttl: float = DEFAULT_MISS_TTL,
    ) -> None:
        self.client = client
        self.resolver = resolver
        self.ttl = ttl
        self.miss_ttl = miss_ttl
        self._answers: dict[tuple[str, str], tuple[float, str]] = {}
        self._misses: dict[tuple[str, str], tuple[float, RDError]] = {}

    async def get(self, name: str, hoster_link: str) -> str:
        """Raises ``KeyError`` for an unknown name, ``RDError`` when RD has no answer."""
        if name not in NAMES:
            raise KeyError(name)
        key = (name, hoster_link)
        now = time.monotonic()
        known = self._answers.get(key)
        if known is not None and known[0] > now:
            return known[1]
        miss = self._misses.get(key)
        if miss is not None and miss[0] > now:
            raise miss[1].with_traceback(None)  # not a traceback growing with every re-raise
        self._forget_expired(now)
        download_id = (await self.resolver.resolve(hoster_link)).download_id
        try:
            if name == MEDIAINFO:
                info = await self.client.streaming_media_infos(download_id)
                # Not dataclasses.asdict: it would deep-copy ``raw`` (any depth RD sent) for
                # nothing.
                kept = (
                    f.name for f in dataclasses.fields(info) if f.name not in ("raw", "problems")
                )
                data = {attr: getattr(info, attr) for attr in kept}
            else:
                data = await self.client.streaming_transcode(download_id)
        except RDError as exc:
            if is_definite_miss(name, exc):
                self._misses[key] = (time.monotonic() + self.miss_ttl, exc)
                log.info(
                    "%s of download %s: RD has none (%s), not asked again for %g s",
                    name,
                    download_id,
                    exc,
                    self.miss_ttl,
                )
            raise
        text = json.dumps(data, sort_keys=True)
        self._answers[key] = (time.monotonic() + self.ttl, text)
        log.debug("%s of download %s fetched", name, download_id)
        return text

    def _forget_expired(self, now: float) -> None:
        """Drop expired entries now and then, so a long-lived mount does not grow without end."""
        if len(self._answers) + len(self._misses) < 4096:
            return
        self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        self._misses = {k: v for k, v in self._misses.items() if v[0] > now}
