"""Streams a restart or a stop ends: told to the client, logged and counted as the server's doing
(503, `server_restart` / `shutdown`), not as a client that left; what they got is kept."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.gateway import Gateway
from server.lifecycle import ServerHost
from tests.conftest import Sim, make_config, user, wait_for

CHAT = "/api/chat-optimized"
# Long enough that nothing finishes on its own within a test: 400 tokens, 20 ms apart.
LONG = {"sim_tokens": 400, "sim_token_delay_ms": 20}


class Host:
    """A ServerHost the test stops itself (the shared fixture would stop it a second time)."""

    def __init__(self, host: ServerHost) -> None:
        self.host = host

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host.port}"

    @property
    def gateway(self) -> Gateway:
        return self.host.gateway


@pytest.fixture
async def start_host(sim: Sim) -> AsyncIterator[Any]:
    hosts: list[ServerHost] = []

    async def start(drain_seconds: float = 0.3, sim_url: str | None = None, **kw: Any) -> Host:
        kw.setdefault("ollama__api_url", sim_url or sim.url)
        config = make_config(ollama__warm_up=False, **kw)
        host = ServerHost(Gateway(config), port_override=0, drain_seconds=drain_seconds)
        await host.start()
        hosts.append(host)
        return Host(host)

    yield start
    for host in hosts:
        if host.running:
            await host.stop()


class Reader:
    """A client reading one stream line by line, as it arrives."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self._session = aiohttp.ClientSession()
        self.task = asyncio.create_task(self._run(url, body))

    async def _run(self, url: str, body: dict[str, Any]) -> None:
        async with self._session.post(url, json=body) as resp:
            assert resp.status == 200
            async for raw in resp.content:
                if raw.strip():
                    self.lines.append(raw.decode().strip())

    async def finish(self) -> list[str]:
        try:
            await asyncio.wait_for(self.task, 10)
        finally:
            await self._session.close()
        return self.lines

    async def started(self, lines: int = 3) -> None:
        async def enough() -> bool:
            return len(self.lines) >= lines

        assert await wait_for(enough, timeout=5), "the stream never started"


def sse(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]


def chat_lines(caplog: pytest.LogCaptureFixture, path: str = CHAT) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"POST {path} " in r.getMessage()]


