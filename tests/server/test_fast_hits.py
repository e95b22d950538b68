"""Whole-answer hits for a body the gateway has seen before (server/fast_hits.py), as a client
sees them: the same answer as the whole way, a fresh id each time, every count and log line,
and nothing the memo may not skip (auth scope, the cache's TTL and flushes, a new
configuration, the rate limit, a client's own request id)."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from server import auth
from server.chat_request import parse_chat_request
from tests.conftest import Server, Sim, user, wait_for

CHAT = "/api/chat-optimized"
STATS = "/api/cache-stats"
# (path, body, what varies per request besides the request id) per protocol.
KINDS = {
    "chat-optimized": (CHAT, {"messages": user("seen before?"), "stream": False}),
    "native": (
        "/api/chat",
        {"model": "llama3.2", "messages": user("seen before?"), "stream": False},
    ),
    "generate": ("/api/generate", {"model": "llama3.2", "prompt": "seen before?", "stream": False}),
    "openai": ("/v1/chat/completions", {"model": "llama3.2", "messages": user("seen before?")}),
    "openai-text": ("/v1/completions", {"model": "llama3.2", "prompt": "seen before?"}),
}
# Fields that are this request's own, not the answer's.
OWN = {"request_id", "id", "created", "created_at", "total_duration", "eval_duration"}


async def generations(sim: Sim) -> int:
    return int((await sim.stats())["generations"])


async def post(
    http: aiohttp.ClientSession,
    server: Server,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    # The same bytes every time, as a client repeating itself sends them.
    data = json.dumps(body).encode()
    async with http.post(
        server.url + path,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as r:
        return r.status, CIMultiDict(r.headers), await r.json()


async def stats(http: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    async with http.get(server.url + STATS) as r:
        return dict(await r.json())


def answer_of(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in OWN}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_repeated_body_gets_the_same_answer_with_its_own_id(server, sim, http, kind):
    path, body = KINDS[kind]
    _, first_headers, _ = await post(http, server, path, body)  # the miss
    assert first_headers["X-Cache"] == "MISS"
    answers = [await post(http, server, path, body) for _ in range(4)]  # learned, then fast
    assert await generations(sim) == 1
    assert all(status == 200 and h["X-Cache"] == "HIT" for status, h, _ in answers)
    second = answers[0][2]  # the whole way: the body was not known yet
    for _, headers, data in answers[1:]:
        assert answer_of(data) == answer_of(second)
        assert list(data) == list(second)  # the same fields in the same order
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    ids = [h.get("X-Request-Id") or d["request_id"] for _, h, d in answers]
    assert len(set(ids)) == len(ids)  # unique per request
    for field in ("request_id", "id"):
        if field in second:
            assert len({d[field] for _, _, d in answers}) == len(answers)
    if kind == "native":
        assert all(d["total_duration"] > 0 and d["created_at"].endswith("Z") for *_, d in answers)


async def test_fast_hits_are_counted_and_logged_as_every_hit(server, sim, http, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    path, body = KINDS["native"]
    before = await stats(http, server)
    for _ in range(5):
        await post(http, server, path, body)
    after = await stats(http, server)
    assert after["response_cache"]["hits"] - before["response_cache"]["hits"] == 4
    assert after["endpoints"]["chat"] == {"requests": 5, "hits": 4}
    assert after["users"]["anonymous"]["hits"] == 4
    lines = [r.getMessage() for r in caplog.records if "POST /api/chat 200" in r.getMessage()]
    assert len(lines) == 5 and sum("cache=hit" in line for line in lines) == 4
    assert len({line.split(" id=")[1].split()[0] for line in lines}) == 5
    async with http.get(server.url + "/metrics") as r:
        text = await r.text()
    lines = text.splitlines()
    assert "chatbot_cache_hits_total 4.0" in lines
    assert (
        'chatbot_request_duration_seconds_count{cache="hit",endpoint="chat",'
        'model="llama3.2:latest"} 4.0'
    ) in lines
    assert (
        'chatbot_prompt_tokens_total{cache="hit",endpoint="chat",model="llama3.2:latest"} 24.0'
        in lines
    )


async def test_a_flushed_or_expired_entry_is_not_served_from_the_memo(start_server, sim, http):
    server = await start_server(cache__ttl_seconds=1)
    path, body = KINDS["chat-optimized"]
    for _ in range(3):
        await post(http, server, path, body)
    server.gateway.flush_cache()
    assert (await post(http, server, path, body))[1]["X-Cache"] == "MISS"
    assert await generations(sim) == 2
    assert (await post(http, server, path, body))[1]["X-Cache"] == "HIT"
    assert (await post(http, server, path, body))[1]["X-Cache"] == "HIT"

    gateway = server.gateway
    key = gateway.cache_key(parse_chat_request(body, gateway.config))

    async def expired() -> bool:
        return gateway.cache.peek(key) is None

    assert await wait_for(expired, 10.0)  # the TTL ran out (polled, not slept)
    _, headers, data = await post(http, server, path, body)
    assert headers["X-Cache"] == "MISS" and data["cached"] is False
    assert await generations(sim) == 3


async def test_a_new_configuration_is_not_answered_with_the_old_key(server, sim, http):
    path, body = KINDS["chat-optimized"]
    for _ in range(3):
        await post(http, server, path, body)
    config = server.gateway.config
    server.gateway.apply_config(
        dataclasses.replace(
            config, ollama=dataclasses.replace(config.ollama, system_prompt="Answer in French.")
        )
    )
    # The system prompt is part of the question: the same body is a new question now.
    assert (await post(http, server, path, body))[1]["X-Cache"] == "MISS"
    assert await generations(sim) == 2


async def test_per_key_scope_and_rate_limits_hold_for_repeated_bodies(
    start_server, sim, http, caplog
):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    keys = {name: auth.new_key(name, "user") for name in ("ada", "bob")}
    server = await start_server(
        auth__keys=tuple(entry for _, entry in keys.values()),
        cache__scope="per_key",
        auth__requests_per_minute_per_user=4,
    )

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[name][0]}"}

    path, body = KINDS["openai"]
    assert (await post(http, server, path, body))[0] == 401  # no key: no answer, memo or not
    for _ in range(3):
        assert (await post(http, server, path, body, bearer("ada")))[0] == 200
    _, headers, _ = await post(http, server, path, body, bearer("bob"))
    assert headers["X-Cache"] == "MISS"  # bob never sees ada's answer
    assert await generations(sim) == 2
    status, headers, data = await post(http, server, path, body, bearer("ada"))
    assert status == 200 and headers["X-Cache"] == "HIT"
    status, headers, data = await post(http, server, path, body, bearer("ada"))  # the fifth
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert "requests_per_minute_per_user" in data["error"]["message"]
    refused = caplog.records[-1].getMessage()  # the access line names the refused request
    assert " 429 id=r-" in refused and "error=too_many_requests" in refused, refused


async def test_a_client_s_own_request_id_is_kept_on_every_repeat(server, sim, http):
    body = {**KINDS["chat-optimized"][1], "request_id": "mine-1"}
    for _ in range(3):
        _, _, data = await post(http, server, CHAT, body)
        assert data["request_id"] == "mine-1"
    path, native = KINDS["native"]
    for _ in range(3):
        _, headers, _ = await post(http, server, path, native, {"X-Request-Id": "mine-2"})
        assert headers["X-Request-Id"] == "mine-2"


async def test_a_bad_body_gets_its_error_every_time(server, http):
    path, body = KINDS["chat-optimized"]
    bad = {**body, "messages": [{"role": "robot", "content": "hi"}]}
    for _ in range(3):
        status, _, data = await post(http, server, path, bad)
        assert status == 400 and data["code"] == "invalid_messages"


async def test_a_long_answer_is_the_same_on_every_repeat(server, sim, http):
    # Past fast_hits.MAX_KEPT, the answer is encoded per request rather than kept.
    body = {
        "messages": user("tell me everything"),
        "stream": False,
        "options": {"sim_tokens": 4000},
    }
    _, _, first = await post(http, server, CHAT, body)
    assert len(first["content"]) > 16 * 1024
    answers = [await post(http, server, CHAT, body) for _ in range(3)]
    assert all(h["X-Cache"] == "HIT" and d["content"] == first["content"] for _, h, d in answers)
    assert len({d["request_id"] for _, _, d in answers}) == 3
    assert await generations(sim) == 1
