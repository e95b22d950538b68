"""Cache hits answered on the wire: a whole request for a body the memo knows
(server/fast_hits.py) is answered from the connection's `data_received`, before aiohttp parses
it into a Request, starts a task for it and runs the middlewares and a handler.

A hit there cost ~95 µs of CPU, a third of it aiohttp's own machinery per request (parser
objects, the Request, a future and a task, the middleware chain, the StreamResponse and its
headers); this path costs about half of that (bench/README.md, "Hit throughput against the
floor"). It answers only what it can answer exactly as the usual way would, and hands
everything else to aiohttp's parser unchanged, as if it did not exist:

- one whole request in the bytes received, nothing before or after it (a request split over
  reads, or pipelined ones, go the usual way): `POST` to a path with a hit recipe, no query,
  HTTP/1.1, a `Content-Length` that matches the body;
- only headers it knows not to change the answer (`_PLAIN`, the key headers, the configured
  user header, the OpenAI SDK's `X-Stainless-*`), each once, well-formed; anything else
  (`Origin`, `Cache-Control`, `X-Request-Id`, `Expect`, `Transfer-Encoding`, `Content-Encoding`,
  `Connection: close`, ...) goes the usual way;
- the Host guard and the API key checked as the middleware checks them; a request they would
  refuse goes the usual way and gets its 403 or 401 there;
- a body the memo knows for this caller (the memo's rules hold: per-key scope, TTL, rate limit,
  counters, stats, a fresh id); a miss, an entry gone from RAM or a rate-limited caller goes the
  usual way (nothing was counted).

The answer has the usual way's status, headers and body, and the same access-log line.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from server.auth import as_user, host_allowed, presented_key, unkeyed_caller
from server.chat_request import new_request_id
from server.errors import TooManyRequests
from server.fast_hits import JSON, FastHits, Recipe
from server.gateway import Gateway
from server.logs import log_chat

# One header line: a token, a colon, a value of visible characters, spaces and tabs (RFC 9110
# field-value; no control characters), without the optional whitespace around it.
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")

# Headers that do not change how a hit is answered (beside the ones read below).
_PLAIN = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"accept-encoding",
        b"accept-language",
        b"user-agent",
        b"connection",
    }
)
_STAINLESS = b"x-stainless-"  # the OpenAI SDKs' platform and retry details


class WireHits:
    """The wire path of one app: `answer(data)` gives a whole HTTP response, or None for
    "go the usual way"."""

    def __init__(self, gateway: Gateway, hits: FastHits, recipes: dict[str, Recipe]) -> None:
        self.gateway = gateway
        self.hits = hits
        self.recipes = {path.encode(): (path, recipe) for path, recipe in recipes.items()}
        self.answered = 0  # how many hits this path answered (tests, the benchmark)
        self._date = b""
        self._date_second = 0

    def answer(self, data: bytes) -> bytes | None:
        started_ns = time.perf_counter_ns()
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = data[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        route = self.recipes.get(parts[1])
        if route is None:
            return None
        gateway = self.gateway
        config = gateway.config
        user_header = config.auth.user_header.lower().encode() if config.auth.user_header else b""
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:
                return None
            name = field[1].lower()
            if name in headers:
                return None  # said twice: the usual way decides which counts
            if not (
                name in _PLAIN
                or name in (b"accept", b"authorization", b"x-api-key", user_header)
                or name.startswith(_STAINLESS)
            ):
                return None
            headers[name] = field[2]
        body = data[end + 4 :]
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) != len(body):
            return None
        connection = headers.get(b"connection")
        if connection is not None and connection.lower() != b"keep-alive":
            return None
        if not host_allowed(config.server.host, _text(headers.get(b"host", b""))):
            return None
        user = _text(headers.get(user_header, b"")).strip()[:64] if user_header else ""
        if gateway.keys:
            key = presented_key(_header(headers, b"authorization"), _header(headers, b"x-api-key"))
            who = gateway.keys.identify(key) if key else None
            if who is None:
                return None
            who = as_user(who, user)
        else:
            who = unkeyed_caller(user)
        path, recipe = route
        accept = _header(headers, b"accept")
        known = self.hits.find(gateway, recipe.memo_key(who.name, body, accept))
        if known is None:
            return None
        rid = new_request_id()
        try:
            found = self.hits.answer(gateway, known, who.name, rid, recipe, started_ns)
        except TooManyRequests:
            return None  # the usual way answers the 429, with its Retry-After
        if found is None:
            return None
        encoded, stats = found
        log_chat(
            "POST", path, 200, {"request_id": rid, "model": known.model, **stats, "cached": True}, 0
        )
        self.answered += 1
        return b"".join(
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: ",
                JSON_BYTES,
                b"\r\nX-Cache: HIT\r\n",
                b"X-Request-Id: %s\r\n" % rid.encode() if recipe.id_header else b"",
                b"Content-Length: %d\r\nDate: " % len(encoded),
                self._http_date(),
                SERVER_LINE,
                encoded,
            )
        )

    def _http_date(self) -> bytes:
        second = int(time.time())
        if second != self._date_second:
            self._date = formatdate(second, usegmt=True).encode()
            self._date_second = second
        return self._date


WIRE_HITS = web.AppKey("wire_hits", WireHits)

JSON_BYTES = JSON.encode()
SERVER_LINE = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()


def _text(value: bytes) -> str:
    # As aiohttp's parser decodes header values.
    return value.decode("utf-8", "surrogateescape")


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else _text(value)
