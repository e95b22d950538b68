"""The Ollama client against real servers: NDJSON framing, metadata, warm-up, error mapping."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from server.errors import ModelNotFound, OllamaUnreachable, UpstreamError, UpstreamTimeout
from server.services.ollama import OllamaClient
from tests.conftest import Sim, free_port, user, wait_for


@pytest.fixture
async def client_for():
    clients = []

    async def make(url: str, **kw) -> OllamaClient:
        client = OllamaClient(url, **kw)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def serve_raw(chunks: list[bytes], delay: float = 0.005):
    """A real HTTP server that writes the given byte pieces one by one as /api/chat's body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for piece in chunks:
            await resp.write(piece)
            await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_lines_split_across_reads_are_reassembled(client_for):
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "Grüße "}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "😀 café"}, "done": False},
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "eval_count": 2,
        },
    ]
    sent = [json.dumps(x, ensure_ascii=False).encode() for x in lines]
    body = b"".join(line + b"\n" for line in sent)
    # Three-byte pieces split lines and multi-byte characters at every possible place.
    pieces = [body[i : i + 3] for i in range(0, len(body), 3)]
    runner, url = await serve_raw(pieces, delay=0.001)
    try:
        client = await client_for(url)
        stream = client.chat_stream({"model": "m", "messages": user()})
        got = [line async for read in stream for line in read]
    finally:
        await runner.cleanup()
    assert [chunk for chunk, _ in got] == lines
    assert [line for _, line in got] == sent  # each line's bytes as they came
    assert client.counters.tokens_generated == 2


async def test_a_burst_of_lines_in_one_read_comes_whole_and_in_order(client_for):
    """Lines that arrive together (with U+2028, NEL and an escaped newline in the text, which
    are not line ends) come out in one list, in order, each as it was sent; what follows the
    done line is not part of the answer."""
    texts = ["a\u2028b", "c\x85d", "e\nf", "</g>&"] + [f"w{i}" for i in range(50)]
    chunks = [
        {"model": "m", "message": {"role": "assistant", "content": t}, "done": False} for t in texts
    ]
    chunks.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True})
    sent = [json.dumps(x, ensure_ascii=False).encode() for x in chunks]
    body = b"".join(line + b"\n" for line in sent) + b'{"model":"m","done":false}\n'
    runner, url = await serve_raw([body])
    try:
        client = await client_for(url)
        stream = client.chat_stream({"model": "m", "messages": user()})
        reads = [read async for read in stream]
    finally:
        await runner.cleanup()
    got = [line for read in reads for line in read]
    assert [line for _, line in got] == sent
    assert [chunk["message"]["content"] for chunk, _ in got[:-1]] == texts
    assert len(reads) < len(sent)  # the burst came in a few lists, not one per line


async def test_an_error_line_after_pieces_in_the_same_read_keeps_the_pieces(client_for):
    """The pieces before an error line reach the caller before the error (the answer had
    started: no failover, the error ends it)."""
    body = (
        b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"error":"out of memory"}\n'
    )
    runner, url = await serve_raw([body])
    got: list[bytes] = []
    try:
        client = await client_for(url)
        with pytest.raises(UpstreamError, match="out of memory"):
            async for read in client.chat_stream({"model": "m", "messages": user()}):
                got += [line for _, line in read]
    finally:
        await runner.cleanup()
    assert got == [body.split(b"\n")[0]]


async def test_stream_cut_before_done_is_an_error(client_for):
    partial = b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    runner, url = await serve_raw([partial])
    try:
        client = await client_for(url)
        with pytest.raises(UpstreamError, match="closed the stream before the answer"):
            async for _ in client.chat_stream({"model": "m", "messages": user()}):
                pass
    finally:
        await runner.cleanup()


async def test_non_json_line_is_a_clear_error(client_for):
    runner, url = await serve_raw([b"<html>proxy error</html>\n"])
    try:
        client = await client_for(url)
        with pytest.raises(UpstreamError, match="not JSON"):
            async for _ in client.chat_stream({"model": "m", "messages": user()}):
                pass
    finally:
        await runner.cleanup()


async def test_metadata_calls(sim: Sim, client_for):
    client = await client_for(sim.url)
    assert await client.get_version() == "0.33.0"
    models = await client.list_models()
    assert [m["name"] for m in models] == ["llama3.2:latest"]
    assert await client.probe() is True
    assert client.reachable is True and client.version == "0.33.0"
    assert client.latency_ms is not None and client.latency_ms >= 0


async def test_non_streaming_chat(sim: Sim, client_for):
    client = await client_for(sim.url)
    data = await client.chat({"model": "llama3.2", "messages": user()})
    assert data["done"] is True and data["message"]["content"]


async def test_warm_up_loads_the_model(sim: Sim, client_for, http):
    client = await client_for(sim.url)
    assert await client.warm_up("llama3.2", "15m") is True
    async with http.get(f"{sim.url}/api/ps") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["llama3.2:latest"]
    assert await client.warm_up("nope", "15m") is False


async def test_gateway_warms_up_at_start(start_server, sim: Sim, http):
    await start_server(ollama__warm_up=True)

    async def loaded() -> bool:
        async with http.get(f"{sim.url}/api/ps") as r:
            return bool((await r.json())["models"])

    assert await wait_for(loaded, timeout=3.0)


async def test_error_translation(sim: Sim, client_for):
    client = await client_for(sim.url)
    with pytest.raises(ModelNotFound, match="model 'ghost' not found") as info:
        async for _ in client.chat_stream({"model": "ghost", "messages": user()}):
            pass
    assert "ollama pull ghost" in info.value.message

    dead = await client_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(OllamaUnreachable, match=r"Ollama not reachable at http://127\.0\.0\.1:"):
        await dead.get_version()
    assert await dead.probe() is False and dead.reachable is False

    slow = await client_for(sim.url, timeout_s=0.3)
    payload = {
        "model": "llama3.2",
        "messages": user(),
        "options": {"sim_first_token_delay_ms": 2000},
    }
    with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.3 s"):
        async for _ in slow.chat_stream(payload):
            pass


async def test_a_stream_that_stalls_after_its_first_lines_times_out(client_for):
    """[ollama].timeout_seconds holds between lines too, not only before the first."""
    line = b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    runner, url = await serve_raw([line, line], delay=2.0)
    got: list[bytes] = []
    try:
        client = await client_for(url, timeout_s=0.3)
        with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.3 s"):
            async for read in client.chat_stream({"model": "m", "messages": user()}):
                got += [line for _, line in read]
    finally:
        await runner.cleanup()
    assert got == [line.rstrip(b"\n")]


async def test_a_stream_longer_than_the_timeout_is_fine_while_lines_keep_coming(client_for):
    lines = [b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n'] * 8
    lines.append(b'{"model":"m","message":{"role":"assistant","content":""},"done":true}\n')
    runner, url = await serve_raw(lines, delay=0.1)  # 0.9 s in all, a line every 0.1 s
    try:
        client = await client_for(url, timeout_s=0.4)
        stream = client.chat_stream({"model": "m", "messages": user()})
        got = [line async for read in stream for line in read]
    finally:
        await runner.cleanup()
    assert len(got) == 9 and got[-1][0]["done"] is True
