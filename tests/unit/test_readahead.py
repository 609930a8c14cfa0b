"""The read-pattern policy (rdfs.data.readahead), with plain numbers: no HTTP, no trio."""

from __future__ import annotations

from dataclasses import dataclass

from rdfs.data.readahead import (
    BACK_TOLERANCE,
    FORWARD_TOLERANCE,
    INTERLEAVED_RUN_MIN,
    MAX_RUNS,
    SEQUENTIAL_MIN,
    STREAM_ON_SEEK,
    Runs,
    Window,
    fetch_end,
    first_window,
    head_follow_up,
    run_start,
    window_budget,
)

KiB = 1024
MiB = 1024 * KiB


@dataclass
class FakeStream:
    """A stream's reach as the run tracker sees it."""

    low: int
    high: int
    serving: bool = True

    def covers(self, offset: int) -> bool:
        return self.low <= offset <= self.high

    def straggler(self, offset: int) -> bool:
        return False


def test_window_is_a_quarter_of_the_sequential_bytes_within_bounds() -> None:
    window = Window(run_start=0, consumed=128 * KiB, initial=256 * KiB)
    assert window.size(budget=64 * MiB) == 256 * KiB  # little read: the initial window
    window.advance(20 * MiB)
    assert window.size(budget=64 * MiB) == 5 * MiB
    assert window.size(budget=4 * MiB) == 4 * MiB  # capped by the budget
    window.advance(5 * MiB)  # an out-of-order read behind does not move it back
    assert window.consumed == 20 * MiB


