"""Logging set-up: named `chatbot.*` loggers, one format, the level from the configuration,
and a ring buffer of recent lines for the dashboard's log tail."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def setup_logging(level: str) -> None:
    root = logging.getLogger("chatbot")
    if not any(getattr(h, "_chatbot", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt=DATEFMT))
        handler._chatbot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


class LogBuffer(logging.Handler):
    """Keeps the last `capacity` formatted lines and tells subscribers about each new one."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self.subscribers: list[Callable[[str], None]] = []
        self.setFormatter(logging.Formatter(FORMAT, datefmt=DATEFMT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken log call must not break the caller
            self.handleError(record)
            return
        self.lines.append(line)
        for subscriber in self.subscribers:
            subscriber(line)

    def attach(self, logger_name: str = "chatbot") -> LogBuffer:
        logging.getLogger(logger_name).addHandler(self)
        return self

    def detach(self, logger_name: str = "chatbot") -> None:
        logging.getLogger(logger_name).removeHandler(self)
