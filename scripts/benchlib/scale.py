"""Helpers of ``scripts/bench-sync``: RSS over time, the hot store queries, output side by side."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rdfs.fuse.operations import READDIR_PAGE
from rdfs.store.metadata import TORRENTS_INODE, Cache
from rdfs.tree.specs import Namespace


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """VmRSS of a process every ``interval`` seconds in a thread, with a label per phase."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, str, float]] = []  # (seconds since start, phase, MiB)
        self.phase = "start"
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic() - self._start, self.phase, rss_mib(self.pid)))
            except OSError:
                return

    def by_phase(self) -> str:
        """``phase: max MiB`` for each phase, in order: RSS over the run in one line."""
        peaks: dict[str, float] = {}
        for _, phase, mib in self.samples:
            peaks[phase] = max(peaks.get(phase, 0.0), mib)
        return ", ".join(f"{phase} {mib:.0f}" for phase, mib in peaks.items())


def _median_us(samples: Sequence[float]) -> float:
    return round(1e6 * statistics.median(samples), 1)


def hot_queries(cache: Cache, count: int = 2_000) -> dict[str, float]:
    """Median microseconds of the namespace reads the FUSE adapter makes: a lookup by name, a
    getattr by inode and a readdir page (READDIR_PAGE entries, by inode cursor), on random
    entries."""
    ns = Namespace(cache)
    rng = random.Random(1)
    rows = cache.conn.execute("SELECT inode, parent, name FROM entries").fetchall()
    dirs = [r[0] for r in cache.conn.execute("SELECT DISTINCT parent FROM entries").fetchall()]
    picks = [rng.choice(rows) for _ in range(count)]
    lookups, getattrs, pages = [], [], []
    for inode, parent, name in picks:
        start = time.perf_counter()
        ns.lookup(parent, name)
        lookups.append(time.perf_counter() - start)
        start = time.perf_counter()
        ns.node(inode)
        getattrs.append(time.perf_counter() - start)
    for parent in [rng.choice(dirs) for _ in range(count // 10)]:
        start = time.perf_counter()
        ns.child_stats(parent, 0, READDIR_PAGE)
        pages.append(time.perf_counter() - start)
    full = []  # full pages, at random places in /torrents
    sql = "SELECT inode FROM entries WHERE parent = ? ORDER BY inode"
    torrents = [r[0] for r in cache.conn.execute(sql, (TORRENTS_INODE,))]
    for _ in range(count // 10):
        after = (
            torrents[rng.randrange(len(torrents) - READDIR_PAGE)] if torrents[READDIR_PAGE:] else 0
        )
        start = time.perf_counter()
        ns.child_stats(TORRENTS_INODE, after, READDIR_PAGE)
        full.append(time.perf_counter() - start)
    return {
        "store: lookup (us, median)": _median_us(lookups),
        "store: getattr (us, median)": _median_us(getattrs),
        "store: readdir of a random dir (us, median)": _median_us(pages),
        f"store: readdir page of {READDIR_PAGE} in /torrents (us, median)": _median_us(full),
    }


def side_by_side(runs: dict[int, dict[str, object]]) -> str:
    """One row per metric, one column per library size, and the growth between the first and
    the last size where both are numbers."""
    sizes = list(runs)
    keys: list[str] = []
    for results in runs.values():
        keys += [k for k in results if k not in keys]
    header = ["metric", *(f"{size:,} torrents" for size in sizes)]
    if len(sizes) > 1:
        header.append("growth")
    lines = []
    for key in keys:
        values = [runs[size].get(key) for size in sizes]
        row = [key, *("-" if v is None else str(v) for v in values)]
        if len(sizes) > 1:
            first, last = values[0], values[-1]
            numbers = isinstance(first, (int, float)) and isinstance(last, (int, float))
            row.append(f"{last - first:+.4g}" if numbers else "")  # type: ignore[operator]
        lines.append(row)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = []
    for index, row in enumerate([header, *lines]):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
