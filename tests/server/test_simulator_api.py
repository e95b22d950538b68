"""The simulator's wider Ollama API over real sockets: thinking, tools, structured output,
generate's context, embeddings, show, pull/push/create/copy/delete, blobs and counters."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.simulator import SimulatorSettings, start
from server.simulator.state import _STATE
from tests.server.test_simulator import CREATED_AT, Sim, parse_ndjson, post_raw

MODELS = ("llama3.2:latest", "qwen3:4b", "nomic-embed-text:latest")
JSON_UTF8 = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    settings = SimulatorSettings(tokens=6, token_delay_ms=0, first_token_delay_ms=0, models=MODELS)
    runner, port = await start(settings)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Sim(runner, session, port)
    finally:
        await runner.cleanup()


def chat(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **extra}


async def answer(sim: Sim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, raw = await post_raw(sim, path, {**body, "stream": False})
    assert status == 200, raw
    return json.loads(raw)


async def stream(sim: Sim, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, headers, raw = await post_raw(sim, path, body)
    assert status == 200, raw
    assert headers["Content-Type"] == NDJSON
    return parse_ndjson(raw)


async def error_of(sim: Sim, path: str, body: Any) -> tuple[int, str]:
    status, headers, raw = await post_raw(sim, path, body)
    assert headers["Content-Type"].startswith("application/json"), headers
    return status, json.loads(raw)["error"]


async def tags(sim: Sim) -> list[dict[str, Any]]:
    async with sim.session.get("/api/tags") as resp:
        return (await resp.json())["models"]


async def loaded(sim: Sim) -> list[str]:
    async with sim.session.get("/api/ps") as resp:
        return [entry["name"] for entry in (await resp.json())["models"]]


# --------------------------------------------------------------------------- thinking


async def test_thinking_streams_before_the_content(sim: Sim) -> None:
    *chunks, final = await stream(sim, "/api/chat", chat(think=True))
    thinking = [c for c in chunks if "thinking" in c["message"]]
    content = [c for c in chunks if "thinking" not in c["message"]]
    assert chunks[: len(thinking)] == thinking, "all thinking comes first"
    assert len(thinking) == 8 and len(content) == 6
    for chunk in thinking:
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert list(chunk["message"]) == ["role", "content", "thinking"]
        assert chunk["message"]["content"] == "" and chunk["message"]["thinking"]
        assert CREATED_AT.match(chunk["created_at"])
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 14 and final["done_reason"] == "stop"

    whole = await answer(sim, "/api/chat", chat(think=True))
    assert list(whole["message"]) == ["role", "content", "thinking"]
    assert whole["message"]["thinking"] == "".join(c["message"]["thinking"] for c in thinking)
    assert whole["message"]["content"] == "".join(c["message"]["content"] for c in content)
    # Thinking adds to the answer; it does not change it.
    assert (
        whole["message"]["content"]
        == (await answer(sim, "/api/chat", chat()))["message"]["content"]
    )


@pytest.mark.parametrize(("think", "pieces"), [("low", 4), ("medium", 8), ("high", 12)])
async def test_think_levels(sim: Sim, think: str, pieces: int) -> None:
    chunks = await stream(sim, "/api/chat", chat(think=think))
    assert sum("thinking" in c["message"] for c in chunks) == pieces


async def test_think_false_or_absent_means_no_thinking(sim: Sim) -> None:
    for body in (chat(), chat(think=False), chat(think=None)):
        whole = await answer(sim, "/api/chat", body)
        assert "thinking" not in whole["message"]


async def test_generate_thinks_at_top_level(sim: Sim) -> None:
    body = {"model": "qwen3:4b", "prompt": "Why?", "think": "low"}
    *chunks, final = await stream(sim, "/api/generate", body)
    assert [list(c) for c in chunks[:4]] == [
        ["model", "created_at", "response", "thinking", "done"]
    ] * 4
    assert all(c["response"] == "" for c in chunks[:4])
    assert "thinking" not in chunks[4]
    whole = await answer(sim, "/api/generate", body)
    assert list(whole)[:5] == ["model", "created_at", "response", "thinking", "done"]
    assert whole["thinking"] == "".join(c["thinking"] for c in chunks[:4])
    assert final["context"] == whole["context"]


@pytest.mark.parametrize(
    ("think", "error"),
    [
        (
            "extreme",
            'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, '
            "or false)",
        ),
        (1, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ],
)
async def test_bad_think_values(sim: Sim, think: Any, error: str) -> None:
    assert await error_of(sim, "/api/chat", chat(think=think)) == (400, error)


# --------------------------------------------------------------------------- tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "precise": {"type": "boolean"},
                "threshold": {"type": ["number", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


async def test_tools_answer_with_a_tool_call(sim: Sim) -> None:
    body = chat("What is the weather?", tools=[WEATHER, CLOCK])
    *chunks, final = await stream(sim, "/api/chat", body)
    (call_chunk,) = chunks
    message = call_chunk["message"]
    assert list(message) == ["role", "content", "tool_calls"] and message["content"] == ""
    (call,) = message["tool_calls"]
    assert list(call) == ["id", "function"] and CALL_ID.match(call["id"])
    assert list(call["function"]) == ["index", "name", "arguments"]
    assert call["function"]["index"] == 0 and call["function"]["name"] == "get_weather"
    args = call["function"]["arguments"]
    assert list(args) == ["city", "unit", "days", "precise", "threshold", "tags", "where"]
    assert isinstance(args["city"], str) and args["city"]
    assert args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    assert isinstance(args["precise"], bool)
    assert isinstance(args["threshold"], float)
    assert isinstance(args["tags"], list) and all(isinstance(t, str) for t in args["tags"])
    assert set(args["where"]) == {"lat"}
    assert final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] > 0

    whole = await answer(sim, "/api/chat", body)
    assert whole["message"]["tool_calls"] == [call], "deterministic, and merged when whole"
    assert whole["message"]["content"] == "" and whole["done_reason"] == "stop"


async def test_tool_choice_follows_the_prompt_and_ends_after_a_result(sim: Sim) -> None:
    named = await answer(sim, "/api/chat", chat("Please call get_time", tools=[WEATHER, CLOCK]))
    (call,) = named["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_time", "arguments": {}}

    # After the tool's result the model answers in words, so agent loops terminate.
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_name": "get_time"},
    ]
    whole = await answer(sim, "/api/chat", {**chat(), "messages": history, "tools": [CLOCK]})
    assert "tool_calls" not in whole["message"] and whole["message"]["content"]


async def test_thinking_then_tool_call(sim: Sim) -> None:
    *chunks, _ = await stream(sim, "/api/chat", chat(think="low", tools=[CLOCK]))
    assert ["thinking" in c["message"] for c in chunks] == [True] * 4 + [False]
    assert chunks[-1]["message"]["tool_calls"][0]["function"]["name"] == "get_time"


# --------------------------------------------------------------------------- format


async def test_format_schema_gives_matching_json(sim: Sim) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "pets": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "pets"],
    }
    chunks = await stream(sim, "/api/chat", chat(format=schema))
    text = "".join(c["message"]["content"] for c in chunks)
    value = json.loads(text)
    assert set(value) == {"name", "age", "pets"} and 18 <= value["age"] <= 99
    assert len(chunks) > 4, "streamed in token-sized pieces"

    whole = await answer(sim, "/api/chat", chat(format="json"))
    assert isinstance(json.loads(whole["message"]["content"]), dict)
    generated = await answer(
        sim, "/api/generate", {"model": "llama3.2", "prompt": "x", "format": schema}
    )
    assert set(json.loads(generated["response"])) == {"name", "age", "pets"}


async def test_invalid_format_is_a_runner_error(sim: Sim) -> None:
    status, error = await error_of(sim, "/api/chat", chat(format="yaml"))
    assert status == 500
    assert error == 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'
    assert (await answer(sim, "/api/chat", chat(format="")))["message"]["content"]


# --------------------------------------------------------------------------- generate


async def test_generate_context_is_forwarded(sim: Sim) -> None:
    body = {"model": "llama3.2", "prompt": "Tell me more"}
    first = await answer(sim, "/api/generate", body)
    again = await answer(sim, "/api/generate", body)
    assert first["response"] == again["response"] and first["context"] == again["context"]
    followed = await answer(sim, "/api/generate", {**body, "context": first["context"]})
    assert followed["response"] != first["response"], "the answer depends on the context"
    assert followed["context"][: len(first["context"])] == first["context"]
    assert followed["prompt_eval_count"] > first["prompt_eval_count"]

    for extra in ({"suffix": "return x"}, {"template": "{{ .Prompt }}"}, {"images": ["aGk="]}):
        changed = await answer(sim, "/api/generate", {**body, **extra})
        assert changed["response"] != first["response"], extra

    raw = await answer(sim, "/api/generate", {**body, "raw": True})
    assert "context" not in raw


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {"model": "llama3.2", "prompt": "x", "raw": True, "context": [1]},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            {"model": "llama3.2", "prompt": "x", "context": ["a"]},
            400,
            "json: cannot unmarshal string into Go struct field GenerateRequest.context "
            "of type int",
        ),
        (
            {"model": "llama3.2", "prompt": "x", "images": [1]},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.images "
            "of type api.ImageData",
        ),
        ({"model": "bad name!", "prompt": "x"}, 400, "invalid model name"),
        (
            {"model": "nomic-embed-text", "prompt": "x"},
            400,
            '"nomic-embed-text" does not support generate',
        ),
        (
            {"model": "nomic-embed-text", "prompt": "x", "think": True},
            400,
            '"nomic-embed-text" does not support thinking',
        ),
    ],
)
async def test_generate_errors(sim: Sim, body: dict[str, Any], status: int, error: str) -> None:
    assert await error_of(sim, "/api/generate", body) == (status, error)


async def test_top_logprobs_range(sim: Sim) -> None:
    for value in (-1, 21):
        assert await error_of(sim, "/api/chat", chat(top_logprobs=value)) == (
            400,
            "top_logprobs must be between 0 and 20",
        )
    assert (await answer(sim, "/api/chat", chat(logprobs=True, top_logprobs=20)))["done"]


async def test_embedding_model_cannot_chat(sim: Sim) -> None:
    assert await error_of(sim, "/api/chat", {**chat(), "model": "nomic-embed-text"}) == (
        400,
        '"nomic-embed-text" does not support chat',
    )


async def test_names_match_case_insensitively_and_fully_qualified(sim: Sim) -> None:
    plain = (await answer(sim, "/api/chat", chat()))["message"]["content"]
    for name in ("LLAMA3.2", "library/llama3.2:latest", "registry.ollama.ai/library/llama3.2"):
        whole = await answer(sim, "/api/chat", {**chat(), "model": name})
        assert whole["model"] == name and whole["message"]["content"] == plain


# --------------------------------------------------------------------------- embeddings


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


async def test_embed_shape_and_determinism(sim: Sim) -> None:
    body = {"model": "nomic-embed-text", "input": ["first text", "second text", "first text"]}
    status, headers, raw = await post_raw(sim, "/api/embed", body)
    assert status == 200 and headers["Content-Type"] == JSON_UTF8
    result = json.loads(raw)
    assert list(result) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert result["model"] == "nomic-embed-text"
    first, second, third = result["embeddings"]
    assert len(first) == 768
    assert first == third and first != second
    assert all(abs(norm(v) - 1) < 1e-6 for v in (first, second))
    assert result["prompt_eval_count"] == 6
    assert isinstance(result["total_duration"], int) and result["total_duration"] > 0

    single = await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": "first text"})
    assert single["embeddings"] == [first]
    cut = await answer(sim, "/api/embed", {**body, "dimensions": 16})
    assert all(len(v) == 16 and abs(norm(v) - 1) < 1e-6 for v in cut["embeddings"])
    # Cutting then re-normalizing keeps the direction of the first components.
    scale = norm(first[:16])
    assert all(
        abs(a / scale - b) < 1e-5 for a, b in zip(first[:16], cut["embeddings"][0], strict=True)
    )

    other = await answer(sim, "/api/embed", {"model": "llama3.2", "input": "first text"})
    assert len(other["embeddings"][0]) == 2048 and other["embeddings"][0][:768] != first


async def test_legacy_embeddings_are_raw_and_point_the_same_way(sim: Sim) -> None:
    legacy = await answer(sim, "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hi"})
    assert list(legacy) == ["embedding"] and len(legacy["embedding"]) == 768
    raw = legacy["embedding"]
    assert norm(raw) > 2, "not normalized"
    (unit,) = (await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": "hi"}))[
        "embeddings"
    ]
    assert all(abs(r / norm(raw) - u) < 1e-6 for r, u in zip(raw, unit, strict=True))
    empty = await answer(sim, "/api/embeddings", {"model": "nomic-embed-text", "prompt": ""})
    assert empty == {"embedding": []}


async def test_embed_load_truncate_and_errors(sim: Sim) -> None:
    assert await loaded(sim) == []
    status, _, raw = await post_raw(sim, "/api/embed", {"model": "nomic-embed-text"})
    assert status == 200 and raw == b'{"model":"nomic-embed-text","embeddings":[]}'
    assert await loaded(sim) == ["nomic-embed-text:latest"]

    long_text = "word " * 3000  # past the embedding model's 2048-token context
    body = {"model": "nomic-embed-text", "input": long_text}
    truncated = await answer(sim, "/api/embed", body)
    assert truncated["prompt_eval_count"] == 2048
    assert await error_of(sim, "/api/embed", {**body, "truncate": False}) == (
        400,
        "the input length exceeds the context length",
    )
    small_ctx = await answer(sim, "/api/embed", {**body, "options": {"num_ctx": 100}})
    assert small_ctx["prompt_eval_count"] == 100

    cases = [
        ({"model": "ghost", "input": "x"}, 404, 'model "ghost" not found, try pulling it first'),
        ({"model": "", "input": "x"}, 404, "model '' not found"),
        ({"model": "nomic-embed-text", "input": [1]}, 400, "invalid input type"),
        ({"model": "nomic-embed-text", "input": {"a": 1}}, 400, "invalid input type"),
        (
            {"model": "nomic-embed-text", "input": "x", "dimensions": "4"},
            400,
            "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions "
            "of type int",
        ),
        (
            {"model": "nomic-embed-text", "input": "x", "options": {"sim_status": 503}},
            503,
            "simulated status 503",
        ),
    ]
    for request_body, status, error in cases:
        assert await error_of(sim, "/api/embed", request_body) == (status, error)
    assert await error_of(sim, "/api/embeddings", {"model": "", "prompt": "x"}) == (
        400,
        "model is required",
    )


async def test_embed_inputs_are_counted(sim: Sim) -> None:
    await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b", "c"]})
    await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": "d"})
    await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": []})  # a load
    await answer(sim, "/api/embeddings", {"model": "nomic-embed-text", "prompt": "e"})
    await post_raw(sim, "/api/embed", {"model": "ghost", "input": ["never", "arrives"]})
    async with sim.session.get("/simulator/stats") as resp:
        stats = await resp.json()
    assert stats["embed_inputs"] == 5
    assert stats["embed_batches"] == [3, 1, 1]
    assert stats["generations"] == 0
    assert stats["by_endpoint"]["POST /api/embed"] == 4
    assert stats["by_endpoint"]["POST /api/embeddings"] == 1


# --------------------------------------------------------------------------- show and ps


async def test_show(sim: Sim) -> None:
    status, headers, raw = await post_raw(sim, "/api/show", {"model": "llama3.2"})
    assert status == 200 and headers["Content-Type"] == JSON_UTF8
    show = json.loads(raw)
    assert list(show) == [
        "license",
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "tensors",
        "capabilities",
        "modified_at",
    ]
    assert show["capabilities"] == ["completion", "tools", "insert", "thinking"]
    assert ".Suffix" in show["template"] and ".Tools" in show["template"]
    assert show["modelfile"].startswith('# Modelfile generated by "ollama show"\n')
    assert "\nFROM " in show["modelfile"] and "\nPARAMETER stop <|eot_id|>\n" in show["modelfile"]
    assert re.search(r'^stop {27}"<\|eot_id\|>"$', show["parameters"], re.M)
    info = show["model_info"]
    assert list(info) == sorted(info)
    assert info["general.architecture"] == show["details"]["family"]
    assert info[f"{info['general.architecture']}.embedding_length"] == 2048
    assert info["tokenizer.ggml.tokens"] == []
    assert show["details"]["format"] == "gguf"

    legacy = await answer(sim, "/api/show", {"name": "llama3.2:latest", "verbose": True})
    assert legacy["model_info"]["tokenizer.ggml.tokens"], "verbose keeps long arrays"
    assert legacy["license"] == show["license"]
    with_system = await answer(sim, "/api/show", {"model": "llama3.2", "system": "Be terse."})
    assert with_system["system"] == "Be terse." and "SYSTEM Be terse." in with_system["modelfile"]

    embedder = await answer(sim, "/api/show", {"model": "nomic-embed-text"})
    assert embedder["capabilities"] == ["embedding"]

    assert await error_of(sim, "/api/show", {"model": "ghost"}) == (
        404,
        "model 'ghost:latest' not found",
    )
    assert await error_of(sim, "/api/show", {}) == (400, "model is required")
    assert await error_of(sim, "/api/show", {"model": "a/b/c/d"}) == (400, "invalid model name")


async def test_ps_follows_generation_load_and_unload(sim: Sim) -> None:
    await answer(sim, "/api/generate", {"model": "qwen3:4b", "prompt": "hi"})
    await answer(
        sim, "/api/embed", {"model": "nomic-embed-text", "input": "hi", "keep_alive": "1h"}
    )
    assert await loaded(sim) == ["nomic-embed-text:latest", "qwen3:4b"]
    _, _, raw = await post_raw(
        sim, "/api/generate", {"model": "qwen3:4b", "prompt": "", "keep_alive": 0}
    )
    assert json.loads(raw)["done_reason"] == "unload"
    await answer(sim, "/api/embed", {"model": "nomic-embed-text", "input": "x", "keep_alive": 0})
    assert await loaded(sim) == []
    async with sim.session.head("/api/ps") as resp:
        assert resp.status == 405


# --------------------------------------------------------------------------- pull and push


async def test_pull_streams_progress_and_adds_the_model(sim: Sim) -> None:
    lines = await stream(sim, "/api/pull", {"model": "phi3:mini"})
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [line for line in lines if line["status"].startswith("pulling ")][1:]
    assert len(layers) >= 6, "the big layer reports progress several times"
    for line in layers:
        assert list(line)[:3] == ["status", "digest", "total"]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", line["digest"])
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert line.get("completed", 0) <= line["total"]
    big = [line for line in layers if line["digest"] == layers[0]["digest"]]
    assert "completed" not in big[0] and big[-1]["completed"] == big[-1]["total"]

    newest = (await tags(sim))[0]
    assert newest["name"] == "phi3:mini" and newest["size"] > big[0]["total"]
    assert (await answer(sim, "/api/chat", {**chat(), "model": "phi3:mini"}))["message"]["content"]

    # Pulling again finds every blob: one line per layer.
    status, headers, raw = await post_raw(sim, "/api/pull", {"name": "phi3:mini", "stream": False})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert raw == b'{"status":"success"}'


async def test_pull_errors(start_registry_sim: Any) -> None:
    sim = start_registry_sim
    lines = await stream(sim, "/api/pull", {"model": "unknown-model"})
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    status, headers, raw = await post_raw(
        sim, "/api/pull", {"model": "unknown-model", "stream": False}
    )
    assert (status, headers["Content-Type"]) == (500, "application/json")
    assert json.loads(raw) == {"error": "pull model manifest: file does not exist"}
    assert [line["status"] for line in await stream(sim, "/api/pull", {"model": "known"})][
        -1
    ] == "success"
    for name in ("", "bad name!"):
        assert await error_of(sim, "/api/pull", {"model": name}) == (400, "invalid model name")


@pytest.fixture
async def start_registry_sim() -> AsyncIterator[Sim]:
    settings = SimulatorSettings(
        token_delay_ms=0, first_token_delay_ms=0, models=MODELS, registry=("known",)
    )
    runner, port = await start(settings)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Sim(runner, session, port)
    finally:
        await runner.cleanup()


async def test_push(sim: Sim) -> None:
    lines = await stream(sim, "/api/push", {"model": "llama3.2"})
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert any(
        s.startswith("pushing ") and "digest" in line
        for s, line in zip(statuses, lines, strict=True)
    )
    lines = await stream(sim, "/api/push", {"model": "ghost"})
    assert [line.get("status") for line in lines[:2]] == [
        "retrieving manifest",
        "couldn't retrieve manifest",
    ]
    assert lines[-1]["error"].endswith(
        "/manifests/registry.ollama.ai/library/ghost/latest: no such file or directory"
    )
    assert await error_of(sim, "/api/push", {}) == (400, "model is required")


# --------------------------------------------------------------------------- create, copy, delete


async def test_create_from_a_model(sim: Sim) -> None:
    body = {
        "model": "pirate",
        "from": "llama3.2",
        "system": "You are a pirate.",
        "parameters": {"temperature": 0.2, "stop": ["Arr"]},
        "license": ["MIT"],
    }
    lines = await stream(sim, "/api/create", body)
    statuses = [line["status"] for line in lines]
    assert statuses[-2:] == ["writing manifest", "success"]
    layer_lines = statuses[:-2]
    assert all(
        re.fullmatch(r"(using existing|creating new) layer sha256:[0-9a-f]{64}", s)
        for s in layer_lines
    )
    assert any(s.startswith("using existing") for s in layer_lines)
    assert any(s.startswith("creating new") for s in layer_lines)

    show = await answer(sim, "/api/show", {"model": "pirate"})
    assert show["system"] == "You are a pirate."
    assert show["details"]["parent_model"] == "llama3.2:latest"
    assert "temperature                    0.2" in show["parameters"]
    # Request parameters win; the base model's others are kept.
    assert show["parameters"].splitlines() == [
        'stop                           "Arr"',
        "temperature                    0.2",
    ]
    assert show["license"].endswith("\nMIT")
    assert (await tags(sim))[0]["name"] == "pirate:latest"
    pirate = await answer(sim, "/api/chat", {**chat(), "model": "pirate"})
    plain = await answer(sim, "/api/chat", chat())
    assert pirate["message"]["content"] != plain["message"]["content"]

    # A missing base model is pulled first, inside the same stream.
    lines = await stream(sim, "/api/create", {"model": "mini", "from": "gemma2:2b"})
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    assert {"gemma2:2b", "mini:latest"} <= {m["name"] for m in await tags(sim)}

    status, headers, raw = await post_raw(
        sim, "/api/create", {"model": "q", "from": "llama3.2", "stream": False}
    )
    assert (status, headers["Content-Type"], raw) == (
        200,
        "application/json",
        b'{"status":"success"}',
    )


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "bad name!", "from": "llama3.2"}, 400, "invalid model name"),
        ({"model": "x", "from": "bad name!"}, 400, "invalid model name"),
        ({"model": "x", "files": {"../m.gguf": "sha256:00"}}, 400, "file path must be relative"),
        ({"model": "x", "files": {"m.gguf": ""}}, 400, "invalid digest format"),
        ({"model": "x", "files": {"m.bin": "sha256:" + "0" * 64}}, 400, "unknown type"),
    ],
)
async def test_create_errors(sim: Sim, body: dict[str, Any], status: int, error: str) -> None:
    status_code, _, raw = await post_raw(sim, "/api/create", body)
    assert (status_code, json.loads(raw)) == (status, {"error": error})


async def test_create_errors_during_progress(sim: Sim) -> None:
    lines = await stream(
        sim, "/api/create", {"model": "x", "files": {"m.gguf": "sha256:" + "1" * 64}}
    )
    assert lines[0] == {"status": "parsing GGUF"}
    assert re.fullmatch(r"open .*/blobs/sha256-1{64}: no such file or directory", lines[1]["error"])
    # Before any output an error keeps its status (with the type progress streams set).
    body = {"model": "x", "from": "llama3.2", "quantize": "q8_0"}
    status, headers, raw = await post_raw(sim, "/api/create", body)
    assert (status, headers["Content-Type"]) == (500, "application/json")
    assert json.loads(raw) == {
        "error": "quantization is only supported for F16, BF16 and F32 models"
    }


async def test_blob_upload_then_create_from_files(sim: Sim) -> None:
    data = b"GGUF" + bytes(range(256)) * 4096  # about 1 MiB, uploaded in pieces
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = f"/api/blobs/{digest}"
    async with sim.session.head(path) as resp:
        assert resp.status == 404

    async def pieces() -> AsyncIterator[bytes]:
        for offset in range(0, len(data), 65536):
            yield data[offset : offset + 65536]

    async with sim.session.post(path, data=pieces()) as resp:
        assert resp.status == 201 and await resp.read() == b""
        assert "Content-Type" not in resp.headers
    async with sim.session.head(path) as resp:
        assert resp.status == 200
    async with sim.session.post(path, data=b"ignored: it exists") as resp:
        assert resp.status == 200

    lines = await stream(sim, "/api/create", {"model": "local", "files": {"model.gguf": digest}})
    assert lines[0] == {"status": "parsing GGUF"}
    assert lines[1] == {"status": f"using existing layer {digest}"}
    assert lines[-1] == {"status": "success"}
    show = await answer(sim, "/api/show", {"model": "local"})
    assert show["details"]["parent_model"] == ""
    assert (await answer(sim, "/api/chat", {**chat(), "model": "local"}))["message"]["content"]

    not_gguf = b"plain text"
    other = "sha256:" + hashlib.sha256(not_gguf).hexdigest()
    async with sim.session.post(f"/api/blobs/{other}", data=not_gguf) as resp:
        assert resp.status == 201
    lines = await stream(sim, "/api/create", {"model": "y", "files": {"m.gguf": other}})
    assert lines[-1] == {"error": "supplied file was not in GGUF format"}


async def test_blob_digest_checks(sim: Sim) -> None:
    wrong = "sha256:" + "a" * 64
    async with sim.session.post(f"/api/blobs/{wrong}", data=b"content") as resp:
        assert resp.status == 400
        actual = "sha256:" + hashlib.sha256(b"content").hexdigest()
        assert await resp.json() == {
            "error": f'digest mismatch, expected "{wrong}", got "{actual}"'
        }
    async with sim.session.head(f"/api/blobs/{wrong}") as resp:
        assert resp.status == 404, "a rejected upload is not kept"
    for bad in ("sha256:abc", "md5:" + "a" * 64):
        async with sim.session.post(f"/api/blobs/{bad}", data=b"x") as resp:
            assert (resp.status, await resp.json()) == (400, {"error": "invalid digest format"})
        async with sim.session.head(f"/api/blobs/{bad}") as resp:
            assert resp.status == 400


async def test_blobs_live_in_a_private_directory_that_goes_with_the_app() -> None:
    runner, port = await start(SimulatorSettings(models=MODELS))
    blobs = runner.app[_STATE].models_path / "blobs"
    good = b"GGUF kept"
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for digest in ("sha256:" + "c" * 64, "sha256:" + hashlib.sha256(good).hexdigest()):
                async with session.post(f"/api/blobs/{digest}", data=good):
                    pass
        # Only the verified upload stays; the rejected one leaves no partial file behind.
        assert [path.name for path in blobs.iterdir()] == [
            f"sha256-{hashlib.sha256(good).hexdigest()}"
        ]
    finally:
        await runner.cleanup()
    assert not blobs.parent.exists()


async def test_copy_and_delete(sim: Sim) -> None:
    async with sim.session.post(
        "/api/copy", json={"source": "llama3.2", "destination": "twin"}
    ) as resp:
        assert resp.status == 200 and await resp.read() == b""
    by_name = {m["name"]: m for m in await tags(sim)}
    assert by_name["twin:latest"]["digest"] == by_name["llama3.2:latest"]["digest"]
    twin = await answer(sim, "/api/chat", {**chat(), "model": "twin"})
    original = await answer(sim, "/api/chat", chat())
    assert twin["message"]["content"] == original["message"]["content"], "same weights"

    assert await error_of(sim, "/api/copy", {"source": "ghost", "destination": "x"}) == (
        404,
        'model "ghost" not found',
    )
    assert await error_of(sim, "/api/copy", {"source": "llama3.2", "destination": "a b"}) == (
        400,
        'destination "a b" is invalid',
    )

    async with sim.session.delete("/api/delete", json={"model": "twin"}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert "twin:latest" not in {m["name"] for m in await tags(sim)}
    async with sim.session.delete("/api/delete", json={"name": "twin"}) as resp:
        assert (resp.status, await resp.json()) == (404, {"error": "model 'twin' not found"})
    async with sim.session.delete("/api/delete", data=b"") as resp:
        assert (resp.status, await resp.json()) == (400, {"error": "missing request body"})
    async with sim.session.delete("/api/delete", json={"model": "a b"}) as resp:
        assert (resp.status, await resp.json()) == (400, {"error": 'name "a b" is invalid'})
    status, _, _ = await post_raw(sim, "/api/chat", {**chat(), "model": "twin"})
    assert status == 404


# --------------------------------------------------------------------------- counters


async def test_requests_are_counted_per_endpoint(sim: Sim) -> None:
    await answer(sim, "/api/chat", chat())
    async with sim.session.head("/api/tags"):
        pass
    async with sim.session.get("/api/tags"):
        pass
    async with sim.session.head(f"/api/blobs/sha256:{'b' * 64}"):
        pass
    async with sim.session.get("/nowhere"):
        pass
    async with sim.session.get("/simulator/stats") as resp:
        stats = await resp.json()
    assert stats["by_endpoint"] == {
        "POST /api/chat": 1,
        "HEAD /api/tags": 1,
        "GET /api/tags": 1,
        "HEAD /api/blobs/{digest}": 1,
        "GET /nowhere": 1,
        "GET /simulator/stats": 1,
    }
    assert stats["by_path"]["/api/tags"] == 2 and stats["requests"] == 6


# --------------------------------------------------------------------------- the official client


async def test_the_official_python_client_against_the_simulator(sim: Sim, tmp_path: Any) -> None:
    ollama = pytest.importorskip("ollama")
    client = ollama.AsyncClient(host=f"http://127.0.0.1:{sim.port}")
    assert [m.model for m in (await client.list()).models] == list(MODELS)

    reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content and reply.done_reason == "stop"
    parts = [
        part
        async for part in await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], think=True, stream=True
        )
    ]
    assert "".join(p.message.content for p in parts) == reply.message.content
    assert "".join(p.message.thinking or "" for p in parts)
    called = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER]
    )
    assert called.message.tool_calls[0].function.name == "get_weather"
    assert called.message.tool_calls[0].function.arguments["city"]

    generated = await client.generate(model="llama3.2", prompt="Why?")
    assert generated.response and generated.context
    embedded = await client.embed(model="nomic-embed-text", input=["a", "b"], dimensions=8)
    assert [len(v) for v in embedded.embeddings] == [8, 8]
    assert len((await client.embeddings(model="nomic-embed-text", prompt="a")).embedding) == 768
    shown = await client.show("llama3.2")
    assert "tools" in shown.capabilities and shown.modelinfo
    assert [m.model for m in (await client.ps()).models] == [
        "nomic-embed-text:latest",
        "llama3.2:latest",
    ]

    statuses = [p.status async for p in await client.pull("phi3", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert (await client.create(model="mine", from_="llama3.2", system="Be brief.")).status == (
        "success"
    )
    blob = tmp_path / "model.gguf"
    blob.write_bytes(b"GGUF" + bytes(1000))
    digest = await client.create_blob(blob)
    created = await client.create(model="local", files={"model.gguf": digest})
    assert created.status == "success"
    assert (await client.copy("mine", "mine2")).status == "success"
    assert (await client.delete("mine2")).status == "success"
    names = {m.model for m in (await client.list()).models}
    assert {"phi3:latest", "mine:latest", "local:latest"} <= names and "mine2:latest" not in names

    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="ghost", messages=[{"role": "user", "content": "hi"}])
    assert (info.value.status_code, info.value.error) == (404, "model 'ghost' not found")
