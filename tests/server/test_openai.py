"""The OpenAI-compatible API, driven by the official `openai` SDK (sync and async) and LangChain's
ChatOpenAI, against the gateway in front of the project's simulator."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.conftest import Server, Sim, user, wait_for

WEATHER = {
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


def sdk(server: Server, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0, **kw)


async def generations(sim: Sim) -> int:
    return int((await sim.stats())["generations"])


def same_apart_from_id(a, b) -> bool:
    first, second = a.model_dump(), b.model_dump()
    for d in (first, second):
        d.pop("id"), d.pop("created")
    return first == second


async def test_chat_and_its_repeat_is_the_same_answer_from_the_cache(server, sim):
    client = sdk(server)
    ask = {"model": "llama3.2", "messages": user("hello, OpenAI side")}
    first = await client.chat.completions.create(**ask)
    assert first.object == "chat.completion" and first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.completion_tokens > 0
    n = await generations(sim)
    again = await client.chat.completions.create(**ask)
    assert await generations(sim) == n
    assert same_apart_from_id(first, again)


async def test_a_stream_with_usage_ends_with_a_usage_chunk_and_done(server, sim):
    client = sdk(server)
    ask = {"model": "llama3.2", "messages": user("stream it")}
    whole = await client.chat.completions.create(**ask)
    chunks = [
        c
        async for c in await client.chat.completions.create(
            **ask, stream=True, stream_options={"include_usage": True}
        )
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # Without include_usage there is no usage chunk.
    plain = [c async for c in await client.chat.completions.create(**ask, stream=True)]
    assert all(c.choices for c in plain)


async def test_a_tool_call_round_trip(server, sim):
    client = sdk(server)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await client.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    again = await client.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER]
    )
    assert same_apart_from_id(first, again)  # tool calls replayed whole
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"},
    ]
    final = await client.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER]
    )
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content


async def test_response_format_json_schema(server, sim):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    answer = await sdk(server).chat.completions.create(
        model="llama3.2",
        messages=user("a person"),
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    data = json.loads(answer.choices[0].message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


async def test_completions(server, sim):
    client = sdk(server)
    first = await client.completions.create(model="llama3.2", prompt="Once upon a time")
    assert first.object == "text_completion" and first.choices[0].text
    n = await generations(sim)
    again = await client.completions.create(model="llama3.2", prompt="Once upon a time")
    assert await generations(sim) == n and same_apart_from_id(first, again)
    streamed = "".join(
        [
            c.choices[0].text
            async for c in await client.completions.create(
                model="llama3.2", prompt="Once upon a time", stream=True
            )
        ]
    )
    assert streamed == first.choices[0].text


async def test_embeddings_partly_cached(server, sim):
    client = sdk(server)
    docs = ["red", "green", "blue", "cyan"]
    first = await client.embeddings.create(model="llama3.2", input=docs[:2])
    before = (await sim.stats())["embed_inputs"]
    both = await client.embeddings.create(model="llama3.2", input=docs)
    assert (await sim.stats())["embed_inputs"] == before + 2
    assert [d.index for d in both.data] == [0, 1, 2, 3]
    assert [d.embedding for d in both.data[:2]] == [d.embedding for d in first.data]
    # The SDK asks for base64 by default and decodes it; floats come out either way.
    floats = await client.embeddings.create(model="llama3.2", input="red", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(first.data[0].embedding, rel=1e-6)


async def test_models_list_and_retrieve(server, sim):
    client = sdk(server)
    ids = [m.id async for m in client.models.list()]
    assert "llama3.2:latest" in ids
    assert (await client.models.retrieve("llama3.2")).id == "llama3.2"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nosuchmodel")


async def test_errors_in_openais_shape(start_server, start_sim):
    slow_sim = await start_sim(token_delay_ms=40, tokens=10)
    server = await start_server(
        ollama__api_url=slow_sim.url, queue__max_concurrent=1, queue__max_queue_size=0
    )
    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="nosuchmodel", messages=user())
    assert missing.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="llama3.2", messages=user(), n=2)
    assert bad.value.body["param"] == "n"
    slow = asyncio.ensure_future(
        client.chat.completions.create(model="llama3.2", messages=user("slow"))
    )
    await asyncio.sleep(0.15)
    with pytest.raises(openai.APIStatusError) as full:
        await client.chat.completions.create(model="llama3.2", messages=user("one more"))
    assert full.value.status_code == 503
    assert full.value.response.headers["retry-after"]
    await slow


async def test_the_sync_client_works_too(server, sim):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0)

    def ask() -> str:
        # In a thread: the gateway under test runs on this test's event loop.
        stream = client.chat.completions.create(model="llama3.2", messages=user("sync"))
        return stream.choices[0].message.content or ""

    assert await asyncio.to_thread(ask)


async def test_one_question_three_doors_one_generation(server, sim, http):
    question = user("one generation for three protocols")
    before = await generations(sim)
    async with http.post(
        server.url + "/api/chat-optimized", json={"messages": question, "stream": False}
    ) as r:
        text = (await r.json())["content"]
    via_openai = await sdk(server).chat.completions.create(model="llama3.2", messages=question)
    async with http.post(
        server.url + "/api/chat",
        json={"model": "llama3.2", "messages": question, "stream": False},
    ) as r:
        assert r.headers["X-Cache"] == "HIT"
        native = await r.json()
    assert await generations(sim) == before + 1
    assert via_openai.choices[0].message.content == text == native["message"]["content"]
    assert server.gateway.cache.stats()["hits"] == 2


async def test_a_waiting_stream_hears_its_place_in_comments(start_server, start_sim, http):
    slow_sim = await start_sim(token_delay_ms=40, tokens=10)
    server = await start_server(ollama__api_url=slow_sim.url, queue__max_concurrent=1)
    slow = asyncio.ensure_future(
        sdk(server).chat.completions.create(model="llama3.2", messages=user("slow"))
    )
    await asyncio.sleep(0.15)
    async with http.post(
        server.url + "/v1/chat/completions",
        json={"model": "llama3.2", "messages": user("waiting"), "stream": True},
    ) as r:
        body = (await r.read()).decode()
    await slow
    assert body.startswith(": queued position=1 eta_ms=")
    assert body.rstrip().endswith("data: [DONE]")


async def test_langchain_chat_openai(server, sim):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="llama3.2", base_url=server.url + "/v1", api_key="any", max_retries=0)
    first = await llm.ainvoke("Hello from ChatOpenAI")
    assert first.content
    n = await generations(sim)
    assert (await llm.ainvoke("Hello from ChatOpenAI")).content == first.content
    assert await generations(sim) == n
    streamed = "".join([c.content async for c in llm.astream("Hello from ChatOpenAI")])
    assert streamed == first.content

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    called = await llm.bind_tools([get_weather]).ainvoke("weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"


async def test_a_client_that_leaves_a_stream_stops_the_generation(start_server, start_sim, http):
    slow_sim = await start_sim(token_delay_ms=50, tokens=200)
    server = await start_server(ollama__api_url=slow_sim.url)
    async with http.post(
        server.url + "/v1/chat/completions",
        json={"model": "llama3.2", "messages": user("long"), "stream": True},
    ) as r:
        await r.content.readuntil(b"\n\n")  # the first chunk: it is generating

    async def stopped() -> bool:
        return (await slow_sim.stats())["cancelled"] == 1

    assert await wait_for(stopped, timeout=1.0)


async def test_a_lone_surrogate_in_embedding_input_is_a_400_naming_it(server, sim, http):
    body = b'{"model": "llama3.2", "input": ["fine", "half \\ud83d"]}'
    async with http.post(
        server.url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "input"


async def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises(start_server):
    from server import simulator

    runner, port = await simulator.start(
        simulator.SimulatorSettings(tokens=200, token_delay_ms=30, first_token_delay_ms=0)
    )
    server = await start_server(ollama__api_url=f"http://127.0.0.1:{port}")
    stream = await sdk(server).chat.completions.create(
        model="llama3.2", messages=user("fail me midway"), stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                await runner.cleanup()  # Ollama goes away mid-answer
    assert got and "Ollama" in str(info.value)
