"""Connection guard: idle and header timeouts, a cap on open connections that refuses cleanly,
and the HTTP parser's errors answered in the API's JSON error shape.

aiohttp's own keep-alive timer closes a connection still waiting for a whole request after
`keepalive_timeout` (fixed when the server starts), counted from the connection's start or its
last response whether or not header bytes trickle in; nothing bounds how many connections are
open. Here each connection has one deadline, chosen by its phase and read from the live
configuration (aiohttp's timer stays as a backstop at its default of an hour):

    idle     no request in progress (new and silent, or kept alive): idle_timeout_seconds
    headers  a request's first byte came, its headers are incomplete: header_timeout_seconds
    busy     a handler runs (reading a body, waiting in the queue, streaming an answer): none
             here; the handler's own timeouts apply (body, Ollama)

Over the cap, the connection that has waited longest without a request is closed to make room
(as nginx reuses keep-alive connections), so a flood of idle sockets cannot lock real clients
out; only when every connection has a request in progress is a new one refused with a 503.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from server.config import Config, ServerSection

if sys.platform != "win32":  # Windows has no open-files limit of this kind
    import resource

log = logging.getLogger("chatbot.http")

# Open files kept out of the connection budget, so that the loop never fails accept() with
# EMFILE: FD_RESERVE for Ollama connections, logs, config files and the loop's own; and room for
# sockets the guard cannot count yet. Each wake-up of the listening socket accepts up to
# ACCEPT_BURST of them, which reach the guard one loop iteration later, and the connections
# closed to make room for them (or refused) close one iteration after that: in a flood, three
# bursts are in flight at once (measured: 1,024 open files overflowed with room for two).
FD_RESERVE = 64
ACCEPT_BURST = 128  # the listen backlog, which is also how many the loop accepts at once
MAX_LINGERING = 64  # refused connections held open briefly so the client reads the 503
FD_HEADROOM = FD_RESERVE + 3 * ACCEPT_BURST + MAX_LINGERING
REFUSAL_LINGER_SECONDS = 1.0
RETRY_AFTER_SECONDS = 5

# The raw bytes of a request's start → a whole HTTP response, or None: "go the usual way".
Wire = Callable[[bytes], bytes | None]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def whole_request(data: bytes) -> bool:
    """Whether `data` is exactly one HTTP request: its head, and a body as long as its one
    Content-Length says (none without one); no chunked body, nothing cut, nothing after it."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].lower()
    if b"\r\ntransfer-encoding:" in head:
        return False
    body = len(data) - end - 4
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return body == 0
    if head.find(b"\r\ncontent-length:", at + 1) >= 0:
        return False
    value = head[at + 17 :].split(b"\r\n", 1)[0].strip()
    return value.isdigit() and int(value) == body


def connection_limit(max_connections: int, open_files: int | None) -> int:
    """How many connections may be open at once under an open-files limit (None: no limit)."""
    if open_files is None:
        return max_connections
    return max(1, min(max_connections, open_files - FD_HEADROOM))


class OpenFiles(NamedTuple):
    """RLIMIT_NOFILE: the soft limit before it was raised, now, and the hard limit; unlimited
    is `sys.maxsize`."""

    before: int
    soft: int
    hard: int


def open_files_limit() -> OpenFiles | None:
    """This process's RLIMIT_NOFILE; None where there is no such limit (Windows)."""
    if sys.platform == "win32":
        return None
    soft, hard = (
        sys.maxsize if value == resource.RLIM_INFINITY else value
        for value in resource.getrlimit(resource.RLIMIT_NOFILE)
    )
    return OpenFiles(soft, soft, hard)


