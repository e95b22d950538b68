"""The Gateway: the one object HTTP handlers and the desktop app talk to.

It composes the services (the response cache and the Ollama client; the queue and batch
processor wrap the upstream call in `_generate`) and exposes `chat()`, `complete()`, `health()`,
`snapshot()`, `flush_cache()`, `reset_stats()` and `apply_config()`. Nobody else reaches into a
service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from server import __version__
from server.chat_request import ChatRequest
from server.config import Config
from server.errors import GatewayError
from server.services.cache import CachedAnswer, ResponseCache, cache_key
from server.services.ollama import OllamaClient, OllamaCounters

log = logging.getLogger("chatbot.gateway")


@dataclass(frozen=True)
class Content:
    """A piece of the answer."""

    text: str


@dataclass(frozen=True)
class Done:
    """The end of a successful answer."""

    model: str
    cached: bool
    stats: dict[str, int]


ChatEvent = Content | Done

# A cache hit is replayed in word-sized pieces, each with the whitespace before it, as a
# model's tokens would come; joined they are exactly the stored text.
_WORDS = re.compile(r"\s*\S+|\s+")


class ChatStream:
    """An answer in progress: async-iterate it for events; `cached` is known before the first."""

    def __init__(
        self, events: AsyncGenerator[ChatEvent, None], *, hit: CachedAnswer | None = None
    ) -> None:
        self._events = events
        self.hit = hit

    @property
    def cached(self) -> bool:
        return self.hit is not None

    def __aiter__(self) -> AsyncGenerator[ChatEvent, None]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()


@dataclass
class RequestRecord:
    """One finished chat request, as the log line and the dashboard's table show it."""

    request_id: str
    model: str
    started: float  # time.time()
    cached: bool = False
    queue_ms: int = 0
    ttft_ms: int | None = None
    total_ms: int = 0
    tokens: int = 0
    status: str = "ok"  # ok, or the error code, or "disconnected"


@dataclass
class GenerationCounters:
    """Upstream generations: running now, and how those that ended, ended."""

    active: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    total_ms: int = 0  # summed over completed ones, for the average


@dataclass
class _Timer:
    start: float = field(default_factory=time.perf_counter)

    def ms(self) -> int:
        return round((time.perf_counter() - self.start) * 1000)


