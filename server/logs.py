"""Logging set-up: named `chatbot.*` loggers, one format, the level from the configuration,
repeats held back, and a ring buffer of recent lines for the dashboard's log tail."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
# A message longer than this (a client's 100 KB field quoted somewhere) is cut.
MAX_MESSAGE = 4000


def _escape(char: str) -> str:
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


# Looked up now rather than on the first escape: out of file descriptors, the lazy import of the
# codec fails, and with it the very line that reports the shortage (seen in a flood test).
codecs.lookup("unicode_escape")


class SafeFormatter(logging.Formatter):
    """One record, one line: control characters in a message (a request id with a newline,
    say, which would forge a log line) are escaped, and a huge message is cut. Tracebacks,
    which the formatter appends after the message, keep their lines."""

    _second: tuple[int, str | None] | None = None
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Whole seconds (DATEFMT): formatted once a second, not once a line.
        if datefmt is None:
            return super().formatTime(record, datefmt)
        second = (int(record.created), datefmt)
        if second != self._second:
            self._second_text = super().formatTime(record, datefmt)
            self._second = second
        return self._second_text

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _safe(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # The access log's line per request, in the usual FORMAT: the same text without the
        # `%`-style machinery (which was 7 % of a cache hit's CPU at info).
        if type(record) is LineRecord and self._fmt == FORMAT:
            record.message = message = _safe(record.msg)
            record.asctime = when = self.formatTime(record, self.datefmt)
            return f"{when} INFO    {record.name}: {message}"
        return super().format(record)


def _safe(message: str) -> str:
    if not message.isprintable():
        message = "".join(c if c.isprintable() else _escape(c) for c in message)
    if len(message) > MAX_MESSAGE:
        message = f"{message[:MAX_MESSAGE]}… ({len(message)} characters)"
    return message


# How often a run of identical records is summarised, and how many distinct recent messages are
# remembered to recognise repeats.
REPEAT_INTERVAL = 10.0
MAX_REMEMBERED = 1000

_Key = tuple[str, int, str, str]  # logger, level, message, exception type


@dataclass
class _Run:
    since: float
    held: int = 0
    timer: asyncio.TimerHandle | None = None


class RepeatFilter(logging.Filter):
    """Lets the first of identical records through and holds back the repeats, with one
    summary per interval while they go on ("... (repeated 5123 times in the last 10 s)").

    A flood (the event loop failing accept() thousands of times a second, or one error per
    request under load) then costs a line per interval instead of gigabytes. It sits on a
    handler, to which it sends its summaries: on time from the running event loop, or with the
    next identical record when it is used outside one.
    """

    def __init__(self, handler: logging.Handler, interval: float = REPEAT_INTERVAL) -> None:
        super().__init__()
        self.handler = handler
        self.interval = interval
        self._runs: dict[_Key, _Run] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False) or getattr(record, "per_request", False):
            return True  # the access log's one line per request is never held back
        key = _key(record)
        now = time.monotonic()
        summary = None
        with self._lock:
            run = self._runs.get(key)
            if run is None or (not run.held and now - run.since >= self.interval):
                if run is None and len(self._runs) >= MAX_REMEMBERED:
                    self._forget()
                # Re-inserted at the end, so the oldest runs come first (see _forget).
                self._runs.pop(key, None)
                self._runs[key] = _Run(since=now)
                return True
            if now - run.since >= self.interval:
                # The summary is overdue (no running loop timed it, or the loop was busy):
                # it goes out now, and this record opens the next interval.
                summary = _summary(key, run.held, now - run.since)
                run = self._runs[key] = _Run(since=now, timer=run.timer)
            run.held += 1
            if run.timer is None:
                run.timer = _call_later(run.since + self.interval - now, self._flush, key)
        if summary is not None:
            self.handler.handle(summary)
        return False

    def _flush(self, key: _Key) -> None:
        """The interval is over: report the repeats it held, and hold the next ones anew."""
        now = time.monotonic()
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                return
            run.timer = None
            if not run.held:
                return
            if now < run.since + self.interval:  # a later interval than the one timed
                run.timer = _call_later(run.since + self.interval - now, self._flush, key)
                return
            summary = _summary(key, run.held, now - run.since)
            self._runs[key] = _Run(since=now)
        self.handler.handle(summary)

    def _forget(self) -> None:
        """Make room for one more message: forget the oldest one that holds no repeats.

        Amortised O(1): the access log's lines are all distinct (each has its request id), so
        at thousands of requests a second the memory is always full. Scanning it for expired
        runs cost ~1 ms per line and grew without bound while nothing had expired. A message
        forgotten before its interval ended merely lets its next repeat through. A run holding
        repeats is moved to the end instead, so its summary still comes.
        """
        runs = self._runs
        for _ in range(len(runs)):
            key = next(iter(runs))
            run = runs.pop(key)
            if not run.held:
                return
            runs[key] = run


def _key(record: logging.LogRecord) -> _Key:
    try:
        message = record.getMessage()
    except Exception:  # a broken log call is still logged (by the formatter's error path)
        message = str(record.msg)
    error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
    return record.name, record.levelno, message, error


def _summary(key: _Key, held: int, seconds: float) -> logging.LogRecord:
    name, level, message, _ = key
    return logging.makeLogRecord(
        {
            "name": name,
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": "%s (repeated %d times in the last %.0f s)",
            "args": (message, held, seconds),
            "repeat_summary": True,
        }
    )


def _call_later(
    delay: float, callback: Callable[[_Key], None], key: _Key
) -> asyncio.TimerHandle | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(delay, callback, key)


# Extra fields of a log call that writes the one line of a request (the access log).
PER_REQUEST = {"per_request": True}


class LineRecord(logging.LogRecord):
    """An info record of a line already written out: the access log's line per request.

    What LogRecord's own __init__ does besides (the caller's path split into file and module,
    the clock read three ways, `%` formatting of a dozen arguments) was ~5 % of a cache hit
    (bench/README.md, "Hit throughput against the floor"). Formatters, filters and handlers
    see the attributes every record has; `per_request` as the PER_REQUEST extra gives it."""

    def __init__(self, name: str, message: str) -> None:  # every attribute set here, no super()
        now = time.time()
        self.name = name
        self.msg = message
        self.args = None
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = self.filename = self.module = ""
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = ""
        self.created = now
        self.msecs = int((now - int(now)) * 1000) + 0.0
        self.relativeCreated = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
        self.thread = self.threadName = None
        self.processName = self.process = None
        self.taskName = None
        self.per_request = True


_HTTP_LOG = logging.getLogger("chatbot.http")


def log_chat(method: str, path: str, status: int, chat_info: dict[str, Any], ms: float) -> None:
    """The access-log line of a chat request: what a person debugging a slow or failed answer
    needs. A client that disconnected is logged with status 499 (nginx's "client closed
    request"), a stream a restart or stop ended with 503 and `error=server_restart` or
    `error=shutdown`. Written as `logger.info(line)` would be, through LineRecord: the same
    handlers, filters and format, at less cost."""
    if not _HTTP_LOG.isEnabledFor(logging.INFO):
        return
    ttft = chat_info.get("ttft_ms")
    _HTTP_LOG.handle(
        LineRecord(
            _HTTP_LOG.name,
            f"{method} {path} {status} id={chat_info.get('request_id')} "
            f"model={chat_info.get('model')} cache={'hit' if chat_info.get('cached') else 'miss'} "
            # No first token: no time to it.
            f"ttft={'-' if ttft is None else f'{ttft}ms'} "
            f"total={chat_info.get('total_ms', round(ms))}ms "
            f"tokens={chat_info.get('eval_count', 0)}"
            f"{' error=' + str(chat_info['error']) if 'error' in chat_info else ''}",
        )
    )


# How long a batch of lines may wait before it is written (BatchedStreamHandler).
BATCH_SECONDS = 0.05


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop, writes lines in batches: at most
    BATCH_SECONDS after the first line of a batch, or at once for a warning or worse.

    At the default level every request writes a line; one write() system call (and flush)
    per line was ~5 % of a cache hit's CPU. Outside a loop, or for warnings and errors, a line
    is written at once. `logging.shutdown()` (at exit) flushes what is left; a process killed
    outright may lose the last BATCH_SECONDS of info lines.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= 1000:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(BATCH_SECONDS, self._flush_batch)

    def _flush_batch(self) -> None:
        self.acquire()
        try:
            self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text, self._lines = "".join(self._lines), []
            # As in StreamHandler.emit: a closed or broken stderr must not raise here.
            with contextlib.suppress(Exception):
                self.stream.write(text)
        super().flush()


def setup_logging(level: str, *, batch_writes: bool = False) -> None:
    """The `chatbot` loggers' one handler on stderr, at `level`. `batch_writes`: write the
    lines in batches (BatchedStreamHandler; the headless server, where the log is a file or
    a journal); otherwise each line at once."""
    # Fields no line shows: where each call was made, thread and process names (the logging
    # HOWTO's "Optimization"). Looking them up was ~3 % of a cache hit at the default level,
    # where every request writes a line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("chatbot")
    if not any(getattr(h, "_chatbot", False) for h in root.handlers):
        handler: logging.StreamHandler[Any] = (
            BatchedStreamHandler(sys.stderr) if batch_writes else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(SafeFormatter(FORMAT, datefmt=DATEFMT))
        handler.addFilter(RepeatFilter(handler))
        handler._chatbot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
        # The event loop's errors (a failing accept(), say) and aiohttp's go through the same
        # handler, so they are formatted alike and their repeats are held back too. Their
        # levels stay as they are (warnings and up, by default).
        for name in ("asyncio", "aiohttp"):
            logging.getLogger(name).addHandler(handler)
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
        self.addFilter(RepeatFilter(self))

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
