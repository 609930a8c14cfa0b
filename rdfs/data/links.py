"""Hoster links to download URLs: unrestrict lazily, once, and remember the answer.

RD turns a hoster link (``https://real-debrid.com/d/<ID>``) into a download URL with
``/unrestrict/link``. Each call adds a permanent ``/downloads`` entry and counts against a
tight rate limit, so the resolver unrestricts only when a file is actually read, shares one API
call between every reader that asks at the same moment (single flight), and persists the URL in
the cache for reuse across opens and restarts. RD publishes no lifetime for the URLs: they are
assumed valid for ``default_ttl`` and refreshed early when the download server refuses them
(``resolve(..., force=True)``).

Failures are remembered: a link RD refuses (dead file, 451 infringing), a fresh URL the download
server refuses before it served a byte, and an unrestrict answer whose URL cannot be used
(:func:`checked_url`) are negative-cached for ``gone_ttl``: reads in between fail at once, without
an API call. A gateway's 5xx page (:class:`GatewayError`) is never such a verdict: RD said nothing.
Every URL is checked before use, including the ones loaded from the store (a bad one persisted by
an earlier version would otherwise fail every read after every restart).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import stamina
import trio

from rdfs.api.errors import (
    APIError,
    BadLink,
    BadToken,
    FairUsageLimit,
    GatewayError,
    InternalError,
    NetworkError,
    RDError,
    ServiceUnavailable,
    SlowDown,
    TooManyRequests,
)
from rdfs.api.models import Download
from rdfs.store.metadata import StoredLink

log = logging.getLogger(__name__)

DEFAULT_TTL = 6 * 3600.0
# A link expiring within this margin is refreshed before use: a read must not start on a URL
# that dies halfway through.
EXPIRY_MARGIN = 60.0
# How long a link that RD refused stays refused without asking again (a media scanner would
# otherwise unrestrict a dead file on every read). The same holds for a link whose fresh URL the
# download server refused too, and for an unrestrict answer with an unusable URL: each costs at
# most one unrestrict per GONE_TTL.
GONE_TTL = 300.0
# How long an unrestrict keeps trying through rate limits, RD outages and network failures
# before the read fails: a library scan must wait for the budget, not fail.
BUSY_TIMEOUT = 300.0

# API errors that say nothing about the link itself: the caller may try again later.
_RETRYABLE: tuple[type[APIError], ...] = (
    GatewayError,
    TooManyRequests,
    SlowDown,
    ServiceUnavailable,
    InternalError,
    BadToken,
    FairUsageLimit,
)
# Failures that say RD (or the way to it) is busy right now: the unrestrict waits and tries again.
# An unrestrict that may have reached RD is repeated too: at worst RD lists one more download.
_BUSY: tuple[type[RDError], ...] = (
    TooManyRequests,
    SlowDown,
    ServiceUnavailable,
    InternalError,
    GatewayError,
    NetworkError,
)
# What a path and a query may keep as they are; anything else (non-ASCII, spaces) is
# percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LinkGone(RDError):
    """The hoster link cannot be unrestricted any more (dead torrent, infringing file, ...).

    The filesystem answers EIO; ``reason`` is RD's explanation, for the log.
    """

    def __init__(self, hoster_link: str, reason: str) -> None:
        super().__init__(f"{hoster_link}: {reason}")
        self.hoster_link = hoster_link
        self.reason = reason


class BadDownloadURL(RDError):
    """A download URL that cannot be used: not http(s), a host that does not encode with IDNA, a
    broken IPv6 literal, control characters. Only the file it belongs to fails (EIO)."""


def checked_url(url: str) -> str:
    """``url`` as sent on the wire: an http(s) URL with an ASCII host (IDNA-encoded, or an IP
    literal), non-ASCII in its path and query percent-encoded, no user info, no fragment.

    Raises :class:`BadDownloadURL` (the message never holds the URL: it is a bearer secret).
    """
    if not isinstance(url, str) or not url:
        raise BadDownloadURL("the download URL is empty")
    if _CONTROL.search(url):
        raise BadDownloadURL("the download URL holds control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range
        raise BadDownloadURL(f"the download URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadDownloadURL(f"the download URL is not http(s) (scheme {scheme[:16]!r})")
    if not host:
        raise BadDownloadURL("the download URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BadDownloadURL("the download URL carries user info")
    if "[" in parts.netloc or ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise BadDownloadURL("the download URL has a broken IPv6 literal") from None
        if ip.scope_id is not None:
            raise BadDownloadURL("the download URL has an IPv6 zone id")
        wire_host = f"[{ip.compressed}]"
    else:
        try:
            wire_host = host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise BadDownloadURL("the download URL's host does not encode with IDNA") from None
        labels = wire_host.split(".")
        if len(wire_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise BadDownloadURL("the download URL's host is not a valid host name")
    netloc = wire_host if port is None else f"{wire_host}:{port}"
    return urlunsplit(
        (
            scheme,
            netloc,
            quote(parts.path, safe=_PATH_SAFE) or "/",
            quote(parts.query, safe=_QUERY_SAFE),
            "",
        )
    )


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
        on_gone: Callable[[str, LinkGone], None] | None = None,
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
        self.on_gone = on_gone
        self._links: dict[str, ResolvedLink] = {}
        # Negative cache: hoster link -> (monotonic until, the error every read gets until then).
        self._gone: dict[str, tuple[float, RDError]] = {}
        self._flights: dict[str, _Flight] = {}
        # Hoster link -> URL of its latest forced refresh, until a download server accepted it.
        self._unproven: dict[str, str] = {}
        self._store_failed = False  # the store's first failure is logged, later ones are not

    def cached(self, hoster_link: str) -> ResolvedLink | None:
        """The known, unexpired link without any I/O, or None."""
        link = self._links.get(hoster_link)
        if link is None and self.store is not None:
            link = self._load(hoster_link)
        if link is not None and link.expires_at - EXPIRY_MARGIN <= time.time():
            return None
        return link

    def _load(self, hoster_link: str) -> ResolvedLink | None:
        """The stored link, if its URL is usable; an unusable one is dropped from the store."""
        assert self.store is not None
        try:
            stored = self.store.get_link(hoster_link)
        except Exception as exc:  # a broken store costs an unrestrict, never the read
            self._store_error("read", exc)
            return None
        if stored is None:
            return None
        try:
            url = checked_url(stored.url)
        except BadDownloadURL as exc:
            log.warning("stored link of %s is unusable (%s): dropped", hoster_link, exc)
            self._store_call("drop", self.store.drop_link, hoster_link)
            return None
        link = self._links[hoster_link] = ResolvedLink(
            url, stored.download_id, stored.filesize, stored.expires_at
        )
        return link

    def confirm(self, hoster_link: str) -> None:
        """A download server accepted the current URL of ``hoster_link`` (called by the reader)."""
        if self._unproven:
            self._unproven.pop(hoster_link, None)

    async def resolve(
        self, hoster_link: str, *, force: bool = False, stale_url: str | None = None
    ) -> ResolvedLink:
        """The download URL of ``hoster_link``, unrestricting it only when needed.

        ``force=True`` unrestricts again (the download server refused the URL). With
        ``stale_url`` the refresh is skipped when the known URL already differs from it: another
        reader refreshed it in the meantime. When ``stale_url`` is the URL of the latest forced
        refresh and no download server accepted it yet (:meth:`confirm`), even a fresh link is
        refused: the link is negative-cached (:class:`LinkGone`), no new unrestrict.

        Raises :class:`LinkGone` when RD (or the download server, for a fresh link) refuses the
        link, :class:`BadDownloadURL` when RD's answer has an unusable URL (both remembered for
        ``gone_ttl``), other :class:`RDError` (rate limit, gateway, network) when the caller may
        retry later.
        """
        while True:
            gone = self._gone.get(hoster_link)
            if gone is not None:
                if gone[0] > time.monotonic():
                    raise gone[1]
                del self._gone[hoster_link]
            current = self.cached(hoster_link)
            if current is not None and (
                not force or (stale_url is not None and current.url != stale_url)
            ):
                return current
            if force and stale_url is not None and self._unproven.get(hoster_link) == stale_url:
                del self._unproven[hoster_link]
                error = LinkGone(hoster_link, "the download server refuses even a fresh link")
                log.warning(
                    "link %s: the download server refuses even a fresh link: "
                    "not asking RD again for %.0f s",
                    hoster_link,
                    self.gone_ttl,
                )
                self._gone[hoster_link] = (time.monotonic() + self.gone_ttl, error)
                raise error
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
            if not download.download:
                raise LinkGone(hoster_link, "RD returned no download URL")
            url = checked_url(download.download)
        except (BadDownloadURL, BadLink) as exc:
            # An unrestrict answer that cannot be used (RD acted, but the URL is no URL): RD's
            # answer, not the link's fate. Remembered for ``gone_ttl`` like a refusal, without
            # telling repair (it says nothing about the torrent): no unrestrict per read either.
            log.warning(
                "unrestrict of %s answered an unusable URL (%s): not asking again for %.0f s",
                hoster_link,
                exc,
                self.gone_ttl,
            )
            self._gone[hoster_link] = (time.monotonic() + self.gone_ttl, exc)
            raise
        except _RETRYABLE:
            raise
        except APIError as exc:
            self.stats.gone += 1
            gone = LinkGone(hoster_link, str(exc))
            log.warning("link %s is gone: %s", hoster_link, exc)
            self._links.pop(hoster_link, None)
            if self.store is not None:
                self._store_call("drop", self.store.drop_link, hoster_link)
            self._gone[hoster_link] = (time.monotonic() + self.gone_ttl, gone)
            if self.on_gone is not None:
                self.on_gone(hoster_link, gone)
            raise gone from None
        return self._remember(hoster_link, download, url, forced)

    async def _unrestrict_waiting(self, hoster_link: str) -> Download:
        """``unrestrict_link``, retried with backoff while RD is busy, for up to
        ``busy_timeout``."""
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

    def _remember(
        self, hoster_link: str, download: Download, url: str, forced: bool
    ) -> ResolvedLink:
        link = ResolvedLink(
            url=url,
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
        if forced:
            self._unproven[hoster_link] = url
        if self.store is not None:
            stored = StoredLink(
                hoster_link, link.url, link.download_id, link.filesize, link.expires_at
            )
            self._store_call("write", self.store.put_link, stored)
        return link

    def _store_call(self, what: str, call: Callable[[Any], None], argument: Any) -> None:
        """A store write that may fail (full disk, locked database): the link stays in memory."""
        try:
            call(argument)
        except Exception as exc:
            self._store_error(what, exc)

    def _store_error(self, what: str, exc: Exception) -> None:
        if not self._store_failed:
            self._store_failed = True
            log.warning("link store: cannot %s links (%s); links are kept in memory", what, exc)
        else:
            log.debug("link store: cannot %s a link: %s", what, exc)
