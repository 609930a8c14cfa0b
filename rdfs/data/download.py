"""Downloads of byte ranges from RD's download servers: request, check, resume, refresh.

* Every download resumes from the byte where it stopped when the connection drops (bounded
  retries with backoff through ``stamina``). A download server that refuses the URL (403, 404,
  410, an HTML error page) gets the link refreshed once through the resolver, then the download
  resumes; only a link RD refuses to unrestrict raises :class:`LinkGone` (the resolver
  negative-caches a link whose fresh URL is refused too). Responses are checked:
  a 200 for a ranged request (Range ignored) is read-and-discarded up to the offset when that is
  small, otherwise fails; a Content-Range that does not start at the asked offset fails; a body
  with a ``Content-Encoding`` other than identity fails (it is never cached); every redirect
  ``Location`` is checked like an unrestricted URL.
* Every request has a deadline without progress: one that delivers less than ``STALL_PROGRESS``
  bytes in ``STALL_TIMEOUT`` seconds (time to the first byte included, time paused on purpose
  excluded) is aborted and resumed; after ``MAX_STALLS`` such aborts in a row without a block
  delivered, the download fails (:class:`DownloadStalled`, EIO).
* A :class:`Transfer` receives the blocks of a range in order and delivers them to the
  :class:`~rdfs.data.blockstore.BlockStore`; the blocks it promised are *pending* in the file
  (readers wait on their event) until delivered or released. A subclass may pause between pieces
  while it holds the response (read-ahead waiting for its reader) and give its connection up
  when another download waits for one (:class:`HostSlots`).
* A transfer that keeps a read-ahead (:attr:`Transfer.pipelined`) may have its next request sent
  *ahead*, on a second connection, while the one being read still runs (:class:`Ahead`): the next
  request's latency to the first byte passes while the rest of the current one arrives, and every
  request stays bounded (a close or a seek cancels both, the server never sends past their ends).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpcore
import stamina
import trio

from rdfs.api.errors import NetworkError, RDError
from rdfs.data.blockcache import BLOCK_SIZE, Block
from rdfs.data.blockstore import BlockStore
from rdfs.data.downloadclient import TRANSPORT_ERRORS, header
from rdfs.data.links import BadDownloadURL, LinkGone, LinkResolver, ResolvedLink, checked_url
from rdfs.data.source import FileSource, OpenFile
from rdfs.data.stats import ReaderStats

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# A server ignoring Range is tolerated (read and discard) for offsets up to this.
RANGE_DISCARD_LIMIT = 8 * MiB
# Link refreshes in a row, without progress in between, before a download gives up.
MAX_LINK_REFRESHES = 2
DEFAULT_CONNECTIONS_PER_HOST = 16
DEFAULT_TIMEOUT = {
    "connect": 15.0,
    "read": 30.0,
    "write": 15.0,
    "pool": None,
}  # seconds, httpcore's keys
MAX_REDIRECTS = 5
# A download request that delivers less than STALL_PROGRESS bytes in STALL_TIMEOUT seconds is
# aborted (a server dripping a byte now and then defeats any per-socket-read timeout); the
# transfer resumes where it stopped. MAX_STALLS aborts in a row without a block delivered fail the
# download: a read that cannot progress fails with EIO within READ_STALL_TIMEOUT.
STALL_TIMEOUT = 15.0
STALL_PROGRESS = BLOCK_SIZE
MAX_STALLS = 2
READ_STALL_TIMEOUT = STALL_TIMEOUT * MAX_STALLS

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_REFUSED = frozenset({403, 404, 410})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(RDError):
    """The download server answered something that cannot be served correctly."""


class DownloadStalled(DownloadError):
    """The download server stopped delivering (``MAX_STALLS`` requests in a row without
    progress)."""


class _Transient(Exception):
    """A download attempt failed before making progress; worth another try."""


class _Stalled(Exception):
    """A request delivered less than ``STALL_PROGRESS`` bytes in ``STALL_TIMEOUT``: aborted."""


class _Refused(Exception):
    """The download server refused the URL: the link needs a refresh."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.url = url


