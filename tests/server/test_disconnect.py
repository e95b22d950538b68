"""A browser that goes away stops its upstream generation within a second."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from tests.conftest import Server, Sim, user, wait_for

CHAT = "/api/chat-optimized"


async def cancelled(sim: Sim) -> int:
    return (await sim.stats())["cancelled"]


async def test_disconnect_mid_stream_cancels_upstream(start_sim, start_server, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    sim = await start_sim(tokens=400, token_delay_ms=20)
    server = await start_server(ollama__api_url=sim.url)
    async with aiohttp.ClientSession() as client:
        resp = await client.post(server.url + CHAT, json={"messages": user()})
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        resp.close()  # the browser tab is closed
    gone = time.monotonic()
    assert await wait_for(lambda: _is(cancelled(sim), 1), timeout=1.0)
    assert time.monotonic() - gone < 1.0
    stats = await sim.stats()
    assert stats["in_progress"] == 0 and stats["completed"] == 0
    # The request still gets its log line, marked as disconnected.
    lines = [r.getMessage() for r in caplog.records if "/api/chat-optimized" in r.getMessage()]
    assert len(lines) == 1 and "error=disconnected" in lines[0]


async def test_disconnect_before_first_token_cancels_upstream(start_sim, start_server):
    sim = await start_sim(first_token_delay_ms=5000)
    server = await start_server(ollama__api_url=sim.url)
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(client.post(server.url + CHAT, json={"messages": user()}))
        assert await wait_for(lambda: _is_in_progress(sim), timeout=2.0)
        task.cancel()
    assert await wait_for(lambda: _is(cancelled(sim), 1), timeout=1.0)


async def test_non_streaming_client_disconnect_cancels_upstream(start_sim, start_server):
    sim = await start_sim(first_token_delay_ms=5000)
    server = await start_server(ollama__api_url=sim.url)
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(
            client.post(server.url + CHAT, json={"messages": user(), "stream": False})
        )
        assert await wait_for(lambda: _is_in_progress(sim), timeout=2.0)
        task.cancel()
    assert await wait_for(lambda: _is(cancelled(sim), 1), timeout=1.0)


async def test_server_keeps_serving_after_disconnects(start_sim, start_server, http):
    sim = await start_sim(tokens=50, token_delay_ms=5)
    server: Server = await start_server(ollama__api_url=sim.url)
    for _ in range(3):
        async with aiohttp.ClientSession() as client:
            resp = await client.post(server.url + CHAT, json={"messages": user()})
            await resp.content.readline()
            resp.close()
    async with http.post(server.url + CHAT, json={"messages": user(), "stream": False}) as r:
        assert r.status == 200 and (await r.json())["stats"]["eval_count"] == 50
    assert await wait_for(lambda: _is(cancelled(sim), 3), timeout=1.0)


async def _is(value, expected) -> bool:
    return (await value) == expected


async def _is_in_progress(sim: Sim) -> bool:
    return (await sim.stats())["in_progress"] == 1
