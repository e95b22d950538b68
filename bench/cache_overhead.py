"""Measure the cache's per-entry overhead beyond its key and text strings (tracemalloc).

Run: .venv/bin/python bench/cache_overhead.py  — prints bytes per entry and compares it with
ENTRY_OVERHEAD, the figure the cache uses to account each entry's size.
"""

from __future__ import annotations

import gc
import random
import string
import sys
import tracemalloc

from server.services import cache as cache_mod

N = 10_000


def main() -> None:
    rng = random.Random(1)
    texts = ["".join(rng.choices(string.ascii_letters + " ", k=2000)) for _ in range(N)]
    keys = [
        cache_mod.cache_key("m", [{"role": "user", "content": str(i)}], None, None)
        for i in range(N)
    ]
    cache = cache_mod.ResponseCache(max_size_mb=1024, ttl_seconds=3600)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key, text in zip(keys, texts, strict=True):
        cache.put(key, text, "m", 10)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    per_entry = grown / N
    strings = sum(sys.getsizeof(k) + sys.getsizeof(t) for k, t in zip(keys, texts, strict=True))
    print(f"entries: {N}, strings: {strings / N:.0f} B/entry (not counted above: preallocated)")
    print(
        f"measured overhead: {per_entry:.0f} B/entry; ENTRY_OVERHEAD = "
        f"{cache_mod.ENTRY_OVERHEAD} B ({cache_mod.ENTRY_OVERHEAD / per_entry:.2f}x)"
    )


if __name__ == "__main__":
    main()