class HostSlots:
    """The connection slots to one download host, and the transfers parked on one (holding a
    response while they wait for their reader)."""

    def __init__(self, limit: int) -> None:
        self.limiter = trio.CapacityLimiter(limit)
        self.parked: set[Transfer] = set()

    async def acquire(self, borrower: object) -> None:
        """Take a slot for ``borrower`` (the task, or the :class:`Ahead` request it sends)."""
        limiter = self.limiter
        if not limiter.available_tokens:
            for transfer in list(self.parked):
                transfer.nudge()  # it sees us waiting and lets its connection go
        try:
            # A free connection slot costs no trip through the scheduler.
            limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            await limiter.acquire_on_behalf_of(borrower)

    def release(self, borrower: object) -> None:
        self.limiter.release_on_behalf_of(borrower)

    @property
    def contended(self) -> bool:
        """Whether a download waits for a slot."""
        return self.limiter.statistics().tasks_waiting > 0


@dataclass(eq=False)
class Ahead:
    """A request sent before the one being read ends, for bytes ``[start, stop)``: its response
    waits on its own connection (its socket buffers hold at most what it asked for). The request
    that takes it over owns the response and the slot; one dropped is closed by its own task."""

    start: int
    stop: int
    ready: trio.Event = field(default_factory=trio.Event)  # the response is there, or it failed
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    response: httpcore.Response | None = None
    link: ResolvedLink | None = None
    slots: HostSlots | None = None
    taken: bool = False

    def drop(self) -> None:
        self.scope.cancel()


