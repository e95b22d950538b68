"""Hits answered on the wire (server/fast_wire.py), spoken byte by byte as clients send them:
the same status, headers and body as the usual way; every request the wire path may not
answer exactly so (pipelined, split, CORS, a client's own id, Cache-Control, a foreign Host,
malformed, a missing key, a rate-limited user, ...) still gets the usual way's answer."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ollama
import openai
import pytest

from server import auth
from tests.conftest import Server, Sim, user

# (path, body) per endpoint with a hit recipe.
KINDS = {
    "chat-optimized": ("/api/chat-optimized", {"messages": user("wire?"), "stream": False}),
    "native": ("/api/chat", {"model": "llama3.2", "messages": user("wire?"), "stream": False}),
    "generate": ("/api/generate", {"model": "llama3.2", "prompt": "wire?", "stream": False}),
    "openai": ("/v1/chat/completions", {"model": "llama3.2", "messages": user("wire?")}),
    "openai-text": ("/v1/completions", {"model": "llama3.2", "prompt": "wire?"}),
}
# What is this request's own, not the answer's: fields, and headers.
OWN = {"request_id", "id", "created", "created_at", "total_duration", "eval_duration"}
OWN_HEADERS = {"date", "x-request-id", "content-length"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    names: list[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    path: str,
    body: Any,
    headers: list[tuple[str, str]] | None = None,
    *,
    version: str = "HTTP/1.1",
    host: str = "127.0.0.1",
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    given = {name.lower() for name, _ in headers or []}
    lines = [f"POST {path} {version}"]
    if "host" not in given:
        lines.append(f"Host: {host}")
    lines.append("Content-Type: application/json")
    if "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(data)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Conn:
    """One keep-alive connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Reply:
        status_line = await asyncio.wait_for(self.reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1."), status_line
        headers: dict[str, str] = {}
        names = []
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
            names.append(name)
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.reader.read()
        return Reply(int(status_line.split()[1]), headers, names, body)

    async def ask(self, data: bytes) -> Reply:
        await self.send(data)
        return await self.reply()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Server], Any]]:
    conns: list[Conn] = []

    async def open_conn(server: Server) -> Conn:
        url = urlsplit(server.url)
        conn = Conn(*await asyncio.open_connection(url.hostname, url.port))
        conns.append(conn)
        return conn

    yield open_conn
    for conn in conns:
        conn.writer.close()


def answered(server: Server) -> int:
    wire = server.host.wire_hits
    assert wire is not None
    return wire.answered


async def generations(sim: Sim) -> int:
    return int((await sim.stats())["generations"])


async def learned(conn: Conn, path: str, body: Any, headers: Any = None) -> Reply:
    """The miss, then the first hit (the usual way, which teaches the memo the body)."""
    assert (await conn.ask(request(path, body, headers))).headers["x-cache"] == "MISS"
    hit = await conn.ask(request(path, body, headers))
    assert hit.status == 200 and hit.headers["x-cache"] == "HIT"
    return hit


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_wire_hit_is_the_usual_way_s_answer(server, sim, connect, kind):
    path, body = KINDS[kind]
    conn = await connect(server)
    usual = await learned(conn, path, body)
    before = answered(server)
    wire = [await conn.ask(request(path, body)) for _ in range(3)]
    assert answered(server) == before + 3
    assert await generations(sim) == 1
    for reply in wire:
        assert reply.status == 200
        assert sorted(reply.headers) == sorted(usual.headers)
        assert {k: v for k, v in reply.headers.items() if k not in OWN_HEADERS} == {
            k: v for k, v in usual.headers.items() if k not in OWN_HEADERS
        }
        assert int(reply.headers["content-length"]) == len(reply.body)
        data, first = reply.json(), usual.json()
        assert list(data) == list(first)  # the same fields in the same order
        assert {k: v for k, v in data.items() if k not in OWN} == {
            k: v for k, v in first.items() if k not in OWN
        }
    ids = [r.headers.get("x-request-id") or r.json()["request_id"] for r in [usual, *wire]]
    assert len(set(ids)) == 4  # a fresh id each time
    for field in OWN & set(usual.json()) - {"total_duration", "eval_duration"}:
        assert len({r.json()[field] for r in [usual, *wire]}) == 4 or field == "created"


def _pipelined(path: str, body: Any) -> list[bytes]:
    return [request(path, body) + request(path, body)]


def _split(path: str, body: Any) -> list[bytes]:
    whole = request(path, body)
    cut = whole.index(b"\r\n\r\n") + 4
    return [whole[:cut], whole[cut:]]


