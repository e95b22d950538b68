"""The shared cache tier: answers in Redis or Valkey, so several gateways answer each other.

Keys are `chatbot-companion:v<FORMAT_VERSION>:<cache key>`; the cache key already holds the
`[cache].scope` (per_key adds the caller), so scoping survives the trip. Each entry carries
what is left of its TTL (`SET … EX`); the size is bounded by Redis itself (`maxmemory` with
`maxmemory-policy allkeys-lru` or `volatile-lru`, README "Cache tiers").

Redis must never slow or fail a request: a lookup waits at most LOOKUP_TIMEOUT_S, and any
error or timeout marks the tier down. While down, lookups and writes skip Redis at once (no
request pays a connect timeout), and a watcher task pings it every PROBE_S until it answers,
then the tier is up again. Writes go through a bounded queue drained by a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.services.cache import CachedAnswer
from server.services.tiers import FORMAT_VERSION, Tier, TierError, decode, encode

log = logging.getLogger("chatbot.cache")

# A lookup never waits longer: a RAM miss goes to Ollama anyway, which takes far more, but a
# hung Redis must not add seconds to every miss. Loopback Redis answers in ~0.1 ms.
LOOKUP_TIMEOUT_S = 0.05
OP_TIMEOUT_S = 1.0  # writes, pings and flushes, which no request waits for
PROBE_S = 1.0  # how often a down Redis is pinged
# The entries shown in stats are counted with SCAN over our prefix (Redis keeps no count per
# prefix): every COUNT_EVERY_S, stopping at COUNT_LIMIT (shown as that many), so a large shared
# Redis costs ~100 round trips of 1,000 keys per gateway every 10 s at most.
COUNT_EVERY_S = 10.0
COUNT_LIMIT = 100_000
QUEUE_SIZE = 1000
BATCH = 100
PREFIX = f"chatbot-companion:v{FORMAT_VERSION}:"

_ERRORS = (RedisError, OSError, TimeoutError)


class RedisTier(Tier):
    name = "redis"

    def __init__(self, url: str, *, ttl_seconds: float) -> None:
        super().__init__(ttl_seconds)
        self.url = url
        self.client = self._connect()
        self._closed = False
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(QUEUE_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._counted_at = 0.0

    def _connect(self) -> Redis:
        return Redis.from_url(
            self.url,
            socket_timeout=OP_TIMEOUT_S,
            socket_connect_timeout=OP_TIMEOUT_S,
            # No retries inside the client: the watcher reconnects, requests never wait on it.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    async def start(self) -> None:
        if self._closed:  # stopped and started again: a fresh client and queue
            self.client, self._queue = self._connect(), asyncio.Queue(QUEUE_SIZE)
            self._closed = False
        await self._probe()
        self._tasks = [
            asyncio.create_task(self._watch(), name="redis-tier-watch"),
            asyncio.create_task(self._write_loop(), name="redis-tier-write"),
        ]

    async def close(self) -> None:
        # What is queued gets a last chance (bounded): a restart keeps recent answers shared.
        if self.up and not self._queue.empty():
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(self._drain(), OP_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(*_ERRORS):
            await self.client.aclose()
        self._closed = True
        self.state, self.reason = "starting", ""

    def _down(self, reason: str) -> None:
        super()._down(reason)
        self._wake.set()

    async def _probe(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), OP_TIMEOUT_S)
        except _ERRORS as exc:
            self._down(f"{_redact(self.url)}: {_reason(exc)}")
            return
        self._up()
        await self._recount()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PROBE_S)
            self._wake.clear()
            if not self.up:
                await asyncio.sleep(PROBE_S)  # a fresh failure: give Redis a moment
                await self._probe()
            elif time.monotonic() - self._counted_at > COUNT_EVERY_S:
                await self._recount()

    async def _recount(self) -> None:
        try:
            count = 0
            async for _ in self.client.scan_iter(match=PREFIX + "*", count=1000):
                count += 1
                if count >= COUNT_LIMIT:
                    break
            self.entries = count
        except _ERRORS as exc:
            self._down(f"{_redact(self.url)}: {_reason(exc)}")
        self._counted_at = time.monotonic()

    # -- lookups ----------------------------------------------------------------------------

    async def get(self, key: str) -> CachedAnswer | None:
        if not self.up:
            return None
        try:
            data = await asyncio.wait_for(self.client.get(PREFIX + key), LOOKUP_TIMEOUT_S)
        except _ERRORS as exc:
            self._down(f"{_redact(self.url)}: {_reason(exc)}")
            return None
        answer = decode(data, self.ttl_seconds) if data is not None else None
        if answer is None:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
        return answer

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, answer: CachedAnswer) -> None:
        left = int(self.ttl_seconds - (time.monotonic() - answer.stored_at))
        if not self.up or left < 1:
            self.counters.dropped += not self.up
            return
        try:
            self._queue.put_nowait((PREFIX + key, encode(answer), left))
        except asyncio.QueueFull:
            self.counters.dropped += 1

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            batch += self._take(BATCH - 1)
            if not self.up:
                self.counters.dropped += len(batch)
                continue
            try:
                await asyncio.wait_for(self._write(batch), OP_TIMEOUT_S)
            except _ERRORS as exc:
                self.counters.dropped += len(batch)
                self._down(f"{_redact(self.url)}: {_reason(exc)}")

    def _take(self, most: int) -> list[tuple[str, bytes, int]]:
        batch: list[tuple[str, bytes, int]] = []
        while len(batch) < most and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write(self, batch: list[tuple[str, bytes, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl in batch:
            pipe.set(key, value, ex=ttl)
        await pipe.execute()
        self.counters.writes += len(batch)
        self._counted_at = 0.0  # count again soon: the stats show the new entries

    async def _drain(self) -> None:
        while batch := self._take(BATCH):
            await self._write(batch)

    async def clear(self) -> int:
        if not self.up:
            raise TierError(f"down ({self.reason or 'not started'})")
        try:
            return await asyncio.wait_for(self._unlink_all(), 10 * OP_TIMEOUT_S)
        except _ERRORS as exc:
            self._down(f"{_redact(self.url)}: {_reason(exc)}")
            raise TierError(_reason(exc)) from exc

    async def _unlink_all(self) -> int:
        count, keys = 0, []
        async for key in self.client.scan_iter(match=PREFIX + "*", count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                count += await self.client.unlink(*keys)
                keys = []
        if keys:
            count += await self.client.unlink(*keys)
        self.entries = 0
        return count

    def extra_stats(self) -> dict[str, Any]:
        return {"url": _redact(self.url), "lookup_timeout_ms": round(LOOKUP_TIMEOUT_S * 1000)}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _redact(url: str) -> str:
    """The URL without its password, for logs and stats."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
