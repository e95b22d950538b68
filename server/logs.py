"""Logging set-up: named `chatbot.*` loggers, one format, the level from the configuration,
and a ring buffer of recent lines for the dashboard's log tail."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
# A message longer than this (a client's 100 KB field quoted somewhere) is cut.
MAX_MESSAGE = 4000


def _escape(char: str) -> str:
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


class SafeFormatter(logging.Formatter):
    """One record, one line: control characters in a message (a request id with a newline,
    say, which would forge a log line) are escaped, and a huge message is cut. Tracebacks,
    which the formatter appends after the message, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if not message.isprintable():
            message = "".join(c if c.isprintable() else _escape(c) for c in message)
        if len(message) > MAX_MESSAGE:
            message = f"{message[:MAX_MESSAGE]}… ({len(message)} characters)"
        record.message = message
        return super().formatMessage(record)


def setup_logging(level: str) -> None:
    root = logging.getLogger("chatbot")
    if not any(getattr(h, "_chatbot", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter(FORMAT, datefmt=DATEFMT))
        handler._chatbot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


class LogBuffer(logging.Handler):
    """Keeps the last `capacity` records and hands each new one to subscribers.

    Records are formatted only when someone reads them (`lines`, `format`): under load the log
    runs at thousands of records a second and the dashboard shows a few hundred of them.
    """

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=capacity)
        self.subscribers: list[Callable[[logging.LogRecord], None]] = []
        self.setFormatter(SafeFormatter(FORMAT, datefmt=DATEFMT))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for subscriber in self.subscribers:
            subscriber(record)

    def format_line(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record)
        except Exception:  # a broken log call must not break the reader
            return f"{record.levelname} {record.name}: (unformattable message {record.msg!r})"

    @property
    def lines(self) -> list[str]:
        return [self.format_line(r) for r in self.records]

    def attach(self, logger_name: str = "chatbot") -> LogBuffer:
        logging.getLogger(logger_name).addHandler(self)
        return self

    def detach(self, logger_name: str = "chatbot") -> None:
        logging.getLogger(logger_name).removeHandler(self)
