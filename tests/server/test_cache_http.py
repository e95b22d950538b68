"""The cache as a client sees it: hits without Ollama, X-Cache, bypass headers, what is never
cached, and /api/cache-stats."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.conftest import Server, Sim, node_frontend, parse_sse, user, wait_for

CHAT = "/api/chat-optimized"
STATS = "/api/cache-stats"


async def chat_calls(sim: Sim) -> int:
    return (await sim.stats())["by_path"].get("/api/chat", 0)


async def ask(http, server: Server, body: dict, headers: dict | None = None):
    """A non-streamed chat; returns (X-Cache, JSON)."""
    async with http.post(
        server.url + CHAT, json={**body, "stream": False}, headers=headers or {}
    ) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Cache"], await r.json()


async def test_streamed_hit_is_served_without_ollama_in_word_frames(server, sim, http, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    body = {"messages": user("what is a cache?")}
    first = await node_frontend(server.url + CHAT, body)
    assert first["cached"] is False
    calls = await chat_calls(sim)

    async with http.post(server.url + CHAT, json=body) as r:
        assert r.headers["X-Cache"] == "HIT"
        frames = parse_sse(await r.text())
    assert await chat_calls(sim) == calls  # Ollama was not asked
    *content, final = frames
    assert len(content) >= 8  # several word-sized frames, not one lump
    assert all(f["done"] is False and len(f["content"].split()) == 1 for f in content)
    assert "".join(f["content"] for f in content) == first["content"]
    assert final["done"] is True and final["cached"] is True and final["content"] == ""
    assert final["stats"]["eval_count"] == 8

    again = await node_frontend(server.url + CHAT, body)  # the frontend's own parser
    assert again["cached"] is True and again["content"] == first["content"]
    # Each hit is logged at info level: its request's access-log line says so.
    hits = [
        r for r in caplog.records if r.levelno == logging.INFO and "cache=hit" in r.getMessage()
    ]
    assert len(hits) == 2 and all("200 id=" in r.getMessage() for r in hits)


async def test_non_streamed_hit(server, sim, http):
    x1, a = await ask(http, server, {"messages": user()})
    x2, b = await ask(http, server, {"messages": user()})
    assert (x1, x2) == ("MISS", "HIT")
    assert a["cached"] is False and b["cached"] is True
    assert a["content"] == b["content"] and b["stats"]["eval_count"] == 8
    assert await chat_calls(sim) == 1


async def test_streamed_and_non_streamed_share_entries(server, sim, http):
    await ask(http, server, {"messages": user()})
    async with http.post(server.url + CHAT, json={"messages": user()}) as r:
        assert r.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(
    "change",
    [
        {"model": "qwen3:4b"},
        {"system_prompt": "Be brief."},
        {"messages": user("a different question")},
        {"messages": [{"role": "assistant", "content": "test"}]},
        {"messages": [{"role": "user", "content": "test", "images": ["aGk="]}]},
        {"options": {"temperature": 0.1}},
        {"format": "json"},
    ],
)
async def test_each_field_that_changes_the_answer_misses(start_sim, start_server, http, change):
    sim = await start_sim(models=("llama3.2:latest", "qwen3:4b"))
    server = await start_server(ollama__api_url=sim.url)
    base = {"messages": user("test")}
    assert (await ask(http, server, base))[0] == "MISS"
    assert (await ask(http, server, base))[0] == "HIT"
    assert (await ask(http, server, {**base, **change}))[0] == "MISS"


async def test_upstream_failure_mid_stream_is_not_cached(server, sim, http):
    body = {"messages": user(), "options": {"sim_error_after": 3}}
    for _ in range(2):
        async with http.post(server.url + CHAT, json=body) as r:
            assert r.headers["X-Cache"] == "MISS"
            assert parse_sse(await r.text())[-1]["code"] == "upstream_error"
    assert await chat_calls(sim) == 2
    assert server.gateway.cache.entries == 0


async def test_errors_are_not_cached(server, sim, http):
    body = {"messages": user(), "model": "ghost", "stream": False}
    for _ in range(2):
        async with http.post(server.url + CHAT, json=body) as r:
            assert r.status == 404
    assert server.gateway.cache.entries == 0


async def test_timed_out_generation_is_not_cached(start_sim, start_server, http):
    sim = await start_sim(tokens=20, token_delay_ms=0)
    server = await start_server(ollama__api_url=sim.url, ollama__timeout_seconds=1)
    slow = {"messages": user(), "options": {"sim_first_token_delay_ms": 1500}, "stream": False}
    async with http.post(server.url + CHAT, json=slow) as r:
        assert r.status == 504
    assert server.gateway.cache.entries == 0


async def test_client_disconnect_is_not_cached(start_sim, start_server, http):
    sim = await start_sim(tokens=200, token_delay_ms=10)
    server = await start_server(ollama__api_url=sim.url)
    async with aiohttp.ClientSession() as client:
        resp = await client.post(server.url + CHAT, json={"messages": user()})
        await resp.content.readline()
        resp.close()

    async def cancelled() -> bool:
        return (await sim.stats())["cancelled"] == 1

    assert await wait_for(cancelled, timeout=2.0)
    assert server.gateway.cache.entries == 0
    assert (await ask(http, server, {"messages": user()}))[0] == "MISS"


async def test_use_cache_false_skips_the_read(server, sim, http):
    await ask(http, server, {"messages": user()})
    x, data = await ask(http, server, {"messages": user(), "use_cache": False})
    assert x == "MISS" and data["cached"] is False
    assert await chat_calls(sim) == 2
    x, _ = await ask(http, server, {"messages": user(), "useCache": False})  # camelCase too
    assert x == "MISS"


async def test_bypassed_read_refreshes_the_entry(start_server, sim, http):
    server = await start_server(cache__ttl_seconds=2)
    await ask(http, server, {"messages": user()})  # stored at t=0, would expire at t=2
    await asyncio.sleep(1.2)
    x, _ = await ask(http, server, {"messages": user()}, {"Cache-Control": "no-cache"})
    assert x == "MISS"  # fresh answer, stored again at t=1.2
    await asyncio.sleep(1.2)  # t=2.4: the first entry would be gone by now
    x, _ = await ask(http, server, {"messages": user()})
    assert x == "HIT"


async def test_no_store_skips_the_write(server, sim, http):
    x, _ = await ask(http, server, {"messages": user()}, {"Cache-Control": "no-store"})
    assert x == "MISS"
    assert server.gateway.cache.entries == 0
    x, _ = await ask(http, server, {"messages": user()})
    assert x == "MISS"
    x, _ = await ask(http, server, {"messages": user()}, {"Cache-Control": "no-store"})
    assert x == "HIT"  # no-store does not stop a read


async def test_disabled_cache_always_asks_ollama(start_server, sim, http):
    server = await start_server(cache__enabled=False)
    for _ in range(2):
        assert (await ask(http, server, {"messages": user()}))[0] == "MISS"
    assert await chat_calls(sim) == 2


async def test_cache_stats_has_every_documented_field(server, http):
    await ask(http, server, {"messages": user()})
    await ask(http, server, {"messages": user()})
    async with http.get(server.url + STATS) as r:
        assert r.status == 200
        data = await r.json()
    assert set(data["response_cache"]) >= {
        "enabled",
        "entries",
        "size_bytes",
        "max_size_mb",
        "ttl_seconds",
        "hits",
        "misses",
        "hit_rate",
        "evictions",
        "expirations",
    }
    assert set(data["queue"]) >= {
        "max_concurrent",
        "active",
        "waiting",
        "max_queue_size",
        "completed",
        "cancelled",
        "rejected",
        "avg_wait_ms",
        "avg_generation_ms",
    }
    assert set(data["batch"]) >= {"coalesced", "batches", "max_batch_size"}
    assert set(data["ollama"]) >= {
        "url",
        "model",
        "reachable",
        "requests",
        "errors",
        "tokens_generated",
    }
    cache = data["response_cache"]
    assert (cache["entries"], cache["hits"], cache["misses"], cache["hit_rate"]) == (1, 1, 1, 0.5)
    assert cache["size_bytes"] > 0 and cache["max_size_mb"] == 256
    assert data["queue"]["completed"] == 1
    assert data["ollama"]["requests"] == 1 and data["ollama"]["tokens_generated"] == 8
    assert 10 < data["memory"]["rss_mb"] < 2000
    assert data["uptime_seconds"] >= 0


async def test_clear_and_reset_stats(server, sim, http):
    await ask(http, server, {"messages": user()})
    await ask(http, server, {"messages": user()})
    async with http.post(server.url + STATS, json={"action": "clear"}) as r:
        assert r.status == 200
        assert await r.json() == {
            "success": True,
            "action": "clear",
            "cleared_entries": 1,
            "tiers": {"memory": 1},  # no tier behind RAM in this configuration
        }
    assert (await ask(http, server, {"messages": user()}))[0] == "MISS"

    async with http.post(server.url + STATS, json={"action": "reset_stats"}) as r:
        assert await r.json() == {"success": True, "action": "reset_stats"}
    async with http.get(server.url + STATS) as r:
        data = await r.json()
    assert data["response_cache"]["hits"] == 0 and data["response_cache"]["misses"] == 0
    assert data["response_cache"]["entries"] == 1  # counters zeroed, entries kept
    assert data["ollama"]["requests"] == 0 and data["queue"]["completed"] == 0


@pytest.mark.parametrize("body", [{"action": "explode"}, {}, ["clear"]])
async def test_unknown_action_lists_valid_ones(server, http, body):
    async with http.post(server.url + STATS, json=body) as r:
        assert r.status == 400
        data = await r.json()
    assert data["code"] == "invalid_action"
    assert "must be one of clear, reset_stats" in data["error"]
