"""The history the dashboard's charts plot: every sample of the last five minutes, 10-second
means for the last hour and ever coarser means since start, in bounded memory (no Qt).

Tiers, each fed every sample:
- fine: the samples themselves for `FINE_S` (at most `FINE_MAX` of them, ~300 at one a second);
- medium: means over `MEDIUM_STEP_S` for `MEDIUM_S` (at most 361 points);
- coarse: means over buckets of 60 s that double in width whenever there would be more than
  `COARSE_MAX` of them, so any uptime fits in 512 points (a day: buckets of 4 min; a year: ~17 h).

So a series holds at most ~1,475 points (≈ 50 kB for the three charts) however long the app runs.
A range is drawn from the finest tier that covers each part of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

SERIES = ("hit_rate", "queue", "memory")
# The chart ranges: their label and span in seconds (None: since the first sample).
RANGES: dict[str, tuple[str, float | None]] = {
    "5min": ("5 min", 300.0),
    "1h": ("1 h", 3600.0),
    "all": ("Since start", None),
}
FINE_S = 300.0
FINE_MAX = 600  # if samples came faster than two a second, the fine tier covers less time
MEDIUM_STEP_S = 10.0
MEDIUM_S = 3600.0
COARSE_STEP_S = 60.0
COARSE_MAX = 512

Point = tuple[float, ...]  # (time, value per series)


def chart_values(snap: Mapping[str, Any]) -> tuple[float, ...]:
    """What the charts plot from one snapshot, in `SERIES` order: the hit rate over the last
    minute (the tile has it since start), queue depth (waiting + active), RSS in MB."""
    cache = snap.get("response_cache") or {}
    queue = snap.get("queue") or {}
    hit_rate = float(snap.get("hit_rate_recent", cache.get("hit_rate", 0.0)))
    depth = float(int(queue.get("waiting", 0)) + int(queue.get("active", 0)))
    rss = float((snap.get("memory") or {}).get("rss_mb", 0.0))
    return (hit_rate, depth, rss)


class _Means:
    """Means of the samples over fixed-width time buckets; the open bucket counts as a point."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.points: deque[tuple[Point, int]] = deque()  # (mean point, samples in it)
        self._key: float | None = None
        self._sums: list[float] = []
        self._n = 0

    def add(self, point: Point) -> None:
        key = point[0] // self.step
        if key != self._key and self._n:
            self.points.append(self._open())
            self._n = 0
        if not self._n:
            self._key, self._sums = key, list(point)
        else:
            self._sums = [s + v for s, v in zip(self._sums, point, strict=True)]
        self._n += 1

    def _open(self) -> tuple[Point, int]:
        return tuple(s / self._n for s in self._sums), self._n

    def all_points(self) -> list[Point]:
        closed = [p for p, _ in self.points]
        return [*closed, self._open()[0]] if self._n else closed

    def halve(self) -> None:
        """Merge neighbours pairwise, weighted by their samples: half the points, twice the step."""
        old, self.points = list(self.points), deque()
        for i in range(0, len(old) - 1, 2):
            (a, na), (b, nb) = old[i], old[i + 1]
            n = na + nb
            self.points.append((tuple((x * na + y * nb) / n for x, y in zip(a, b, strict=True)), n))
        if len(old) % 2:
            self.points.append(old[-1])
        self.step *= 2

    def __len__(self) -> int:
        return len(self.points) + (1 if self._n else 0)


class ChartHistory:
    def __init__(self) -> None:
        self._fine: deque[Point] = deque(maxlen=FINE_MAX)
        self._medium = _Means(MEDIUM_STEP_S)
        self._coarse = _Means(COARSE_STEP_S)

    def add(self, t: float, values: tuple[float, ...]) -> None:
        """One sample at time `t` (seconds, any monotonic clock), values in `SERIES` order."""
        if len(values) != len(SERIES):
            raise ValueError(f"chart history: {len(SERIES)} values expected, got {len(values)}")
        point = (t, *values)
        self._fine.append(point)
        while self._fine and self._fine[0][0] <= t - FINE_S:
            self._fine.popleft()
        self._medium.add(point)
        while self._medium.points and self._medium.points[0][0][0] < t - MEDIUM_S:
            self._medium.points.popleft()
        self._coarse.add(point)
        if len(self._coarse) > COARSE_MAX:
            self._coarse.halve()

    def __len__(self) -> int:
        """Points held, all tiers together: what memory the history takes."""
        return len(self._fine) + len(self._medium) + len(self._coarse)

    def points(self, span: float | None) -> list[Point]:
        """The points of the last `span` seconds (None: since start), finest tier first."""
        if not self._fine:
            return []
        now = self._fine[-1][0]
        start = -float("inf") if span is None else now - span
        out = [p for p in self._fine if p[0] > start]
        for tier in (self._medium, self._coarse):
            if out and out[0][0] - start <= tier.step:
                break  # the finer tiers reach back far enough (once a second, every second)
            edge = out[0][0] if out else now
            older = [p for p in tier.all_points() if start < p[0] < edge]
            out = older + out
        return out

    def series(self, key: str, span: float | None) -> list[tuple[float, float]]:
        """(time, value) of one series over the last `span` seconds (None: since start)."""
        if key not in SERIES:
            raise ValueError(f"chart history: unknown series {key!r} (known: {', '.join(SERIES)})")
        i = SERIES.index(key) + 1
        return [(p[0], p[i]) for p in self.points(span)]
