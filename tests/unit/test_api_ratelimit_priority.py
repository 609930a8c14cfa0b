"""Background requests (the file-list fill) yield to foreground ones, on trio's fake clock."""

from __future__ import annotations

import trio
import trio.testing

from rdfs.api.ratelimit import WINDOW, RateLimiter, background


async def _send(limiter: RateLimiter, log: list[tuple[str, float]], name: str, bg: bool) -> None:
    if bg:
        with background():
            await limiter.acquire()
    else:
        await limiter.acquire()
    log.append((name, trio.current_time()))


async def test_background_leaves_the_reserve_free(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=250)
    assert limiter.reserve() == 25
    start = trio.current_time()
    sent: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(_send, limiter, sent, f"bg{i}", True)
        await trio.sleep(1)
        # A file opened during the fill is unrestricted at once, from the reserve.
        assert [t for _, t in sent] == [start] * 225
        assert limiter.budget_left() == 25
        await _send(limiter, sent, "fg", False)
        assert sent[-1] == ("fg", start + 1)
    times = [t for name, t in sent if name.startswith("bg")]
    # 225 at once, the other 75 once the first sends left the window (never into the reserve).
    assert times == [start] * 225 + [start + WINDOW] * 75
    assert limiter.background_acquired == 300 and limiter.acquired == 301


async def test_waiting_foreground_goes_first(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=10)  # reserve: 1
    start = trio.current_time()
    for _ in range(10):  # one send a second fills the window
        await limiter.acquire()
        await trio.sleep(1)
    sent: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send, limiter, sent, "background", True)
        await trio.sleep(0.5)
        nursery.start_soon(_send, limiter, sent, "foreground", False)
    # The foreground request, though later, takes the first free send; the background one waits
    # until a send more than the reserve is free.
    assert sent == [("foreground", start + WINDOW), ("background", start + 2 + WINDOW)]


async def test_a_foreground_burst_passes_the_background_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(per_minute=20)  # reserve: 2
    start = trio.current_time()
    sent: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(_send, limiter, sent, f"bg{i}", True)
        await trio.sleep(1)
        for i in range(10):
            nursery.start_soon(_send, limiter, sent, f"fg{i}", False)
    kinds = [(name[:2], t) for name, t in sent]  # trio starts tasks in no fixed order
    assert kinds[:18] == [("bg", start)] * 18
    # 2 foreground sends from the reserve at once; the other 8 go first when the window frees.
    assert kinds[18:20] == [("fg", start + 1)] * 2
    assert kinds[20:28] == [("fg", start + WINDOW)] * 8
    assert [kind for kind, _ in kinds[28:]] == ["bg"] * 22

async def test_background_is_scoped_to_its_block(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(per_minute=10)
    with background():
        for _ in range(9):
            await limiter.acquire()
    start = trio.current_time()
    await limiter.acquire()  # foreground again after the block: takes the reserve at once
    assert trio.current_time() == start and limiter.budget_left() == 0
    assert limiter.background_acquired == 9
