"""Every bad input gets its documented status and a clear error, and the server keeps serving."""

from __future__ import annotations

import pytest

from tests.conftest import Server, free_port, parse_sse, user

CHAT = "/api/chat-optimized"


async def still_serving(server: Server, http) -> None:
    async with http.post(server.url + CHAT, json={"messages": user(), "stream": False}) as r:
        assert r.status == 200
        assert (await r.json())["content"]


async def post(http, url, **kw):
    async with http.post(url, **kw) as r:
        return r.status, r.headers, await r.json()


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({}, "messages", "is required"),
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": "hi"}, "messages", "must be a list"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "'wizard'"),
        (
            {"messages": [{"role": "user", "content": 42}]},
            "messages[0].content",
            "must be a string",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "must be a string"),
        ({"messages": ["hi"]}, "messages[0]", "must be an object"),
        ({"messages": user(), "model": ""}, "model", "non-empty string"),
        ({"messages": user(), "stream": "yes"}, "stream", "true or false"),
        ({"messages": user(), "use_cache": 1}, "use_cache", "true or false"),
        ({"messages": user(), "options": [1]}, "options", "must be an object"),
        ({"messages": user(), "system_prompt": 5}, "system_prompt", "must be a string"),
        ({"messages": user(), "request_id": ""}, "request_id", "non-empty string"),
        ({"messages": user(), "format": "yaml"}, "format", "json"),
    ],
)
async def test_invalid_fields_are_named(server: Server, http, body, field, fragment):
    status, _, data = await post(http, server.url + CHAT, json=body)
    assert status == 400
    assert data["error"].startswith(f"{field}: ")
    assert fragment in data["error"]
    assert data["code"].startswith("invalid_")
    await still_serving(server, http)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2", '{"messages": "\u00e9'.encode()])
async def test_invalid_json_is_400(server: Server, http, raw):
    status, _, data = await post(
        http, server.url + CHAT, data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert data["code"] == "invalid_json"
    assert "JSON" in data["error"]
    await still_serving(server, http)


async def test_body_that_is_not_an_object_is_400(server: Server, http):
    status, _, data = await post(http, server.url + CHAT, json=[1, 2])
    assert status == 400 and data["error"] == "request body must be a JSON object"


async def test_oversized_body_is_413(start_server, http):
    server = await start_server(server__max_body_kb=1)
    big = {"messages": user("x" * 2048)}
    status, _, data = await post(http, server.url + CHAT, json=big)
    assert status == 413
    assert data == {
        "error": "request body is larger than 1 KiB ([server].max_body_kb)",
        "code": "body_too_large",
    }
    await still_serving(server, http)


async def test_wrong_method_is_405_json(server: Server, http):
    async with http.get(server.url + CHAT) as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
        data = await r.json()
    assert data["code"] == "method_not_allowed"
    assert "GET is not allowed on /api/chat-optimized" in data["error"]


async def test_unknown_path_is_404_json(server: Server, http):
    async with http.get(server.url + "/api/nope") as r:
        assert r.status == 404
        assert await r.json() == {"error": "no such endpoint: GET /api/nope", "code": "not_found"}


async def test_unknown_model(server: Server, http):
    body = {"messages": user(), "model": "mystery:7b"}
    status, _, data = await post(http, server.url + CHAT, json={**body, "stream": False})
    assert status == 404
    assert data["code"] == "model_not_found"
    assert "mystery:7b" in data["error"]

    async with http.post(server.url + CHAT, json={**body, "stream": True}) as r:
        frames = parse_sse(await r.text())
    assert len(frames) == 1
    assert frames[0]["done"] is True and frames[0]["code"] == "model_not_found"
    assert "mystery:7b" in frames[0]["error"]
    await still_serving(server, http)


async def test_ollama_down(start_server, http):
    dead = f"http://127.0.0.1:{free_port()}"
    server = await start_server(ollama__api_url=dead)
    status, _, data = await post(
        http, server.url + CHAT, json={"messages": user(), "stream": False}
    )
    assert status == 502
    assert data["code"] == "ollama_unreachable"
    assert f"Ollama not reachable at {dead}" in data["error"]

    async with http.post(server.url + CHAT, json={"messages": user()}) as r:
        frames = parse_sse(await r.text())
    assert frames[-1]["done"] is True
    assert f"Ollama not reachable at {dead}" in frames[-1]["error"]

    async with http.get(server.url + "/health") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "degraded"


async def test_upstream_timeout(start_sim, start_server, http):
    sim = await start_sim(first_token_delay_ms=3000)
    server = await start_server(ollama__api_url=sim.url, ollama__timeout_seconds=1)
    status, _, data = await post(
        http, server.url + CHAT, json={"messages": user(), "stream": False}
    )
    assert status == 504
    assert data["code"] == "upstream_timeout"
    assert "sent nothing for 1 s" in data["error"]

    async with http.post(server.url + CHAT, json={"messages": user()}) as r:
        frames = parse_sse(await r.text())
    assert frames[-1]["code"] == "upstream_timeout" and frames[-1]["done"] is True


async def test_error_mid_stream_ends_with_error_frame(server: Server, http):
    body = {"messages": user(), "options": {"sim_error_after": 3}}
    async with http.post(server.url + CHAT, json=body) as r:
        assert r.status == 200
        frames = parse_sse(await r.text())
    assert [f["done"] for f in frames] == [False, False, False, True]
    assert frames[-1]["code"] == "upstream_error"
    assert "simulated failure after 3 tokens" in frames[-1]["error"]

    status, _, data = await post(http, server.url + CHAT, json={**body, "stream": False})
    assert status == 502 and "simulated failure" in data["error"]
    await still_serving(server, http)


async def test_ollama_http_error_is_relayed_as_json(server: Server, http):
    body = {"messages": user(), "options": {"sim_status": 500}, "stream": False}
    status, _, data = await post(http, server.url + CHAT, json=body)
    assert status == 502
    assert data["error"] == "Ollama answered HTTP 500: simulated status 500"
