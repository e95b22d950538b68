"""The Gateway: the one object HTTP handlers and the desktop app talk to.

It composes the services (today the Ollama client; the cache, queue and batch processor plug in
at the marked places in `chat`) and exposes `chat()`, `complete()`, `health()`, `snapshot()` and
`apply_config()`. Nobody else reaches into a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server import __version__
from server.chat_request import ChatRequest
from server.config import Config
from server.errors import GatewayError
from server.services.ollama import OllamaClient

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
        return [
            f"[server].{name}"
            for name in ("host", "port")
            if getattr(old.server, name) != getattr(config.server, name)
        ]

    # -- chat -------------------------------------------------------------------------------

    async def chat(self, req: ChatRequest) -> AsyncIterator[ChatEvent]:
        """Stream an answer: Content events, then one Done; raises GatewayError on failure.

        Stopping the iteration early (the client left) closes the upstream generation.
        """
        timer = _Timer()
        record = RequestRecord(req.request_id, req.model, started=time.time())
        try:
            # The response cache is consulted here, before any upstream work.
            # Coalescing of identical requests and queue admission wrap the upstream call below.
            record.queue_ms = timer.ms()
            async for chunk in self.ollama.chat_stream(req.ollama_payload()):
                text = (chunk.get("message") or {}).get("content") or ""
                if text:
                    if record.ttft_ms is None:
                        record.ttft_ms = timer.ms()
                    yield Content(text)
                if chunk.get("done"):
                    record.tokens = int(chunk.get("eval_count") or 0)
            record.total_ms = timer.ms()
            yield Done(model=req.model, cached=False, stats=_stats(record))
        except GatewayError as exc:
            record.status = exc.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            record.status = "disconnected"
            raise
        finally:
            record.total_ms = record.total_ms or timer.ms()
            self.recent.append(record)

    async def complete(self, req: ChatRequest) -> tuple[str, Done]:
        """The whole answer at once (non-streaming clients)."""
        parts: list[str] = []
        done: Done | None = None
        async for event in self.chat(req):
            if isinstance(event, Content):
                parts.append(event.text)
            else:
                done = event
        assert done is not None  # chat() always ends with Done or raises
        return "".join(parts), done

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
        return {
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
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }


def _stats(record: RequestRecord) -> dict[str, int]:
    return {
        "queue_ms": record.queue_ms,
        "ttft_ms": record.ttft_ms if record.ttft_ms is not None else record.total_ms,
        "total_ms": record.total_ms,
        "eval_count": record.tokens,
    }
