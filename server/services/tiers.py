"""Cache tiers behind the RAM cache: what they share, and the Tiers facade the Gateway uses.

The RAM cache (`ResponseCache`) is always the front tier. `[cache].backend` puts zero, one or
two tiers behind it, asked in this order on a RAM miss:

- `sqlite` — a SQLite file in the platform's cache directory (`cache_sqlite.SqliteTier`): the
  answers outlive the process, so a question asked before a restart or reboot is a hit at once.
- `redis` — a Redis or Valkey server (`cache_redis.RedisTier`): several gateways share answers.

A hit found in a tier is copied into RAM (and into the tiers in front of it), and a new answer
goes to every tier. Writes never delay an answer: each tier takes them into a bounded queue
that a background thread or task drains; when it is full, the write is dropped and counted.
A tier never fails a request: an error marks it `down` with the reason (stats, /health,
/metrics and both dashboards show it), and the gateway carries on with the tiers that work.

Entries are stored as JSON with their wall-clock storing time, so the TTL counts from when the
answer was first generated, whichever tier it comes back from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.config import CacheSection
from server.services.cache import CacheCounters, CachedAnswer

log = logging.getLogger("chatbot.cache")

# Bump when the stored JSON changes shape: it is part of the Redis key prefix and SQLite's
# user_version, so old entries are never misread (SQLite drops them, Redis lets them expire).
FORMAT_VERSION = 1
BACKENDS = ("auto", "memory", "sqlite", "redis", "sqlite+redis")


def platform_cache_dir() -> Path:
    """Where per-user caches go: $XDG_CACHE_HOME (or ~/.cache), ~/Library/Caches on macOS,
    %LOCALAPPDATA% on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatbot-companion"


def default_disk_path() -> Path:
    return platform_cache_dir() / "answers.sqlite3"


def tier_names(backend: str, redis_url: str, *, desktop: bool) -> list[str]:
    """The tiers behind RAM for a `[cache].backend` value. `auto`: SQLite in the desktop app,
    none in the headless server; plus Redis whenever `[cache].redis_url` is set."""
    if backend == "auto":
        names = ["sqlite"] if desktop else []
        return [*names, "redis"] if redis_url else names
    return [] if backend == "memory" else backend.split("+")


