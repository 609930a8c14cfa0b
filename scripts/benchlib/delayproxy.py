"""A TCP proxy that adds a fixed delay before forwarding each request (time to first byte).

``python delayproxy.py LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_S``

This kernel has no ``netem``: bandwidth is shaped with ``tbf`` on a veth pair, and latency is
added here, in user space. Every chunk the client sends (an HTTP request) waits ``DELAY_S``
before it reaches the server, so each request's first byte arrives ``DELAY_S`` later, also on a
reused keep-alive connection. Responses are copied unchanged.
"""

from __future__ import annotations

import functools
import sys

import trio

BUFFER = 256 * 1024


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, delay: float) -> None:
    try:
        while data := await source.receive_some(BUFFER):
            if delay:
                await trio.sleep(delay)
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _handle(
    upstream_host: str, upstream_port: int, delay: float, client: trio.SocketStream
) -> None:
    async with client:
        try:
            server = await trio.open_tcp_stream(upstream_host, upstream_port)
        except OSError:
            return
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, server, delay)
            await _pipe(server, client, 0.0)
            nursery.cancel_scope.cancel()


async def main(
    listen_host: str, listen_port: int, upstream_host: str, upstream_port: int, delay: float
) -> None:
    handler = functools.partial(_handle, upstream_host, upstream_port, delay)
    listeners = await trio.open_tcp_listeners(listen_port, host=listen_host, backlog=1024)
    print("listening", flush=True)
    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    host, port, up_host, up_port, delay_s = sys.argv[1:6]
    try:
        trio.run(main, host, int(port), up_host, int(up_port), float(delay_s))
    except KeyboardInterrupt:
        pass
