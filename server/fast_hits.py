"""Whole-answer cache hits without parsing the body again: a bounded memo from a request's raw
body (and what else decides its cache key) to that key, and each entry's answer encoded once per
protocol with holes for what changes per request (ids, timestamps, durations).

A body seen before skips `json.loads`, validation, the canonical dump and its hash (bench/README.md,
"Hit throughput against the floor"). What the memo may not skip, it does not:

- auth ran already (a middleware, before any handler), and the memo's key holds the caller's
  name, so a per-key cache scope is never crossed;
- only a body that parsed and validated is remembered, so a bad body always gets its 400;
- the memo gives a cache key, not an answer: the entry is looked up in RAM each time, with its
  TTL checked, and a miss goes the whole way (parsing again, the tiers, a generation);
- the same rate limit, counters, stats, access-log line and a fresh request id per request;
- a request that names its own request id (body or `X-Request-Id`), sends `Cache-Control`, or
  asks for a stream always goes the whole way; so does any request after a configuration change
  (the memo is emptied: the default model, system prompt or cache scope may have changed).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from server.chat_request import ChatRequest, new_request_id
from server.config import Config
from server.gateway import Gateway
from server.keys import CHAT_INFO
from server.services.cache import CachedAnswer
from server.streams import Done

# Bodies larger than this are not remembered (a chat with a long history hashes in no time
# next to its parse, but would hold its bytes in the memo), and an encoded answer larger than
# MAX_KEPT is encoded again per request rather than kept (with the entry it came from, which
# the memo then holds even after the cache dropped it). So the memo holds at most 512 × (16 +
# 2 × 16) KiB = 24 MiB beyond the cache's own budget; usually far less.
MAX_BODY = 16 * 1024
MAX_KEPT = 16 * 1024
MAX_ENTRIES = 512

# A hole in an encoded answer: a string no answer can hold by chance (per-process random).
_MARK = secrets.token_hex(8)

MemoKey = tuple[str, str | None, str, bytes]
Build = Callable[[str, CachedAnswer], dict[str, Any]]


def hole(i: int) -> str:
    return f"\x01{_MARK}:{i}\x01"


@dataclass(slots=True)
class Known:
    """What a remembered body maps to, and its answer as last encoded."""

    key: str
    model: str
    kind: str
    endpoint: str
    entry: CachedAnswer | None = None
    parts: list[bytes] = field(default_factory=list)


class FastHits:
    """The memo (raw body → cache key) of one app, and the hit path that uses it."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_body: int = MAX_BODY) -> None:
        self.max_entries = max_entries
        self.max_body = max_body
        self._memo: dict[MemoKey, Known] = {}
        self._config: Config | None = None

    def __len__(self) -> int:
        return len(self._memo)

    def find(self, gateway: Gateway, key: MemoKey) -> Known | None:
        if self._config is not gateway.config:
            self._memo.clear()  # a new configuration: keys and defaults may differ
            self._config = gateway.config
            return None
        if len(key[3]) > self.max_body:
            return None  # never remembered: not worth hashing
        return self._memo.get(key)

    def learn(self, gateway: Gateway, key: MemoKey, req: ChatRequest) -> None:
        """Remember a body that parsed into `req` (non-streamed, reading the cache)."""
        if len(key[3]) > self.max_body or self._config is not gateway.config:
            return
        if len(self._memo) >= self.max_entries:
            del self._memo[next(iter(self._memo))]  # the oldest: insertion order
        self._memo[key] = Known(gateway.cache_key(req), req.model, req.kind, req.endpoint)

    def answer(
        self,
        gateway: Gateway,
        known: Known,
        user: str,
        rid: str,
        recipe: Recipe,
        started_ns: int,
    ) -> tuple[bytes, dict[str, int]] | None:
        """The hit's body and stats, or None (nothing counted) when RAM no longer holds the
        entry. The recipe's `build(model, entry)` gives the protocol's answer with `hole(i)`
        where the i-th of its values goes; it runs once per cache entry, not per request."""
        entry = gateway.known_hit(known.key, user)  # may raise TooManyRequests
        if entry is None:
            return None
        parts = known.parts
        if known.entry is not entry:
            encoded = orjson.dumps(recipe.build(known.model, entry))
            parts = _split(encoded)
            kept = len(encoded) <= MAX_KEPT
            known.parts, known.entry = (parts, entry) if kept else ([], None)
        out = [parts[0]]
        for value, part in zip(recipe.values(rid, started_ns), parts[1:], strict=True):
            out.append(value)
            out.append(part)
        stats = gateway.count_known_hit(rid, known.model, known.endpoint, user, entry)
        return b"".join(out), stats

    def reply(
        self,
        request: web.Request,
        gateway: Gateway,
        recipe: Recipe,
        memo: MemoKey,
        started_ns: int,
    ) -> web.Response | None:
        """The hit for a body the memo knows (`memo`, from `recipe.memo_key`), as the
        response; None when it does not know it or RAM no longer holds the entry (the request
        then goes the whole way). The access-log details are set on the request first, so a
        429 is logged with its id too."""
        known = self.find(gateway, memo)
        if known is None:
            return None
        user = memo[2]
        rid = new_request_id()
        info: dict[str, Any] = {"request_id": rid, "model": known.model}
        request[CHAT_INFO] = info
        found = self.answer(gateway, known, user, rid, recipe, started_ns)
        if found is None:
            return None
        encoded, stats = found
        info.update(stats, cached=True)
        headers = {"Content-Type": JSON, "X-Cache": "HIT"}
        if recipe.id_header:
            headers["X-Request-Id"] = rid
        return response(encoded, headers)


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one endpoint answers a hit from the memo: its name in the memo's keys (and
    whether the `Accept` header is part of them), how its answer is built with holes, the
    values for those holes per request (from the request id and when the request started,
    `time.perf_counter_ns()`), and whether the request id is also sent as `X-Request-Id`."""

    name: str
    build: Build
    values: Callable[[str, int], tuple[bytes, ...]]
    id_header: bool
    keyed_on_accept: bool = False

    def memo_key(self, user: str, raw: bytes, accept: str | None) -> MemoKey:
        """The memo's key for `raw` from `user` (with the `Accept` header, if it counts)."""
        return (self.name, accept if self.keyed_on_accept else None, user, raw)


def _split(encoded: bytes) -> list[bytes]:
    """The encoded answer cut at its holes, in order (each hole appears once: it is a value
    the builder put there, and no answer text can contain the per-process mark)."""
    parts = []
    i = 0
    while True:
        marker = orjson.dumps(hole(i))
        before, found, after = encoded.partition(marker)
        if not found:
            parts.append(encoded)
            return parts
        parts.append(before)
        encoded = after
        i += 1


def text(value: str) -> bytes:
    return orjson.dumps(value)


def number(value: int) -> bytes:
    return str(value).encode()


def now_s() -> bytes:
    return str(int(time.time())).encode()


def hit_done(model: str, entry: CachedAnswer) -> Done:
    """The Done a hit's answer is built from (what Gateway.complete gives for a hit)."""
    stats = {"queue_ms": 0, "ttft_ms": 0, "total_ms": 0, "eval_count": entry.eval_count}
    return Done(model=model, cached=True, stats=stats, hit=entry)


FAST_HITS = web.AppKey("fast_hits", FastHits)


JSON = "application/json; charset=utf-8"


def response(body: bytes, headers: dict[str, str]) -> web.Response:
    """What orjson_response gives, from bytes already encoded; `headers` include
    Content-Type (JSON), which aiohttp then takes as it is."""
    return web.Response(body=body, headers=headers)