class Transfer:
    """Downloads the blocks of ``[start, stop)`` of a file in order, delivering them to the cache.

    ``received`` is the next byte wanted from the network; ``pos`` the start of the block being
    assembled in ``buf``. The blocks this transfer promised (``owned``) are pending in the file
    until delivered or released.
    """

    # Whether the next request may be sent while the one being read still runs.
    pipelined = False

    def __init__(self, blocks: BlockStore, file: OpenFile, start: int, stop: int) -> None:
        self.blocks = blocks
        self.file = file
        self.pos = start
        self.received = start
        self.stop = stop
        self.buf = bytearray()
        self.owned: dict[int, trio.Event] = {}
        self.collected: dict[int, Block] | None = None
        self.url = ""  # the download URL of the latest request
        self.requested = start  # the end of the latest request sent
        self.ahead: Ahead | None = None  # the next request, sent ahead
        self.aheads: trio.Nursery | None = None  # where requests sent ahead wait (pipelined only)

    @property
    def finished(self) -> bool:
        return self.pos >= self.stop

    def resume(self, prefix: bytes) -> None:
        """Start after ``prefix``: the leading bytes of the first block, already at hand."""
        self.buf = bytearray(prefix)
        self.received = self.pos + len(prefix)

    def claim(self, first: int, stop: int) -> None:
        """Promise the blocks ``[first, stop)`` that are neither cached nor pending elsewhere."""
        pending, available = self.file.pending, self.blocks.available
        for index in range(first, stop):
            if index not in pending and not available(self.file, index):
                event = pending[index] = trio.Event()
                self.owned[index] = event

    def release(self) -> None:
        """Give up every promise still open (waiters wake up and look again)."""
        pending = self.file.pending
        for index, event in self.owned.items():
            if pending.get(index) is event:
                del pending[index]
            event.set()
        self.owned.clear()

    def want(self) -> int:
        """The byte up to which this transfer wants data now."""
        return self.stop

    def request_stop(self, start: int) -> int:
        """The end of the range a request from byte ``start`` asks for."""
        return self.stop

    def next_request(self) -> int | None:
        """While a request up to ``requested`` is read: the end of the next request when it is
        to be sent now, ahead (pipelined transfers only), else None."""
        return None

    def drop_ahead(self) -> None:
        """Give up the request sent ahead (the transfer no longer continues where it starts)."""
        if self.ahead is not None:
            self.ahead.drop()
            self.ahead = None

    def feed(self, piece: bytes) -> None:
        """Take the next bytes of the response (everything up to ``stop``: a response is never
        read partially, the next piece would land at the wrong offset).

        Whole blocks inside ``piece`` are delivered as views of it, without a copy; only a block
        that straddles two pieces is assembled in ``buf``."""
        take = min(len(piece), self.stop - self.received)
        if take <= 0:
            return
        view = memoryview(piece)[:take]
        self.received += take
        size = self.file.source.size
        used = 0
        if self.buf:
            used = min(BLOCK_SIZE - len(self.buf), take)
            self.buf += view[:used]
            if len(self.buf) < BLOCK_SIZE and self.received < size:
                return
            self._deliver(bytes(self.buf))
            self.buf = bytearray()
        while take - used >= BLOCK_SIZE:
            self._deliver(view[used : used + BLOCK_SIZE])
            used += BLOCK_SIZE
        if used < take:
            if self.received >= size:
                self._deliver(view[used:])
            else:
                self.buf += view[used:]

    def _deliver(self, data: Block) -> None:
        index = self.pos // BLOCK_SIZE
        self.pos += len(data)
        self.file.partial.pop(index, None)
        self.blocks.store(self.file, index, data)
        if self.collected is not None:
            self.collected[index] = data
        event = self.owned.pop(index, None)
        if event is not None:
            if self.file.pending.get(index) is event:
                del self.file.pending[index]
            event.set()

    def should_jump(self) -> bool:
        """Whether to drop the response to skip blocks already at hand (streams only)."""
        return False

    def ready_run(self, limit: int) -> int:
        """How many blocks from ``pos`` on are cached or being fetched by someone else
        (at most ``limit``)."""
        if self.buf:
            return 0
        available, pending = self.blocks.available, self.file.pending
        index = self.pos // BLOCK_SIZE
        count = 0
        while count < limit and index + count < self.file.blocks:
            block = index + count
            if available(self.file, block):
                event = self.owned.pop(block, None)
                if event is not None:  # somebody else delivered what we promised
                    if pending.get(block) is event:
                        del pending[block]
                    event.set()
            elif block not in pending or block in self.owned:
                break
            count += 1
        return count

    async def ready_for_more(self) -> bool:
        """Wait until more data is wanted; False when the transfer is complete."""
        return not self.finished

    async def pause(self, slots: HostSlots) -> bool:
        """Wait, holding the response, until more data is wanted; False to let it go."""
        return True

    def nudge(self) -> None:
        """Another download waits for this transfer's connection (only paused transfers park)."""


class PartFetch(Transfer):
    """A read's fetch that ends inside a block (where the read ends): that block's leading bytes
    are kept apart (``OpenFile.partial``), not cached as a block."""

    @property
    def finished(self) -> bool:
        return self.received >= self.stop


