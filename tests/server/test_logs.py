"""The log's repeat filter under a stream of distinct lines, such as the access log's, and the
access log's own way through the formatter."""

from __future__ import annotations

import io
import logging

import pytest

from server.logs import (
    DATEFMT,
    FORMAT,
    MAX_REMEMBERED,
    BatchedStreamHandler,
    LineRecord,
    RepeatFilter,
    SafeFormatter,
)
from tests.conftest import wait_for


def _handler() -> tuple[logging.StreamHandler[io.StringIO], RepeatFilter, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter(FORMAT, datefmt=DATEFMT))
    # An interval no test outlasts: nothing expires on its own while the test runs.
    repeats = RepeatFilter(handler, interval=3600)
    handler.addFilter(repeats)
    return handler, repeats, out


def _record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "chatbot.http", "levelno": logging.INFO, "levelname": "INFO", "msg": message}
    )


def test_distinct_lines_all_pass_and_the_memory_of_them_stays_bounded():
    """An access log at thousands of requests a second: every line differs (its request id).
    Each is written, and the filter remembers at most MAX_REMEMBERED of them (it grew without
    bound, and scanned them all for every line, which cut hit throughput 20-fold)."""
    handler, repeats, out = _handler()
    count = 3 * MAX_REMEMBERED
    for i in range(count):
        handler.handle(_record(f"POST /api/chat 200 id=r-{i}"))
    assert len(out.getvalue().splitlines()) == count
    assert len(repeats._runs) <= MAX_REMEMBERED


def test_a_message_holding_repeats_is_not_forgotten_under_a_flood_of_others():
    """A repeating error keeps being held back (and counted) while distinct lines flow past."""
    handler, repeats, out = _handler()
    for _ in range(3):
        handler.handle(_record("upstream refused the connection"))
    for i in range(2 * MAX_REMEMBERED):
        handler.handle(_record(f"POST /api/chat 200 id=r-{i}"))
    handler.handle(_record("upstream refused the connection"))
    text = out.getvalue()
    assert text.count("upstream refused the connection") == 1  # the first only; 3 held
    assert ("upstream refused the connection", 3) in [
        (key[2], run.held) for key, run in repeats._runs.items()
    ]


async def test_batched_lines_all_arrive_in_order_and_a_warning_goes_at_once():
    """The headless server writes info lines in batches: none is lost or reordered, they
    arrive within the batch time, and a warning (with what was waiting before it) goes out
    at once."""
    out = io.StringIO()
    handler = BatchedStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(50):
        handler.handle(_record(f"line {i}"))
    assert out.getvalue() == ""  # waiting for the batch
    warning = _record("upstream is down")
    warning.levelno, warning.levelname = logging.WARNING, "WARNING"
    handler.handle(warning)
    assert out.getvalue().splitlines() == [f"line {i}" for i in range(50)] + ["upstream is down"]
    handler.handle(_record("after"))

    async def written() -> bool:
        return out.getvalue().endswith("after\n")

    assert await wait_for(written)


def test_outside_an_event_loop_each_line_is_written_at_once():
    out = io.StringIO()
    handler = BatchedStreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(_record("starting"))
    assert out.getvalue() == "starting\n"


@pytest.mark.parametrize(
    "message",
    ["POST /api/chat 200 id=r-1 model=m cache=hit", "forged\nline\x1b[31m\u2028", "x" * 5000],
)
def test_an_access_line_is_formatted_as_any_record(message: str) -> None:
    # The access log's records take a shorter way through the formatter: the same text.
    formatter = SafeFormatter(FORMAT, datefmt=DATEFMT)
    fast = formatter.format(LineRecord("chatbot.http", message))
    record = logging.LogRecord("chatbot.http", logging.INFO, "", 0, message, None, None)
    assert fast == formatter.format(record)
    assert "\n" not in fast and fast.startswith(formatter.formatTime(record, DATEFMT))