def _chunked(path: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    head = request(path, b"", [("Transfer-Encoding", "chunked")])
    return [head + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"]


# Requests the wire path leaves to the usual way: what each sends, and what it must get.
USUAL: dict[str, tuple[Callable[[str, Any], list[bytes]], Callable[[list[Reply]], None]]] = {}


def usual(name: str, make: Callable[[str, Any], list[bytes]]) -> Callable[[Any], Any]:
    def register(check: Callable[[list[Reply]], None]) -> Callable[[list[Reply]], None]:
        USUAL[name] = (make, check)
        return check

    return register


def _hit(replies: list[Reply]) -> None:
    assert [(r.status, r.headers["x-cache"]) for r in replies] == [(200, "HIT")] * len(replies)


def _with(headers: list[tuple[str, str]], **kw: str) -> Callable[[str, Any], list[bytes]]:
    return lambda path, body: [request(path, body, headers, **kw)]


usual("pipelined: two requests in one write", _pipelined)(_hit)
usual("split: the body in a second write", _split)(_hit)
usual("chunked body", _chunked)(_hit)
usual("HTTP/1.0", _with([], version="HTTP/1.0"))(_hit)
usual("a header the wire path does not know", _with([("X-Trace", "1")]))(_hit)
usual("Accept-Encoding twice", _with([("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")]))(
    _hit
)


@usual("a query string", lambda path, body: [request(path + "?x=1", body)])
def _query(replies: list[Reply]) -> None:
    _hit(replies)


@usual("an allowed Origin", _with([("Origin", "http://app.example")]))
def _cors(replies: list[Reply]) -> None:
    _hit(replies)
    assert replies[0].headers["access-control-allow-origin"] == "http://app.example"


@usual("a refused Origin", _with([("Origin", "http://evil.example")]))
def _cors_refused(replies: list[Reply]) -> None:
    assert replies[0].status == 403 and replies[0].json()["code"] == "cors_origin_refused"


@usual("a foreign Host", _with([], host="evil.example"))
def _host(replies: list[Reply]) -> None:
    assert replies[0].status == 403 and replies[0].json()["code"] == "forbidden_host"


@usual("Cache-Control: no-cache", _with([("Cache-Control", "no-cache")]))
def _no_cache(replies: list[Reply]) -> None:
    assert replies[0].status == 200 and replies[0].headers["x-cache"] == "MISS"


@usual("Content-Length twice", _with([("Content-Length", "2"), ("Content-Length", "3")]))
def _two_lengths(replies: list[Reply]) -> None:
    assert replies[0].status == 400 and replies[0].json()["code"] == "bad_request"


@usual("a folded header line", _with([("X-A", "1\r\n 2")]))
def _folded(replies: list[Reply]) -> None:
    assert replies[0].status == 400


@usual("Connection: close", _with([("Connection", "close")]))
def _close(replies: list[Reply]) -> None:
    _hit(replies)
    assert replies[0].headers["connection"] == "close"


@pytest.mark.parametrize("case", list(USUAL))
async def test_what_the_wire_path_leaves_gets_the_usual_answer(start_server, connect, case):
    server = await start_server(cors__allowed_origins=("http://app.example",))
    path, body = KINDS["chat-optimized"]
    conn = await connect(server)
    await learned(conn, path, body)
    assert (await conn.ask(request(path, body))).status == 200  # on the wire
    before = answered(server)
    make, check = USUAL[case]
    pieces = make(path, body)
    for piece in pieces:
        await conn.send(piece)
        await asyncio.sleep(0.05)
    replies = [await conn.reply()]
    if case.startswith("pipelined"):
        replies.append(await conn.reply())
        assert replies[0].json()["request_id"] != replies[1].json()["request_id"]
    check(replies)
    assert answered(server) == before
    if replies[0].headers.get("connection") == "close":
        assert await conn.closed()


async def test_a_client_s_own_request_id_goes_the_usual_way(server, connect):
    path, body = KINDS["native"]
    conn = await connect(server)
    await learned(conn, path, body)
    before = answered(server)
    reply = await conn.ask(request(path, body, [("X-Request-Id", "mine-7")]))
    assert reply.status == 200 and reply.headers["x-request-id"] == "mine-7"
    assert answered(server) == before


async def test_keys_are_checked_before_a_wire_hit(start_server, connect):
    keys = {name: auth.new_key(name, "user") for name in ("ada", "bob")}
    server = await start_server(
        auth__keys=tuple(entry for _, entry in keys.values()), cache__scope="per_key"
    )
    path, body = KINDS["openai"]
    conn = await connect(server)
    ada = [("Authorization", f"Bearer {keys['ada'][0]}")]
    await learned(conn, path, body, ada)
    before = answered(server)
    assert (await conn.ask(request(path, body, ada))).headers["x-cache"] == "HIT"
    assert answered(server) == before + 1
    for headers in ([], [("Authorization", "Bearer cbk_wrong")], [("X-API-Key", "cbk_wrong")]):
        reply = await conn.ask(request(path, body, headers))
        assert reply.status == 401 and reply.json()["error"]["code"] == "unauthorized"
    # bob's key, the same body: his own scope, so a miss, not ada's answer.
    bob = [("X-API-Key", keys["bob"][0])]
    assert (await conn.ask(request(path, body, bob))).headers["x-cache"] == "MISS"
    assert answered(server) == before + 1


async def test_the_rate_limit_holds_on_the_wire(start_server, connect):
    server = await start_server(auth__requests_per_minute_per_user=3)
    path, body = KINDS["chat-optimized"]
    conn = await connect(server)
    await learned(conn, path, body)
    assert (await conn.ask(request(path, body))).status == 200  # the third: on the wire
    assert answered(server) == 1
    refused = await conn.ask(request(path, body))
    assert refused.status == 429 and int(refused.headers["retry-after"]) >= 1
    assert "requests_per_minute_per_user" in refused.json()["error"]
    assert answered(server) == 1


async def test_a_user_header_names_the_caller_of_a_wire_hit(start_server, connect, http):
    server = await start_server(auth__user_header="X-User")
    path, body = KINDS["native"]
    conn = await connect(server)
    ada = [("X-User", "ada")]
    await learned(conn, path, body, ada)
    for _ in range(2):
        assert (await conn.ask(request(path, body, ada))).status == 200
    assert answered(server) == 2
    async with http.get(server.url + "/api/cache-stats") as r:
        users = (await r.json())["users"]
    assert users["ada"]["hits"] == 3 and users["ada"]["requests"] == 4


async def test_a_wire_hit_logs_the_usual_line(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="chatbot.http")
    path, body = KINDS["native"]
    conn = await connect(server)
    await learned(conn, path, body)
    await conn.ask(request(path, body))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST")]
    shape = re.compile(
        r"POST /api/chat 200 id=r-[\w-]{16} model=llama3.2 cache=hit ttft=0ms total=0ms tokens=8"
    )
    assert len(lines) == 3 and all(shape.fullmatch(line) for line in lines[1:]), lines
    assert answered(server) == 1


async def test_idle_connections_still_time_out_after_wire_hits(start_server, connect):
    server = await start_server(server__idle_timeout_seconds=1)
    path, body = KINDS["chat-optimized"]
    conn = await connect(server)
    await learned(conn, path, body)
    for _ in range(3):
        await asyncio.sleep(0.6)  # less than the timeout each time: the connection lives on
        assert (await conn.ask(request(path, body))).status == 200
    assert answered(server) == 3
    assert await conn.closed()  # and once idle for 1 s, it is closed


async def test_a_failing_wire_path_costs_no_request(server, connect, caplog):
    path, body = KINDS["chat-optimized"]
    conn = await connect(server)
    await learned(conn, path, body)
    wire = server.host.wire_hits
    wire.hits = None  # a bug: every answer() raises
    reply = await conn.ask(request(path, body))
    assert reply.status == 200 and reply.headers["x-cache"] == "HIT"
    assert any("the wire path failed" in r.getMessage() for r in caplog.records)


async def test_the_official_clients_get_wire_hits(server, sim):
    client = ollama.AsyncClient(host=server.url)
    try:
        answers = [
            await client.chat(model="llama3.2", messages=user("from ollama")) for _ in range(4)
        ]
    finally:
        await client._client.aclose()
    assert len({a.message.content for a in answers}) == 1
    after_ollama = answered(server)
    assert after_ollama == 2  # the miss, the first hit the usual way, then the wire
    oa = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    try:
        replies = [
            await oa.chat.completions.create(model="llama3.2", messages=user("from openai"))
            for _ in range(4)
        ]
    finally:
        await oa.close()
    assert len({r.choices[0].message.content for r in replies}) == 1
    assert answered(server) == after_ollama + 2
    assert await generations(sim) == 2


async def test_bytes_that_end_another_request_are_not_taken_for_a_new_one(server, connect):
    # A whole request and the start of a second one's head in one write; the next write, which
    # would be a request the wire path could answer on its own, is the rest of that head: the
    # usual way finds a bad header line in it (400) and the wire path must not answer it.
    path, body = KINDS["chat-optimized"]
    conn = await connect(server)
    await learned(conn, path, body)
    before = answered(server)
    await conn.send(request(path, body) + f"POST {path} HTTP/1.1\r\nX-Pad: 1\r\n".encode())
    first = await conn.reply()
    assert first.status == 200 and first.headers["x-cache"] == "HIT"
    await asyncio.sleep(0.05)
    second = await conn.ask(request(path, body))
    assert second.status == 400 and second.json()["code"] == "bad_request"
    assert answered(server) == before
    # A new connection gets the wire path again.
    fresh = await connect(server)
    assert (await fresh.ask(request(path, body))).status == 200
    assert answered(server) == before + 1


async def test_a_client_that_does_not_read_does_not_grow_the_gateway(server, connect):
    # Long answers (~25 KB), asked for one after the other without reading any: what waits in
    # the gateway stays near the transport's high-water mark; then every answer arrives.
    path = "/api/chat-optimized"
    body = {"messages": user("long"), "stream": False, "options": {"sim_tokens": 4000}}
    conn = await connect(server)
    first = (await learned(conn, path, body)).json()["content"]
    asked = 600
    buffered = []
    guard = server.host.connections
    for _ in range(asked):
        await conn.send(request(path, body))
        await asyncio.sleep(0.002)
        buffered.append(max(c.transport.get_write_buffer_size() for c in guard._open))
    assert answered(server) < asked  # it stopped answering on the wire while unread
    assert max(buffered) < 64 * 1024 + 2 * len(first)
    for _ in range(asked):
        reply = await conn.reply()
        assert reply.status == 200 and reply.json()["content"] == first
