"""What a chat answer looks like to its consumers: events, the stream, and its record."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from server.services.cache import CachedAnswer
from server.services.generation import Answer, Queued


# slots, not frozen: one is made per token per client (a frozen __init__ costs 5x more).
@dataclass(slots=True)
class Content:
    """A piece of the answer: text, and for native clients its reasoning, tool calls and the
    upstream line it came in (`line`, without its newline; None for a replayed hit).

    `more`: another piece follows at once (the client is behind the generation), so a handler
    may hold this one and write them together."""

    text: str
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    line: bytes | None = None
    more: bool = False


@dataclass(frozen=True)
class Done:
    """The end of a successful answer: for native clients, Ollama's done chunk (`final`,
    live answers) or the stored answer (`hit`, replays)."""

    model: str
    cached: bool
    stats: dict[str, int]
    final: dict[str, Any] | None = None
    hit: CachedAnswer | None = None
    answer: Answer | None = None  # a live answer whole (text, thinking, tool calls)


ChatEvent = Queued | Content | Done


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
    endpoint: str = "chat-optimized"
    started: float = field(default_factory=time.time)
    user: str = "anonymous"
    cached: bool = False
    queue_ms: int = 0
    ttft_ms: int | None = None
    total_ms: int = 0
    tokens: int = 0
    status: str = "ok"  # ok, or the error code, "cancelled" or "disconnected"

    def stats(self) -> dict[str, int]:
        return {
            "queue_ms": self.queue_ms,
            "ttft_ms": self.ttft_ms if self.ttft_ms is not None else self.total_ms,
            "total_ms": self.total_ms,
            "eval_count": self.tokens,
        }


@dataclass
class Timer:
    start: float = field(default_factory=time.perf_counter)

    def ms(self) -> int:
        return round((time.perf_counter() - self.start) * 1000)
