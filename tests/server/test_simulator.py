"""Tests for the Ollama simulator over real sockets: wire format, hooks, model state and stats."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server.simulator import SIM_STATS, SimulatorSettings, SimulatorStats, start

MODELS = ("llama3.2:latest", "qwen3:4b")
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@dataclass
class Sim:
    runner: web.AppRunner
    session: aiohttp.ClientSession
    port: int

    @property
    def stats(self) -> SimulatorStats:
        return self.runner.app[SIM_STATS]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """Overrides conftest's `sim`: these tests need the in-process stats object and delays."""
    settings = SimulatorSettings(tokens=12, token_delay_ms=1, first_token_delay_ms=5, models=MODELS)
    runner, port = await start(settings)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield Sim(runner, session, port)
    finally:
        await runner.cleanup()


def chat_body(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **extra}


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(0.01)


async def post_raw(sim: Sim, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with sim.session.post(path, data=data) as resp:
        return resp.status, dict(resp.headers), await resp.read()


GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(obj: Any) -> bytes:
    """What Go's encoding/json writes for obj (given Go's struct field order)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.translate(GO_ESCAPES).encode()


def parse_ndjson(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert all(lines), "blank line in NDJSON stream"
    objects = [json.loads(line) for line in lines]
    for line, obj in zip(lines, objects, strict=True):
        assert line == go_json(obj), "line is not in Go's compact encoding"
    return objects


async def chat_text(sim: Sim, body: dict[str, Any]) -> str:
    status, _, raw = await post_raw(sim, "/api/chat", {**body, "stream": False})
    assert status == 200, raw
    return json.loads(raw)["message"]["content"]


# --------------------------------------------------------------------------- streaming format


async def test_streamed_chat_framing_matches_non_streamed(sim: Sim) -> None:
    status, headers, raw = await post_raw(sim, "/api/chat", chat_body())
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers.get("Transfer-Encoding") == "chunked"
    chunks = parse_ndjson(raw)

    *content, final = chunks
    assert len(content) == 12
    for chunk in content:
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert chunk["model"] == "llama3.2"
        assert chunk["done"] is False
        assert chunk["message"]["role"] == "assistant"
        assert CREATED_AT.match(chunk["created_at"])
    assert not content[0]["message"]["content"].startswith(" ")
    assert all(c["message"]["content"].startswith(" ") for c in content[1:])

    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    for key in METRICS:
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["eval_count"] == 12
    assert final["total_duration"] >= final["prompt_eval_duration"]

    status, headers, whole = await post_raw(sim, "/api/chat", chat_body(stream=False))
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert not whole.endswith(b"\n")
    answer = json.loads(whole)
    assert whole == go_json(answer)
    streamed = "".join(c["message"]["content"] for c in content)
    assert answer["message"]["content"] == streamed
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert set(METRICS) <= set(answer)


async def test_stream_null_means_streaming(sim: Sim) -> None:
    _, headers, raw = await post_raw(sim, "/api/chat", chat_body(stream=None))
    assert headers["Content-Type"] == "application/x-ndjson"
    assert parse_ndjson(raw)[-1]["done"] is True


async def test_go_escaping_and_utf8(sim: Sim) -> None:
    body = chat_body("Tell me a long story", options={"sim_tokens": 400, "sim_token_delay_ms": 0})
    _, _, raw = await post_raw(sim, "/api/chat", body)
    for char in (b"<", b">", b"&"):
        assert char not in raw
    assert b"\\u003c" in raw or b"\\u0026" in raw or b"\\u003e" in raw
    raw.decode("utf-8")  # strict: the non-ASCII words must be valid UTF-8
    assert any(byte >= 0x80 for byte in raw), "expected raw non-ASCII UTF-8, not \\u escapes"
    text = "".join(c["message"]["content"] for c in parse_ndjson(raw)[:-1])
    assert any(ch in text for ch in "<>&")


async def test_generate_stream_and_context(sim: Sim) -> None:
    body = {"model": "qwen3:4b", "prompt": "Why is the sky blue?", "system": "Be brief."}
    status, _, raw = await post_raw(sim, "/api/generate", body)
    assert status == 200
    *content, final = parse_ndjson(raw)
    assert all(list(c) == ["model", "created_at", "response", "done"] for c in content)
    assert final["response"] == "" and final["done_reason"] == "stop"
    assert final["context"] and all(isinstance(i, int) for i in final["context"])
    keys = list(final)
    assert keys.index("context") < keys.index("total_duration")

    _, _, whole = await post_raw(sim, "/api/generate", {**body, "stream": False})
    answer = json.loads(whole)
    assert answer["response"] == "".join(c["response"] for c in content)
    assert answer["context"] == final["context"]


# --------------------------------------------------------------------------- determinism


async def test_text_is_deterministic_and_option_sensitive(sim: Sim) -> None:
    base = chat_body(options={"temperature": 0.7, "seed": 1})
    first = await chat_text(sim, base)
    assert first == await chat_text(sim, base)
    # sim_* hooks steer the simulator only and must not change the answer.
    assert first == await chat_text(
        sim, chat_body(options={**base["options"], "sim_token_delay_ms": 0})
    )
    variants = [
        chat_body(options={"temperature": 0.2, "seed": 1}),
        chat_body(options={"temperature": 0.7, "seed": 2}),
        chat_body("Something else", options={"temperature": 0.7, "seed": 1}),
        {**base, "format": "json"},
        {**base, "model": "qwen3:4b"},
    ]
    for variant in variants:
        assert await chat_text(sim, variant) != first, variant


async def test_bare_name_and_full_name_give_same_text(sim: Sim) -> None:
    bare = await chat_text(sim, chat_body())
    full = await chat_text(sim, {**chat_body(), "model": "llama3.2:latest"})
    assert bare == full


# --------------------------------------------------------------------------- models


async def test_model_matching_and_not_found(sim: Sim) -> None:
    status, _, raw = await post_raw(
        sim, "/api/chat", {**chat_body(stream=False), "model": "llama3.2:latest"}
    )
    assert status == 200 and json.loads(raw)["model"] == "llama3.2:latest"
    status, _, raw = await post_raw(sim, "/api/chat", chat_body(stream=False))
    assert status == 200 and json.loads(raw)["model"] == "llama3.2"

    for name in ("qwen3", "mistral", "llama3.2:1b"):
        status, headers, raw = await post_raw(sim, "/api/chat", {**chat_body(), "model": name})
        assert status == 404
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(raw) == {"error": f"model '{name}' not found"}

    status, _, raw = await post_raw(sim, "/api/chat", {**chat_body(), "model": ""})
    assert (status, json.loads(raw)) == (400, {"error": "model is required"})
    status, _, raw = await post_raw(sim, "/api/generate", {"model": "", "prompt": "hi"})
    assert (status, json.loads(raw)) == (404, {"error": "model '' not found"})


async def test_load_unload_and_ps(sim: Sim) -> None:
    async with sim.session.get("/api/ps") as resp:
        assert await resp.json() == {"models": []}

    for messages in (None, []):
        body: dict[str, Any] = {"model": "llama3.2"}
        if messages is not None:
            body["messages"] = messages
        status, headers, raw = await post_raw(sim, "/api/chat", body)
        assert status == 200
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        loaded = json.loads(raw)
        assert loaded["done_reason"] == "load" and loaded["done"] is True
        assert loaded["message"] == {"role": "assistant", "content": ""}
        assert loaded["model"] == "llama3.2"

    status, _, raw = await post_raw(sim, "/api/generate", {"model": "qwen3:4b", "prompt": ""})
    assert json.loads(raw)["done_reason"] == "load" and json.loads(raw)["response"] == ""

    async with sim.session.get("/api/ps") as resp:
        models = (await resp.json())["models"]
    assert {m["name"] for m in models} == {"llama3.2:latest", "qwen3:4b"}
    for entry in models:
        assert len(entry["digest"]) == 64
        datetime.fromisoformat(entry["expires_at"])
        assert entry["size_vram"] == entry["size"] > 0

    for keep_alive in (0, "0"):
        await post_raw(sim, "/api/chat", {"model": "llama3.2", "keep_alive": 0})
        status, _, raw = await post_raw(
            sim, "/api/chat", {"model": "llama3.2", "messages": [], "keep_alive": keep_alive}
        )
        assert status == 200 and json.loads(raw)["done_reason"] == "unload"
    async with sim.session.get("/api/ps") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["qwen3:4b"]

    # A normal generation with keep_alive 0 runs, then unloads the model when it ends.
    await chat_text(sim, {**chat_body(), "model": "qwen3:4b", "keep_alive": 0})
    async with sim.session.get("/api/ps") as resp:
        assert (await resp.json())["models"] == []


async def test_negative_keep_alive_keeps_model_forever(sim: Sim) -> None:
    await post_raw(sim, "/api/chat", {"model": "llama3.2", "keep_alive": -1})
    async with sim.session.get("/api/ps") as resp:
        (entry,) = (await resp.json())["models"]
    assert datetime.fromisoformat(entry["expires_at"]).year > 2200


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("", 'time: invalid duration ""'),
        ("abc", 'time: invalid duration "abc"'),
        (True, "Unsupported type: 'bool'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
        ("5m", None),
        ("1h30m", None),
        ("1.5s", None),
        (30, None),
        (2.5, None),
        (-1, None),
    ],
)
async def test_keep_alive_validation(sim: Sim, keep_alive: Any, error: str | None) -> None:
    status, _, raw = await post_raw(
        sim, "/api/chat", chat_body(stream=False, keep_alive=keep_alive)
    )
    if error is None:
        assert status == 200, raw
    else:
        assert (status, json.loads(raw)) == (400, {"error": error})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b'{"model":', "unexpected EOF"),
        (b"{model}", "invalid character 'm' looking for beginning of object key string"),
        (b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            b'{"model": 3}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (
            b'{"model": "llama3.2", "messages": [{"role": "wizard", "content": "hi"}]}',
            'invalid role "wizard"',
        ),
    ],
)
async def test_bad_requests(sim: Sim, body: bytes, error: str) -> None:
    status, headers, raw = await post_raw(sim, "/api/chat", body)
    assert status == 400
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(raw) == {"error": error}


async def test_role_is_case_insensitive(sim: Sim) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "USER", "content": "hi"}], "stream": False}
    status, _, _ = await post_raw(sim, "/api/chat", body)
    assert status == 200


async def test_option_type_error_is_500(sim: Sim) -> None:
    status, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"temperature": "hot"}))
    assert status == 500
    assert json.loads(raw) == {"error": 'option "temperature" must be of type float32'}


# --------------------------------------------------------------------------- other endpoints


async def test_tags_version_root_and_unknown_path(sim: Sim) -> None:
    async with sim.session.get("/api/tags") as resp:
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        tags = await resp.json()
    assert [m["name"] for m in tags["models"]] == list(MODELS)
    for entry in tags["models"]:
        assert entry["model"] == entry["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
        assert entry["size"] > 0
        datetime.fromisoformat(entry["modified_at"])
        details = entry["details"]
        assert details["format"] == "gguf"
        assert details["families"] == [details["family"]]
        assert set(details) >= {"parent_model", "parameter_size", "quantization_level"}
    assert tags["models"][0]["digest"] != tags["models"][1]["digest"]

    async with sim.session.get("/api/version") as resp:
        assert await resp.read() == b'{"version":"0.33.0"}'
    async with sim.session.head("/api/version") as resp:
        assert resp.status == 200
    async with sim.session.head("/api/tags") as resp:
        assert resp.status == 200

    async with sim.session.get("/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.read() == b"Ollama is running"
    async with sim.session.head("/") as resp:
        assert resp.status == 200
        assert await resp.read() == b""

    async with sim.session.get("/api/nothing") as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert await resp.read() == b"404 page not found"


# --------------------------------------------------------------------------- test hooks


async def test_sim_error_after_mid_stream(sim: Sim) -> None:
    status, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"sim_error_after": 3}))
    assert status == 200
    chunks = parse_ndjson(raw)
    assert len(chunks) == 4
    assert all(c["done"] is False for c in chunks[:3])
    assert chunks[-1] == {"error": "simulated failure after 3 tokens"}

    status, _, raw = await post_raw(
        sim, "/api/chat", chat_body(stream=False, options={"sim_error_after": 3})
    )
    assert (status, json.loads(raw)) == (500, {"error": "simulated failure after 3 tokens"})

    # Nothing was flushed yet, so Ollama would answer with a real status code.
    status, headers, raw = await post_raw(
        sim, "/api/chat", chat_body(options={"sim_error_after": 0})
    )
    assert status == 500
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(raw) == {"error": "simulated failure after 0 tokens"}

    # Failing after the last token replaces the done chunk; past the end there is no failure.
    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"sim_error_after": 12}))
    chunks = parse_ndjson(raw)
    assert len(chunks) == 13 and chunks[-1] == {"error": "simulated failure after 12 tokens"}
    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"sim_error_after": 13}))
    assert parse_ndjson(raw)[-1]["done"] is True
    assert sim.stats.failed == 4


async def test_sim_status(sim: Sim) -> None:
    for status_code in (503, 429, 500):
        status, _, raw = await post_raw(
            sim, "/api/chat", chat_body(options={"sim_status": status_code})
        )
        assert status == status_code
        assert json.loads(raw) == {"error": f"simulated status {status_code}"}
    assert sim.stats.generations == 0


async def test_num_predict_caps_tokens(sim: Sim) -> None:
    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"num_predict": 4}))
    *content, final = parse_ndjson(raw)
    assert len(content) == 4
    assert final["done_reason"] == "length" and final["eval_count"] == 4

    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"num_predict": 50}))
    assert parse_ndjson(raw)[-1]["done_reason"] == "stop"

    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"num_predict": 0}))
    (final,) = parse_ndjson(raw)
    assert final["done_reason"] == "length"
    assert "eval_count" not in final  # zero metrics are omitted, as Go's omitempty does

    _, _, raw = await post_raw(sim, "/api/chat", chat_body(options={"sim_tokens": 30}))
    assert len(parse_ndjson(raw)) == 31


# --------------------------------------------------------------------------- stats


async def test_stats_max_in_progress_and_reset(sim: Sim) -> None:
    async with sim.session.post("/simulator/reset") as resp:
        assert (await resp.json())["requests"] == 0
    body = chat_body(stream=False, options={"sim_first_token_delay_ms": 300})
    results = await asyncio.gather(*(post_raw(sim, "/api/chat", body) for _ in range(3)))
    assert [status for status, _, _ in results] == [200, 200, 200]

    async with sim.session.get("/simulator/stats") as resp:
        stats = await resp.json()
    assert stats["generations"] == 3
    assert stats["completed"] == 3
    assert stats["in_progress"] == 0
    assert stats["max_in_progress"] == 3
    assert stats["cancelled"] == 0
    assert stats["by_path"]["/api/chat"] == 3
    # The reset request and this stats request are counted as well.
    assert stats["requests"] == 4

    async with sim.session.post("/simulator/reset") as resp:
        reset = await resp.json()
    assert reset["generations"] == reset["completed"] == reset["max_in_progress"] == 0


async def test_cancelled_when_client_closes_mid_stream(sim: Sim) -> None:
    body = chat_body(options={"sim_tokens": 10_000, "sim_token_delay_ms": 5})
    async with sim.session.post("/api/chat", json=body) as resp:
        first = json.loads(await resp.content.readline())
        assert first["done"] is False
        assert sim.stats.in_progress == 1
        resp.close()  # drops the connection instead of returning it to the pool
    await wait_for(lambda: sim.stats.cancelled == 1)
    assert sim.stats.in_progress == 0
    assert sim.stats.completed == 0


async def test_cancelled_during_first_token_delay(sim: Sim) -> None:
    body = chat_body(options={"sim_first_token_delay_ms": 5_000})
    task = asyncio.create_task(post_raw(sim, "/api/chat", body))
    await wait_for(lambda: sim.stats.in_progress == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.stats.cancelled == 1, timeout=2.0)
    assert sim.stats.in_progress == 0


async def test_non_streamed_disconnect_is_cancelled(sim: Sim) -> None:
    body = chat_body(stream=False, options={"sim_first_token_delay_ms": 5_000})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post_raw(sim, "/api/chat", body), timeout=0.2)
    await wait_for(lambda: sim.stats.cancelled == 1, timeout=2.0)
    assert sim.stats.in_progress == 0
