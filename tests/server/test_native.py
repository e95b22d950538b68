"""Ollama's own API through the gateway, driven by the clients people use: the official `ollama`
package and LangChain, against the gateway in front of the project's simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import ollama
import pytest

from tests.conftest import ROOT, Server, Sim, user, wait_for

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def sim_count(sim: Sim, key: str = "generations") -> int:
    return int((await sim.stats())[key])


async def _cancelled(sim: Sim) -> bool:
    return await sim_count(sim, "cancelled") > 0


_clients: list[ollama.AsyncClient] = []


def client(server: Server) -> ollama.AsyncClient:
    made = ollama.AsyncClient(host=server.url)
    _clients.append(made)
    return made


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Close each test's ollama clients on its own loop: left open, their connections are
    closed later by the garbage collector, after the loop has gone, and the "Event loop is
    closed" error lands in whichever test runs then."""
    yield
    while _clients:
        await _clients.pop().close()


def answer_fields(resp: ollama.ChatResponse) -> dict[str, object]:
    """What must be the same in a live answer and its replay (not the timings)."""
    msg = resp.message
    return {
        "content": msg.content,
        "thinking": msg.thinking,
        "tool_calls": [c.model_dump() for c in msg.tool_calls or []],
        "done_reason": resp.done_reason,
        "eval_count": resp.eval_count,
        "prompt_eval_count": resp.prompt_eval_count,
    }


@pytest.mark.parametrize(
    "extra",
    [{}, {"think": True}, {"tools": TOOLS}],
    ids=["plain", "think", "tools"],
)
async def test_chat_stream_and_not_and_its_repeat_is_a_hit(server, sim, extra):
    c = client(server)
    messages = [{"role": "user", "content": f"what about {sorted(extra)}?"}]
    first = await c.chat(model="llama3.2", messages=messages, **extra)
    generations = await sim_count(sim)
    again = await c.chat(model="llama3.2", messages=messages, **extra)
    assert await sim_count(sim) == generations  # answered from the cache
    assert answer_fields(again) == answer_fields(first)
    if "think" in extra:
        assert first.message.thinking
    if "tools" in extra:
        assert first.message.tool_calls
        assert first.message.tool_calls[0].function.name == "get_weather"
    # The streamed replay carries the same pieces.
    chunks = [chunk async for chunk in await c.chat(
        model="llama3.2", messages=messages, stream=True, **extra
    )]  # fmt: skip
    assert await sim_count(sim) == generations
    assert "".join(ch.message.content for ch in chunks) == first.message.content
    assert "".join(ch.message.thinking or "" for ch in chunks) == (first.message.thinking or "")
    calls = [call.model_dump() for ch in chunks for call in ch.message.tool_calls or []]
    assert calls == [call.model_dump() for call in first.message.tool_calls or []]
    assert chunks[-1].done and chunks[-1].done_reason == first.done_reason
    assert chunks[-1].eval_count == first.eval_count


