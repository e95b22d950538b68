"""Live answers relayed piece by piece: Ollama's lines reach native clients as they came, a burst
of lines arriving together comes out whole and in order on every API, and a client that is
behind the generation (joined late) still gets every piece."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from server.handlers.frames import sse_frame
from tests.conftest import Server, Sim, parse_sse, user

# Text pieces a careless line splitter would cut: U+2028, U+2029 and NEL are line ends to
# str.splitlines(); an escaped newline; HTML characters Go escapes (\u003c).
TEXTS = ["one\u2028two", "\u2029three", " four\x85five", " six\nseven", " </b>&"] + [
    f" w{i}" for i in range(60)
]


def _line(obj: dict[str, object]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # As Go writes it: <, > and & escaped, U+2028 escaped, U+2029 left raw (both occur).
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").encode()


def _chunk(text: str, done: bool = False) -> dict[str, object]:
    message = {"role": "assistant", "content": text}
    chunk: dict[str, object] = {"model": "burst", "created_at": "2026-01-01T00:00:00Z"}
    chunk.update(message=message, done=done)
    if done:
        chunk.update(done_reason="stop", eval_count=len(TEXTS), prompt_eval_count=3)
    return chunk


LINES = [_line(_chunk(text)) for text in TEXTS]
DONE = _line(_chunk("", done=True))


@pytest.fixture
async def bursty() -> AsyncIterator[str]:
    """A fake Ollama (a real aiohttp app on port 0) that writes a whole answer in one write."""

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b"".join(line + b"\n" for line in [*LINES, DONE]))
        await resp.write_eof()
        return resp

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.33.0"})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_burst_of_lines_reaches_every_api_whole_and_in_order(
    start_server: Callable[..., Awaitable[Server]], bursty: str, http: aiohttp.ClientSession
) -> None:
    server = await start_server(ollama__api_url=bursty)
    text = "".join(TEXTS)

    def ask(question: str) -> dict[str, object]:
        return {"model": "burst", "messages": user(question)}

    async with http.post(server.url + "/api/chat", json=ask("native")) as r:
        assert r.headers["X-Cache"] == "MISS"
        body = await r.read()
    *lines, final, end = body.split(b"\n")
    assert lines == LINES  # Ollama's lines as they came, in order
    assert end == b"" and json.loads(final)["done"] is True

    async with http.post(server.url + "/api/chat", json=ask("native")) as r:
        assert r.headers["X-Cache"] == "HIT"
        replayed = [json.loads(line) for line in (await r.read()).splitlines()]
    assert "".join(ch["message"]["content"] for ch in replayed) == text  # what was cached

    async with http.post(server.url + "/api/chat-optimized", json=ask("sse")) as r:
        frames = parse_sse(await r.text())
    assert "".join(f["content"] for f in frames if not f["done"]) == text
    assert frames[-1]["done"] is True and frames[-1]["cached"] is False

    body = {**ask("openai"), "stream": True}
    async with http.post(server.url + "/v1/chat/completions", json=body) as r:
        events = [e for e in (await r.text()).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_client_that_joins_late_gets_every_line_in_order(
    server: Server, sim: Sim, http: aiohttp.ClientSession
) -> None:
    """The second client is behind the generation from its start: what was produced comes to
    it at once, then the rest live; it gets the same lines as the first, in the same order."""
    body = {
        "model": "llama3.2",
        "messages": user("one answer, two clients"),
        "options": {"sim_tokens": 40, "sim_token_delay_ms": 10},
    }
    before = int((await sim.stats())["generations"])
    async with http.post(server.url + "/api/chat", json=body) as first:
        early = [await first.content.readline() for _ in range(10)]
        async with http.post(server.url + "/api/chat", json=body) as second:
            late = await second.read()
        rest = await first.read()
    assert int((await sim.stats())["generations"]) == before + 1  # one generation, shared
    whole = b"".join(early) + rest
    assert late == whole  # every line, in order, and the same done line
    assert len(late.split(b"\n")) == 40 + 2


@pytest.mark.parametrize(
    "payload",
    [
        {"content": "".join(chr(i) for i in range(0x30)) + "\x7f\x85\u2028\u2029😀\ufeff"},
        {"content": TEXTS[0], "done": False, "request_id": "r", "stats": {"eval_count": 3}},
        {"choices": [{"delta": {"content": "x"}, "finish_reason": None}], "big": 2**70},
    ],
)
def test_an_sse_frame_has_the_bytes_json_dumps_gives(payload: dict[str, object]) -> None:
    expected = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert sse_frame(payload) == b"data: " + expected + b"\n\n"
