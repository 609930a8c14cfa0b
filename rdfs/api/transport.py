"""One HTTP exchange with RD: pacing, retries, error mapping, counters.

``Transport.request`` sends a request on the shared ``httpx.AsyncClient`` after taking a token
from the shared ``RateLimiter``, turns error answers into ``APIError`` subclasses and transport
failures into ``NetworkError``, and retries (with ``stamina``: exponential backoff + jitter) only
what is safe to repeat:

- a 429 / ``error_code`` 34, and a connection that was never established: RD did not act on
  the request, so any request may be sent again (``Retry-After`` is honoured);
- a 5xx *without* an ``error_code``, RD's generic 503 ``service_unavailable`` (25, its outage
  answer) and a failure after the request was sent (read timeout, dropped connection): only
  idempotent requests, because RD may have acted on a non-idempotent one;
- any other 5xx *with* an ``error_code`` (e.g. ``hoster_unavailable``) is RD's verdict: never
  retried; nor is an answer the caller names ``definite`` for its endpoint (e.g. the 503 of
  ``/streaming/mediaInfos``, RD's "no metadata for this file").

Every attempt has a wall-clock deadline (``deadline``, default ``DEFAULT_DEADLINE``) covering
the whole exchange: connecting, sending, the status line and the whole body. httpx's timeouts
bound each socket operation only, so a server dripping one byte every 20 s would hold a request
for ever; past the deadline the attempt fails as a ``NetworkError`` (and is retried like one).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import stamina
import trio

from rdfs.api.errors import APIError, NetworkError, ServiceUnavailable, TooManyRequests, error_for
from rdfs.api.ratelimit import RateLimiter

log = logging.getLogger(__name__)

SUCCESS_STATUSES = frozenset({200, 201, 202, 204, 304})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
DEFAULT_DEADLINE = 60.0  # seconds for one attempt: connect, send, status and the whole body
_QUERY_SECRET = re.compile(
    r"(?i)(auth_token|access_token|refresh_token|client_secret|code)=[^&\s]+"
)


@dataclass
class ClientStats:
    """What the client sent: per endpoint (every HTTP request, retries included) and in total."""

    requests: Counter[str] = field(default_factory=Counter)
    total: int = 0
    retries: int = 0
    rate_limited: int = 0  # answers with 429 / error_code 34
    not_modified: int = 0  # 304 answers served from the ETag cache
    token_retries: int = 0  # requests sent again with a new token after a bad_token answer
    errors: int = (
        0  # requests that ended in an error after their retries (incl. a bad_token then refreshed)
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "total": self.total,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "not_modified": self.not_modified,
            "token_retries": self.token_retries,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings; ``RetryPolicy(wait_initial=0, wait_max=0, wait_jitter=0)`` for fast tests."""

    max_retries: int = 5
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    max_retry_after: float = 120.0  # cap on a server-requested wait


def _scrub(text: str) -> str:
    return _QUERY_SECRET.sub(lambda m: m.group(1) + "=***", text)


def _detail(exc: BaseException) -> str:
    """The first non-empty message along the exception's causes (httpx often wraps a bare one,
    e.g. an ``ssl.SSLCertVerificationError`` behind an empty ``ConnectError``)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return "no detail"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Transport:
    def __init__(
        self,
        http: httpx.AsyncClient,
        limiter: RateLimiter,
        *,
        retry: RetryPolicy | None = None,
        stats: ClientStats | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        if not deadline > 0:
            raise ValueError("deadline must be a positive number of seconds")
        self.http = http
        self.limiter = limiter
        self.retry = retry or RetryPolicy()
        self.stats = stats or ClientStats()
        self.deadline = deadline

    async def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        idempotent: bool,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        definite: tuple[type[APIError], ...] = (),
    ) -> httpx.Response:
        """Send with pacing and retries; return a success response or raise ``RDError``.

        ``definite``: error classes that are this endpoint's final answer (never retried)."""
        retrying = stamina.retry_context(
            on=partial(self._should_retry, idempotent=idempotent, definite=definite),
            attempts=self.retry.max_retries + 1,
            timeout=None,
            wait_initial=self.retry.wait_initial,
            wait_max=self.retry.wait_max,
            wait_jitter=self.retry.wait_jitter,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.num > 1:
                        self.stats.retries += 1
                        log.info("retrying %s %s (attempt %d)", method, endpoint, attempt.num)
                    return await self._send_once(
                        method,
                        url,
                        endpoint=endpoint,
                        params=params,
                        data=data,
                        content=content,
                        headers=headers,
                    )
        except Exception:
            self.stats.errors += 1
            raise
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    def _should_retry(
        self, exc: Exception, *, idempotent: bool, definite: tuple[type[APIError], ...] = ()
    ) -> bool | float:
        if definite and isinstance(exc, definite):
            return False
        if isinstance(exc, TooManyRequests):
            return exc.retry_after if exc.retry_after else True
        if isinstance(exc, NetworkError):
            return idempotent or not exc.reached
        if isinstance(exc, APIError):
            # ServiceUnavailable (25) is RD's generic outage answer; other coded 5xx are verdicts.
            transient = exc.code is None or isinstance(exc, ServiceUnavailable)
            return idempotent and exc.status >= 500 and transient
        return False

    async def _send_once(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        params: dict[str, str] | None,
        data: dict[str, str] | None,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        await self.limiter.acquire()
        self.stats.requests[endpoint] += 1
        self.stats.total += 1
        try:
            with trio.move_on_after(self.deadline) as scope:
                response = await self.http.request(
                    method, url, params=params, data=data, content=content, headers=headers
                )
        except httpx.TransportError as exc:
            reached = not isinstance(exc, _NOT_SENT)
            detail = _scrub(_detail(exc))
            log.warning("%s %s failed: %s: %s", method, endpoint, type(exc).__name__, detail)
            raise NetworkError(
                f"{method} {endpoint}: {type(exc).__name__}: {detail}",
                reached=reached,
                endpoint=endpoint,
            ) from exc
        if scope.cancelled_caught:
            log.warning(
                "%s %s failed: no complete answer within %g s", method, endpoint, self.deadline
            )
            raise NetworkError(
                f"{method} {endpoint}: no complete answer within {self.deadline:g} s",
                reached=True,
                endpoint=endpoint,
            )
        if response.status_code in SUCCESS_STATUSES:
            self.limiter.succeeded()
            return response
        error = error_for(response.status_code, response.content, endpoint=endpoint)
        if isinstance(error, TooManyRequests) or response.status_code == 429:
            if not isinstance(error, TooManyRequests):
                error = TooManyRequests(
                    response.status_code, 34, error.error, "", error.details, endpoint=endpoint
                )
            retry_after = _retry_after(response)
            if retry_after is not None:
                error.retry_after = min(retry_after, self.retry.max_retry_after)
            self.stats.rate_limited += 1
            self.limiter.penalize(
                error.retry_after if error.retry_after is not None else self.retry.wait_initial
            )
        log.debug(
            "%s %s -> HTTP %d (%s)",
            method,
            endpoint,
            response.status_code,
            error.error or error.code,
        )
        raise error
