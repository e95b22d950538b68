"""Coalescing of identical requests and bulk jobs (POST /api/chat-batch), over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Sim, user, wait_for
from tests.server.test_queue_http import Streamer, slow, until

CHAT = "/api/chat-optimized"
BATCH = "/api/chat-batch"


async def chat_calls(sim: Sim) -> int:
    return (await sim.stats())["by_path"].get("/api/chat", 0)


async def post(http, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def test_ten_identical_requests_share_one_generation(start_sim, start_server, http):
    sim = await start_sim(tokens=30, token_delay_ms=5)
    server = await start_server(ollama__api_url=sim.url)
    body = {"messages": user("the same question"), "stream": False}
    answers = await asyncio.gather(*(post(http, server.url + CHAT, body) for _ in range(10)))
    assert all(status == 200 for status, _ in answers)
    texts = {a["content"] for _, a in answers}
    assert len(texts) == 1 and texts.pop()
    assert all(a["stats"]["eval_count"] == 30 for _, a in answers)
    assert await chat_calls(sim) == 1
    assert server.gateway.snapshot()["batch"]["coalesced"] == 9


async def test_late_joiner_gets_what_was_produced_then_the_rest(server, sim):
    body = slow("shared", tokens=40, delay=20)
    early = Streamer(server, body)
    await until(lambda: len(early.frames) >= 8)
    late = Streamer(server, body)
    await early.finish()
    await late.finish()
    assert late.done and early.done
    assert late.content == early.content
    assert len(late.content.split()) >= 35  # the whole answer, not just the live rest
    assert late.frames[-1]["cached"] is False  # it shared a generation, not a cache entry
    assert (await sim.stats())["generations"] == 1


async def test_generation_stops_only_when_its_last_listener_leaves(server, sim):
    body = slow("shared", tokens=60, delay=20)
    a = Streamer(server, body)
    await until(lambda: a.frames)
    b = Streamer(server, body)
    await until(lambda: b.frames)
    await a.leave()
    await asyncio.sleep(0.2)
    assert (await sim.stats())["cancelled"] == 0  # b still listens
    c = Streamer(server, body)
    await until(lambda: c.frames)
    await b.leave()
    await c.leave()

    async def cancelled() -> bool:
        return (await sim.stats())["cancelled"] == 1

    assert await wait_for(cancelled, timeout=1.0)
    assert server.gateway.cache.entries == 0


async def test_fresh_answers_are_not_shared(server, sim, http):
    body = slow("fresh", tokens=10, delay=10)
    a = Streamer(server, body)
    await until(lambda: a.frames)
    status, _ = await post(http, server.url + CHAT, {**body, "stream": False, "use_cache": False})
    assert status == 200
    await a.finish()
    assert (await sim.stats())["generations"] == 2


async def test_coalescing_off_when_batch_disabled(start_server, sim, http):
    server = await start_server(batch__enabled=False)
    body = {"messages": user("q"), "stream": False, "options": {"sim_token_delay_ms": 10}}
    await asyncio.gather(*(post(http, server.url + CHAT, body) for _ in range(3)))
    assert (await sim.stats())["generations"] == 3


async def test_bulk_job_results_in_order_with_per_item_errors(start_server, sim, http):
    server = await start_server(batch__max_batch_size=2, batch__batch_timeout_ms=50)
    await post(http, server.url + CHAT, {"messages": user("warm"), "stream": False})
    calls = await chat_calls(sim)
    requests = [
        {"messages": user("one")},
        {"messages": user("warm")},  # a cache hit
        {"messages": user("one")},  # a duplicate of the first
        {"messages": []},  # invalid
        {"messages": user("two"), "options": {"sim_status": 500}},  # Ollama fails it
        {"messages": user("three")},
        "not an object",
    ]
    status, data = await post(http, server.url + BATCH, {"requests": requests})
    assert status == 200
    r = data["results"]
    assert len(r) == 7
    assert r[0]["content"] and r[0]["cached"] is False and "error" not in r[0]
    assert r[1]["cached"] is True and r[1]["content"]
    assert r[2] == r[0]
    assert r[3]["content"] is None and r[3]["error"] == "requests[3].messages: must not be empty"
    assert r[4]["content"] is None and "simulated status 500" in r[4]["error"]
    assert r[5]["content"] and r[5]["content"] != r[0]["content"]
    assert r[6]["error"] == "requests[6].request body must be a JSON object"
    # one, two and three reached Ollama, once each; the hit and the twin did not.
    assert await chat_calls(sim) - calls == 3
    batch = server.gateway.snapshot()["batch"]
    assert batch["batches"] == 2 and batch["batched_items"] == 3  # groups of 2, then 1


async def test_bulk_answers_match_single_requests(server, http):
    status, data = await post(http, server.url + BATCH, {"requests": [{"messages": user("x")}]})
    assert status == 200
    _, single = await post(http, server.url + CHAT, {"messages": user("x"), "stream": False})
    assert data["results"][0]["content"] == single["content"]
    assert single["cached"] is True  # the bulk job filled the cache


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "requests: must be a non-empty list"),
        ({"requests": []}, "requests: must be a non-empty list"),
        ({"requests": "x"}, "requests: must be a non-empty list"),
        ({"requests": [{"messages": user()}] * 101}, "at most 100 items"),
    ],
)
async def test_bad_bulk_bodies(server, http, body, fragment):
    status, data = await post(http, server.url + BATCH, body)
    assert status == 400 and fragment in data["error"]


async def test_stats_sections_come_from_real_counters(start_server, sim, http):
    server = await start_server(queue__max_queue_size=0)
    body = {"messages": user("a"), "stream": False}
    await post(http, server.url + CHAT, body)
    long = Streamer(server, slow("long", tokens=50))
    await until(lambda: long.frames)
    status, _ = await post(http, server.url + CHAT, {"messages": user("b"), "stream": False})
    assert status == 503
    twin = Streamer(server, slow("long", tokens=50))
    await until(lambda: twin.frames)
    await long.finish()
    await twin.finish()
    async with http.get(server.url + "/api/cache-stats") as r:
        data = await r.json()
    q, b = data["queue"], data["batch"]
    assert (q["completed"], q["rejected"], q["active"], q["waiting"]) == (2, 1, 0, 0)
    assert q["avg_generation_ms"] > 0
    assert b["coalesced"] == 1
