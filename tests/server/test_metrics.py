"""GET /metrics: Prometheus text that counts the traffic the gateway really saw."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from server import auth
from server.services.cache import normalize_model
from tests.conftest import Server, free_port, wait_for

CHAT = "/api/chat-optimized"


async def scrape(http: aiohttp.ClientSession, server: Server) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels), parsed by prometheus_client."""
    async with http.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(
        v
        for (n, lbls), v in samples.items()
        if n == name and all(dict(lbls).get(k) == want for k, want in labels.items())
    )


async def ask(http: aiohttp.ClientSession, server: Server, text: str) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": text}], "stream": False}
    async with http.post(server.url + CHAT, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_metrics_count_the_traffic(start_sim, start_server, http) -> None:
    # 8 tokens 40 ms apart: a generation lasts ~0.3 s, long enough to join it or queue behind it.
    sim = await start_sim(token_delay_ms=40)
    server = await start_server(
        ollama__api_url=sim.url, queue__max_concurrent=1, queue__max_queue_size=1
    )
    gateway = server.gateway

    # One miss, then two hits of it.
    assert (await ask(http, server, "a"))["cached"] is False
    for _ in range(2):
        assert (await ask(http, server, "a"))["cached"] is True

    # A coalesced pair: the second joins the first's generation.
    pair = await asyncio.gather(ask(http, server, "b"), ask(http, server, "b"))
    assert [a["cached"] for a in pair] == [False, False]
    assert gateway.coalescer.coalesced == 1

    # One generation runs, one waits, the third is turned away (queue full).
    async def streamed(text: str) -> None:
        body = {"messages": [{"role": "user", "content": text}], "stream": True}
        async with http.post(server.url + CHAT, json=body) as resp:
            assert resp.status == 200
            await resp.read()

    running = [asyncio.create_task(streamed("c")), asyncio.create_task(streamed("d"))]

    async def one_waits() -> bool:
        return gateway.queue.active == 1 and gateway.queue.waiting == 1

    assert await wait_for(one_waits)
    body = {"messages": [{"role": "user", "content": "e"}], "stream": False}
    async with http.post(server.url + CHAT, json=body) as resp:
        assert resp.status == 503
    mid = await scrape(http, server)
    assert value(mid, "chatbot_queue_waiting_requests") == 1
    assert value(mid, "chatbot_queue_running_requests") == 1
    await asyncio.gather(*running)

    s = await scrape(http, server)
    model = normalize_model(gateway.config.ollama.model)
    ep = {"endpoint": "chat-optimized", "model": model}
    # Requests: a ×3, b ×2, c, d answered; the rejected one never became a request.
    assert value(s, "chatbot_requests_total", **ep, status="ok") == 7
    assert total(s, "chatbot_requests_total") == 7
    for hist in (
        "chatbot_request_duration_seconds",
        "chatbot_time_to_first_token_seconds",
    ):
        assert value(s, f"{hist}_count", **ep, cache="hit") == 2
        assert value(s, f"{hist}_count", **ep, cache="miss") == 4  # a, b, c, d
        assert value(s, f"{hist}_count", **ep, cache="coalesced") == 1
        # Every observation is in the +Inf bucket, and time was spent.
        assert value(s, f"{hist}_bucket", **ep, cache="miss", le="+Inf") == 4
        assert value(s, f"{hist}_sum", **ep, cache="miss") > 0
    # A generation takes ≥ 0.28 s: no miss falls in the 0.25 s bucket, every hit does.
    duration = "chatbot_request_duration_seconds_bucket"
    assert value(s, duration, **ep, cache="miss", le="0.25") == 0
    assert value(s, duration, **ep, cache="hit", le="0.25") == 2
    # Queue wait: misses and the coalesced one; d waited for c's whole generation.
    assert value(s, "chatbot_queue_wait_seconds_count", **ep, cache="miss") == 4
    assert value(s, "chatbot_queue_wait_seconds_count", **ep, cache="coalesced") == 1
    assert value(s, "chatbot_queue_wait_seconds_count", **ep, cache="hit") == 0
    assert value(s, "chatbot_queue_wait_seconds_sum", **ep, cache="miss") >= 0.25
    # Tokens: 8 per answer.
    assert value(s, "chatbot_generated_tokens_total", **ep, cache="miss") == 4 * 8
    assert value(s, "chatbot_generated_tokens_total", **ep, cache="hit") == 2 * 8
    assert value(s, "chatbot_generated_tokens_total", **ep, cache="coalesced") == 8
    assert value(s, "chatbot_prompt_tokens_total", **ep, cache="miss") > 0
    # The services' counters: lookups a, a, a, b, b, c, d, e.
    assert value(s, "chatbot_cache_hits_total") == 2
    assert value(s, "chatbot_cache_misses_total") == 6
    assert value(s, "chatbot_cache_evictions_total") == 0
    assert value(s, "chatbot_coalesced_requests_total") == 1
    assert value(s, "chatbot_queue_rejected_total") == 1
    assert value(s, "chatbot_queue_cancelled_total") == 0
    assert value(s, "chatbot_upstream_errors_total") == 0
    # Gauges, read at scrape time.
    assert value(s, "chatbot_queue_waiting_requests") == 0
    assert value(s, "chatbot_queue_running_requests") == 0
    assert value(s, "chatbot_cache_entries") == 4
    assert value(s, "chatbot_cache_size_bytes") == gateway.cache.size_bytes > 0
    assert value(s, "chatbot_ollama_up") == 1
    assert value(s, "chatbot_resident_memory_bytes") > 10 * 2**20

    # Scraping is not a chat request: nothing above moves.
    again = await scrape(http, server)
    assert total(again, "chatbot_requests_total") == 7
    assert gateway.requests_total == 7


async def test_failures_cancellations_and_upstream_errors(start_sim, start_server, http) -> None:
    sim = await start_sim(token_delay_ms=50, tokens=40)
    server = await start_server(ollama__api_url=sim.url)
    ep = {
        "endpoint": "chat-optimized",
        "model": normalize_model(server.gateway.config.ollama.model),
    }

    # A client that leaves mid-answer: its request is counted as disconnected, its generation
    # as cancelled, and no duration is observed for it.
    body = {"messages": [{"role": "user", "content": "leave"}], "stream": True}
    async with http.post(server.url + CHAT, json=body) as resp:
        await resp.content.readline()

    async def cancelled() -> bool:
        return server.gateway.queue.counters.cancelled == 1

    assert await wait_for(cancelled)
    s = await scrape(http, server)
    assert value(s, "chatbot_requests_total", **ep, status="disconnected") == 1
    assert value(s, "chatbot_queue_cancelled_total") == 1
    assert total(s, "chatbot_request_duration_seconds_count") == 0

    # Ollama gone (nothing listens where the gateway looks): an upstream error, a failed
    # request, and Ollama reported down.
    server.gateway.ollama.configure(f"http://127.0.0.1:{free_port()}", 5, 1)
    body = {"messages": [{"role": "user", "content": "nobody home"}], "stream": False}
    async with http.post(server.url + CHAT, json=body) as resp:
        assert resp.status in (502, 503)
        code = (await resp.json())["code"]
    s = await scrape(http, server)
    assert value(s, "chatbot_upstream_errors_total") == 1
    assert value(s, "chatbot_requests_total", **ep, status=code) == 1
    assert value(s, "chatbot_ollama_up") == 0


async def test_model_labels_are_bounded(server: Server, http) -> None:
    for i in range(60):
        body = {"model": f"m{i}", "messages": [{"role": "user", "content": "x"}]}
        async with http.post(server.url + "/api/chat", json={**body, "stream": False}) as resp:
            await resp.read()
    s = await scrape(http, server)
    models = {dict(lbls)["model"] for (n, lbls) in s if n == "chatbot_requests_total"}
    assert len(models) == 51 and "(other)" in models


async def test_metrics_follow_the_api_rules(start_server, http) -> None:
    key, entry = auth.new_key("ada", "user")
    server = await start_server(auth__keys=(entry,))
    async with http.get(server.url + "/metrics") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "unauthorized"
    async with http.get(server.url + "/metrics", headers={"X-API-Key": key}) as resp:
        assert resp.status == 200
    # DNS rebinding: a page elsewhere cannot read the figures through a loopback gateway.
    headers = {"Host": "evil.example", "X-API-Key": key}
    async with http.get(server.url + "/metrics", headers=headers) as resp:
        assert resp.status == 403


async def test_metrics_can_be_turned_off(start_server, http, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_METRICS", "off")
    server = await start_server()
    assert server.gateway.metrics is None
    body = {"messages": [{"role": "user", "content": "x"}], "stream": False}
    async with http.post(server.url + CHAT, json=body) as resp:
        assert resp.status == 200
    async with http.get(server.url + "/metrics") as resp:
        assert resp.status == 404
        assert json.loads(await resp.text())["code"] == "not_found"
