"""Property-based: arbitrary JSON and bytes at every endpoint never get a 500, never break a
stream, and never leave a ticket or a queue slot behind.

The gateway and the Ollama simulator run on their own event loop in a thread, so hypothesis
drives them with a plain blocking HTTP client over real sockets.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import simulator
from server.gateway import Gateway
from server.lifecycle import ServerHost
from tests.conftest import Threaded, make_config

ENDPOINTS = ["/api/chat-optimized", "/api/chat-batch", "/api/chat-queue", "/api/cache-stats"]
# Ollama's own API: errors in Ollama's shape, and Ollama's own statuses passed on.
NATIVE = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]
# The OpenAI-compatible API: its error shape, SSE ending with [DONE] or an error event.
OPENAI = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
EXAMPLES = 500  # per test; seven tests make a few thousand cases (~20 s here)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ServerHost, int]]:
    side = Threaded()
    sim_settings = simulator.SimulatorSettings(tokens=3, token_delay_ms=0, first_token_delay_ms=0)
    sim_runner, sim_port = side.run(simulator.start(sim_settings))
    config = make_config(
        ollama__api_url=f"http://127.0.0.1:{sim_port}",
        ollama__warm_up=False,
        queue__max_concurrent=2,
        queue__ticket_ttl_seconds=1,
        batch__batch_timeout_ms=5,
        server__max_body_kb=64,
        server__body_timeout_seconds=2,
    )
    host = ServerHost(Gateway(config), port_override=0, drain_seconds=1)
    side.run(host.start())
    try:
        yield host, host.port or 0
        # Every ticket expires or ends within its TTL (1 s): then nothing may be left.
        assert wait_idle(side, host), leftovers(host)
    finally:
        side.run(host.stop())
        side.run(sim_runner.cleanup())
        side.close()


def wait_idle(side: Threaded, host: ServerHost, timeout: float = 15) -> bool:
    async def idle() -> bool:
        queue = host.gateway.queue.stats()
        return queue["active"] == 0 and queue["waiting"] == 0 and not host.gateway.tickets._tickets

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if side.run(idle()):
            return True
        time.sleep(0.1)
    return False


def leftovers(host: ServerHost) -> str:
    return f"queue {host.gateway.queue.stats()}, tickets {list(host.gateway.tickets._tickets)}"


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def check(status: int, content_type: str, body: bytes, path: str = "") -> None:
    """What every answer must be: no internal error, the API's error shape, whole streams."""
    if path in NATIVE:
        check_native(status, content_type, body)
        return
    if path in OPENAI:
        check_openai(status, content_type, body)
        return
    assert status != 500, body[:300]
    if content_type.startswith("text/event-stream"):
        assert status == 200
        text = body.decode()
        assert "HTTP/1.1" not in text  # no second response written into the stream
        frames = [json.loads(line[6:]) for line in text.split("\n") if line]
        assert frames and frames[-1]["done"] is True
        assert frames[-1].get("code") != "internal_error"
        return
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    data = json.loads(body)
    if status >= 400:
        assert set(data) == {"error", "code"} and data["code"] != "internal_error"


def check_native(status: int, content_type: str, body: bytes) -> None:
    """Ollama's shapes. Ollama itself answers some bad options with 500, and that is passed on
    as Ollama said it; the gateway's own internal error must never show."""
    if content_type.startswith("application/x-ndjson"):
        assert status == 200
        lines = body.decode().split("\n")
        assert lines[-1] == ""  # whole lines only
        chunks = [json.loads(line) for line in lines[:-1]]
        assert chunks and (chunks[-1].get("done") is True or set(chunks[-1]) == {"error"})
        return
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    data = json.loads(body)
    if status >= 400:
        assert set(data) == {"error"}, data
        assert "internal error" not in data["error"]


def check_openai(status: int, content_type: str, body: bytes) -> None:
    if content_type.startswith("text/event-stream"):
        assert status == 200
        events = [e for e in body.decode().split("\n\n") if e.startswith("data: ")]
        last = events[-1][6:]
        assert last == "[DONE]" or "error" in json.loads(last)
        return
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    data = json.loads(body)
    if status >= 400:
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
        assert "internal error" not in data["error"]["message"]


# -- strategies: JSON with the text browsers really send, surrogate halves included ------------

