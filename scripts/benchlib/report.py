"""The one table the suite prints: metric, path, rdfs, each peer, the ratio, the target,
pass/fail."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PEERS = ("curl", "httpx", "tmpfs")  # rclone columns are added by label as they show up


@dataclass
class Row:
    metric: str
    path: str
    rdfs: float | str | None
    peers: dict[str, float | str | None] = field(default_factory=dict)
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Table:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def render(self) -> str:
        peers = [p for p in PEERS if any(p in r.peers for r in self.rows)]
        peers += sorted({p for r in self.rows for p in r.peers if p not in peers})
        header = ["metric", "path", "rdfs", *peers, "ratio", "target", "ok"]
        lines = [
            [
                r.metric,
                r.path,
                _cell(r.rdfs),
                *(_cell(r.peers.get(p)) for p in peers),
                "-" if r.ratio is None else f"{r.ratio:.2f}x",
                r.target or "-",
                "" if r.ok is None else ("yes" if r.ok else "NO"),
            ]  # fmt: skip
            for r in self.rows
        ]
        widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
        out = []
        for index, line in enumerate([header, *lines]):
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ]
            out.append("| " + " | ".join(cells) + " |")
            if index == 0:
                out.append(
                    "|"
                    + "|".join(
                        ("-" * (w + 1) + ":") if i >= 2 else "-" * (w + 2)
                        for i, w in enumerate(widths)
                    )
                    + "|"
                )
        return "\n".join(out)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps([asdict(r) for r in self.rows], indent=1))
