"""No request can wedge the gateway: each bad input found by probing it answers a clear 4xx, and
no path between opening a ticket and answering keeps a ticket or a queue slot."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from server.logs import LogBuffer
from tests.conftest import Server, parse_sse, user

CHAT = "/api/chat-optimized"
QUEUE = "/api/chat-queue"
BATCH = "/api/chat-batch"
HALF_EMOJI = "\ud83d"  # what JSON.stringify gives for an emoji cut in half


def raw_json(body: object) -> bytes:
    """As a browser's JSON.stringify sends it: a lone surrogate as a \\ud83d escape."""
    return json.dumps(body, ensure_ascii=True).encode()


async def post_raw(http, url: str, data: bytes, **headers: str):
    async with http.post(
        url, data=data, headers={"Content-Type": "application/json", **headers}
    ) as r:
        text = await r.text()
        return r.status, r.headers, text


async def idle(server: Server) -> bool:
    """Nothing in line and nothing running: every slot given back."""
    stats = server.gateway.queue.stats()
    return stats["active"] == 0 and stats["waiting"] == 0


async def answered(server: Server, http) -> None:
    """A normal request still gets its answer at once (the queue is not wedged)."""
    async with asyncio.timeout(5):
        async with http.post(
            server.url + CHAT, json={"messages": user("still there?"), "stream": False}
        ) as r:
            assert r.status == 200, await r.text()


SURROGATE_BODIES = [
    ({"messages": user(f"hi {HALF_EMOJI}")}, "messages[0].content"),
    ({"messages": [{"role": f"user{HALF_EMOJI}", "content": "hi"}]}, "messages[0].role"),
    ({"messages": user(), "model": f"llama{HALF_EMOJI}"}, "model"),
    ({"messages": user(), "options": {"stop": ["a", HALF_EMOJI]}}, "options.stop[1]"),
    ({"messages": user(), "system_prompt": HALF_EMOJI}, "system_prompt"),
    ({"messages": user(), "format": {"type": HALF_EMOJI}}, "format.type"),
]


@pytest.mark.parametrize(("body", "field"), SURROGATE_BODIES)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_lone_surrogate_is_400_naming_the_field(server: Server, http, body, field, stream):
    status, headers, text = await post_raw(
        http, server.url + CHAT, raw_json({**body, "stream": stream})
    )
    assert status == 400, text
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(text)
    assert data["error"].startswith(f"{field}: contains a lone UTF-16 surrogate")
    assert data["code"] == f"invalid_{field.split('[')[0].split('.')[0]}"
    assert await idle(server)
    await answered(server, http)


async def test_a_bad_claim_of_a_ticket_leaves_it_claimable(start_server, http) -> None:
    server = await start_server(queue__max_concurrent=1)
    async with http.post(server.url + QUEUE, json={"messages": user(), "request_id": "t-1"}) as r:
        assert r.status == 200
    bad = {"messages": user(HALF_EMOJI), "request_id": "t-1", "stream": False}
    status, _, text = await post_raw(http, server.url + CHAT, raw_json(bad))
    assert status == 400 and "messages[0].content" in text
    # Refused before the claim: the ticket keeps its place, and a claim that reads right works.
    async with http.get(server.url + QUEUE, params={"requestId": "t-1"}) as r:
        assert (await r.json())["status"] in ("queued", "processing")  # still its own
    good = {"messages": user(), "request_id": "t-1", "stream": False}
    async with http.post(server.url + CHAT, json=good) as r:
        assert r.status == 200
    assert await idle(server)


async def test_a_failure_after_a_claim_gives_the_slot_back(start_server, http, monkeypatch):
    """Whatever fails between opening a ticket and answering (here a fault injected into the
    cache key), the ticket ends and its place in line goes to the next request."""
    server = await start_server(queue__max_concurrent=1)
    async with http.post(server.url + QUEUE, json={"messages": user(), "request_id": "t-2"}) as r:
        assert r.status == 200
    real = server.gateway.cache_key
    calls = iter([RuntimeError("injected fault")])

    def failing_once(req):
        for exc in calls:
            raise exc
        return real(req)

    monkeypatch.setattr(server.gateway, "cache_key", failing_once)
    async with http.post(
        server.url + CHAT, json={"messages": user(), "request_id": "t-2", "stream": False}
    ) as r:
        assert r.status == 500
        assert (await r.json())["code"] == "internal_error"
    assert await idle(server)
    async with http.get(server.url + QUEUE, params={"requestId": "t-2"}) as r:
        assert (await r.json())["status"] == "failed"
    await answered(server, http)


async def test_a_surrogate_in_request_id_on_a_stream_is_one_400_not_a_broken_stream(
    server: Server, http
) -> None:
    body = {"messages": user(), "requestId": f"abc{HALF_EMOJI}", "stream": True}
    status, headers, text = await post_raw(http, server.url + CHAT, raw_json(body))
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert "HTTP/1.1" not in text and json.loads(text)["code"] == "invalid_requestId"
    assert await idle(server)


