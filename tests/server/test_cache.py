"""The response cache on its own: byte bound, LRU, TTL, counters, run-time resizing, the key."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from server.services.cache import ENTRY_OVERHEAD, MB, ResponseCache, cache_key

USER = [{"role": "user", "content": "hi"}]


def key(i: int) -> str:
    return cache_key("m", [{"role": "user", "content": f"q{i}"}], None, None)


def test_hit_miss_and_rate():
    cache = ResponseCache(max_size_mb=1)
    assert cache.get(key(1)) is None
    assert cache.put(key(1), "answer", "m", 3)
    hit = cache.get(key(1))
    assert hit is not None and hit.text == "answer" and hit.eval_count == 3
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (1, 1, 0.5)
    assert stats["entries"] == 1
    assert stats["size_bytes"] == sys.getsizeof(key(1)) + sys.getsizeof("answer") + ENTRY_OVERHEAD


def test_bounded_in_bytes_evicting_least_recently_used():
    cache = ResponseCache(max_size_mb=1)
    text = "x" * 100_000
    for i in range(5):
        cache.put(key(i), text, "m", 1)
    cache.get(key(0))  # key 0 is now the most recently used
    for i in range(5, 12):
        cache.put(key(i), text, "m", 1)
    stats = cache.stats()
    assert stats["size_bytes"] <= 1 * MB
    entry = sys.getsizeof(key(0)) + sys.getsizeof(text) + ENTRY_OVERHEAD
    assert stats["entries"] == MB // entry
    assert stats["evictions"] == 12 - stats["entries"]
    assert cache.get(key(0)) is not None  # survived because it was used
    assert cache.get(key(1)) is None  # the least recently used went first


def test_non_ascii_text_is_accounted_as_stored():
    cache = ResponseCache(max_size_mb=1)
    cache.put(key(1), "😀" * 1000, "m", 1)  # 4 bytes a character in CPython
    assert cache.size_bytes >= 4000 + ENTRY_OVERHEAD


def test_answer_larger_than_the_cache_is_not_stored():
    cache = ResponseCache(max_size_mb=1)
    assert cache.put(key(1), "x" * (2 * MB), "m", 1) is False
    assert cache.entries == 0


def test_entries_expire_after_ttl():
    cache = ResponseCache(max_size_mb=1, ttl_seconds=0.2)
    cache.put(key(1), "a", "m", 1)
    assert cache.get(key(1)) is not None
    time.sleep(0.3)
    assert cache.get(key(1)) is None
    stats = cache.stats()
    assert stats["expirations"] == 1 and stats["entries"] == 0 and stats["evictions"] == 0


def test_clear_empties_without_counting_evictions():
    cache = ResponseCache(max_size_mb=1)
    for i in range(3):
        cache.put(key(i), "a", "m", 1)
    assert cache.clear() == 3
    assert cache.entries == 0 and cache.size_bytes == 0
    assert cache.stats()["evictions"] == 0


def test_resize_at_run_time():
    cache = ResponseCache(max_size_mb=4)
    for i in range(30):
        cache.put(key(i), "x" * 100_000, "m", 1)
    assert cache.entries == 30
    cache.configure(enabled=True, max_size_mb=1, ttl_seconds=3600)
    assert cache.size_bytes <= MB and 0 < cache.entries < 30
    assert cache.stats()["max_size_mb"] == 1
    assert cache.get(key(29)) is not None  # the newest stay
    # Growing again keeps what is there.
    cache.configure(enabled=True, max_size_mb=8, ttl_seconds=3600)
    assert cache.get(key(29)) is not None


def test_shorter_ttl_applies_to_existing_entries():
    cache = ResponseCache(max_size_mb=1, ttl_seconds=3600)
    cache.put(key(1), "a", "m", 1)
    time.sleep(0.15)
    cache.configure(enabled=True, max_size_mb=1, ttl_seconds=0.1)
    assert cache.get(key(1)) is None


def test_disable_frees_and_stops_serving():
    cache = ResponseCache(max_size_mb=1)
    cache.put(key(1), "a", "m", 1)
    cache.configure(enabled=False, max_size_mb=1, ttl_seconds=3600)
    assert cache.entries == 0
    assert cache.put(key(1), "a", "m", 1) is False and cache.get(key(1)) is None
    cache.configure(enabled=True, max_size_mb=1, ttl_seconds=3600)
    assert cache.put(key(1), "a", "m", 1) is True


def test_reset_stats():
    cache = ResponseCache(max_size_mb=1)
    cache.get(key(1))
    cache.put(key(1), "a", "m", 1)
    cache.get(key(1))
    cache.reset_stats()
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (0, 0, 0.0)
    assert stats["entries"] == 1  # counters, not contents


BASE = {"model": "llama3.2", "messages": USER, "options": {"temperature": 0.2}, "fmt": None}


@pytest.mark.parametrize(
    "change",
    [
        {"model": "qwen3:4b"},
        {"messages": [{"role": "system", "content": "Be brief."}, *USER]},  # system prompt
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
        {"messages": [*USER, {"role": "assistant", "content": "hello"}, *USER]},
        {"options": {"temperature": 0.3}},
        {"options": {"temperature": 0.2, "seed": 1}},
        {"options": None},
        {"fmt": "json"},
        {"fmt": {"type": "object"}},
    ],
)
def test_key_changes_with_everything_that_changes_the_answer(change):
    assert cache_key(**BASE) != cache_key(**{**BASE, **change})


def test_key_ignores_what_does_not_change_the_answer():
    assert cache_key(**BASE) == cache_key(**{**BASE, "model": "llama3.2:latest"})
    a = cache_key("m", USER, {"temperature": 0.2, "seed": 1}, None)
    b = cache_key("m", USER, {"seed": 1, "temperature": 0.2}, None)
    assert a == b
    assert cache_key("m", USER, None, None) == cache_key("m", USER, {}, None)


MEMORY_SCRIPT = r"""
import gc, json, random, string, psutil
from server.services.cache import ResponseCache, cache_key, MB
proc = psutil.Process()
rng = random.Random(7)
def answer():
    return "".join(rng.choices(string.ascii_letters + " ", k=2048))
cache = ResponseCache(max_size_mb=64, ttl_seconds=3600)
gc.collect()
before = proc.memory_info().rss
for i in range(10_000):
    cache.put(cache_key("m", [{"role": "user", "content": str(i)}], None, None), answer(), "m", 1)
gc.collect()
grown = proc.memory_info().rss - before
accounted = cache.size_bytes
small = ResponseCache(max_size_mb=8, ttl_seconds=3600)
rss_small = proc.memory_info().rss
for i in range(20_000):
    small.put(cache_key("m", [{"role": "user", "content": str(i)}], None, None), answer(), "m", 1)
gc.collect()
print(json.dumps({"grown": grown, "accounted": accounted, "small_size": small.size_bytes,
                  "small_evictions": small.stats()["evictions"],
                  "small_grown": proc.memory_info().rss - rss_small}))
"""


def test_rss_grows_by_about_the_accounted_size_and_stops_at_the_limit():
    # A fresh process, so the allocator has no freed memory to reuse and RSS tells the truth.
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    m = json.loads(out.stdout)
    assert 0.75 <= m["grown"] / m["accounted"] <= 1.25, m
    # 20,000 answers (~45 MB accounted) into an 8 MB cache: it evicts instead of growing.
    assert m["small_size"] <= 8 * MB
    assert m["small_evictions"] > 10_000
    assert m["small_grown"] <= 8 * MB * 1.25 + 4 * MB, m