def test_the_first_window_is_the_read_that_started_the_stream() -> None:
    """A probe's 32 KiB reads earn a 64 KiB window (a close wastes that much at most), a
    doubling reader's (rclone serve: 4 KiB, 8 KiB, ... until its response is written) the size of
    its last read, which its next read consumes; a player's or a copy's large reads the whole
    initial window."""
    initial = 256 * KiB
    assert first_window(32 * KiB, initial) == 64 * KiB
    assert first_window(512, initial) == 64 * KiB  # never less than two blocks
    assert first_window(128 * KiB, initial) == 128 * KiB
    assert first_window(4 * MiB, initial) == 256 * KiB
    # A player's reads (STREAM_ON_SEEK or more) get the whole initial window at once: at 256 KiB
    # reads, two of them (512 KiB) do not cover a 30 ms link's round trips at 10 MB/s.
    assert first_window(STREAM_ON_SEEK, MiB) == MiB
    assert first_window(STREAM_ON_SEEK // 2, MiB) == STREAM_ON_SEEK // 2
    window = Window(run_start=0, consumed=128 * KiB, initial=first_window(32 * KiB, initial))
    assert window.size(budget=64 * MiB) == 64 * KiB
    window.advance(2 * MiB)
    assert window.size(budget=64 * MiB) == 512 * KiB  # then a quarter of the run, as ever


def test_a_new_run_starts_at_its_read_unless_cached_blocks_precede_it() -> None:
    block = 32 * KiB
    offset = 10 * block + 31 * KiB
    # Nothing cached before the read's block: the run starts at the read, not at its block.
    assert run_start(offset, 10 * block, block) == offset
    # A previous handle's blocks before it: the run continues that reading.
    assert run_start(offset, 2 * block, block) == 2 * block


def test_a_far_read_after_the_first_block_fetches_the_heads_next_block() -> None:
    """ffprobe on an MP4: block 0, then the moov at the end (fetch block 1 alongside: the head
    is read again from byte 48); a head read alone, or a reader already past block 0, no."""
    assert list(head_follow_up(True, 60_000)) == [1]
    assert list(head_follow_up(True, 1)) == []  # reading on: block 1 is this read's own
    assert list(head_follow_up(False, 60_000)) == []


def test_a_read_of_a_block_or_more_fetches_up_to_its_end() -> None:
    block, size = 32 * KiB, 10 * MiB
    assert fetch_end(1000, 1000 + 96 * KiB, block, size) == 1000 + 96 * KiB
    assert fetch_end(1000, 1512, block, size) is None  # small reads come in series
    assert fetch_end(0, 64 * KiB, block, size) is None  # ends on a block boundary
    assert fetch_end(size - 40 * KiB, size - 3, block, size - 3) is None  # the file's end


def test_window_target_is_whole_blocks_and_stops_at_the_end() -> None:
    window = Window(run_start=0, consumed=100, initial=1000)
    assert window.target(budget=10_000, stop=10**9, block=512) == 1536  # 1100 rounded up
    assert window.target(budget=10_000, stop=1200, block=512) == 1200


def test_requests_go_out_once_a_quarter_of_a_window_is_missing() -> None:
    """Requests are bounded by the window's end and never tiny: a close or a seek wastes at most
    the window, a sequential reader does not pay a round trip per read."""
    window = Window(run_start=0, consumed=8 * MiB, initial=256 * KiB)  # window: 2 MiB
    stop, block, budget = 10**12, 32 * KiB, 64 * MiB
    assert window.target(budget, stop, block) == 10 * MiB
    for received in (8 * MiB, 9 * MiB + 512 * KiB):  # nothing under way
        assert window.due(received, received, budget, stop, block)
    quarter_missing = 9 * MiB + 512 * KiB + 1
    assert not window.due(quarter_missing, quarter_missing, budget, stop, block)
    assert not window.due(10 * MiB, 10 * MiB, budget, stop, block)
    assert window.request_end(9 * MiB, budget, stop, block) == 10 * MiB
    # The end of the file: the rest is requested, however little.
    assert window.due(10 * MiB - 10, 10 * MiB - 10, budget, stop=10 * MiB, block=block)


def test_a_run_needs_a_stream_where_a_request_would_be_due() -> None:
    """A run re-reading what another run fetched (a seek back) starts its stream only when a
    quarter of its window is missing, as a running stream sends its next request."""
    window = Window(run_start=0, consumed=8 * MiB, initial=256 * KiB)  # window: 2 MiB, to 10 MiB
    stop, block, budget = 10**12, 32 * KiB, 64 * MiB
    assert window.due_from(budget, stop, block) == 9 * MiB + 512 * KiB
    assert window.due(9 * MiB + 512 * KiB, 0, budget, stop, block)
    assert not window.due(9 * MiB + 512 * KiB + 1, 0, budget, stop, block)
    assert window.due_from(budget, stop=9 * MiB, block=block) == 9 * MiB  # the file's end


def test_the_next_request_goes_out_before_the_one_under_way_ends() -> None:
    """A reader as fast as the link: the next request is sent while the one being read still
    has half a window to come (its round trip runs meanwhile), never beyond the window's end."""
    window = Window(run_start=0, consumed=8 * MiB, initial=256 * KiB)  # window: 2 MiB, to 10 MiB
    stop, block, budget = 10**12, 32 * KiB, 64 * MiB
    # A request up to 9 MiB is under way: 1 MiB of it (half the window) still to come.
    assert window.due(8 * MiB, 9 * MiB, budget, stop, block)
    more_to_come = 9 * MiB + 64 * KiB  # more than half a window still to come
    assert not window.due(8 * MiB, more_to_come, budget, stop, block)
    assert not window.due(8 * MiB, 10 * MiB, budget, stop, block)  # the window is asked for
    assert window.request_end(9 * MiB, budget, stop, block) == 10 * MiB


def test_reads_near_the_reader_or_inside_the_reach_are_covered() -> None:
    window = Window(run_start=0, consumed=10 * MiB, initial=512 * KiB)
    ahead = 12 * MiB
    assert window.covers(10 * MiB - BACK_TOLERANCE, ahead)
    assert not window.covers(10 * MiB - BACK_TOLERANCE - 1, ahead)
    assert window.covers(ahead + FORWARD_TOLERANCE, ahead)
    assert not window.covers(ahead + FORWARD_TOLERANCE + 1, ahead)
    assert window.straggler(10 * MiB - 1, budget=64 * MiB)
    assert not window.straggler(10 * MiB, budget=64 * MiB)


def test_window_budget_shares_half_the_cache() -> None:
    assert window_budget(128 * MiB, streams=1, initial=512 * KiB, max_window=64 * MiB) == 64 * MiB
    assert window_budget(128 * MiB, streams=4, initial=512 * KiB, max_window=64 * MiB) == 16 * MiB
    assert window_budget(MiB, streams=8, initial=512 * KiB, max_window=64 * MiB) == 512 * KiB


def test_runs_follow_sequential_reads_and_drop_the_oldest() -> None:
    runs: Runs[FakeStream] = Runs()
    assert runs.find(0) == (None, False)
    first, dropped = runs.begin(0, 128 * KiB)
    assert not dropped
    assert runs.find(128 * KiB) == (first, False)  # continues
    assert runs.find(50 * MiB) == (None, False)  # a seek
    second, _ = runs.begin(50 * MiB, 50 * MiB + 4096)
    assert runs.find(128 * KiB) == (first, True)  # back to the first: resumed
    assert runs.runs[0] is first and runs.others() == [second]
    gone = []
    for n in range(MAX_RUNS):
        _, dropped = runs.begin(100 * MiB * (n + 1), 100 * MiB * (n + 1) + 1)
        gone += dropped
    assert gone == [second, first] and len(runs.runs) == MAX_RUNS  # least recently read first


def test_a_run_claims_reads_in_its_streams_reach() -> None:
    runs: Runs[FakeStream] = Runs()
    run, _ = runs.begin(0, 128 * KiB)
    far = 40 * MiB
    assert runs.find(far) == (None, False)
    run.stream = FakeStream(low=0, high=far)
    assert runs.find(far) == (run, False)
    run.stream.serving = False  # a stream that stopped early reaches nothing
    assert runs.find(far) == (None, False)


def test_which_reads_earn_a_stream() -> None:
    """From the pattern: a probe's few small reads do not, a copy's run does once it reaches
    SEQUENTIAL_MIN, a player's large first read does at once."""
    runs: Runs[FakeStream] = Runs()
    run, _ = runs.begin(0, 32 * KiB)
    assert not run.earns_stream(64 * KiB)  # a probe's second head read
    assert not run.earns_stream(512 + 96 * KiB)  # a WebDAV server's 512 B + 96 KiB
    assert run.earns_stream(SEQUENTIAL_MIN)  # reading on
    assert not run.earns_stream(SEQUENTIAL_MIN, resumed=True)  # back to the head after the tail
    assert run.earns_stream(INTERLEAVED_RUN_MIN, resumed=True)
    assert run.earns_stream(STREAM_ON_SEEK, new=True)
    assert not run.earns_stream(STREAM_ON_SEEK - 1, new=True)
    # A new run that continues blocks cached by a previous reading counts from where they begin.
    continued, _ = runs.begin(0, 10 * MiB + 32 * KiB)
    assert continued.earns_stream(10 * MiB + 32 * KiB, new=True)