def raise_open_files_limit(config: Config) -> OpenFiles | None:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows, log it, and warn when it
    is still short of what the configuration asks for.

    The soft limit is often 1,024 (systemd's default for services) while the hard one is far
    higher: each connection is a file, and a thousand idle ones must not lock everyone out.
    """
    limits = open_files_limit()
    if limits is None:
        return None
    limits = _raise_soft_limit(limits)
    if limits.soft != limits.before:
        log.info("open-files limit raised from %d to %d", limits.before, limits.soft)
    else:
        log.info("open-files limit: %d (hard limit %d)", limits.soft, limits.hard)
    wanted = config.server.max_connections
    allowed = connection_limit(wanted, limits.soft)
    if allowed < wanted:
        log.warning(
            "the open-files limit of %d allows %d connections, fewer than "
            "[server].max_connections = %d; raise it (LimitNOFILE= for a systemd service, "
            "ulimit -n in a shell)",
            limits.soft,
            allowed,
            wanted,
        )
    streams = config.queue.max_queue_size + config.queue.max_concurrent
    if connection_limit(streams, limits.soft) < streams:
        # Each waiting streamed client holds a socket: a full line needs that many files.
        log.warning(
            "the open-files limit is %d (hard limit %d), short of the %d files that the %d "
            "streams of a full queue ([queue].max_queue_size + max_concurrent) and %d for the "
            "server itself need; raise the hard limit (LimitNOFILE= for a systemd service, "
            "ulimit -Hn as root)",
            limits.soft,
            limits.hard,
            streams + FD_HEADROOM,
            streams,
            FD_HEADROOM,
        )
    elif allowed < streams:
        log.warning(
            "%d connections are too few for the %d streams the queue holds "
            "([queue].max_queue_size + max_concurrent)",
            allowed,
            streams,
        )
    return limits


def _raise_soft_limit(limits: OpenFiles) -> OpenFiles:
    if sys.platform == "win32" or limits.soft >= limits.hard:
        return limits
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # macOS refuses an unlimited soft limit even under an unlimited hard one: try finite ones.
    for target in [hard] if hard != resource.RLIM_INFINITY else [1048576, 65536, 10240]:
        if target <= limits.soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return limits._replace(soft=target)
    return limits


def raw_json_response(
    status: int, reason: str, message: str, code: str, headers: dict[str, str] | None = None
) -> bytes:
    """A whole `Connection: close` HTTP/1.1 response, for when no aiohttp request exists."""
    body = json.dumps({"error": message, "code": code}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Phase(enum.Enum):
    IDLE = "idle"
    HEADERS = "headers"
    BUSY = "busy"
    REFUSED = "refused"


class ConnectionGuard:
    """Counts one server's connections and keeps them under the cap.

    `settings` returns the live `[server]` section, so a changed timeout applies to the next
    deadline set and a changed `max_connections` to the next connection, without a restart.
    """

    def __init__(
        self,
        settings: Callable[[], ServerSection],
        *,
        open_files: int | None,
        allowed_methods: str = "GET, POST, DELETE, OPTIONS",
    ) -> None:
        self.settings = settings
        self.open_files = open_files
        self.allowed_methods = allowed_methods
        self._open: set[GuardedHandler] = set()
        # Connections without a request in progress, longest waiting first: the ones to evict.
        self._idle: dict[GuardedHandler, None] = {}
        self._lingering = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    @property
    def limit(self) -> int:
        return connection_limit(self.settings().max_connections, self.open_files)

    @property
    def open(self) -> int:
        """Connections open and not being closed by the guard."""
        return len(self._open)

    def admit(self, conn: GuardedHandler) -> bool:
        """Take a new connection, closing the longest-idle one to make room if need be; False
        when every connection is busy and this one must be refused."""
        if len(self._open) >= self.limit:
            victim = next(iter(self._idle), None)
            if victim is None:
                self.refused += 1
                log.warning(
                    "refused a connection: all %d allowed connections have a request in "
                    "progress ([server].max_connections, or the open-files limit)",
                    self.limit,
                )
                return False
            self.evicted += 1
            victim.close_now("evicted: the connection cap was reached")
        self._open.add(conn)
        return True

    def waiting(self, conn: GuardedHandler) -> None:
        """`conn` has no request in progress from now on."""
        self._idle.pop(conn, None)
        if conn in self._open:
            self._idle[conn] = None

    def busy(self, conn: GuardedHandler) -> None:
        self._idle.pop(conn, None)

    def closing(self, conn: GuardedHandler) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)

    def linger(self) -> bool:
        """May one more refused connection stay open a moment for its client to read the 503?"""
        if self._lingering >= MAX_LINGERING:
            return False
        self._lingering += 1
        return True

    def lingered(self) -> None:
        self._lingering -= 1


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol, with the guard's deadlines, cap and JSON errors."""

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard, wire: Wire | None, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        # The wire path may only see bytes that start a request. It is given up for good on a
        # connection where a read held anything but one whole request (pipelined, cut, a
        # chunked body): aiohttp's parser may then hold part of one, and the next read would
        # be its rest, not a request of its own.
        self._wire = wire
        self._phase = Phase.IDLE
        # When the current phase's time runs out (loop time; None: no limit now), and the one
        # timer that checks it. The timer is moved only when the deadline comes earlier than
        # it: a keep-alive request then costs no timer at all (see _set_deadline).
        self._deadline_at: float | None = None
        # The pending timer and when it fires (kept here: qasync's call_at returns a plain
        # Handle, which has no when()).
        self._deadline: asyncio.Handle | None = None
        self._deadline_timer_at = 0.0
        self._lingering = False
        # The first bytes of the current request, to name an unknown method in a 405.
        self._request_start = b""

    # -- phases and deadlines ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.REFUSED:
            return  # read and dropped, so closing does not reset the 503 away
        if self._force_close or self._close:
            return  # aiohttp ignores it too
        if self._wire is not None and data:
            if self._phase is Phase.IDLE and self._answer_on_wire(data):
                return
            if not whole_request(data):
                self._wire = None
        if self._phase is Phase.IDLE and data:
            self._phase = Phase.HEADERS
            self._request_start = data[:64]
            started = True
        else:
            started = False
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests and self._phase is not Phase.BUSY:
            self._phase = Phase.BUSY
            self._clear_deadline()
            self._guard.busy(self)
        elif started and self._phase is Phase.HEADERS:
            # Headers incomplete after their first bytes: from now on they have a time limit.
            # (Set only here, so a request that came whole, the usual case, needs no timer.)
            self._set_deadline(self._guard.settings().header_timeout_seconds)

    def _answer_on_wire(self, data: bytes) -> bool:
        """Whether `data`, the start of a request, was answered whole by the wire path
        (server/fast_wire.py), without aiohttp seeing it. Only while aiohttp waits for a
        request with none queued, so that responses keep the order of the requests."""
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages or self.transport is None:
            return False
        if self.writing_paused:
            return False  # a client not reading its answers: the usual way waits for it
        assert self._wire is not None
        try:
            reply = self._wire(data)
        except Exception:  # a bug there must not cost the request: the usual way answers it
            log.exception("the wire path failed on a request; it goes the usual way")
            return False
        if reply is None:
            return False
        self.transport.write(reply)
        self._manager.requests_count += 1  # type: ignore[union-attr]
        # aiohttp's own keep-alive timer (the backstop) counts from the last response, too.
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        self._wait_for_request()
        return True

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if not self._messages:  # nothing pipelined behind it: wait for the next request
            self._wait_for_request()
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._guard.closing(self)
        if self._phase is Phase.REFUSED:
            if self._lingering:
                self._guard.lingered()
            return
        super().connection_lost(exc)

    def _wait_for_request(self) -> None:
        if self.transport is None:
            return
        self._phase = Phase.IDLE
        self._guard.waiting(self)
        self._set_deadline(self._guard.settings().idle_timeout_seconds)

    def _set_deadline(self, seconds: float) -> None:
        """The current phase ends the connection `seconds` from now.

        Under keep-alive load each request ends a phase twice (idle, busy, idle): scheduling
        and cancelling a timer each time showed in profiles of cache hits, and the cancelled
        timers piled up in the loop's heap. So the deadline is a number, and the one timer
        is moved only when the new deadline is earlier than it; a timer that fires early
        just goes back to sleep until the deadline now in force.
        """
        self._deadline_at = at = self._loop.time() + seconds
        timer = self._deadline
        if timer is not None and self._deadline_timer_at <= at:
            return
        if timer is not None:
            timer.cancel()
        self._arm(at)

    def _arm(self, at: float) -> None:
        self._deadline = self._loop.call_at(at, self._check_deadline)
        self._deadline_timer_at = at

    def _clear_deadline(self) -> None:
        self._deadline_at = None  # a pending timer finds nothing to do

    def _cancel_timer(self) -> None:
        self._deadline_at = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check_deadline(self) -> None:
        self._deadline = None
        at = self._deadline_at
        if at is None:
            return
        if self._loop.time() < at:  # the deadline moved later since the timer was set
            self._arm(at)  # (with when it fires: an earlier deadline must still move it)
            return
        self._deadline_passed()

    def _deadline_passed(self) -> None:
        self._deadline_at = None
        if self._phase is Phase.IDLE:
            self._guard.timed_out += 1
            self.close_now("idle timeout")
        elif self._phase is Phase.HEADERS and self.transport is not None:
            self._guard.timed_out += 1
            timeout = self._guard.settings().header_timeout_seconds
            self.transport.write(
                raw_json_response(
                    408,
                    "Request Timeout",
                    f"request headers not complete within {timeout:g} s "
                    "([server].header_timeout_seconds)",
                    "header_timeout",
                )
            )
            self.close_now("header timeout")

    def close_now(self, why: str) -> None:
        """Close a connection that has no request in progress (what was written still goes)."""
        log.debug("closing connection from %s: %s", self.peername, why)
        self._cancel_timer()
        self._guard.closing(self)
        self.force_close()

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        self._phase = Phase.REFUSED
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            raw_json_response(
                503,
                "Service Unavailable",
                "too many open connections, each with a request in progress; try again shortly",
                "too_many_connections",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        )
        # Closing while the client's request sits unread would reset the connection, and some
        # systems then drop the 503 before the client reads it: end our side, read what comes,
        # close when the client does or after a moment. A bounded number linger at once.
        if self._guard.linger():
            self._lingering = True
            transport.write_eof()
            self._loop.call_later(REFUSAL_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    # -- errors from the HTTP parser and from outside the middlewares -------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer in the API's JSON error shape (aiohttp's own answer is text/plain)."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; no error response can follow")
        status, text, code, headers = self._describe(status, exc)
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info("bad request from %s: %d %s: %s", request.remote, status, code, text)
        resp = web.json_response({"error": text, "code": code}, status=status, headers=headers)
        resp.force_close()
        return resp

    def _describe(
        self, status: int, exc: BaseException | None
    ) -> tuple[int, str, str, dict[str, str]]:
        if isinstance(exc, BadHttpMethod):
            return self._bad_method()
        if isinstance(exc, LineTooLong):
            return (
                431,
                f"the request line or a header is longer than {self.max_line_size} bytes",
                "headers_too_large",
                {},
            )
        if isinstance(exc, HttpProcessingError):
            first = exc.message.split("\n", 1)[0].rstrip(": ")[:200] or "malformed"
            if first.startswith("Too many headers"):
                return 431, f"more than {self.max_headers} headers", "headers_too_large", {}
            return status, f"malformed HTTP request: {first}", "bad_request", {}
        if status == 504:
            return 504, "the request took too long", "timeout", {}
        if status >= 500:
            return status, "internal error; see the server log", "internal_error", {}
        return status, "the request could not be handled", f"http_{status}", {}

    def _bad_method(self) -> tuple[int, str, str, dict[str, str]]:
        start = self._request_start
        if start.startswith(b"\x16\x03"):
            return 400, "this port speaks HTTP, not HTTPS: use an http:// URL", "bad_request", {}
        method, _, _ = start.partition(b" ")
        if _TOKEN.fullmatch(method) and b" " in start:
            allowed = self._guard.allowed_methods
            return (
                405,
                f"method {method.decode()} is not supported; the gateway answers {allowed}",
                "method_not_allowed",
                {"Allow": allowed},
            )
        return 400, "not an HTTP request: the request line has no valid method", "bad_request", {}


class GuardedServer(web.Server):
    """aiohttp's low-level server, making GuardedHandler connections."""

    def __init__(self, plain: web.Server, guard: ConnectionGuard, wire: Wire | None) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )
        self.guard = guard
        self.wire = wire

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(
            self, loop=self._loop, guard=self.guard, wire=self.wire, **self._kwargs
        )


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server guards its connections (see the module docstring), and
    answers what `wire` can answer from a request's raw bytes before aiohttp parses them."""

    def __init__(
        self,
        app: web.Application,
        guard: ConnectionGuard,
        wire: Wire | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.wire = wire

    async def _make_server(self) -> web.Server:
        methods = {route.method for route in self.app.router.routes()} - {"*"}
        self.guard.allowed_methods = ", ".join(sorted(methods | {"OPTIONS"}))
        return GuardedServer(await super()._make_server(), self.guard, self.wire)
