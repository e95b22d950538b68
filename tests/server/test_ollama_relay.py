"""The rest of Ollama's API through the gateway, over real sockets against the simulator:
liveness and metadata at once (even with a full queue), model management streamed through."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import statistics
import time
from typing import Any

import aiohttp
import ollama
import pytest

from server.handlers.ollama_relay import MANAGEMENT_OFF
from tests.conftest import Server, Sim, free_port, user, wait_for

NDJSON = "application/x-ndjson"
BLOB = b"weights " * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) as they came."""
    async with http.request(method, url, json=body, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def raw(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request on its own socket, read to the end: what a HEAD answer really carries."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, rest


async def sim_count(sim: Sim, endpoint: str) -> int:
    return int((await sim.stats())["by_endpoint"].get(endpoint, 0))


async def model_names(http: aiohttp.ClientSession, url: str) -> set[str]:
    async with http.get(f"{url}/api/tags") as resp:
        return {m["name"] for m in (await resp.json())["models"]}


# -- liveness and metadata ---------------------------------------------------------------------


METADATA = [
    ("GET", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("POST", "/api/show", {"name": "llama3.2"}),  # the legacy name Continue sends
    ("POST", "/api/show", {"model": "no-such-model"}),
    ("POST", "/api/show", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), METADATA)
async def test_metadata_is_relayed_as_ollama_answers_it(server, sim, http, method, path, body):
    direct = await answer(http, method, sim.url + path, body)
    relayed = await answer(http, method, server.url + path, body)
    assert relayed == direct


async def test_liveness_version_tags_ps_and_show(server, http):
    assert await answer(http, "GET", f"{server.url}/") == (
        200,
        "text/plain; charset=utf-8",
        b"Ollama is running",
    )
    status, content_type, body = await answer(http, "GET", f"{server.url}/api/version")
    assert (status, content_type, json.loads(body)) == (
        200,
        "application/json; charset=utf-8",
        {"version": "0.33.0"},
    )
    chat = {"model": "llama3.2", "messages": user(), "stream": False}
    async with http.post(f"{server.url}/api/chat", json=chat) as resp:
        assert resp.status == 200
    async with http.get(f"{server.url}/api/ps") as resp:
        assert [m["model"] for m in (await resp.json())["models"]] == ["llama3.2:latest"]
    assert "llama3.2:latest" in await model_names(http, server.url)
    async with http.post(f"{server.url}/api/show", json={"model": "nope"}) as resp:
        error = await resp.json()
        assert resp.status == 404 and list(error) == ["error"] and "not found" in error["error"]


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
async def test_head_has_the_headers_and_no_body(server, sim, path):
    status, headers, body = await raw(server.url, "HEAD", path)
    _, get_headers, _ = await raw(server.url, "GET", path)
    assert (status, body) == (200, b"")
    assert headers["content-type"] == get_headers["content-type"]
    assert await sim_count(sim, f"HEAD {path}") == 1


async def test_ps_has_no_head_as_in_ollama(server, http):
    async with http.head(f"{server.url}/api/ps") as resp:
        assert resp.status == 405


async def test_a_body_that_is_not_json_is_400_in_ollamas_shape(server, http):
    for path in ("/api/show", "/api/pull", "/api/create", "/api/copy"):
        async with http.post(f"{server.url}{path}", data=b"{not json") as resp:
            assert resp.status == 400
            assert list(await resp.json()) == ["error"]
    async with http.delete(f"{server.url}/api/delete", data=b"") as resp:
        assert resp.status == 400
        assert list(await resp.json()) == ["error"]


async def test_metadata_answers_at_once_while_the_queue_is_full(start_server, sim, http):
    server = await start_server(queue__max_concurrent=1, queue__max_queue_size=0)
    hold = {
        "model": "llama3.2",
        "messages": user("hold the only slot"),
        "options": {"sim_tokens": 3000, "sim_token_delay_ms": 10},
    }
    async with http.post(f"{server.url}/api/chat", json=hold) as holding:
        await holding.content.readline()  # generating: the one slot is taken
        other = {"model": "llama3.2", "messages": user("wait in line"), "stream": False}
        async with http.post(f"{server.url}/api/chat", json=other) as refused:
            assert refused.status == 503  # nobody may wait: the queue is full
        for method, path, body in METADATA[:5]:
            started = time.perf_counter()
            status, _, _ = await answer(http, method, server.url + path, body)
            assert status == 200
            assert time.perf_counter() - started < 1.0, f"{method} {path} waited"
        status, _, _ = await raw(server.url, "HEAD", "/")
        assert status == 200


ALL_ENDPOINTS = [
    ("GET", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("POST", "/api/pull", {"model": "qwen3:4b"}),
    ("POST", "/api/push", {"model": "me/llama3.2"}),
    ("POST", "/api/create", {"model": "mine", "from": "llama3.2"}),
    ("POST", "/api/copy", {"source": "llama3.2", "destination": "mine"}),
    ("DELETE", "/api/delete", {"model": "llama3.2"}),
    ("POST", f"/api/blobs/{digest_of(BLOB)}", BLOB),
    ("HEAD", f"/api/blobs/{digest_of(BLOB)}", None),
]


async def test_ollama_unreachable_is_502_in_ollamas_shape(start_server, http):
    server = await start_server(ollama__api_url=f"http://127.0.0.1:{free_port()}")
    for method, path, body in ALL_ENDPOINTS:
        kw = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.request(method, server.url + path, **kw) as resp:
            assert resp.status == 502, f"{method} {path}"
            if method != "HEAD":
                error = await resp.json()
                assert list(error) == ["error"] and "not reachable" in error["error"]
    status, _, body = await raw(server.url, "HEAD", "/")
    assert (status, body) == (502, b"")


# -- model management --------------------------------------------------------------------------


@pytest.fixture
async def managed(start_server, start_sim) -> tuple[Server, Sim]:
    """A gateway in front of a simulator that paces its progress lines (40 ms apart), with no
    probe of its own in the way of counting the ones a model change makes."""
    paced = await start_sim(token_delay_ms=40)
    server = await start_server(ollama__api_url=paced.url, ollama__probe_interval_seconds=3600)
    assert await wait_for(lambda: _probed(paced))
    return server, paced


async def _probed(sim: Sim) -> bool:
    return await sim_count(sim, "GET /api/version") >= 1


async def test_pull_progress_arrives_line_by_line(managed, http, caplog):
    server, sim = managed
    probes = await sim_count(sim, "GET /api/version")
    caplog.set_level(logging.INFO, "chatbot.ollama")
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    async with http.post(f"{server.url}/api/pull", json={"model": "qwen3:4b"}) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, NDJSON)
        async for line in resp.content:
            arrivals.append(time.monotonic())
            lines.append(json.loads(line))  # whole lines only, never half a one
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    assert any("completed" in line for line in lines)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) >= 5 and statistics.median(gaps) >= 0.02, gaps  # as paced, not at the end
    assert "qwen3:4b" in await model_names(http, server.url)
    assert await sim_count(sim, "GET /api/version") == probes + 1
    assert "models changed: pull qwen3:4b" in caplog.messages


async def test_a_pull_cut_short_by_a_restart_ends_with_an_error_line(start_server, start_sim, http):
    slow = await start_sim(token_delay_ms=200)  # a pull of a dozen lines: longer than the drain
    server = await start_server(ollama__api_url=slow.url)
    async with http.post(f"{server.url}/api/pull", json={"model": "qwen3:4b"}) as resp:
        assert json.loads(await resp.content.readline()) == {"status": "pulling manifest"}
        await server.host.restart()
        lines = [json.loads(line) async for line in resp.content]
    assert lines[-1] == {"error": "the gateway stopped or restarted before this was complete"}
    assert all("status" in line for line in lines[:-1])


async def test_stream_false_is_one_json_object(server, http):
    body = {"model": "qwen3:4b", "stream": False}
    status, content_type, data = await answer(http, "POST", f"{server.url}/api/pull", body)
    assert (status, content_type.split(";")[0], json.loads(data)) == (
        200,
        "application/json",
        {"status": "success"},
    )


async def test_create_copy_and_delete_change_the_model_list(managed, http, caplog):
    server, sim = managed
    caplog.set_level(logging.INFO, "chatbot.ollama")
    create = {"model": "helper", "from": "llama3.2", "system": "Answer briefly."}
    async with http.post(f"{server.url}/api/create", json=create) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, NDJSON)
        lines = [json.loads(line) async for line in resp.content]
    assert lines[-1] == {"status": "success"}
    async with http.post(f"{server.url}/api/show", json={"model": "helper"}) as resp:
        assert (await resp.json())["system"] == "Answer briefly."

    copy = {"source": "helper", "destination": "helper:copy"}
    status, _, _ = await answer(http, "POST", f"{server.url}/api/copy", copy)
    assert status == 200
    assert {"helper:latest", "helper:copy"} <= await model_names(http, server.url)

    probes = await sim_count(sim, "GET /api/version")
    gone = {"model": "helper:copy"}
    assert (await answer(http, "DELETE", f"{server.url}/api/delete", gone))[0] == 200
    assert "helper:copy" not in await model_names(http, server.url)
    assert await sim_count(sim, "GET /api/version") == probes + 1
    status, _, data = await answer(http, "DELETE", f"{server.url}/api/delete", gone)
    assert (status, list(json.loads(data))) == (404, ["error"])
    assert await sim_count(sim, "GET /api/version") == probes + 1  # nothing changed
    assert caplog.messages.count("models changed: create helper") == 1
    assert "models changed: copy helper -> helper:copy" in caplog.messages
    assert caplog.messages.count("models changed: delete helper:copy") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2", "stream": False},
        {"model": "llama3.2"},
        {"model": "not-here"},  # an error line after the first progress line, status 200
    ],
)
async def test_push_is_relayed(server, sim, http, body):
    relayed = await answer(http, "POST", f"{server.url}/api/push", body)
    assert relayed == await answer(http, "POST", f"{sim.url}/api/push", body)
    assert relayed[0] == 200