async def test_a_stream_a_restart_ends_is_told_logged_and_counted_as_a_restart(start_host, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    server = await start_host()
    reader = Reader(server.url + CHAT, {"messages": user("long"), "options": LONG})
    await reader.started()
    await server.host.restart()
    frames = sse(await reader.finish())
    got = [f for f in frames if f.get("content")]
    assert frames[-1]["code"] == "server_restarting" and frames[-1]["done"] is True
    assert "restarting" in frames[-1]["error"]

    # The request's log line says the server ended it, with what it had streamed.
    [line] = chat_lines(caplog)
    assert " 503 " in line and line.endswith("error=server_restart"), line
    assert " 499 " not in line and "disconnected" not in line
    tokens = int(line.split("tokens=")[1].split()[0])
    assert len(got) <= tokens <= len(got) + 1, (tokens, len(got))

    # The recent table and the counters: a restart, not a cancellation; the tokens are kept.
    [record] = server.gateway.recent
    assert record.status == "server_restart" and record.tokens == tokens
    queue = server.gateway.snapshot()["queue"]
    assert queue["cancelled"] == 0 and queue["interrupted"] == 1
    if server.gateway.metrics is not None:
        text = server.gateway.metrics.render().decode()
        assert 'status="server_restart"' in text and 'status="disconnected"' not in text


async def test_a_stream_quit_ends_says_the_server_is_shutting_down(start_host, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    server = await start_host()
    reader = Reader(server.url + CHAT, {"messages": user("long"), "options": LONG})
    await reader.started()
    await server.host.stop()
    frames = sse(await reader.finish())
    assert frames[-1]["code"] == "server_shutting_down" and frames[-1]["done"] is True
    [line] = chat_lines(caplog)
    assert " 503 " in line and line.endswith("error=shutdown"), line
    [record] = server.gateway.recent
    assert record.status == "shutdown" and record.tokens > 0


async def test_before_the_first_token_the_log_says_ttft_dash(start_host, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    server = await start_host()
    body = {"messages": user("slow start"), "options": {"sim_first_token_delay_ms": 10_000}}
    reader = Reader(server.url + CHAT, body)

    async def generating() -> bool:
        return server.gateway.snapshot()["queue"]["active"] == 1

    assert await wait_for(generating, timeout=5)
    await server.host.restart()
    await reader.finish()
    [line] = chat_lines(caplog)
    assert " ttft=- " in line and "ttft=-ms" not in line, line
    assert "tokens=0" in line and line.endswith("error=server_restart")


async def test_openai_and_native_streams_end_with_their_own_error_shapes(
    start_host, start_sim, caplog
):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    # /v1 takes no simulator options: this simulator is slow for everyone.
    slow = await start_sim(tokens=400, token_delay_ms=20)
    server = await start_host(sim_url=slow.url, queue__max_concurrent=2)
    openai = Reader(
        server.url + "/v1/chat/completions",
        {"model": "llama3.2", "messages": user("openai"), "stream": True},
    )
    native = Reader(server.url + "/api/chat", {"model": "llama3.2", "messages": user("native")})
    await openai.started()
    await native.started()
    await server.host.restart()
    last = json.loads((await openai.finish())[-1].removeprefix("data: "))
    assert last["error"]["code"] == "server_restarting", last
    assert json.loads((await native.finish())[-1]) == {
        "error": "the server is restarting before this answer was complete; send the request again"
    }
    lines = chat_lines(caplog, "/v1/chat/completions") + chat_lines(caplog, "/api/chat")
    assert len(lines) == 2 and all(" 503 " in x and "error=server_restart" in x for x in lines)
    assert sorted(r.status for r in server.gateway.recent) == ["server_restart"] * 2


async def test_finish_now_ends_a_long_drain_at_once(start_host):
    server = await start_host(drain_seconds=60)
    reader = Reader(server.url + CHAT, {"messages": user("long"), "options": LONG})
    await reader.started()
    stopping = asyncio.create_task(server.host.stop())

    async def draining() -> bool:
        return not server.host.running and server.host.streams_in_flight == 1

    assert await wait_for(draining, timeout=5)
    assert not stopping.done()  # the stream would get its 60 s
    server.host.finish_now()
    await asyncio.wait_for(stopping, 5)
    frames = sse(await reader.finish())
    assert frames[-1]["code"] == "server_shutting_down"
    assert server.host.streams_in_flight == 0


async def test_a_client_that_leaves_is_still_a_disconnect(start_host, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    server = await start_host()
    async with aiohttp.ClientSession() as client:
        resp = await client.post(
            server.url + CHAT, json={"messages": user("leaves"), "options": LONG}
        )
        await resp.content.readline()
        resp.close()

    async def recorded() -> bool:
        return len(server.gateway.recent) == 1

    assert await wait_for(recorded, timeout=5)
    assert server.gateway.recent[0].status == "disconnected"
    [line] = chat_lines(caplog)
    assert " 499 " in line and line.endswith("error=disconnected")
    assert server.gateway.snapshot()["queue"]["interrupted"] == 0


async def test_ollama_latency_in_cache_stats_is_rounded(start_host):
    server = await start_host()

    async def probed() -> bool:
        return server.gateway.ollama.latency_ms is not None

    assert await wait_for(probed, timeout=5)
    async with aiohttp.ClientSession() as client, client.get(server.url + "/api/cache-stats") as r:
        latency = (await r.json())["ollama"]["latency_ms"]
    assert isinstance(latency, float) and latency == round(latency, 1)