class Gateway:
    def __init__(self, config: Config, ollama: OllamaClient | None = None) -> None:
        self.config = config
        self.ollama = ollama or OllamaClient(
            config.ollama.api_url,
            timeout_s=config.ollama.timeout_seconds,
            connect_timeout_s=config.ollama.connect_timeout_seconds,
        )
        self.cache = ResponseCache(
            enabled=config.cache.enabled,
            max_size_mb=config.cache.max_size_mb,
            ttl_seconds=config.cache.ttl_seconds,
        )
        self.generations = GenerationCounters()
        self._process = psutil.Process()
        self.started_at = time.time()
        self.recent: deque[RequestRecord] = deque(maxlen=100)
        self._tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.ollama.start()
        self._tasks.append(asyncio.create_task(self._probe_loop(), name="ollama-probe"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.ollama.close()

    async def _probe_loop(self) -> None:
        warmed = not self.config.ollama.warm_up
        while True:
            if await self.ollama.probe() and not warmed:
                warmed = True
                await self.ollama.warm_up(self.config.ollama.model, self.config.ollama.keep_alive)
            await asyncio.sleep(self.config.ollama.probe_interval_seconds)

    def apply_config(self, config: Config) -> list[str]:
        """Take a new configuration at run time; return the keys that need a server restart."""
        old, self.config = self.config, config
        self.ollama.configure(
            config.ollama.api_url,
            config.ollama.timeout_seconds,
            config.ollama.connect_timeout_seconds,
        )
        self.cache.configure(
            enabled=config.cache.enabled,
            max_size_mb=config.cache.max_size_mb,
            ttl_seconds=config.cache.ttl_seconds,
        )
        return [
            f"[server].{name}"
            for name in ("host", "port")
            if getattr(old.server, name) != getattr(config.server, name)
        ]

    # -- chat -------------------------------------------------------------------------------

    def chat(self, req: ChatRequest) -> ChatStream:
        """Open an answer: a ChatStream of Content events ending with one Done.

        Whether it is a cache hit is known at once (for the `X-Cache` header). Iterating raises
        GatewayError on failure; closing the stream early (the client left) closes the upstream
        generation.
        """
        key = self.cache_key(req)
        hit = self.cache.get(key) if key is not None and req.cache_read else None
        if hit is not None:
            return ChatStream(self._replay(req, hit), hit=hit)
        return ChatStream(self._generate(req, key if req.cache_write else None))

    def cache_key(self, req: ChatRequest) -> str | None:
        if not self.cache.enabled:
            return None
        return cache_key(req.model, req.messages, req.options, req.format)

    async def _replay(self, req: ChatRequest, hit: CachedAnswer) -> AsyncIterator[ChatEvent]:
        timer = _Timer()
        record = RequestRecord(req.request_id, req.model, started=time.time(), cached=True)
        log.info(
            "cache hit %s model=%s (%d chars, stored %.0f s ago)",
            req.request_id,
            req.model,
            len(hit.text),
            time.monotonic() - hit.stored_at,
        )
        try:
            for piece in _WORDS.findall(hit.text):
                if record.ttft_ms is None:
                    record.ttft_ms = timer.ms()
                yield Content(piece)
            record.tokens = hit.eval_count
            record.total_ms = timer.ms()
            yield Done(model=req.model, cached=True, stats=_stats(record))
        finally:
            self._finish(record, timer)

    async def _generate(self, req: ChatRequest, store_key: str | None) -> AsyncIterator[ChatEvent]:
        timer = _Timer()
        record = RequestRecord(req.request_id, req.model, started=time.time())
        parts: list[str] = []
        gens = self.generations
        gens.active += 1
        try:
            # Coalescing of identical requests and queue admission wrap the upstream call below.
            record.queue_ms = timer.ms()
            async for chunk in self.ollama.chat_stream(req.ollama_payload()):
                text = (chunk.get("message") or {}).get("content") or ""
                if text:
                    if record.ttft_ms is None:
                        record.ttft_ms = timer.ms()
                    parts.append(text)
                    yield Content(text)
                if chunk.get("done"):
                    record.tokens = int(chunk.get("eval_count") or 0)
            record.total_ms = timer.ms()
            # Only here, after Ollama's done chunk, is the answer complete: errors, cancelled
            # and disconnected streams never reach this line, so they are never cached.
            if store_key is not None:
                self.cache.put(store_key, "".join(parts), req.model, record.tokens)
            gens.completed += 1
            gens.total_ms += record.total_ms
            yield Done(model=req.model, cached=False, stats=_stats(record))
        except GatewayError as exc:
            record.status = exc.code
            gens.failed += 1
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if record.status == "ok" and not record.total_ms:
                record.status = "disconnected"
                gens.cancelled += 1
            raise
        finally:
            gens.active -= 1
            self._finish(record, timer)

    def _finish(self, record: RequestRecord, timer: _Timer) -> None:
        record.total_ms = record.total_ms or timer.ms()
        self.recent.append(record)

    async def complete(self, req: ChatRequest) -> tuple[str, Done]:
        """The whole answer at once (non-streaming clients)."""
        stream = self.chat(req)
        if stream.hit is not None:
            # Fast path: no word splitting for a client that wants the whole text anyway.
            await stream.aclose()
            return stream.hit.text, self._record_hit(req, stream.hit)
        parts: list[str] = []
        done: Done | None = None
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Content):
                    parts.append(event.text)
                else:
                    done = event
        assert done is not None  # a stream always ends with Done or raises
        return "".join(parts), done

    def _record_hit(self, req: ChatRequest, hit: CachedAnswer) -> Done:
        log.info("cache hit %s model=%s (%d chars)", req.request_id, req.model, len(hit.text))
        record = RequestRecord(
            req.request_id,
            req.model,
            started=time.time(),
            cached=True,
            ttft_ms=0,
            tokens=hit.eval_count,
        )
        self.recent.append(record)
        return Done(model=req.model, cached=True, stats=_stats(record))

    def flush_cache(self) -> int:
        count = self.cache.clear()
        log.info("cache flushed (%d entries)", count)
        return count

    def reset_stats(self) -> None:
        self.cache.reset_stats()
        self.ollama.counters = OllamaCounters()
        self.generations = GenerationCounters(active=self.generations.active)

    # -- reporting --------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        if self.ollama.reachable is None:
            await self.ollama.probe()
        reachable = bool(self.ollama.reachable)
        return {
            "status": "ok" if reachable else "degraded",
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ollama": {
                "url": self.ollama.base_url,
                "reachable": reachable,
                "version": self.ollama.version,
                **({} if reachable else {"error": self.ollama.last_error}),
            },
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the stats endpoint and the dashboard show, without any I/O."""
        c = self.ollama.counters
        g = self.generations
        return {
            "response_cache": self.cache.stats(),
            "queue": {
                "max_concurrent": self.config.queue.max_concurrent,
                "active": g.active,
                "waiting": 0,
                "max_queue_size": self.config.queue.max_queue_size,
                "completed": g.completed,
                "cancelled": g.cancelled,
                "rejected": 0,
                "avg_wait_ms": 0.0,
                "avg_generation_ms": round(g.total_ms / g.completed, 1) if g.completed else 0.0,
            },
            "batch": {
                "coalesced": 0,
                "batches": 0,
                "max_batch_size": self.config.batch.max_batch_size,
            },
            "ollama": {
                "url": self.ollama.base_url,
                "model": self.config.ollama.model,
                "reachable": bool(self.ollama.reachable),
                "version": self.ollama.version,
                "latency_ms": self.ollama.latency_ms,
                "requests": c.requests,
                "errors": c.errors,
                "tokens_generated": c.tokens_generated,
            },
            "memory": {"rss_mb": round(self._process.memory_info().rss / 2**20, 1)},
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }


def _stats(record: RequestRecord) -> dict[str, int]:
    return {
        "queue_ms": record.queue_ms,
        "ttft_ms": record.ttft_ms if record.ttft_ms is not None else record.total_ms,
        "total_ms": record.total_ms,
        "eval_count": record.tokens,
    }