class Downloader:
    """Runs transfers: ``await downloader.download(transfer)``, or ``fetch`` a range of blocks."""

    def __init__(
        self,
        resolver: LinkResolver,
        http: httpcore.AsyncConnectionPool,
        blocks: BlockStore,
        stats: ReaderStats,
        *,
        connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST,
        retries: int = 5,
        retry_wait_initial: float = 0.1,
        retry_wait_max: float = 2.0,
        range_discard_limit: int = RANGE_DISCARD_LIMIT,
        stall_timeout: float = STALL_TIMEOUT,
        max_stalls: int = MAX_STALLS,
    ) -> None:
        self.resolver = resolver
        self.http = http
        self.blocks = blocks
        self.stats = stats
        self.connections_per_host = connections_per_host
        self.retries = retries
        self.retry_wait_initial = retry_wait_initial
        self.retry_wait_max = retry_wait_max
        self.range_discard_limit = range_discard_limit
        self.stall_timeout = stall_timeout
        self.max_stalls = max_stalls
        self._slots: dict[str, HostSlots] = {}
        self._stalling: set[Transfer] = set()

    def slots(self, host: str) -> HostSlots:
        """The connection slots to ``host``."""
        slots = self._slots.get(host)
        if slots is None:
            slots = self._slots[host] = HostSlots(self.connections_per_host)
        return slots

    @property
    def connections(self) -> int:
        """Connections to download servers in use now (held by a request)."""
        return sum(slots.limiter.borrowed_tokens for slots in self._slots.values())

    async def fetch(
        self, file: OpenFile, first: int, stop: int, end: int | None = None
    ) -> dict[int, Block]:
        """Download blocks ``[first, stop)`` now (in the caller's task) and return them; with
        ``end`` (inside block ``stop - 1``), only up to ``end``: that block is returned as its
        leading bytes, and kept in ``file.partial`` for a read of the rest. A block whose
        leading bytes are at hand is fetched from where they end."""
        start = first * BLOCK_SIZE
        if end is None:
            transfer = Transfer(self.blocks, file, start, min(stop * BLOCK_SIZE, file.source.size))
        else:
            transfer = PartFetch(self.blocks, file, start, end)
        prefix = file.partial.get(first)
        if prefix is not None and start + len(prefix) < transfer.stop:
            transfer.resume(prefix)
        transfer.collected = {}
        transfer.claim(first, stop)
        try:
            await self.download(transfer)
        finally:
            transfer.release()
        if transfer.buf and transfer.received >= transfer.stop:  # the part of the last block
            index = transfer.pos // BLOCK_SIZE
            transfer.collected[index] = part = bytes(transfer.buf)
            file.keep_partial(index, part)
        return transfer.collected

    async def download(self, transfer: Transfer) -> None:
        """Run ``transfer`` to completion: requests, resumes, link refreshes."""
        if not transfer.pipelined:
            await self._download(transfer)
            return
        async with trio.open_nursery() as aheads:
            transfer.aheads = aheads
            try:
                await self._download(transfer)
            finally:
                transfer.aheads = None
                transfer.ahead = None
                aheads.cancel_scope.cancel()  # a request sent ahead and not taken is closed

    async def _download(self, transfer: Transfer) -> None:
        source = transfer.file.source
        refreshes = 0
        refreshed_at = -1
        unreachable_at = -1
        stalls = 0
        stalled_at = -1
        try:
            while await transfer.ready_for_more():
                try:
                    await self._attempts(transfer)
                except _Stalled as stalled:
                    if transfer.pos != stalled_at:
                        stalls = 0
                    stalls += 1
                    stalled_at = transfer.pos
                    self._stalled(transfer, str(stalled), gave_up=stalls >= self.max_stalls)
                    if stalls >= self.max_stalls:
                        raise DownloadStalled(
                            f"{source.label}: the download server stopped delivering at "
                            f"byte {transfer.received} ({stalls} requests without progress)"
                        ) from None
                    continue
                except NetworkError:
                    # The download server stayed unreachable through every retry. RD moves files
                    # between servers, and a link cached before a restart may name one that is gone:
                    # a fresh link is worth one try per position, if it names another URL.
                    if transfer.received == unreachable_at:
                        raise
                    unreachable_at = transfer.received
                    stale = transfer.url
                    fresh = await self._refresh_link(
                        source, stale, "its download server is unreachable"
                    )
                    if fresh.url == stale:
                        raise
                except _Refused as refused:
                    if transfer.received != refreshed_at:
                        refreshes = 0
                    refreshes += 1
                    if refreshes > MAX_LINK_REFRESHES:
                        raise LinkGone(
                            source.hoster_link,
                            "the download server refuses even a fresh link "
                            f"(HTTP {refused.status})",
                        ) from None
                    refreshed_at = transfer.received
                    await self._refresh_link(
                        source, refused.url, f"the download was refused (HTTP {refused.status})"
                    )
                else:
                    if self._stalling:
                        self._recovered(transfer)
        finally:
            if self._stalling:
                self._recovered(transfer)

    def _stalled(self, transfer: Transfer, why: str, *, gave_up: bool) -> None:
        """Count a stalled request for the reads status (and log it)."""
        stats, name = self.stats, transfer.file.source.name or transfer.file.source.key
        stats.stalls += 1
        stats.stalled += gave_up
        self._stalling.add(transfer)
        stats.stalling = len(self._stalling)
        stats.last_stall = {
            "file": name,
            "byte": transfer.received,
            "time": time.time(),
            "gave_up": gave_up,
        }
        outcome = "giving up" if gave_up else "retrying"
        log.warning(
            "download of %s stalled at byte %d (%s): %s", name, transfer.received, why, outcome
        )

    def _recovered(self, transfer: Transfer) -> None:
        self._stalling.discard(transfer)
        self.stats.stalling = len(self._stalling)

    async def _refresh_link(self, source: FileSource, stale_url: str, why: str) -> ResolvedLink:
        """Unrestrict ``source``'s link again (unless another task already replaced
        ``stale_url``)."""
        self.stats.link_refreshes += 1
        log.info("%s: %s, refreshing its link", source.name, why)
        return await self.resolver.resolve(source.hoster_link, force=True, stale_url=stale_url)

    async def _attempts(self, transfer: Transfer) -> None:
        """One request, retried with backoff while it fails without making progress.

        The first try runs outside stamina: its per-call cost is as large as a cached read.
        """
        try:
            await self._request(transfer)
            return
        except _Transient as exc:
            log.info("download of %s failed (%s): retrying", transfer.file.source.name, exc)
        try:
            async for attempt in stamina.retry_context(
                on=_Transient,
                attempts=self.retries,
                timeout=None,
                wait_initial=self.retry_wait_initial,
                wait_max=self.retry_wait_max,
                wait_jitter=self.retry_wait_initial,
            ):
                with attempt:
                    await self._request(transfer)
        except _Transient as exc:
            name = transfer.file.source.name or transfer.file.source.key
            raise NetworkError(
                f"download of {name} failed at byte {transfer.received}: {exc}", reached=True
            ) from None

    async def _request(self, transfer: Transfer) -> None:
        """Send one ranged GET from ``transfer.received`` and feed its body to the transfer.

        Returns when the response ended, when the transfer has enough, or after a dropped
        connection that made progress (the caller sends the next request at once). Raises
        ``_Transient`` for a failure without progress, ``_Refused`` for a refused URL.
        """
        source = transfer.file.source
        start = transfer.received
        ahead, transfer.ahead = transfer.ahead, None
        if ahead is not None and ahead.start != start:
            ahead.drop()
            ahead = None
        if ahead is None:
            link = await self.resolver.resolve(source.hoster_link)
            transfer.url = link.url
            request_stop = transfer.request_stop(start)
            slots = self.slots(link.host)
        else:
            request_stop = ahead.stop
        transfer.requested = request_stop
        first = source.offset + start
        borrower: object = trio.lowlevel.current_task()
        acquired = False
        # No progress for stall_timeout aborts the request (see STALL_TIMEOUT); _receive moves the
        # deadline on with every STALL_PROGRESS bytes, and lifts it while the transfer pauses.
        guard = trio.CancelScope(deadline=trio.current_time() + self.stall_timeout)
        try:
            with guard:
                if ahead is None:
                    await slots.acquire(borrower)
                    acquired = True
                    self.stats.requests += 1
                    response = await self._send(
                        link.url, _range(first, source.offset + request_stop)
                    )
                else:
                    await ahead.ready.wait()
                    if ahead.response is None or ahead.link is None or ahead.slots is None:
                        raise _Transient("the request sent ahead failed")
                    link, slots, response = ahead.link, ahead.slots, ahead.response
                    borrower = ahead
                    ahead.taken = acquired = True
                    ahead.drop()  # its task ends; the response and the slot are this request's
                    transfer.url = link.url
                try:
                    skip = check_response(response, link, source, first, self.range_discard_limit)
                    self.resolver.confirm(source.hoster_link)
                    await self._receive(response, transfer, request_stop, skip, slots, guard)
                    if transfer.received == start:
                        raise _Transient(f"HTTP {response.status} with no data from byte {first}")
                finally:
                    await response.aclose()
        except TRANSPORT_ERRORS as exc:
            if transfer.received > start:
                self.stats.reconnects += 1
                log.info(
                    "download of %s dropped at byte %d (%s): resuming",
                    source.name,
                    transfer.received,
                    exc,
                )
                return
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        finally:
            if acquired:
                slots.release(borrower)
            if ahead is not None and not ahead.taken:
                ahead.drop()
        if guard.cancelled_caught:
            raise _Stalled(f"less than {STALL_PROGRESS} bytes in {self.stall_timeout:g} s")

    def _send_ahead(self, transfer: Transfer, start: int, stop: int) -> None:
        """Send the request for ``[start, stop)`` now, in the background (see :class:`Ahead`)."""
        assert transfer.aheads is not None
        ahead = transfer.ahead = Ahead(start, stop)
        transfer.requested = stop
        transfer.aheads.start_soon(self._run_ahead, transfer.file.source, ahead)

    async def _run_ahead(self, source: FileSource, ahead: Ahead) -> None:
        slots: HostSlots | None = None
        acquired = False
        response: httpcore.Response | None = None
        try:
            with ahead.scope:
                link = await self.resolver.resolve(source.hoster_link)
                slots = self.slots(link.host)
                await slots.acquire(ahead)
                acquired = True
                self.stats.requests += 1
                headers = _range(source.offset + ahead.start, source.offset + ahead.stop)
                response = await self._send(link.url, headers)
                ahead.link, ahead.slots, ahead.response = link, slots, response
                ahead.ready.set()
                await trio.sleep_forever()  # until taken over or dropped
        except (RDError, *TRANSPORT_ERRORS) as exc:
            log.debug("request ahead for %s failed: %s", source.label, exc)
        finally:
            ahead.ready.set()
            if not ahead.taken:
                if response is not None:
                    with trio.CancelScope(shield=True):
                        await response.aclose()
                if slots is not None and acquired:
                    slots.release(ahead)

    async def _send(self, url: str, headers: list[tuple[bytes, bytes]]) -> httpcore.Response:
        """The response to a GET of ``url``, after up to ``MAX_REDIRECTS`` redirects; the caller
        closes it. (httpcore's request API rather than its ``stream()`` context manager: one
        generator less per request on the path of every read.)"""
        extensions = {"timeout": DEFAULT_TIMEOUT}
        for _ in range(MAX_REDIRECTS + 1):
            host = (b"Host", urlsplit(url).netloc.rpartition("@")[2].encode("ascii"))
            response = await self.http.handle_async_request(
                httpcore.Request(b"GET", url, headers=[host, *headers], extensions=extensions)
            )
            location = header(response, b"location") if response.status in _REDIRECTS else ""
            if not location:
                return response
            await response.aclose()
            url = _redirect_target(url, location)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from the download server")

    async def _receive(
        self,
        response: httpcore.Response,
        transfer: Transfer,
        request_stop: int,
        skip: int,
        slots: HostSlots,
        guard: trio.CancelScope,
    ) -> None:
        stats = self.stats
        length = header(response, b"content-length")
        expected = int(length) if length.isdigit() else None
        got = 0
        progress_at = 0  # ``got`` when the stall deadline last moved on
        async for piece in response.aiter_stream():
            got += len(piece)
            stats.bytes_fetched += len(piece)
            if got - progress_at >= STALL_PROGRESS:
                progress_at = got
                guard.deadline = trio.current_time() + self.stall_timeout
            if skip:
                if len(piece) <= skip:
                    skip -= len(piece)
                    continue
                piece = piece[skip:]
                skip = 0
            transfer.feed(piece)
            if transfer.aheads is not None and transfer.ahead is None:
                ahead_stop = transfer.next_request()
                if ahead_stop is not None:
                    self._send_ahead(transfer, request_stop, ahead_stop)
            if transfer.finished or transfer.received >= request_stop:
                if got == expected:
                    # Let httpcore see the end of the message: the connection stays reusable.
                    continue
                return
            if transfer.received >= transfer.want():
                guard.deadline = math.inf  # waiting for the reader is no stall
                if not await transfer.pause(slots):
                    return
                progress_at = got
                guard.deadline = trio.current_time() + self.stall_timeout
            if transfer.should_jump():
                return