texts = st.text(max_size=12) | st.sampled_from(["\ud83d", "a\udc00b", "😀", "\n", "\x00", ""])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "wizard"]) | texts
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": texts | scalars}) | values, max_size=3
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages},
    optional={
        "model": texts | scalars,
        "stream": st.booleans() | scalars,
        "options": st.dictionaries(texts, values, max_size=3) | scalars,
        "format": st.just("json") | values,
        "request_id": st.text(alphabet="ab\n", max_size=3) | scalars,
        "use_cache": st.booleans() | scalars,
        "system_prompt": texts | scalars,
        "keep_alive": texts | scalars,
    },
)
bodies = chat_bodies | values | st.fixed_dictionaries({"requests": st.lists(chat_bodies | values)})
native_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["llama3.2", "llama3.2:latest", "nope"]) | texts | scalars,
        "messages": messages,
        "prompt": texts | scalars,
        "input": texts | st.lists(texts, max_size=3) | scalars,
        "stream": st.booleans() | scalars,
        "think": st.booleans() | st.sampled_from(["low", "high", "x"]) | scalars,
        "tools": st.lists(values, max_size=2) | scalars,
        "options": st.dictionaries(texts, values, max_size=3) | scalars,
        "format": st.just("json") | values,
        "keep_alive": st.sampled_from([0, "0", "5m", -1]) | scalars,
        "context": st.lists(st.integers(0, 100), max_size=3) | scalars,
        "images": st.lists(texts, max_size=2) | scalars,
    },
)


def as_json(value: Any) -> bytes:
    # ensure_ascii: a lone surrogate goes as a \\ud83d escape, as JSON.stringify sends it.
    return json.dumps(value, ensure_ascii=True).encode()


@SETTINGS
@given(path=st.sampled_from(ENDPOINTS), body=bodies)
def test_any_json_body_at_any_endpoint(gateway, path, body):
    _, port = gateway
    check(*request(port, "POST", path, as_json(body)))


@SETTINGS
@given(body=chat_bodies)
def test_chat_bodies_streamed_and_not(gateway, body):
    _, port = gateway
    check(*request(port, "POST", "/api/chat-optimized", as_json(body)))


@SETTINGS
@given(path=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=200))
def test_any_bytes_at_any_endpoint(gateway, path, raw):
    _, port = gateway
    check(*request(port, "POST", path, raw))


@SETTINGS
@given(
    method=st.sampled_from(["GET", "DELETE"]),
    query=st.dictionaries(st.sampled_from(["requestId", "request_id", "x"]), texts, max_size=2),
)
def test_any_ticket_query(gateway, method, query):
    _, port = gateway
    path = "/api/chat-queue"
    encoded = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})
    check(*request(port, method, f"{path}?{encoded}" if encoded else path))


@SETTINGS
@given(path=st.sampled_from(NATIVE), body=native_bodies | values, raw=st.booleans())
def test_ollamas_own_api(gateway, path, body, raw):
    _, port = gateway
    data = as_json(body) if not raw else json.dumps(body, ensure_ascii=True)[:40].encode()
    check(*request(port, "POST", path, data), path=path)


openai_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["llama3.2", "nope"]) | texts | scalars,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": roles, "content": texts | st.lists(values, max_size=2) | scalars},
                optional={
                    "tool_calls": st.lists(values, max_size=2) | values,
                    "tool_call_id": texts | scalars,
                    "reasoning": texts | scalars,
                },
            )
            | values,
            max_size=3,
        ),
        "prompt": texts | st.lists(texts, max_size=2) | scalars,
        "input": texts | st.lists(texts, max_size=3) | scalars,
        "stream": st.booleans() | scalars,
        "stream_options": st.just({"include_usage": True}) | values,
        "n": st.integers(0, 3) | scalars,
        "max_tokens": st.integers(-1, 50) | scalars,
        "temperature": st.floats(0, 2) | scalars,
        "stop": texts | st.lists(texts, max_size=2) | scalars,
        "tools": st.lists(values, max_size=2) | scalars,
        "tool_choice": st.sampled_from(["auto", "none", "required", "x"]) | values,
        "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]) | values,
        "reasoning_effort": st.sampled_from(["low", "none", "x"]) | scalars,
        "encoding_format": st.sampled_from(["float", "base64", "x"]) | scalars,
    },
)


@SETTINGS
@given(path=st.sampled_from(OPENAI), body=openai_bodies | values)
def test_the_openai_api(gateway, path, body):
    _, port = gateway
    check(*request(port, "POST", path, as_json(body)), path=path)