async def test_a_live_stream_relays_ollamas_lines_and_ends_with_its_done_chunk(server, sim):
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            server.url + "/api/chat",
            json={"model": "llama3.2", "messages": user("a fresh question")},
        ) as r,
    ):
        assert r.headers["Content-Type"] == "application/x-ndjson"
        assert r.headers["X-Cache"] == "MISS"
        lines = (await r.read()).decode().split("\n")
    assert lines[-1] == ""  # every line ends with a newline, and nothing else follows
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(set(ch) >= {"model", "created_at", "message", "done"} for ch in chunks)
    assert [ch["done"] for ch in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final["done_reason"] == "stop" and final["eval_count"] > 0
    assert final["total_duration"] > 0


async def test_generate_with_its_context_and_its_repeat(server, sim):
    c = client(server)
    first = await c.generate(model="llama3.2", prompt="why is the sky blue?")
    assert first.response and first.context
    generations = await sim_count(sim)
    again = await c.generate(model="llama3.2", prompt="why is the sky blue?")
    assert await sim_count(sim) == generations
    assert (again.response, again.context, again.eval_count) == (
        first.response,
        first.context,
        first.eval_count,
    )
    # A follow-up that passes the context is another question.
    follow = await c.generate(model="llama3.2", prompt="and at night?", context=first.context)
    assert await sim_count(sim) == generations + 1
    assert follow.response


async def test_one_cache_for_chat_optimized_and_native_chat(server, sim, http):
    question = user("one cache for every door")
    async with http.post(
        server.url + "/api/chat-optimized", json={"messages": question, "stream": False}
    ) as r:
        first = await r.json()
    generations = await sim_count(sim)
    # The same question, natively, and with the model's :latest tag: one entry.
    resp = await client(server).chat(model="llama3.2:latest", messages=question)
    assert await sim_count(sim) == generations
    assert resp.message.content == first["content"]
    async with http.post(
        server.url + "/api/chat", json={"model": "llama3.2", "messages": question}
    ) as r:
        assert r.headers["X-Cache"] == "HIT"


async def test_embed_sends_only_the_inputs_not_cached_yet(server, sim):
    c = client(server)
    docs = [f"document number {i}" for i in range(6)]
    first = await c.embed(model="llama3.2", input=docs[:3])
    assert len(first.embeddings) == 3
    before = await sim_count(sim, "embed_inputs")
    both = await c.embed(model="llama3.2", input=docs)
    assert await sim_count(sim, "embed_inputs") == before + 3  # only the new half
    assert both.embeddings[:3] == first.embeddings  # in the original order
    again = await c.embed(model="llama3.2", input=list(reversed(docs)))
    assert await sim_count(sim, "embed_inputs") == before + 3  # all cached now
    assert again.embeddings == list(reversed(both.embeddings))
    legacy = await c.embeddings(model="llama3.2", prompt="legacy prompt")
    legacy_again = await c.embeddings(model="llama3.2", prompt="legacy prompt")
    assert legacy.embedding and legacy_again.embedding == legacy.embedding


async def test_errors_are_ollamas(server, sim, http):
    with pytest.raises(ollama.ResponseError) as info:
        await client(server).chat(model="nosuchmodel", messages=user())
    assert info.value.status_code == 404
    assert info.value.error == "model 'nosuchmodel' not found"  # what the CLI and Continue match
    async with http.post(server.url + "/api/chat", data=b"{not json") as r:
        assert r.status == 400
        body = await r.json()
    assert set(body) == {"error"}
    async with http.post(
        server.url + "/api/chat", json={"model": "llama3.2", "messages": "hi"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith("messages:")


async def test_a_full_queue_is_503_with_retry_after(start_server, sim, http):
    server = await start_server(queue__max_concurrent=1, queue__max_queue_size=0)
    slow = asyncio.ensure_future(
        client(server).chat(
            model="llama3.2", messages=user("slow"), options={"sim_token_delay_ms": 100}
        )
    )
    await asyncio.sleep(0.2)
    async with http.post(
        server.url + "/api/chat", json={"model": "llama3.2", "messages": user("another")}
    ) as r:
        assert r.status == 503
        assert r.headers["Retry-After"]
        assert set(await r.json()) == {"error"}
    await slow


async def test_load_and_unload_are_relayed_not_cached(server, sim, http):
    for body, reason in (
        ({"model": "llama3.2"}, "load"),
        ({"model": "llama3.2", "keep_alive": 0}, "unload"),
        ({"model": "llama3.2", "keep_alive": 0}, "unload"),
    ):
        async with http.post(server.url + "/api/generate", json=body) as r:
            assert r.status == 200
            assert r.headers["X-Cache"] == "MISS"
            assert (await r.json())["done_reason"] == reason
    assert server.gateway.cache.stats()["entries"] == 0


async def test_lines_arrive_as_they_are_generated(server, sim, http):
    body = {
        "model": "llama3.2",
        "messages": user("pace me"),
        "options": {"sim_token_delay_ms": 60, "sim_tokens": 8},
    }
    arrivals = []
    async with http.post(server.url + "/api/chat", json=body) as r:
        start = time.monotonic()
        async for _line in r.content:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 8
    # Streamed, not held to the end: the first line comes long before the last.
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_identical_streams_share_one_generation(server, sim):
    c = client(server)
    before = await sim_count(sim)
    body = {"model": "llama3.2", "messages": user("the same for everyone")}

    async def one() -> str:
        parts = [ch.message.content async for ch in await c.chat(**body, stream=True)]
        return "".join(parts)

    texts = await asyncio.gather(*(one() for _ in range(100)))
    assert await sim_count(sim) == before + 1
    assert len(set(texts)) == 1 and texts[0]


async def test_a_client_that_leaves_stops_the_generation(server, sim, http):
    body = {
        "model": "llama3.2",
        "messages": user("long answer"),
        "options": {"sim_token_delay_ms": 50, "sim_tokens": 200},
    }
    async with http.post(server.url + "/api/chat", json=body) as r:
        await r.content.readline()  # the first line is here: it is generating
    # Ollama hears of it within a second: the upstream request is closed.
    assert await wait_for(lambda: _cancelled(sim), timeout=1.0)
    assert await sim_count(sim, "cancelled") == 1
    assert (await sim.stats())["in_progress"] == 0


async def test_a_named_request_can_be_seen_and_cancelled_through_the_queue_api(
    start_server, sim, http
):
    server = await start_server(queue__max_concurrent=1)
    body = {
        "model": "llama3.2",
        "messages": user("cancel me"),
        "options": {"sim_token_delay_ms": 50, "sim_tokens": 200},
    }
    async with http.post(
        server.url + "/api/chat", json=body, headers={"X-Request-Id": "job-7"}
    ) as r:
        assert r.headers["X-Request-Id"] == "job-7"
        await r.content.readline()
        async with http.get(server.url + "/api/chat-queue?requestId=job-7") as q:
            assert (await q.json())["status"] == "processing"
        async with http.delete(server.url + "/api/chat-queue?requestId=job-7") as q:
            assert q.status == 200
        rest = (await r.read()).decode().strip().split("\n")
    assert "error" in json.loads(rest[-1])  # the stream ends with Ollama's error line


async def test_langchain_chat_ollama_and_embeddings(server, sim):
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    llm = ChatOllama(model="llama3.2", base_url=server.url)
    first = await llm.ainvoke("Hello from LangChain")
    assert first.content
    generations = await sim_count(sim)
    again = await llm.ainvoke("Hello from LangChain")
    assert again.content == first.content and await sim_count(sim) == generations
    streamed = "".join([chunk.content async for chunk in llm.astream("Hello from LangChain")])
    assert streamed == first.content

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    called = await llm.bind_tools([get_weather]).ainvoke("weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"

    emb = OllamaEmbeddings(model="llama3.2", base_url=server.url)
    vectors = await emb.aembed_documents(["alpha", "beta"])
    assert len(vectors) == 2 and len(vectors[0]) > 0
    assert await emb.aembed_query("alpha") == vectors[0]


async def test_the_javascript_client_streams_a_chat(server, sim):
    """`ollama` for JavaScript (npm), under Node: a streamed chat, its repeat, the version."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(ROOT / "tests/js/ollama_chat.mjs"),
        server.url,
        "llama3.2",
        "hello from node",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out)
    assert got["streamed"] and got["whole"] == got["streamed"]  # the second one was a hit
    assert got["chunks"] > 1 and got["last"]["done"] is True
    assert got["version"]
    assert await sim_count(sim) == 1