def _range(first: int, stop: int) -> list[tuple[bytes, bytes]]:
    """The headers of a GET of bytes ``[first, stop)`` of a download."""
    return [
        (b"Range", f"bytes={first}-{stop - 1}".encode()),
        (b"Accept-Encoding", b"identity"),
        (b"User-Agent", b"rdfs"),
    ]


def _redirect_target(url: str, location: str) -> str:
    """The checked URL a redirect from ``url`` points to (:class:`BadDownloadURL` if unusable)."""
    try:
        target = urljoin(url, location)
    except ValueError:  # urljoin parses the Location: "Invalid IPv6 URL"
        raise BadDownloadURL("a redirect points to a malformed URL") from None
    return checked_url(target)


def check_response(
    response: httpcore.Response,
    link: ResolvedLink,
    source: FileSource,
    first: int,
    discard_limit: int = RANGE_DISCARD_LIMIT,
) -> int:
    """Validate a response to ``Range: bytes=first-…``; returns how many leading bytes to
    discard."""
    status = response.status
    content_type = header(response, b"content-type").lower()
    if status in _REFUSED:
        raise _Refused(status, link.url)
    if status in _TRANSIENT:
        raise _Transient(f"HTTP {status}")
    encoding = header(response, b"content-encoding").strip().lower()
    if encoding and encoding != "identity" and status in (200, 206):
        # Asked for identity: encoded bytes are not the file's bytes (and a range of them is
        # not decodable); never served, never cached.
        raise DownloadError(
            f"{source.name}: the download server sent a {encoding[:32]!r}-encoded body"
        )
    if status == 206:
        content_range = header(response, b"content-range")
        match = _CONTENT_RANGE.match(content_range)
        if match is None or int(match.group(1)) != first or int(match.group(2)) < first:
            raise DownloadError(
                f"{source.name}: wrong Content-Range {content_range!r} "
                f"for a request from byte {first}"
            )
        total = match.group(3)
        if total != "*" and int(total) < source.offset + source.size:
            raise DownloadError(
                f"{source.name}: the download has {total} bytes, the file needs more"
            )
        return 0
    if status == 200:
        if content_type.startswith("text/html"):
            raise _Refused(status, link.url)  # RD's "no longer valid" page
        length = header(response, b"content-length")
        if link.filesize and length.isdigit() and int(length) != link.filesize:
            raise DownloadError(
                f"{source.name}: a {length}-byte answer instead of the {link.filesize}-byte file"
            )
        if first > discard_limit:
            raise DownloadError(
                f"{source.name}: the download server ignores Range "
                f"(200 for a request from byte {first})"
            )
        if first:
            log.info(
                "download server ignores Range for %s: discarding %d bytes", source.name, first
            )
        return first
    if status == 416:
        raise DownloadError(
            f"{source.name}: byte {first} is past the end of the download (HTTP 416)"
        )
    raise DownloadError(f"{source.name}: unexpected HTTP {status} from the download server")
