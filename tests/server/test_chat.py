"""POST /api/chat-optimized against the real simulator: SSE, JSON, request names, system prompt."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import Server, Sim, node_frontend, parse_sse, user

CHAT = "/api/chat-optimized"


async def direct_answer(sim: Sim, http: aiohttp.ClientSession, messages: list, **extra) -> str:
    """What Ollama itself answers for these messages (non-streamed)."""
    payload = {"model": "llama3.2", "messages": messages, "stream": False, **extra}
    async with http.post(f"{sim.url}/api/chat", json=payload) as r:
        assert r.status == 200
        return (await r.json())["message"]["content"]


async def test_stream_parsed_by_frontend_code(server: Server, sim: Sim, http):
    body = {"messages": user("hello there"), "stream": True}
    result = await node_frontend(server.url + CHAT, body)
    assert result["status"] == 200
    assert result["contentType"].startswith("text/event-stream")
    assert result["parseErrors"] == []
    assert result["done"] is True and result["cached"] is False and result["error"] is None
    assert result["content"] == await direct_answer(sim, http, user("hello there"))
    assert result["content"]  # a real answer, not an empty string


async def test_stream_frames_are_data_lines_with_contract_fields(server: Server, http):
    async with http.post(
        server.url + CHAT,
        json={"messages": user(), "request_id": "r-1"},
        headers={"Accept": "text/event-stream"},
    ) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Accel-Buffering"] == "no"
        raw = await r.text()
    # Only "data: <json>\n\n" frames: no event:, id:, retry: or comment lines.
    assert raw.endswith("\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block
    frames = parse_sse(raw)
    *content, final = frames
    assert len(content) == 8  # the simulator's token count: one frame per token
    for f in content:
        assert f == {"content": f["content"], "done": False, "request_id": "r-1"}
    assert final["done"] is True and final["cached"] is False and final["content"] == ""
    assert final["request_id"] == "r-1" and final["model"] == "llama3.2"
    stats = final["stats"]
    assert set(stats) == {"queue_ms", "ttft_ms", "total_ms", "eval_count"}
    assert stats["eval_count"] == 8
    assert 0 <= stats["ttft_ms"] <= stats["total_ms"]


async def test_non_streaming_answer(server: Server, sim: Sim, http):
    async with http.post(server.url + CHAT, json={"messages": user(), "stream": False}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        data = await r.json()
    assert data["content"] == await direct_answer(sim, http, user())
    assert data["done"] is True and data["cached"] is False
    assert data["model"] == "llama3.2" and data["request_id"].startswith("r-")
    assert data["stats"]["eval_count"] == 8


async def test_accept_json_only_means_not_streamed(server: Server, http):
    async with http.post(
        server.url + CHAT, json={"messages": user()}, headers={"Accept": "application/json"}
    ) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        assert (await r.json())["done"] is True
    # An explicit stream flag wins over the Accept header.
    async with http.post(
        server.url + CHAT,
        json={"messages": user(), "stream": True},
        headers={"Accept": "application/json"},
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")


async def test_camel_case_names_of_the_node_routes(server: Server, sim: Sim, http):
    camel = {"messages": user(), "stream": False, "systemPrompt": "Be brief.", "requestId": "abc"}
    snake = {"messages": user(), "stream": False, "system_prompt": "Be brief.", "request_id": "abc"}
    async with http.post(server.url + CHAT, json=camel) as r:
        a = await r.json()
    async with http.post(server.url + CHAT, json=snake) as r:
        b = await r.json()
    assert a["request_id"] == b["request_id"] == "abc"
    assert a["content"] == b["content"]
    with_system = [{"role": "system", "content": "Be brief."}, *user()]
    assert a["content"] == await direct_answer(sim, http, with_system)
    assert a["content"] != await direct_answer(sim, http, user())


async def test_system_prompt_from_config_unless_request_has_one(start_server, sim: Sim, http):
    server = await start_server(ollama__system_prompt="You are a pirate.")
    async with http.post(server.url + CHAT, json={"messages": user(), "stream": False}) as r:
        got = (await r.json())["content"]
    pirate = [{"role": "system", "content": "You are a pirate."}, *user()]
    assert got == await direct_answer(sim, http, pirate)

    own = [{"role": "system", "content": "You are a poet."}, *user()]
    async with http.post(server.url + CHAT, json={"messages": own, "stream": False}) as r:
        assert (await r.json())["content"] == await direct_answer(sim, http, own)


async def test_model_and_options_reach_ollama(start_sim, start_server, http):
    sim = await start_sim(models=("llama3.2:latest", "qwen3:4b"))
    server = await start_server(ollama__api_url=sim.url)
    body = {"messages": user(), "stream": False, "model": "qwen3:4b", "options": {"seed": 7}}
    async with http.post(server.url + CHAT, json=body) as r:
        data = await r.json()
    assert data["model"] == "qwen3:4b"
    payload = {"model": "qwen3:4b", "messages": user(), "stream": False, "options": {"seed": 7}}
    async with http.post(f"{sim.url}/api/chat", json=payload) as r:
        assert data["content"] == (await r.json())["message"]["content"]


async def test_unicode_survives_the_relay(start_sim, start_server, http):
    # 200 tokens from a vocabulary with non-ASCII words, "<b>" and "&" (escaped by Go's JSON).
    sim = await start_sim(tokens=200)
    server = await start_server(ollama__api_url=sim.url)
    result = await node_frontend(server.url + CHAT, {"messages": user("unicode please")})
    async with http.post(
        f"{sim.url}/api/chat",
        json={"model": "llama3.2", "messages": user("unicode please"), "stream": False},
    ) as r:
        expected = (await r.json())["message"]["content"]
    assert result["content"] == expected
    assert any(ord(ch) > 127 for ch in expected)


async def test_concurrent_streams_each_get_their_own_answer(server: Server, sim: Sim, http):
    prompts = [f"question {i}" for i in range(6)]
    results = await asyncio.gather(
        *(node_frontend(server.url + CHAT, {"messages": user(p)}) for p in prompts)
    )
    for prompt, result in zip(prompts, results, strict=True):
        assert result["content"] == await direct_answer(sim, http, user(prompt))
