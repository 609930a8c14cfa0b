"""The HTTP connection pool for download servers: httpcore, socket reads sized for bulk transfers.

Two costs of a general-purpose client matter on this path, and both are per trip through Python:

* httpcore reads a response body 64 KiB per socket read, and every read costs a trip through h11
  and httpcore (~90 µs on these machines): one streaming GET then tops out near 500 MB/s on
  loopback. Asking the socket for up to ``BULK_READ`` bytes per read is the same traffic in far
  fewer trips (measured: 524 -> 1,000+ MB/s for one GET of 2 GiB). ``recv`` returns what has
  arrived, so a slow link sees no added latency.
* httpx's client layers around httpcore (request and response models, cookies, auth, redirects,
  event hooks) cost ~0.2 ms per request: a keep-alive ranged GET of 96 KiB on loopback takes
  0.62-0.66 ms through ``httpx.AsyncClient`` and 0.41-0.43 ms through httpcore's pool. A media
  scan or a random reader sends one request per read, so the reader talks to httpcore directly
  (httpx stays the client of the API, where those layers earn their keep).

httpcore takes its network layer from its documented ``network_backend`` hook.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

BULK_READ = 1024 * 1024

# What httpx reports as a TransportError: the request failed on the way, not in an HTTP answer.
TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


class _BulkReadStream(httpcore.AsyncNetworkStream):
    """A connection whose reads ask the socket for at least ``BULK_READ`` bytes."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, BULK_READ), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _BulkReadStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _BulkReadBackend(httpcore.AsyncNetworkBackend):
    """trio's network backend, handing out :class:`_BulkReadStream` connections."""

    def __init__(self) -> None:
        self._backend = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _BulkReadStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _BulkReadStream(
            await self._backend.connect_unix_socket(
                path, timeout=timeout, socket_options=socket_options
            )
        )

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def download_pool(
    *, max_keepalive_connections: int, keepalive_expiry: float
) -> httpcore.AsyncConnectionPool:
    """An httpcore connection pool (trio) for ranged GETs of large bodies; TLS verified
    (certifi)."""
    return httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=None,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=_BulkReadBackend(),
    )


def header(response: httpcore.Response, name: bytes) -> str:
    """The first value of header ``name`` (lower case) in ``response``, or ""."""
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