async def test_a_surrogate_in_one_batch_item_fails_that_item_only(server: Server, http) -> None:
    body = {
        "requests": [
            {"messages": user("first")},
            {"messages": user(f"second {HALF_EMOJI}")},
            {"messages": user("third")},
        ]
    }
    status, _, text = await post_raw(http, server.url + BATCH, raw_json(body))
    assert status == 200, text
    first, second, third = json.loads(text)["results"]
    assert first["content"] and third["content"]
    assert second["content"] is None
    assert second["error"].startswith("requests[1].messages[0].content: contains a lone UTF-16")
    assert await idle(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"messages": [{"role": "user", "content": "hi"}], "options": '
        + b'{"a": ' * 1000
        + b"1"
        + b"}" * 1001,
        b'{"messages": [{"role": "user", "content": "hi"}], "options": {"temperature": NaN}}',
        b'{"messages": [{"role": "user", "content": "hi"}], "options": {"seed": Infinity}}',
        b'{"messages": [{"role": "user", "content": "hi"}], "options": {"seed": -Infinity}}',
    ],
    ids=["100k-brackets", "1000-levels-in-options", "NaN", "Infinity", "-Infinity"],
)
@pytest.mark.parametrize("path", [CHAT, QUEUE, BATCH, "/api/cache-stats"])
async def test_json_that_is_too_deep_or_not_json_is_400_invalid_json(
    server: Server, http, raw, path
) -> None:
    status, _, text = await post_raw(http, server.url + path, raw)
    assert status == 400, text
    assert json.loads(text)["code"] == "invalid_json"
    assert await idle(server)


async def test_ollamas_503_reaches_the_client_as_503(server: Server, http) -> None:
    body = {"messages": user("busy?"), "stream": False, "options": {"sim_status": 503}}
    async with http.post(server.url + CHAT, json=body) as r:
        assert r.status == 503
        assert r.headers.get("Retry-After")
        data = await r.json()
    assert data["code"] == "upstream_busy"
    assert await idle(server)


async def test_an_error_quotes_a_huge_field_once_and_short(server: Server, http) -> None:
    huge = "x" * 100_000
    async with http.post(
        server.url + CHAT, json={"messages": [{"role": huge, "content": "hi"}]}
    ) as r:
        assert r.status == 400
        text = await r.text()
    assert len(text) < 500  # the value quoted once, cut short
    assert text.count("x") < 80


async def test_client_text_cannot_forge_a_log_line(server: Server, http) -> None:
    logs = LogBuffer().attach()
    logging.getLogger("chatbot").setLevel(logging.INFO)
    try:
        forged = "ok\n12:00:00 INFO    chatbot.http: GET /admin 200"
        body = {"messages": user(), "request_id": forged, "stream": False}
        async with http.post(server.url + CHAT, json=body) as r:
            assert r.status == 200
        lines = [line for line in logs.lines if "ok\\n12:00:00" in line]
    finally:
        logs.detach()
    assert lines, "the request's log line names its id, escaped"
    assert all("\n" not in line for line in logs.lines)


async def test_generated_request_ids_cannot_be_guessed(server: Server, http) -> None:
    ids = []
    for i in range(40):
        async with http.post(
            server.url + CHAT, json={"messages": user(f"q{i}"), "stream": False}
        ) as r:
            ids.append((await r.json())["request_id"])
    assert len(set(ids)) == len(ids)
    # No shared prefix and counter: each id's random part differs from the next one's early on.
    assert len({rid[:8] for rid in ids}) == len(ids)
    assert all(len(rid) >= 18 for rid in ids)  # ≥ 96 random bits in base64


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(start_server) -> None:
    server = await start_server(server__max_body_kb=64)
    port = server.host.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/chat-optimized HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(3):  # no body sent: the answer must not wait for one
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413")


async def test_expect_100_continue_over_the_limit_gets_413_not_continue(start_server) -> None:
    server = await start_server(server__max_body_kb=64)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.host.port)
    try:
        writer.write(
            b"POST /api/chat-optimized HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.read(4096)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"body_too_large" in rest


async def test_expect_100_continue_within_the_limit_is_served(server: Server, http) -> None:
    body = json.dumps({"messages": user("continue?"), "stream": False}).encode()
    async with http.post(
        server.url + CHAT,
        data=body,
        headers={"Content-Type": "application/json"},
        expect100=True,
    ) as r:
        assert r.status == 200


async def test_a_body_shorter_than_its_content_length_gets_408(start_server) -> None:
    server = await start_server(server__body_timeout_seconds=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.host.port)
    try:
        writer.write(
            b"POST /api/chat-optimized HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"messages": ['
        )
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.read(4096)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"body_timeout" in rest and b"14 bytes of the 1000 announced" in rest
    assert await idle(server)


async def test_a_stream_ends_cleanly_when_the_request_is_fine(server: Server, http) -> None:
    # The other side of the surrogate checks: real emoji (a well-formed pair) are welcome.
    async with http.post(
        server.url + CHAT, json={"messages": user("smile 😀"), "stream": True}
    ) as r:
        assert r.status == 200
        frames = parse_sse(await r.text())
    assert frames[-1]["done"] is True and "error" not in frames[-1]
