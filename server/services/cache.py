"""The response cache: complete answers in RAM, bounded in bytes, LRU with a TTL (cachetools).

Each entry is accounted as `sys.getsizeof(key) + sys.getsizeof(text) + ENTRY_OVERHEAD`:
the two strings as CPython stores them (so non-ASCII text counts what it really takes) plus a
fixed overhead for the entry object, its dict slots and cachetools' LRU/TTL links. The overhead
was measured with tracemalloc over 10,000 entries (bench/README.md, "Cache entry overhead");
a test checks that filling the cache grows the process's RSS by about the accounted size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

log = logging.getLogger("chatbot.cache")

# Measured bytes per entry beyond the key and text strings (see the module docstring).
ENTRY_OVERHEAD = 336
MB = 1024 * 1024


@dataclass(slots=True, frozen=True)
class CachedAnswer:
    text: str
    model: str
    eval_count: int
    stored_at: float  # time.monotonic() when stored; the TTL counts from here
    size: int = 0  # accounted bytes, set by ResponseCache.put
    # What a native (Ollama API) replay gives back besides the text.
    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    done_reason: str = "stop"
    prompt_eval_count: int = 0
    context: tuple[int, ...] | None = None


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0


def normalize_model(model: str) -> str:
    """Ollama treats `llama3.2` and `llama3.2:latest` as one model; so does the cache key."""
    name = model.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def cache_key(
    model: str,
    messages: Iterable[dict[str, Any]],
    options: dict[str, Any] | None,
    fmt: str | dict[str, Any] | None,
    *,
    kind: str = "chat",
    extra: dict[str, Any] | None = None,
) -> str:
    """Hash of everything that changes the answer, as canonical JSON.

    `messages` are the effective ones (the system prompt already applied) with every field
    that reaches Ollama (images, tool calls, …), not just role and content. `kind` and `extra`
    (think, tools, and /api/generate's prompt, system, template, …) enter only when set, so a
    plain chat asked through /api/chat-optimized and through /api/chat is one entry.
    """
    doc: dict[str, Any] = {
        "model": normalize_model(model),
        "messages": list(messages),
        "options": options or {},
        "format": fmt,
    }
    if kind != "chat":
        doc["kind"] = kind
    if extra:
        doc["extra"] = extra
    canonical = json.dumps(
        doc,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Store(TLRUCache):  # type: ignore[type-arg]
    """TLRUCache that counts what it evicts (LRU, for room) and what it expires (TTL)."""

    def __init__(self, maxsize: int, ttl: float, counters: CacheCounters) -> None:
        self.ttl = ttl
        self.counters = counters
        super().__init__(
            maxsize,
            ttu=lambda _key, value, _now: value.stored_at + self.ttl,
            timer=time.monotonic,
            getsizeof=lambda value: value.size,
        )

    def popitem(self) -> tuple[str, CachedAnswer]:
        item = super().popitem()
        self.counters.evictions += 1
        return item

    def expire(self, time: float | None = None) -> list[tuple[str, CachedAnswer]]:
        expired = super().expire(time)
        self.counters.expirations += len(expired)
        return expired


class ResponseCache:
    def __init__(self, *, enabled: bool = True, max_size_mb: int = 256, ttl_seconds: float = 3600):
        self.counters = CacheCounters()
        self.enabled = enabled
        self.max_size_mb = max_size_mb
        self.ttl_seconds = ttl_seconds
        self._store = _Store(max_size_mb * MB, ttl_seconds, self.counters)

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer, counting a hit or a miss."""
        if not self.enabled:
            return None
        self._store.expire()
        answer: CachedAnswer | None = self._store.get(key)
        if answer is None:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
        return answer

    def peek(self, key: str) -> CachedAnswer | None:
        """get() without counting: the fast hit path counts a hit once it is served. An expired
        entry is not returned (the store checks the entry's own expiry); sweeping the others
        out is left to get() and put()."""
        if not self.enabled:
            return None
        answer: CachedAnswer | None = self._store.get(key)
        return answer

    def count_hit(self) -> None:
        self.counters.hits += 1

    def put(
        self,
        key: str,
        text: str,
        model: str,
        eval_count: int,
        *,
        stored_at: float | None = None,
        **native: Any,
    ) -> bool:
        """Store a complete answer (`native`: CachedAnswer's thinking, tool_calls, done_reason,
        prompt_eval_count, context); False when disabled or larger than the whole cache.
        `stored_at` (time.monotonic()) keeps the age of an answer a lower tier gave back."""
        if not self.enabled:
            return False
        size = sys.getsizeof(key) + sys.getsizeof(text) + ENTRY_OVERHEAD
        if native:
            # Rare and small beside the text: their JSON length is close enough.
            size += sys.getsizeof(native.get("thinking", "")) + len(
                json.dumps([native.get("tool_calls"), native.get("context")])
            )
        if size > self._store.maxsize:
            log.info("answer of %d bytes is larger than the whole cache; not stored", size)
            return False
        stored_at = time.monotonic() if stored_at is None else stored_at
        self._store[key] = CachedAnswer(text, model, eval_count, stored_at, size, **native)
        return True

    def adopt(self, key: str, answer: CachedAnswer, *, missed: bool) -> CachedAnswer:
        """Copy an answer found in a tier behind RAM into RAM, keeping its age (the TTL counts
        from when it was generated). `missed`: this lookup was counted as a RAM miss; it is
        recounted as a hit, so `hits` counts every answer the cache gave, whichever tier."""
        if missed:
            self.counters.misses -= 1
            self.counters.hits += 1
        self.put_answer(key, answer)
        stored: CachedAnswer | None = self._store.get(key)
        return stored or answer

    def put_answer(self, key: str, answer: CachedAnswer) -> bool:
        """`put` of an answer already in the entry's shape, keeping its `stored_at`."""
        return self.put(
            key,
            answer.text,
            answer.model,
            answer.eval_count,
            stored_at=answer.stored_at,
            thinking=answer.thinking,
            tool_calls=answer.tool_calls,
            done_reason=answer.done_reason,
            prompt_eval_count=answer.prompt_eval_count,
            context=answer.context,
        )

    def contains(self, key: str) -> bool:
        """Whether RAM holds a live answer for the key; counts nothing, expires nothing (the
        store's own membership test checks the entry's TTL: cheap, on the RAM-hit path)."""
        return self.enabled and key in self._store

    def clear(self) -> int:
        """Drop every entry; return how many there were."""
        count = len(self._store)
        # A fresh store, not .clear(): cachetools clears through popitem(), which would count
        # every entry as an eviction.
        self._store = _Store(self.max_size_mb * MB, self.ttl_seconds, self.counters)
        return count

    def configure(self, *, enabled: bool, max_size_mb: int, ttl_seconds: float) -> None:
        """Resize, re-time or switch the cache at run time.

        Entries keep their age: a shorter TTL expires the old ones at once. A smaller size
        re-inserts entries oldest-stored first, so the oldest are evicted until the rest fits
        (cachetools exposes insertion order, not recency order). Disabling frees the memory.
        """
        self.enabled = enabled
        if not enabled:
            self.clear()
        if max_size_mb == self.max_size_mb and ttl_seconds == self.ttl_seconds:
            return
        old = self._store
        self.max_size_mb, self.ttl_seconds = max_size_mb, ttl_seconds
        self._store = _Store(max_size_mb * MB, ttl_seconds, self.counters)
        old.expire()
        for key in list(old):
            value = old.get(key)
            if value is not None:
                self._store[key] = value

    def reset_stats(self) -> None:
        self.counters.hits = self.counters.misses = 0
        self.counters.evictions = self.counters.expirations = 0

    @property
    def entries(self) -> int:
        return len(self._store)

    @property
    def size_bytes(self) -> int:
        return int(self._store.currsize)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        lookups = c.hits + c.misses
        return {
            "enabled": self.enabled,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "max_size_mb": self.max_size_mb,
            "ttl_seconds": self.ttl_seconds,
            "hits": c.hits,
            "misses": c.misses,
            "hit_rate": round(c.hits / lookups, 4) if lookups else 0.0,
            "evictions": c.evictions,
            "expirations": c.expirations,
        }
