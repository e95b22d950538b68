"""Plain-text formatting of the dashboard's figures (no Qt, so it is trivially testable)."""

from __future__ import annotations

import time

DASH = "—"


def percent(rate: float) -> str:
    """0.7143 -> '71 %'."""
    return f"{rate * 100:.0f} %"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """12 -> '12 entries', 1 -> '1 entry'."""
    word = singular if n == 1 else (plural or singular + "s")
    return f"{n:,} {word}"


def megabytes(value: float) -> str:
    """A size in MB with as many decimals as help at that magnitude: 0.04, 3.21, 84.2, 1,234."""
    if 0 < value < 0.01:
        return "<0.01"  # a few kB: "0.00" would read as empty
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def per_second(rate: float) -> str:
    """Requests per second: '0.5 /s', '12 /s'."""
    return f"{rate:.1f} /s" if rate < 10 else f"{rate:,.0f} /s"


def millis(value: float | None) -> str:
    """A duration in ms for the table and tiles; None (not measured) becomes a dash."""
    if value is None:
        return DASH
    if value < 10:
        return f"{value:.1f}" if value != int(value) else f"{value:.0f}"
    return f"{value:,.0f}"


def clock(unix_seconds: float) -> str:
    """Local wall-clock time HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(unix_seconds))


def duration(seconds: float) -> str:
    """Uptime: '42 s', '5 min', '2 h 05 min', '3 d 4 h'."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    minutes, _ = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def span(seconds: float) -> str:
    """A chart's time span: '5 min', '1 h', '2 h 05 min', '45 s'."""
    s = int(seconds)
    if s >= 3600 and s % 3600 < 60:
        return f"{s // 3600} h"
    return duration(s)
