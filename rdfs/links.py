"""Hoster links to download URLs: unrestrict lazily, once, and remember the answer.

RD turns a hoster link (``https://real-debrid.com/d/<ID>``) into a download URL with
``/unrestrict/link``. Each call adds a permanent ``/downloads`` entry and counts against a
tight rate limit, so the resolver unrestricts only when a file is actually read, shares one API
call between every reader that asks at the same moment (single flight), and persists the URL in
the cache for reuse across opens and restarts. RD publishes no lifetime for the URLs: they are
assumed valid for ``default_ttl`` and refreshed early when the download server refuses them
(``resolve(..., force=True)``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import stamina
import trio

from rdfs.api.errors import (
    APIError,
    BadToken,
    FairUsageLimit,
    InternalError,
    NetworkError,
    RDError,
    ServiceUnavailable,
    SlowDown,
    TooManyRequests,
)
from rdfs.api.models import Download
from rdfs.cache import StoredLink

log = logging.getLogger(__name__)

DEFAULT_TTL = 6 * 3600.0
# A link expiring within this margin is refreshed before use: a read must not start on a URL
# that dies halfway through.
EXPIRY_MARGIN = 60.0
# How long a link that RD refused stays refused without asking again (a media scanner would
# otherwise unrestrict a dead file on every read).
GONE_TTL = 300.0
# How long an unrestrict keeps trying through rate limits, RD outages and network failures
# before the read fails: a library scan must wait for the budget, not fail.
BUSY_TIMEOUT = 300.0

# API errors that say nothing about the link itself: the caller may try again later.
_RETRYABLE: tuple[type[APIError], ...] = (
    TooManyRequests,
    SlowDown,
    ServiceUnavailable,
    InternalError,
    BadToken,
    FairUsageLimit,
)
# Failures that say RD (or the way to it) is busy right now: the unrestrict waits and tries again.
# An unrestrict that may have reached RD is repeated too: at worst RD lists one more download.
_BUSY: tuple[type[RDError], ...] = (TooManyRequests, SlowDown, ServiceUnavailable, InternalError, NetworkError)


class LinkGone(RDError):
    """The hoster link cannot be unrestricted any more (dead torrent, infringing file, ...).

    The filesystem answers EIO; ``reason`` is RD's explanation, for the log.
    """

    def __init__(self, hoster_link: str, reason: str) -> None:
        super().__init__(f"{hoster_link}: {reason}")
        self.hoster_link = hoster_link
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResolvedLink:
    """A usable download URL for a hoster link. The URL is a bearer credential: not in repr."""

    url: str = field(repr=False)
    download_id: str
    filesize: int
    expires_at: float  # UNIX time

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


class Unrestricter(Protocol):
    async def unrestrict_link(self, link: str) -> Download: ...


class LinkStore(Protocol):
    def get_link(self, hoster_link: str) -> StoredLink | None: ...

    def put_link(self, link: StoredLink) -> None: ...

    def drop_link(self, hoster_link: str) -> None: ...


@dataclass(slots=True)
class _Flight:
    """One unrestrict in progress; followers wait on ``done``."""

    done: trio.Event = field(default_factory=trio.Event)
    result: ResolvedLink | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class ResolverStats:
    unrestricts: int = 0
    forced: int = 0
    gone: int = 0


class LinkResolver:
    """``await resolver.resolve(hoster_link)`` -> :class:`ResolvedLink` (see module doc)."""

    def __init__(
        self,
        client: Unrestricter,
        store: LinkStore | None,
        *,
        default_ttl: float = DEFAULT_TTL,
        gone_ttl: float = GONE_TTL,
        busy_timeout: float = BUSY_TIMEOUT,
        busy_wait_initial: float = 0.5,
        busy_wait_max: float = 15.0,
    ) -> None:
        self.client = client
        self.store = store
        self.default_ttl = default_ttl
        self.gone_ttl = gone_ttl
        self.busy_timeout = busy_timeout
        self.busy_wait_initial = busy_wait_initial
        self.busy_wait_max = busy_wait_max
        self.stats = ResolverStats()
        # Told about every link RD refuses (the repair of dead torrents listens here).
        self.on_gone: Callable[[str, LinkGone], None] | None = None
        self._links: dict[str, ResolvedLink] = {}
        self._gone: dict[str, tuple[float, LinkGone]] = {}  # hoster link -> (monotonic until, error)
        self._flights: dict[str, _Flight] = {}

    def cached(self, hoster_link: str) -> ResolvedLink | None:
        """The known, unexpired link without any I/O, or None."""
        link = self._links.get(hoster_link)
        if link is None and self.store is not None:
            stored = self.store.get_link(hoster_link)
            if stored is not None:
                link = ResolvedLink(stored.url, stored.download_id, stored.filesize, stored.expires_at)
                self._links[hoster_link] = link
        if link is not None and link.expires_at - EXPIRY_MARGIN <= time.time():
            return None
        return link

    async def resolve(self, hoster_link: str, *, force: bool = False, stale_url: str | None = None) -> ResolvedLink:
        """The download URL of ``hoster_link``, unrestricting it only when needed.

        ``force=True`` unrestricts again (the download server refused the URL). With
        ``stale_url`` the refresh is skipped when the known URL already differs from it: another
        reader refreshed it in the meantime. Raises :class:`LinkGone` when RD refuses the link,
        other :class:`RDError` (rate limit, network) when the caller may retry later.
        """
        while True:
            gone = self._gone.get(hoster_link)
            if gone is not None:
                if gone[0] > time.monotonic():
                    raise gone[1]
                del self._gone[hoster_link]
            current = self.cached(hoster_link)
            if current is not None and (not force or (stale_url is not None and current.url != stale_url)):
                return current
            flight = self._flights.get(hoster_link)
            if flight is None:
                return await self._lead(hoster_link, force)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.result is not None:
                return flight.result
            # The leader was cancelled before RD answered: try again (perhaps as the leader).

    async def _lead(self, hoster_link: str, forced: bool) -> ResolvedLink:
        flight = _Flight()
        self._flights[hoster_link] = flight
        try:
            flight.result = await self._unrestrict(hoster_link, forced)
            return flight.result
        except RDError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[hoster_link]
            flight.done.set()

    async def _unrestrict(self, hoster_link: str, forced: bool) -> ResolvedLink:
        self.stats.unrestricts += 1
        if forced:
            self.stats.forced += 1
        try:
            download = await self._unrestrict_waiting(hoster_link)
        except _RETRYABLE:
            raise
        except APIError as exc:
            self.stats.gone += 1
            gone = LinkGone(hoster_link, str(exc))
            log.warning("link %s is gone: %s", hoster_link, exc)
            self._links.pop(hoster_link, None)
            if self.store is not None:
                self.store.drop_link(hoster_link)
            self._gone[hoster_link] = (time.monotonic() + self.gone_ttl, gone)
            if self.on_gone is not None:
                self.on_gone(hoster_link, gone)
            raise gone from None
        if not download.download:
            raise LinkGone(hoster_link, "RD returned no download URL")
        return self._remember(hoster_link, download, forced)

    async def _unrestrict_waiting(self, hoster_link: str) -> Download:
        """``unrestrict_link``, retried with backoff while RD is busy, for up to ``busy_timeout``."""
        try:
            return await self.client.unrestrict_link(hoster_link)
        except _BUSY as exc:
            log.info("unrestrict of %s waits: %s", hoster_link, exc)
        async for attempt in stamina.retry_context(
            on=_BUSY,
            attempts=None,
            timeout=self.busy_timeout,
            wait_initial=self.busy_wait_initial,
            wait_max=self.busy_wait_max,
            wait_jitter=self.busy_wait_initial,
        ):
            with attempt:
                return await self.client.unrestrict_link(hoster_link)
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    def _remember(self, hoster_link: str, download: Download, forced: bool) -> ResolvedLink:
        link = ResolvedLink(
            url=download.download,
            download_id=download.id,
            filesize=download.filesize,
            expires_at=time.time() + self.default_ttl,
        )
        log.info(
            "unrestricted %s -> download %s on %s (%d bytes%s)",
            hoster_link,
            link.download_id,
            link.host,
            link.filesize,
            ", refresh" if forced else "",
        )
        self._links[hoster_link] = link
        if self.store is not None:
            self.store.put_link(StoredLink(hoster_link, link.url, link.download_id, link.filesize, link.expires_at))
        return link