def encode(answer: CachedAnswer) -> bytes:
    """An answer as the tiers store it, with its wall-clock storing time."""
    stored = time.time() - (time.monotonic() - answer.stored_at)
    doc = {
        "text": answer.text,
        "model": answer.model,
        "eval_count": answer.eval_count,
        "stored": stored,
        "thinking": answer.thinking,
        "tool_calls": list(answer.tool_calls),
        "done_reason": answer.done_reason,
        "prompt_eval_count": answer.prompt_eval_count,
        "context": list(answer.context) if answer.context is not None else None,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes | str, ttl_seconds: float) -> CachedAnswer | None:
    """The stored answer, aged as it really is; None when expired or not readable."""
    try:
        doc = json.loads(data)
        age = max(0.0, time.time() - float(doc["stored"]))
        if age >= ttl_seconds:
            return None
        context = doc.get("context")
        return CachedAnswer(
            text=str(doc["text"]),
            model=str(doc["model"]),
            eval_count=int(doc["eval_count"]),
            stored_at=time.monotonic() - age,
            thinking=str(doc.get("thinking") or ""),
            tool_calls=tuple(doc.get("tool_calls") or ()),
            done_reason=str(doc.get("done_reason") or "stop"),
            prompt_eval_count=int(doc.get("prompt_eval_count") or 0),
            context=tuple(context) if isinstance(context, list) else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("a cache tier holds an unreadable entry (%s); ignored", exc)
        return None


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    dropped: int = 0  # writes given up: the queue was full or the tier was down
    errors: int = 0


class Tier(ABC):
    """One tier behind RAM. Its methods never raise for the tier's own failures: they mark the
    tier down (state, reason) and answer as a miss."""

    name = ""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.counters = TierCounters()
        self.state = "starting"  # starting, up or down
        self.reason = ""
        self.entries = 0

    @property
    def up(self) -> bool:
        return self.state == "up"

    def _down(self, reason: str) -> None:
        if self.state != "down" or reason != self.reason:
            log.warning("cache tier %s is down: %s; answering without it", self.name, reason)
        self.state, self.reason = "down", reason
        self.counters.errors += 1

    def _up(self) -> None:
        if self.state == "down":
            log.info("cache tier %s is back up", self.name)
        self.state, self.reason = "up", ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Stop, after writing what is queued (bounded in time)."""

    @abstractmethod
    async def get(self, key: str) -> CachedAnswer | None: ...

    @abstractmethod
    def put(self, key: str, answer: CachedAnswer) -> None:
        """Queue a write; returns at once."""

    @abstractmethod
    async def clear(self) -> int:
        """Drop every entry; return how many there were. Raises OSError-like errors as
        `TierError` when the tier cannot be cleared."""

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "state": self.state,
            **({"reason": self.reason} if self.reason else {}),
            "entries": self.entries,
            "hits": c.hits,
            "misses": c.misses,
            "writes": c.writes,
            "dropped_writes": c.dropped,
            "errors": c.errors,
            **self.extra_stats(),
        }

    def reset_stats(self) -> None:
        self.counters = TierCounters()


class TierError(Exception):
    """A tier could not do what was asked (it is down, or the operation failed)."""


class Tiers:
    """The tiers behind RAM, asked in order; empty when the backend is `memory`."""

    def __init__(self, tiers: list[Tier]) -> None:
        self.tiers = tiers

    @property
    def active(self) -> bool:
        return bool(self.tiers)

    @property
    def hits(self) -> int:
        return sum(t.counters.hits for t in self.tiers)

    async def start(self) -> None:
        await asyncio.gather(*(t.start() for t in self.tiers))

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self.tiers), return_exceptions=True)

    def configure(self, cache: CacheSection) -> None:
        """Take a new `[cache]` at run time: the TTL and the disk budget apply at once (the
        keys that choose or place tiers need a restart; the Gateway says so)."""
        for tier in self.tiers:
            tier.ttl_seconds = cache.ttl_seconds
            if hasattr(tier, "max_size_mb"):
                tier.max_size_mb = cache.disk_max_size_mb

    def memory_stats(self, ram: CacheCounters, entries: int) -> dict[str, Any]:
        """The RAM tier, shown beside the others: its `hits` are those RAM had before any
        lookup behind it (the cache's own `hits` also count answers copied up from a tier)."""
        return {"state": "up", "entries": entries, "hits": ram.hits - self.hits}

    async def get(self, key: str) -> CachedAnswer | None:
        """The first tier's answer, copied into the tiers in front of it; None on a miss."""
        for i, tier in enumerate(self.tiers):
            answer = await tier.get(key)
            if answer is not None:
                for front in self.tiers[:i]:
                    front.put(key, answer)
                return answer
        return None

    def put(self, key: str, answer: CachedAnswer) -> None:
        for tier in self.tiers:
            tier.put(key, answer)

    async def clear(self) -> dict[str, int | str]:
        """Clear every tier: per tier, how many entries went, or why it could not be cleared."""

        async def one(tier: Tier) -> int | str:
            try:
                return await tier.clear()
            except TierError as exc:
                return f"not cleared: {exc}"

        results = await asyncio.gather(*(one(t) for t in self.tiers))
        return {t.name: r for t, r in zip(self.tiers, results, strict=True)}

    def stats(self) -> dict[str, dict[str, Any]]:
        return {t.name: t.stats() for t in self.tiers}

    def reset_stats(self) -> None:
        for tier in self.tiers:
            tier.reset_stats()


def build_tiers(cache: CacheSection, *, desktop: bool = False) -> Tiers:
    """The tiers `[cache]` asks for (none when the cache is off), not started yet."""
    tiers: list[Tier] = []
    if not cache.enabled:
        return Tiers(tiers)
    for name in tier_names(cache.backend, cache.redis_url, desktop=desktop):
        if name == "sqlite":
            from server.services.cache_sqlite import SqliteTier

            path = Path(cache.disk_path).expanduser() if cache.disk_path else default_disk_path()
            tiers.append(
                SqliteTier(path, max_size_mb=cache.disk_max_size_mb, ttl_seconds=cache.ttl_seconds)
            )
        elif name == "redis":
            from server.services.cache_redis import RedisTier

            url = cache.redis_url or "redis://localhost:6379/0"
            tiers.append(RedisTier(url, ttl_seconds=cache.ttl_seconds))
    return Tiers(tiers)
