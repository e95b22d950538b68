"""Several Ollama hosts at the edges: the union model list (/api/tags, /v1/models, /api/ps with
each entry's host), /api/show to a host that has the model, and model management sent to the
host named in X-Ollama-Host or by the documented rule; three simulators, real sockets."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import ollama
import openai
import pytest

from tests.conftest import Server, Sim, wait_for

A_MODELS = ("llama3.2:latest", "qwen3:4b")
B_MODELS = ("llama3.2:latest", "mistral:latest")
C_MODELS = ("phi3:latest",)


@dataclass
class Three:
    server: Server
    sims: list[Sim]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.sims]


async def endpoint_count(sim: Sim, endpoint: str) -> int:
    return int((await sim.stats())["by_endpoint"].get(endpoint, 0))


async def started(
    start_sim: Callable[..., Awaitable[Sim]],
    start_server: Callable[..., Awaitable[Server]],
    *,
    c_allow: tuple[str, ...] | None = None,
) -> Three:
    sims = [
        await start_sim(models=A_MODELS),
        await start_sim(models=B_MODELS),
        await start_sim(models=C_MODELS),
    ]
    hosts: list[dict[str, Any]] = [{"url": s.url, "max_concurrent": 2} for s in sims]
    if c_allow is not None:
        hosts[2]["models"] = list(c_allow)
    server = await start_server(ollama__hosts=hosts)

    async def all_up() -> bool:
        return all(h.state == "up" and h.models for h in server.gateway.hosts.hosts)

    assert await wait_for(all_up, 10), server.gateway.hosts.as_list()
    for sim in sims:
        async with aiohttp.ClientSession() as s, s.post(f"{sim.url}/simulator/reset") as r:
            assert r.status == 200
    return Three(server, sims)


@pytest.fixture
async def three(start_sim, start_server) -> Three:
    return await started(start_sim, start_server)


async def tags_of(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/tags") as r:
        assert r.status == 200, await r.text()
        return (await r.json())["models"]


async def load(http: aiohttp.ClientSession, sim: Sim, model: str) -> None:
    """Load a model on one simulator directly (an empty generate), as Ollama would."""
    async with http.post(f"{sim.url}/api/generate", json={"model": model}) as r:
        assert r.status == 200, await r.text()


async def pull_lines(
    http: aiohttp.ClientSession, three: Three, model: str, headers: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    async with http.post(
        f"{three.server.url}/api/pull", json={"model": model}, headers=headers or {}
    ) as r:
        body = await r.read()
        return r.status, [json.loads(line) for line in body.splitlines() if line.strip()]


# -- the union -------------------------------------------------------------------------------


async def test_tags_list_the_union_once_each_with_the_first_hosts_details(three: Three, http):
    tags = await tags_of(http, three.server.url)
    names = [m["name"] for m in tags]
    assert sorted(names) == sorted({*A_MODELS, *B_MODELS, *C_MODELS})
    assert len(names) == len(set(names))
    by_name = {m["name"]: m for m in tags}
    assert by_name["llama3.2:latest"]["hosts"] == three.urls[:2]
    assert by_name["phi3:latest"]["hosts"] == [three.urls[2]]
    # Both A and B have llama3.2; the entry is A's (the first in [[ollama.hosts]]), to the byte.
    a_llama = next(m for m in await tags_of(http, three.urls[0]) if m["name"] == "llama3.2:latest")
    b_llama = next(m for m in await tags_of(http, three.urls[1]) if m["name"] == "llama3.2:latest")
    assert a_llama["modified_at"] != b_llama["modified_at"]  # so the test can tell them apart
    assert {k: v for k, v in by_name["llama3.2:latest"].items() if k != "hosts"} == a_llama


async def test_v1_models_through_the_official_openai_client(three: Three):
    client = openai.AsyncOpenAI(base_url=f"{three.server.url}/v1", api_key="unused")
    try:
        page = await client.models.list()
        ids = [m.id for m in page.data]
        assert sorted(ids) == sorted({*A_MODELS, *B_MODELS, *C_MODELS})
        # A model only the third host has is found by name too.
        assert (await client.models.retrieve("phi3")).id == "phi3"
    finally:
        await client.close()


async def test_ps_lists_every_hosts_loaded_models_with_its_host(three: Three, http):
    a, b, c = three.sims
    await load(http, a, "qwen3:4b")
    await load(http, a, "llama3.2")
    await load(http, b, "llama3.2")
    await load(http, c, "phi3")
    async with http.get(f"{three.server.url}/api/ps") as r:
        assert r.status == 200
        entries = (await r.json())["models"]
    seen = sorted((e["name"], e["host"]) for e in entries)
    assert seen == sorted(
        [
            ("qwen3:4b", a.url),
            ("llama3.2:latest", a.url),
            ("llama3.2:latest", b.url),  # loaded on two hosts: two entries
            ("phi3:latest", c.url),
        ]
    )
    assert all("expires_at" in e and "size_vram" in e for e in entries)  # Ollama's own fields


async def test_show_goes_to_a_host_that_has_the_model(three: Three, http):
    async with http.post(f"{three.server.url}/api/show", json={"model": "phi3"}) as r:
        assert r.status == 200
        assert "phi3" in (await r.json())["modelfile"]
    counts = [await endpoint_count(s, "POST /api/show") for s in three.sims]
    assert counts == [0, 0, 1]


async def test_a_failing_host_is_left_out_of_the_union(three: Three, http):
    async with http.post(f"{three.urls[2]}/simulator/fault", json={"mode": "error"}) as r:
        assert r.status == 200
    names = {m["name"] for m in await tags_of(http, three.server.url)}
    assert names == {*A_MODELS, *B_MODELS}


# -- management ------------------------------------------------------------------------------


async def test_x_ollama_host_sends_a_pull_and_a_delete_to_that_host_only(three: Three, http):
    status, lines = await pull_lines(http, three, "gemma3", {"X-Ollama-Host": "1"})
    assert status == 200 and lines[-1] == {"status": "success"}
    counts = [await endpoint_count(s, "POST /api/pull") for s in three.sims]
    assert counts == [0, 1, 0]
    # Routing knows at once: the gateway's list says the model is on that host only.
    gemma = next(m for m in await tags_of(http, three.server.url) if m["name"] == "gemma3:latest")
    assert gemma["hosts"] == [three.urls[1]]
    assert three.server.gateway.hosts.serving("gemma3") == [three.server.gateway.hosts.hosts[1]]

    # Named by URL this time (a trailing slash is fine).
    async with http.delete(
        f"{three.server.url}/api/delete",
        json={"model": "llama3.2"},
        headers={"X-Ollama-Host": three.urls[0] + "/"},
    ) as r:
        assert r.status == 200
    counts = [await endpoint_count(s, "DELETE /api/delete") for s in three.sims]
    assert counts == [1, 0, 0]
    llama = next(m for m in await tags_of(http, three.server.url) if m["name"] == "llama3.2:latest")
    assert llama["hosts"] == [three.urls[1]]  # still on B


@pytest.mark.parametrize("name", ["7", "http://127.0.0.1:1", "first"])
async def test_an_unknown_host_is_a_400_naming_the_header_and_listing_the_hosts(
    three: Three, http, name
):
    for method, path, body in (
        ("POST", "/api/pull", {"model": "gemma3"}),
        ("DELETE", "/api/delete", {"model": "llama3.2"}),
        ("GET", "/api/tags", None),
    ):
        async with http.request(
            method, three.server.url + path, json=body, headers={"X-Ollama-Host": name}
        ) as r:
            assert r.status == 400, path
            error = (await r.json())["error"]
            assert "X-Ollama-Host" in error and repr(name) in error
            assert all(url in error for url in three.urls), error
    for sim in three.sims:  # nothing reached any host
        assert await endpoint_count(sim, "POST /api/pull") == 0
        assert await endpoint_count(sim, "DELETE /api/delete") == 0


async def test_without_the_header_pull_goes_to_every_host_that_may_serve_the_model(
    start_sim, start_server, http
):
    three = await started(start_sim, start_server, c_allow=("phi3",))
    status, lines = await pull_lines(http, three, "gemma3")
    assert status == 200
    assert [await endpoint_count(s, "POST /api/pull") for s in three.sims] == [1, 1, 0]
    # One host after the other, each line saying whose it is; one success at the very end.
    hosts_in_order = [line["host"] for line in lines[:-1]]
    assert hosts_in_order == sorted(hosts_in_order, key=three.urls.index)
    assert set(hosts_in_order) == set(three.urls[:2])
    assert lines[-1] == {"status": "success"}
    assert sum(1 for line in lines if line.get("status") == "success") == 1
    gemma = next(m for m in await tags_of(http, three.server.url) if m["name"] == "gemma3:latest")
    assert gemma["hosts"] == three.urls[:2]


async def test_without_the_header_delete_goes_to_every_host_that_has_the_model(three: Three, http):
    async with http.delete(f"{three.server.url}/api/delete", json={"model": "llama3.2"}) as r:
        assert r.status == 200
    names = {m["name"] for m in await tags_of(http, three.server.url)}
    assert "llama3.2:latest" not in names
    for sim in three.sims[:2]:
        assert "llama3.2:latest" not in {m["name"] for m in await tags_of(http, sim.url)}
    assert not three.server.gateway.hosts.serving("llama3.2")  # routing saw it at once
    # A model no host has is Ollama's own 404.
    async with http.delete(f"{three.server.url}/api/delete", json={"model": "nope"}) as r:
        assert r.status == 404
        assert "not found" in (await r.json())["error"]


async def test_a_pull_that_fails_on_one_host_ends_with_an_error_naming_it(three: Three, http):
    async with http.post(f"{three.urls[1]}/simulator/fault", json={"mode": "error"}) as r:
        assert r.status == 200
    status, lines = await pull_lines(http, three, "gemma3")
    assert status == 200  # progress had started: the error is the last line, as Ollama's
    error = lines[-1]["error"]
    assert three.urls[1] in error and "failed" in error
    assert f"succeeded on {three.urls[0]}, {three.urls[2]}" in error
    assert not any(line.get("status") == "success" for line in lines)
    # The official client raises on it rather than reporting success.
    client = ollama.AsyncClient(host=three.server.url)
    with pytest.raises(ollama.ResponseError, match="failed on"):
        await client.pull("gemma3:2b")


async def test_a_hung_host_is_left_out_and_a_call_named_to_it_times_out(
    start_sim, start_server, http
):
    sims = [await start_sim(models=A_MODELS), await start_sim(models=C_MODELS)]
    server = await start_server(
        ollama__hosts=[{"url": s.url} for s in sims], ollama__timeout_seconds=1
    )

    async def all_up() -> bool:
        return all(h.state == "up" for h in server.gateway.hosts.hosts)

    assert await wait_for(all_up, 10)
    async with http.post(f"{sims[1].url}/simulator/fault", json={"mode": "hang"}) as r:
        assert r.status == 200
    # The union does not wait for the hung host forever: it answers without its models.
    names = {m["name"] for m in await tags_of(http, server.url)}
    assert names == set(A_MODELS)
    # Named, the hung host's call ends as a timeout in Ollama's shape, not a hang.
    async with http.get(f"{server.url}/api/ps", headers={"X-Ollama-Host": "1"}) as r:
        assert r.status == 504
        assert list(await r.json()) == ["error"]


async def test_copy_goes_to_every_host_that_has_the_source(three: Three, http):
    copy = {"source": "llama3.2", "destination": "helper"}
    async with http.post(f"{three.server.url}/api/copy", json=copy) as r:
        assert r.status == 200
    assert [await endpoint_count(s, "POST /api/copy") for s in three.sims] == [1, 1, 0]
    helper = next(m for m in await tags_of(http, three.server.url) if m["name"] == "helper:latest")
    assert helper["hosts"] == three.urls[:2]


async def test_a_pull_with_stream_false_is_one_json_answer_for_all_hosts(three: Three, http):
    body = {"model": "gemma3", "stream": False}
    async with http.post(f"{three.server.url}/api/pull", json=body) as r:
        assert r.status == 200
        assert await r.json() == {"status": "success"}
    assert [await endpoint_count(s, "POST /api/pull") for s in three.sims] == [1, 1, 1]
    fault = {"mode": "error", "status": 503}
    async with http.post(f"{three.urls[2]}/simulator/fault", json=fault) as r:
        assert r.status == 200
    async with http.post(f"{three.server.url}/api/pull", json={**body, "model": "qwen3"}) as r:
        assert r.status == 503  # the failing host's own status
        error = (await r.json())["error"]
        assert f"pull failed on {three.urls[2]}" in error
        assert f"succeeded on {three.urls[0]}, {three.urls[1]}" in error