async def test_a_large_upload_streams_through_past_the_body_limit(start_server, sim, http):
    server = await start_server(server__max_body_kb=1024)
    data = os.urandom(3 * 1024 * 1024)
    url = f"{server.url}/api/blobs/{digest_of(data)}"
    async with http.head(url) as resp:
        assert resp.status == 404
    async with http.post(url, data=data) as resp:
        assert resp.status == 201, await resp.text()
    async with http.head(url) as resp:
        assert resp.status == 200
    wrong = f"{server.url}/api/blobs/{digest_of(b'something else')}"
    async with http.post(wrong, data=data) as resp:
        assert resp.status == 400
        assert "digest" in (await resp.json())["error"]


async def test_an_upload_that_stops_arriving_is_408(start_server, http):
    server = await start_server(server__body_timeout_seconds=1)
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /api/blobs/{digest_of(BLOB)} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Length: 100000\r\n\r\n".encode()
        + BLOB[:1000]
    )
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body) == {
        "error": "upload stopped arriving: nothing for 1 s after 1000 bytes "
        "([server].body_timeout_seconds)"
    }


async def test_management_can_be_turned_off(start_server, sim, http):
    server = await start_server(ollama__allow_management=False)
    for method, path, body in ALL_ENDPOINTS[5:]:
        kw = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.request(method, server.url + path, **kw) as resp:
            assert resp.status == 403, f"{method} {path}"
            if method != "HEAD":
                assert await resp.json() == {"error": MANAGEMENT_OFF}
    for method, path, body in ALL_ENDPOINTS[:5]:
        assert (await answer(http, method, server.url + path, body))[0] == 200
    by_endpoint = (await sim.stats())["by_endpoint"]
    assert not [e for e in by_endpoint if "pull" in e or "blobs" in e or "delete" in e]


