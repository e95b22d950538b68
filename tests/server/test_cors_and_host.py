"""CORS for the frontend's origins, refusal of others, and the DNS-rebinding Host guard."""

from __future__ import annotations

import pytest

from tests.conftest import Server, node_frontend, user

CHAT = "/api/chat-optimized"
FRONTEND = "http://localhost:3000"


async def test_allowed_origin_gets_cors_headers_on_json_and_streams(server: Server, http):
    async with http.get(server.url + "/health", headers={"Origin": FRONTEND}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == FRONTEND
        assert r.headers["Vary"] == "Origin"
    async with http.post(
        server.url + CHAT, json={"messages": user()}, headers={"Origin": FRONTEND}
    ) as r:
        assert r.headers["Access-Control-Allow-Origin"] == FRONTEND
        await r.read()
    # Errors are readable by the page too.
    async with http.post(server.url + CHAT, json={}, headers={"Origin": FRONTEND}) as r:
        assert r.status == 400
        assert r.headers["Access-Control-Allow-Origin"] == FRONTEND


async def test_preflight_answered(server: Server, http):
    headers = {
        "Origin": "http://localhost:3001",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with http.options(server.url + CHAT, headers=headers) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3001"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Headers"] == "content-type"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"


async def test_refused_origin(server: Server, http):
    evil = "http://evil.example"
    pre = {"Origin": evil, "Access-Control-Request-Method": "POST"}
    async with http.options(server.url + CHAT, headers=pre) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.post(
        server.url + CHAT, json={"messages": user()}, headers={"Origin": evil}
    ) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
        data = await r.json()
    assert data == {
        "error": "origin 'http://evil.example' is not allowed; add it to [cors].allowed_origins",
        "code": "cors_origin_refused",
    }
    # The refused page started no generation.
    assert server.gateway.ollama.counters.requests == 0


async def test_browser_style_fetch_with_origin(server: Server):
    result = await node_frontend(server.url + CHAT, {"messages": user()}, origin=FRONTEND)
    assert result["status"] == 200 and result["done"] and result["content"]


async def test_wildcard_never_allows_credentials(start_server, http):
    server = await start_server(cors__allowed_origins=["*"])
    pre = {"Origin": "http://anything.test", "Access-Control-Request-Method": "POST"}
    async with http.options(server.url + CHAT, headers=pre) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers


@pytest.mark.parametrize(
    "host", ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "app.localhost", "127.0.0.2"]
)
async def test_loopback_host_headers_accepted(server: Server, http, host):
    async with http.get(server.url + "/health", headers={"Host": host}) as r:
        assert r.status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "192.168.1.5:8080"])
async def test_other_host_headers_refused_on_loopback(server: Server, http, host):
    async with http.get(server.url + "/health", headers={"Host": host}) as r:
        assert r.status == 403
        data = await r.json()
    assert data["code"] == "forbidden_host"
    assert repr(host) in data["error"]
