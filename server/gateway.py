"""The Gateway: the one object HTTP handlers and the desktop app talk to.

It composes the services — response cache, queue, tickets, coalescing and bulk batches, the
Ollama client — and exposes `chat()`, `complete()`, `bulk()`, `issue_ticket()`, `ticket()`,
`cancel()`, `queue_entries()`, `health()`, `snapshot()`, `models_overview()`, `flush_cache()`,
`reset_stats()` and `apply_config()`.
Nobody else reaches into a service.

A chat request goes: ticket → cache → (join an identical generation in flight | a new
generation, which waits in the queue, then streams from Ollama and fills the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

from server import __version__
from server.auth import KeyRing, RateLimiter
from server.chat_request import ChatRequest
from server.config import Config
from server.errors import GatewayError, TooManyRequests
from server.metrics import Metrics
from server.metrics import enabled as metrics_enabled
from server.services.batch import BulkProcessor, Coalescer
from server.services.cache import CachedAnswer, ResponseCache, cache_key, normalize_model
from server.services.generation import Answer, Generation, Piece, Queued
from server.services.hosts import Host, HostPool, host_specs
from server.services.ollama import OllamaClient, OllamaCounters
from server.services.queue import GenerationQueue, Priority
from server.services.tickets import Ticket, TicketBook
from server.services.tiers import build_tiers, platform_cache_dir
from server.services.timing import SAVE_EVERY_S, TimingStore
from server.streams import ChatEvent, ChatStream, Content, Done, RequestRecord, Timer

log = logging.getLogger("chatbot.gateway")

# A cache hit is replayed in word-sized pieces, each with the whitespace before it, as a
# model's tokens would come; joined they are exactly the stored text.
_WORDS = re.compile(r"\s*\S+|\s+")
MAX_MODELS = 50
# Why the server itself ended a stream, as the log line, the recent table and the metrics say
# it: kept apart from "disconnected" (the client left) and "cancelled" (DELETE /api/chat-queue).
SERVER_RESTART, SHUTDOWN = "server_restart", "shutdown"


@dataclass
class Interruption:
    """A stream the server is ending (a restart or a stop ran out of drain time): why, and
    what the request had got so far (its record's stats, filled in as it ends)."""

    reason: str
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def code(self) -> str:
        """The error code the client's stream ends with."""
        return "server_shutting_down" if self.reason == SHUTDOWN else "server_restarting"

    @property
    def message(self) -> str:
        if self.reason == SHUTDOWN:
            return (
                "the server is shutting down before this answer was complete; send the "
                "request again when it is back"
            )
        return "the server is restarting before this answer was complete; send the request again"


class Gateway:
    def __init__(
        self,
        config: Config,
        ollama: OllamaClient | None = None,
        *,
        metrics: bool | None = None,
        desktop: bool = False,
    ) -> None:
        self.config = config
        # The Ollama hosts ([[ollama.hosts]], or api_url alone): health, models, routing.
        self.hosts = HostPool(host_specs(config), **_pool_settings(config))
        if ollama is not None:
            self.hosts.hosts[0].client = ollama
        self.cache = ResponseCache(
            enabled=config.cache.enabled,
            max_size_mb=config.cache.max_size_mb,
            ttl_seconds=config.cache.ttl_seconds,
        )
        # SQLite and/or Redis behind the RAM cache ([cache].backend; `desktop` picks auto's).
        self.tiers = build_tiers(config.cache, desktop=desktop)
        self.queue = GenerationQueue(
            max_concurrent=config.queue.max_concurrent,
            max_queue_size=config.queue.max_queue_size,
            estimated_ms=config.queue.estimated_time_per_request_ms,
            router=self.hosts,
        )
        self.hosts.on_change = self.queue.kick
        # The last generation times, kept across restarts for the first ETAs ([queue].state_file).
        state = config.queue.state_file
        self.timing = TimingStore(
            Path(state).expanduser()
            if state
            else (platform_cache_dir() / "queue.json" if desktop else None)
        )
        self.hosts.on_first_up = self._warm_up
        self.tickets = TicketBook(self.queue, config.queue.ticket_ttl_seconds)
        self.coalescer = Coalescer()
        self.bulk_processor = BulkProcessor(
            self._run_bulk_item,
            max_batch_size=config.batch.max_batch_size,
            batch_timeout_ms=config.batch.batch_timeout_ms,
        )
        self._process = psutil.Process()
        self.started_at = time.time()
        self.recent: deque[RequestRecord] = deque(maxlen=100)
        self.requests_total = 0  # chat requests answered or failed, for requests per second
        # Requests and cache hits per endpoint (chat-optimized, chat, generate, embed) and per
        # model; models are client text, so at most MAX_MODELS are told apart.
        self.by_endpoint: dict[str, dict[str, int]] = {}
        self.by_model: dict[str, dict[str, int]] = {}
        self.by_user: dict[str, dict[str, int]] = {}
        # Per model: (generations run to the end, their total ms), for the desktop dashboard;
        # kept apart from by_model, whose shape /api/cache-stats documents.
        self.generation_by_model: dict[str, tuple[int, int]] = {}
        # The endpoint and model of each request that may wait in line, for the queue tables;
        # weak, so a forgotten ticket takes its entry with it.
        self._about: weakref.WeakKeyDictionary[Ticket, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self.keys = KeyRing(config.auth.keys)
        self.limiter = RateLimiter()
        self._tasks: list[asyncio.Task[Any]] = []
        # Handler tasks a restart or stop is ending; weak, so a finished handler is forgotten.
        self._interrupted: weakref.WeakKeyDictionary[asyncio.Task[Any], Interruption] = (
            weakref.WeakKeyDictionary()
        )
        self.interrupted = 0  # requests ended by a restart or stop, apart from cancelled
        # Prometheus metrics (GET /metrics); on unless turned off for a measurement.
        on = metrics_enabled() if metrics is None else metrics
        self.metrics: Metrics | None = Metrics(self) if on else None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ollama(self) -> OllamaClient:
        """The first host's client, for callers that know of one Ollama only."""
        return self.hosts.hosts[0].client

    async def start(self) -> None:
        self.queue.remember(await self.timing.load())
        await self.hosts.start()
        await self.tiers.start()
        self._tasks.append(asyncio.create_task(self.hosts.run(), name="ollama-probe"))
        if self.timing.path is not None:
            self._tasks.append(asyncio.create_task(self._keep_timing(), name="queue-timing"))

    async def _keep_timing(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            await self.timing.save(self.queue.recent_generations())

    async def close(self) -> None:
        await self.bulk_processor.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.timing.save(self.queue.recent_generations())
        await self.tiers.close()
        await self.hosts.close()

    def interrupt(self, tasks: Iterable[asyncio.Task[Any]], reason: str) -> None:
        """End these streams' handler tasks because the server restarts or stops (`reason`):
        their records say so instead of "disconnected", and keep what they streamed."""
        for task in tasks:
            self._interrupted[task] = Interruption(reason)
            task.cancel()

    def interruption(self, info: dict[str, Any]) -> Interruption:
        """Why the current task's stream was cancelled, for its last frame: the server's restart
        or stop (see `interrupt`), noted in `info` (the access log's status and tokens), or,
        when the client left, a stand-in it never reads."""
        stop = self._stopping()
        if stop is None:
            return Interruption(SERVER_RESTART)
        info.update(stop.stats, error=stop.reason)
        return stop

    def _stopping(self) -> Interruption | None:
        """Why the server is ending the current task's stream, if it is."""
        task = asyncio.current_task()
        return self._interrupted.get(task) if task is not None else None

    async def _warm_up(self, host: Host) -> None:
        """A host answered for the first time: load the default model there, if it has it (or
        is the only host: its answer says what is wrong)."""
        model = self.config.ollama.model
        if not self.config.ollama.warm_up or not host.allows(model):
            return
        if host.has(model) or len(self.hosts.hosts) == 1:
            asyncio.get_running_loop().create_task(
                host.client.warm_up(model, self.config.ollama.keep_alive)
            )

    def apply_config(self, config: Config) -> list[str]:
        """Take a new configuration at run time; return the keys that need a server restart."""
        old, self.config = self.config, config
        self.keys = KeyRing(config.auth.keys)
        self.hosts.configure(host_specs(config), **_pool_settings(config))
        self.cache.configure(
            enabled=config.cache.enabled,
            max_size_mb=config.cache.max_size_mb,
            ttl_seconds=config.cache.ttl_seconds,
        )
        self.tiers.configure(config.cache)
        tier_keys = [
            f"[cache].{name}"
            for name in ("enabled", "backend", "disk_path", "redis_url")
            if getattr(old.cache, name) != getattr(config.cache, name)
        ]
        self.queue.configure(
            max_concurrent=config.queue.max_concurrent,
            max_queue_size=config.queue.max_queue_size,
            estimated_ms=config.queue.estimated_time_per_request_ms,
        )
        self.tickets.ttl_seconds = config.queue.ticket_ttl_seconds
        self.bulk_processor.configure(
            max_batch_size=config.batch.max_batch_size,
            batch_timeout_ms=config.batch.batch_timeout_ms,
        )
        return tier_keys + [
            f"[server].{name}"
            # The body limit is set when the HTTP app is built, so it also needs a restart.
            for name in ("host", "port", "max_body_kb")
            if getattr(old.server, name) != getattr(config.server, name)
        ]

    # -- chat -------------------------------------------------------------------------------

    def chat(
        self,
        req: ChatRequest,
        priority: Priority | None = None,
        *,
        tiers_asked: bool = False,
        key: str | None = None,
    ) -> ChatStream:
        """Open an answer: a ChatStream of Queued and Content events ending with one Done.

        Whether it is a RAM cache hit is known at once (for the `X-Cache` header), and so is a
        full queue (QueueFull, raised here). A hit from a tier behind RAM (SQLite, Redis) is
        found inside the stream, so it says MISS but replays with `cached` true; `open()` (used
        by `complete()` and the handlers) asks the tiers first (`tiers_asked`, with the `key`
        it computed), so the request says HIT. Iterating raises GatewayError on failure;
        closing the stream early (the client left) detaches it, and the upstream generation
        stops when nobody else listens to it.
        """
        priority = Priority(req.priority) if priority is None else priority
        self._admit(req.user)
        ticket = self.tickets.open(req.request_id, priority, req.user)  # may raise Conflict
        try:
            key = key or self.cache_key(req)
            hit = self.cache.get(key) if req.cache_read else None
            if hit is not None:
                self.tickets.drop_reservation(ticket)
                return ChatStream(self._replay(req, hit, ticket), hit=hit)
            if req.cache_read and self.tiers_on and not tiers_asked:
                # The tiers behind RAM are asked inside the stream (they are I/O). The place in
                # line is taken now, so a full queue is still refused before any header.
                if ticket.reservation is None:
                    ticket.reservation = self.queue.enqueue(
                        priority,
                        label=req.request_id,
                        owner=req.user,
                        max_waiting=self.config.auth.max_waiting_per_user,
                    )
                self._about[ticket] = (req.endpoint, req.model)
                return ChatStream(self._from_tiers(req, key, ticket, priority))
            gen, joined = self._generation_for(req, key, ticket, priority)
        except BaseException as exc:
            # Whatever went wrong (a full queue, or a bug), the ticket and any place in line
            # it holds are given back: nothing may keep a slot taken for good.
            self.tickets.abandon(ticket, exc.code if isinstance(exc, GatewayError) else "failed")
            raise
        ticket.generation = gen
        self._about[ticket] = (req.endpoint, req.model)
        return ChatStream(self._listen(req, gen, ticket, "coalesced" if joined else "miss"))

    def _admit(self, user: str) -> None:
        """The per-user rate limit: counts the request, or raises TooManyRequests."""
        retry = self.limiter.retry_after(user, self.config.auth.requests_per_minute_per_user)
        if retry is not None:
            raise TooManyRequests(
                f"{user} made {self.config.auth.requests_per_minute_per_user} requests in "
                f"the last minute ([auth].requests_per_minute_per_user); try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    def known_hit(self, key: str, user: str) -> CachedAnswer | None:
        """A RAM hit for a whole-answer request whose cache key is already known
        (server/fast_hits.py), admitted by the rate limit as chat() admits it; None, with
        nothing counted, when RAM does not hold it (the caller then goes through chat())."""
        hit = self.cache.peek(key)
        if hit is None:
            return None
        self._admit(user)
        self.cache.count_hit()
        return hit

    def count_known_hit(
        self, request_id: str, model: str, endpoint: str, user: str, hit: CachedAnswer
    ) -> dict[str, int]:
        """Count a known_hit() answered: what _record_hit counts (a hit's ticket is opened and
        forgotten within one call, so none is kept); its stats."""
        log.debug(
            "cache hit %s model=%s (%d chars, stored %.0f s ago)",
            request_id,
            model,
            len(hit.text),
            time.monotonic() - hit.stored_at,
        )
        record = RequestRecord(
            request_id, model, endpoint, cached=True, ttft_ms=0, tokens=hit.eval_count, user=user
        )
        self.record(record, prompt_tokens=hit.prompt_eval_count)
        return record.stats()

    def cache_key(self, req: ChatRequest) -> str:
        extra = req.key_extra
        if self.config.cache.scope == "per_key":
            # Each key's answers are its own: a hit cannot reveal someone else's question.
            extra = {**(extra or {}), "scope": req.user}
        return cache_key(
            req.model, req.messages, req.options, req.format, kind=req.kind, extra=extra
        )

    def _generation_for(
        self, req: ChatRequest, key: str, ticket: Ticket, priority: Priority
    ) -> tuple[Generation, bool]:
        """The generation to listen to, and whether it is one already in flight (joined)."""
        # Only cacheable requests share: a client that asked for a fresh answer gets its own.
        shareable = self.config.batch.enabled and req.cache_read and req.cache_write
        if shareable and (gen := self.coalescer.join(key)) is not None:
            log.info("%s joins the identical generation in flight", req.request_id)
            self.tickets.drop_reservation(ticket)
            return gen, True
        entry = self.tickets.take_reservation(ticket)
        if entry is not None:
            self.queue.retarget(entry, req.model)  # a reservation learns its model
        else:
            entry = self.queue.enqueue(
                priority,
                label=req.request_id,
                owner=req.user,
                max_waiting=self.config.auth.max_waiting_per_user,
                model=req.model,
            )

        def store(answer: Answer) -> None:
            cached = _cached(req.model, answer)
            if self.tiers_on:
                self.tiers.put(key, cached)
            self.cache.put_answer(key, cached)

        gen = Generation(
            ollama=self.ollama,
            queue=self.queue,
            entry=entry,
            payload=req.ollama_payload(),
            path=req.path,
            on_complete=store if req.cache_write else None,
            on_finish=lambda g: self.coalescer.forget(key, g),
            hosts=self.hosts,
        )
        if shareable:
            self.coalescer.register(key, gen)
        return gen, False

    async def _from_tiers(
        self, req: ChatRequest, key: str, ticket: Ticket, priority: Priority
    ) -> AsyncGenerator[ChatEvent, None]:
        """A RAM miss: the tiers behind RAM, then (on a miss there too) a generation."""
        events: AsyncGenerator[ChatEvent, None] | None = None
        try:
            found = await self.tiers.get(key)  # never raises; Redis is bounded to 50 ms
            if found is not None:
                hit = self.cache.adopt(key, found, missed=True)
                self.tickets.drop_reservation(ticket)
                events = self._replay(req, hit, ticket)
            else:
                gen, joined = self._generation_for(req, key, ticket, priority)
                ticket.generation = gen
                events = self._listen(req, gen, ticket, "coalesced" if joined else "miss")
        except BaseException as exc:
            # The client left during the lookup (or a bug): give back the place in line.
            self.tickets.abandon(ticket, exc.code if isinstance(exc, GatewayError) else "failed")
            raise
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def _fill_from_tiers(self, reqs: list[ChatRequest]) -> None:
        """Copy into RAM what the tiers behind it hold for these requests (RAM misses only,
        all looked up at once), so the requests then find it in RAM."""
        keys = {
            key
            for req in reqs
            if req.cache_read and not self.cache.contains(key := self.cache_key(req))
        }
        found = await asyncio.gather(*(self.tiers.get(key) for key in keys))
        for key, answer in zip(keys, found, strict=True):
            if answer is not None:
                self.cache.adopt(key, answer, missed=False)

    async def _replay(
        self, req: ChatRequest, hit: CachedAnswer, ticket: Ticket
    ) -> AsyncGenerator[ChatEvent, None]:
        timer = Timer()
        record = RequestRecord(req.request_id, req.model, req.endpoint, cached=True, user=req.user)
        self._log_hit(req, hit)
        try:
            record.ttft_ms = timer.ms()
            # Reasoning first, then the answer, then any tool calls: as the model gave them.
            for piece in _WORDS.findall(hit.thinking):
                yield Content("", thinking=piece)
            for piece in _WORDS.findall(hit.text):
                yield Content(piece)
            if hit.tool_calls:
                yield Content("", tool_calls=hit.tool_calls)
            record.tokens = hit.eval_count
            record.total_ms = timer.ms()
            yield Done(model=req.model, cached=True, stats=record.stats(), hit=hit)
        finally:
            self._finish(record, timer, ticket, prompt_tokens=hit.prompt_eval_count)

    async def _listen(
        self, req: ChatRequest, gen: Generation, ticket: Ticket, outcome: str
    ) -> AsyncGenerator[ChatEvent, None]:
        timer = Timer()
        record = RequestRecord(req.request_id, req.model, req.endpoint, user=req.user)
        listening_since = time.monotonic()
        streamed = 0  # pieces this client got: its tokens, if the answer ends early
        stop: Interruption | None = None
        try:
            # aclosing: leaving early detaches this listener at once (not when collected), so
            # an interrupted generation is known to have no listener left, below.
            listening = cast(AsyncGenerator[Queued | Piece, None], gen.listen(ticket))
            async with contextlib.aclosing(listening) as events:
                async for event in events:
                    if isinstance(event, Queued):
                        yield event
                        continue
                    if record.ttft_ms is None:
                        record.ttft_ms = timer.ms()
                    streamed += 1
                    more = streamed < len(gen.pieces)  # the next piece is there already
                    yield Content(event.text, event.thinking, event.tool_calls, event.line, more)
            granted = gen.entry.granted_at or listening_since
            record.queue_ms = max(0, round((granted - listening_since) * 1000))
            record.tokens = gen.tokens
            record.total_ms = timer.ms()
            yield Done(
                model=req.model,
                cached=False,
                stats=record.stats(),
                final=gen.final,
                answer=gen.answer(),
            )
        except GatewayError as exc:  # Cancelled included: its code is "cancelled"
            record.status = exc.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not record.total_ms:
                record.tokens = streamed
                stop = self._stopping()
                record.status = stop.reason if stop is not None else "disconnected"
                if stop is not None and gen.listeners == 0 and not gen.finished:
                    # Its queue slot is freed as "interrupted", not counted as cancelled (the
                    # generation task, stopping, then finds the entry released).
                    self.queue.release(gen.entry, "interrupted")
            raise
        finally:
            prompt_tokens = int((gen.final or {}).get("prompt_eval_count") or 0)
            if stop is not None:
                self.interrupted += 1
            self._finish(record, timer, ticket, outcome, prompt_tokens)
            if stop is not None:
                stop.stats = record.stats()
                if record.ttft_ms is None:  # no first token: no time to it, not the total
                    del stop.stats["ttft_ms"]

    def record(
        self, record: RequestRecord, outcome: str | None = None, prompt_tokens: int = 0
    ) -> None:
        """Count a finished request: the recent table, the per-endpoint and model figures, and
        the metrics. `outcome` is the cache's: hit, miss or coalesced (default: from `cached`)."""
        self.recent.append(record)
        self.requests_total += 1
        model = normalize_model(record.model)
        if model not in self.by_model and len(self.by_model) >= MAX_MODELS:
            model = "(other)"
        user = record.user
        if user not in self.by_user and len(self.by_user) >= MAX_MODELS:
            user = "(other)"
        for table, name in (
            (self.by_endpoint, record.endpoint),
            (self.by_model, model),
            (self.by_user, user),
        ):
            counts = table.get(name)
            if counts is None:
                counts = table[name] = {"requests": 0, "hits": 0}
            counts["requests"] += 1
            counts["hits"] += record.cached
        if not record.cached and record.status == "ok" and outcome in (None, "miss"):
            # Generation time per model: the request that ran the generation, less its wait in
            # line (a coalesced listener joined midway, so its time says less).
            runs, total = self.generation_by_model.get(model, (0, 0))
            spent = max(0, record.total_ms - record.queue_ms)
            self.generation_by_model[model] = (runs + 1, total + spent)
        if self.metrics is not None:
            outcome = outcome or ("hit" if record.cached else "miss")
            self.metrics.observe(record, model, outcome, prompt_tokens)

    def _finish(
        self,
        record: RequestRecord,
        timer: Timer,
        ticket: Ticket,
        outcome: str | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        record.total_ms = record.total_ms or timer.ms()
        self.record(record, outcome, prompt_tokens)
        status = {"ok": "completed", "cancelled": "cancelled", "disconnected": "cancelled"}
        self.tickets.finish(ticket, status.get(record.status, "failed"))

    async def open(self, req: ChatRequest, priority: Priority | None = None) -> ChatStream:
        """chat(), after asking the tiers behind RAM (SQLite, Redis): an answer one of them
        holds is copied into RAM first, so the stream knows it is a hit before any header is
        sent (`X-Cache: HIT`). The handlers open their streams here."""
        key = None
        if self.tiers_on and req.cache_read:
            # The key is hashed once (a RAM hit costs no more than without tiers).
            key = self.cache_key(req)
            if not self.cache.contains(key) and (found := await self.tiers.get(key)):
                self.cache.adopt(key, found, missed=False)
        return self.chat(req, priority, tiers_asked=self.tiers_on, key=key)

    async def complete(
        self, req: ChatRequest, priority: Priority | None = None
    ) -> tuple[str, Done]:
        """The whole answer at once (non-streaming clients); queue updates are not needed."""
        stream = await self.open(req, priority)
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
                elif isinstance(event, Done):
                    done = event
        assert done is not None  # a stream always ends with Done or raises
        return "".join(parts), done

    def _log_hit(self, req: ChatRequest, hit: CachedAnswer) -> None:
        # The access log's line for the request (at info) says `cache=hit`; this adds detail.
        log.debug(
            "cache hit %s model=%s (%d chars, stored %.0f s ago)",
            req.request_id,
            req.model,
            len(hit.text),
            time.monotonic() - hit.stored_at,
        )

    def _record_hit(self, req: ChatRequest, hit: CachedAnswer) -> Done:
        self._log_hit(req, hit)
        record = RequestRecord(
            req.request_id,
            req.model,
            req.endpoint,
            cached=True,
            ttft_ms=0,
            tokens=hit.eval_count,
            user=req.user,
        )
        ticket = self.tickets.get(req.request_id)
        assert ticket is not None  # chat() opened it, and nothing has finished it yet
        self._finish(record, Timer(), ticket, prompt_tokens=hit.prompt_eval_count)
        return Done(model=req.model, cached=True, stats=record.stats(), hit=hit)

    # -- bulk jobs and tickets --------------------------------------------------------------

    async def bulk(self, items: list[ChatRequest | GatewayError]) -> list[dict[str, Any]]:
        """Answer a bulk job: per-item results in order; one failure never fails the others.

        Identical items are computed once, cache hits are answered at once, the rest go through
        the queue at batch priority in groups (BulkProcessor).
        """
        results: list[dict[str, Any] | None] = [None] * len(items)
        first_of: dict[str, int] = {}
        twins: dict[int, list[int]] = {}
        to_run: list[tuple[int, ChatRequest]] = []
        if self.tiers_on:
            await self._fill_from_tiers([i for i in items if isinstance(i, ChatRequest)])
        for i, item in enumerate(items):
            if isinstance(item, GatewayError):
                results[i] = _failed(item)
                continue
            key = self.cache_key(item)
            if key in first_of and item.cache_read:
                twins.setdefault(first_of[key], []).append(i)
                continue
            first_of.setdefault(key, i)
            hit = self.cache.get(key) if item.cache_read else None
            if hit is not None:
                results[i] = {"content": hit.text, "cached": True, "model": item.model}
            else:
                to_run.append((i, item))
        answers = await self.bulk_processor.submit([req for _, req in to_run])
        for (i, req), answer in zip(to_run, answers, strict=True):
            if isinstance(answer, GatewayError):
                results[i] = _failed(answer)
            elif isinstance(answer, BaseException):
                log.error("bulk item %s failed: %r", req.request_id, answer)
                results[i] = _failed(GatewayError("internal error; see the server log"))
            else:
                results[i] = {"content": answer[0], "cached": False, "model": req.model}
        for first, others in twins.items():
            for i in others:
                results[i] = dict(results[first] or {})
        return [r or {} for r in results]

    async def _run_bulk_item(self, req: ChatRequest) -> tuple[str, Done]:
        return await self.complete(req, Priority.BATCH)

    def issue_ticket(self, req: ChatRequest) -> Ticket:
        """POST /api/chat-queue: a place in line for a chat request to claim."""
        ticket = self.tickets.issue(
            req.request_id,
            Priority(req.priority),
            owner=req.user,
            max_waiting=self.config.auth.max_waiting_per_user,
        )
        if ticket.reservation is not None:
            self.queue.retarget(ticket.reservation, req.model)
        self._about[ticket] = (req.endpoint, req.model)
        return ticket

    def ticket(self, request_id: str) -> Ticket | None:
        return self.tickets.get(request_id)

    def cancel(self, ticket: Ticket) -> None:
        log.info("cancelling %s (%s)", ticket.request_id, ticket.status)
        self.tickets.cancel(ticket)

    def ticket_info(self, ticket: Ticket) -> dict[str, Any]:
        """A ticket as /api/chat-queue shows it (camelCase, as the Node route did)."""
        return {
            "success": True,
            "requestId": ticket.request_id,
            "status": ticket.status,
            "position": ticket.position,
            "estimatedWaitTime": self.queue.eta_ms(ticket.position, _model_of(ticket)),
            "queueLength": self.queue.waiting,
        }

    def queue_entries(self) -> list[dict[str, Any]]:
        """The requests in progress, for the dashboards' queue tables: each one's id, owner,
        endpoint, model, status, place in line, ETA and time since it joined the line; those
        being answered first, then the line in order."""
        rows = []
        now = time.monotonic()
        # Read-only: a finished ticket (kept for polling) is no longer in the queue.
        for ticket in list(self.tickets._tickets.values()):
            entry = ticket.entry
            if ticket.final is not None or ticket.cancelled or entry is None:
                continue
            endpoint, model = self._about.get(ticket, ("", ""))
            rows.append(
                {
                    "request_id": ticket.request_id,
                    "user": ticket.owner,
                    "endpoint": endpoint,
                    "model": model,
                    "status": ticket.status,
                    "position": ticket.position,
                    "estimated_wait_ms": self.queue.eta_ms(ticket.position, _model_of(ticket)),
                    "waited_ms": round(entry.wait_ms),
                    "elapsed_ms": round((now - entry.enqueued_at) * 1000),
                    "priority": entry.priority.name.lower(),
                }
            )
        rows.sort(key=lambda r: (r["status"] != "processing", r["position"]))
        return rows

    # -- reporting --------------------------------------------------------------------------

    def flush_cache(self) -> int:
        """Clear the RAM tier (only: no I/O here); `flush_tiers()` clears them all."""
        count = self.cache.clear()
        log.info("cache flushed (%d entries)", count)
        return count

    async def flush_tiers(self) -> dict[str, int | str]:
        """Clear every cache tier: per tier (memory, sqlite, redis), the entries it dropped,
        or why it could not be cleared (a tier that is down)."""
        done: dict[str, int | str] = {"memory": self.flush_cache()}
        done.update(await self.tiers.clear())
        log.info("cache tiers flushed: %s", done)
        return done

    @property
    def tiers_on(self) -> bool:
        """Tiers behind RAM exist and the cache is on (`[cache].enabled` off skips them too)."""
        return self.cache.enabled and self.tiers.active

    def cache_tiers(self) -> dict[str, dict[str, Any]]:
        """Each tier's state, entries and hits: memory first, then those behind it."""
        memory = self.tiers.memory_stats(self.cache.counters, self.cache.entries)
        return {"memory": memory, **self.tiers.stats()}

    def reset_stats(self) -> None:
        self.cache.reset_stats()
        self.tiers.reset_stats()
        self.queue.reset_stats()
        self.coalescer.coalesced = 0
        self.by_endpoint.clear()
        self.by_model.clear()
        self.by_user.clear()
        self.generation_by_model.clear()
        self.bulk_processor.batches = self.bulk_processor.items = 0
        for host in self.hosts.hosts:
            host.client.counters = OllamaCounters()

    async def models_overview(self) -> dict[str, Any]:
        """What the Ollama hosts have: the union of the models installed (/api/tags) and loaded
        now (/api/ps) on the hosts that answer, named as the per-model figures name them; both
        None when no host answers. Reading them also refreshes what routing knows."""
        await self.hosts.refresh()
        up = self.hosts.up()
        if not up:
            error = next((h.last_error for h in self.hosts.hosts if h.last_error), None)
            return {"reachable": False, "installed": None, "loaded": None, "error": error}
        return {
            "reachable": True,
            "installed": sorted(set().union(*(h.models for h in up))),
            "loaded": sorted(set().union(*(h.loaded for h in up))),
            "error": None,
        }

    async def health(self) -> dict[str, Any]:
        unprobed = [h for h in self.hosts.hosts if h.state == "unknown"]
        if unprobed:
            await asyncio.gather(*(self.hosts.probe(h) for h in unprobed))
        # `ollama` is the first host up (else the first), as with one host; `hosts` all of them.
        first = (self.hosts.up() or self.hosts.hosts)[0].client
        reachable = bool(self.hosts.up())
        return {
            "status": "ok" if reachable else "degraded",
            "version": __version__,
            # A tier down is reported, not a degraded status: answers still flow without it.
            "cache_tiers": {
                name: {k: v for k, v in tier.items() if k in ("state", "reason", "entries")}
                for name, tier in self.cache_tiers().items()
            },
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "ollama": {
                "url": first.base_url,
                "reachable": reachable,
                "version": first.version,
                **({} if reachable else {"error": first.last_error}),
            },
            "hosts": self.hosts.as_list(),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the stats endpoint and the dashboard show, without any I/O."""
        clients = [h.client for h in self.hosts.hosts]
        first = (self.hosts.up() or self.hosts.hosts)[0].client
        latency = first.latency_ms
        return {
            "response_cache": {**self.cache.stats(), "tiers": self.cache_tiers()},
            "queue": {**self.queue.stats(), "interrupted": self.interrupted},
            "batch": {
                "enabled": self.config.batch.enabled,
                "coalesced": self.coalescer.coalesced,
                "in_flight": self.coalescer.inflight,
                "batches": self.bulk_processor.batches,
                "batched_items": self.bulk_processor.items,
                "pending": self.bulk_processor.pending,
                "max_batch_size": self.bulk_processor.max_batch_size,
                "batch_timeout_ms": self.bulk_processor.batch_timeout_ms,
            },
            "ollama": {
                "url": first.base_url,
                "model": self.config.ollama.model,
                "reachable": bool(self.hosts.up()),
                "version": first.version,
                # To 0.1 ms, as the queue's averages: the probe's float has no more meaning.
                "latency_ms": None if latency is None else round(latency, 1),
                # Summed over the hosts.
                "requests": sum(c.counters.requests for c in clients),
                "errors": sum(c.counters.errors for c in clients),
                "tokens_generated": sum(c.counters.tokens_generated for c in clients),
            },
            "hosts": self.hosts.as_list(),
            "memory": {"rss_mb": round(self._process.memory_info().rss / 2**20, 1)},
            "requests_total": self.requests_total,
            "endpoints": {k: dict(v) for k, v in self.by_endpoint.items()},
            "models": {k: dict(v) for k, v in self.by_model.items()},
            "users": {k: dict(v) for k, v in self.by_user.items()},
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }


def _cached(model: str, answer: Answer) -> CachedAnswer:
    return CachedAnswer(
        answer.text,
        model,
        answer.eval_count,
        time.monotonic(),
        thinking=answer.thinking,
        tool_calls=answer.tool_calls,
        done_reason=answer.done_reason,
        prompt_eval_count=answer.prompt_eval_count,
        context=answer.context,
    )


def _model_of(ticket: Ticket) -> str | None:
    return ticket.entry.model if ticket.entry is not None else None


def _pool_settings(config: Config) -> dict[str, Any]:
    return {
        "default_concurrent": config.queue.max_concurrent,
        "timeout_s": config.ollama.timeout_seconds,
        "connect_timeout_s": config.ollama.connect_timeout_seconds,
        "probe_interval_s": config.ollama.probe_interval_seconds,
    }


def _failed(exc: GatewayError) -> dict[str, Any]:
    return {"content": None, "cached": False, "error": exc.message, "code": exc.code}