# -- the official client -------------------------------------------------------------------------


async def test_the_official_python_client(server, tmp_path):
    client = ollama.AsyncClient(host=server.url)
    assert "llama3.2:latest" in [m.model for m in (await client.list()).models]
    shown = await client.show("llama3.2")
    assert shown.modelinfo is not None and "completion" in (shown.capabilities or [])
    await client.generate(model="llama3.2", prompt="")  # load it
    assert [m.model for m in (await client.ps()).models] == ["llama3.2:latest"]

    progress = [p async for p in await client.pull("qwen3:4b", stream=True)]
    assert progress[-1].status == "success"
    assert any(p.completed for p in progress)

    blob = tmp_path / "adapter.bin"
    blob.write_bytes(BLOB)
    assert await client.create_blob(blob) == digest_of(BLOB)

    created = await client.create("helper", from_="llama3.2", system="Answer briefly.")
    assert created.status == "success"
    assert (await client.copy("helper", "helper:two")).status == "success"
    assert (await client.delete("helper:two")).status == "success"
    assert "helper:two" not in [m.model for m in (await client.list()).models]
    with pytest.raises(ollama.ResponseError) as info:
        await client.delete("helper:two")
    assert info.value.status_code == 404


async def test_a_large_blob_upload_with_expect_100_continue_streams_through(start_server, sim):
    """curl sends `Expect: 100-continue` for large bodies: a model upload is not held to
    [server].max_body_kb, so it is told to continue, not refused."""

    server = await start_server(server__max_body_kb=1024)
    data = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{server.url}/api/blobs/{digest}", data=data, expect100=True) as r,
    ):
        assert r.status == 201, await r.text()
