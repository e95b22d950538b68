"""Several Ollama hosts behind one gateway: routing by model, one queue over all hosts' slots,
health with backoff, failover before the first token; against real simulators on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server import config as cfg
from server import simulator
from server.gateway import Gateway
from tests.conftest import Serve, Server, make_config, user, wait_for
from tests.server.test_queue_http import Streamer, slow, until


@dataclass
class Host:
    """A simulator playing one Ollama host, which the test can stop and start again."""

    port: int
    settings: simulator.SimulatorSettings
    runner: web.AppRunner | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/simulator/stats") as r:
            return dict(await r.json())

    async def fault(self, mode: str, status: int = 500) -> dict[str, Any]:
        body = {"mode": mode, "status": status}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{self.url}/simulator/fault", json=body) as r,
        ):
            return dict(await r.json())

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    async def restart(self) -> None:
        self.runner, _ = await simulator.start(self.settings, port=self.port)


StartHost = Callable[..., Awaitable[Host]]
StartGateway = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_host() -> AsyncIterator[StartHost]:
    hosts: list[Host] = []

    async def start(models: tuple[str, ...] = ("llama3.2:latest",), **kw: Any) -> Host:
        settings = simulator.SimulatorSettings(
            **{"tokens": 8, "token_delay_ms": 0, "first_token_delay_ms": 0, "models": models, **kw}
        )
        runner, port = await simulator.start(settings, port=0)
        host = Host(port, settings, runner)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        if host.runner is not None:
            await host.runner.cleanup()


@pytest.fixture
def start_gateway(serve: Serve) -> StartGateway:
    async def start(hosts: list[Host | dict[str, Any]], **overrides: Any) -> Server:
        overrides.setdefault("ollama__warm_up", False)
        table = [h if isinstance(h, dict) else {"url": h.url} for h in hosts]
        return await serve(Gateway(make_config(ollama__hosts=table, **overrides)))

    return start


async def health(server: Server) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/health") as r:
        assert r.status == 200
        return dict(await r.json())


async def states(server: Server) -> list[str]:
    return [h["state"] for h in (await health(server))["hosts"]]


async def all_up(server: Server) -> None:
    async def up() -> bool:
        return set(await states(server)) == {"up"}

    assert await wait_for(up, timeout=10), await health(server)


async def chat(http: aiohttp.ClientSession, server: Server, text: str, **body: Any) -> Any:
    payload = {"model": "llama3.2", "messages": user(text), "stream": False, **body}
    async with http.post(server.url + "/api/chat", json=payload) as r:
        return r.status, await r.json()


# -- configuration ------------------------------------------------------------------------------


def test_hosts_tables_load_with_defaults_from_the_queue(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[ollama]\napi_url = "http://one:11434"\n'
        '[[ollama.hosts]]\nurl = "http://gpu1:11434"\nmax_concurrent = 2\n'
        '[[ollama.hosts]]\nurl = "http://gpu2:11434/"\nweight = 0.5\nmodels = ["llama3.2"]\n'
        "[queue]\nmax_concurrent = 3\n"
    )
    conf = cfg.load(path, env={})
    assert conf.ollama.hosts == (
        cfg.HostSpec("http://gpu1:11434", 2),
        cfg.HostSpec("http://gpu2:11434", None, 0.5, ("llama3.2",)),
    )
    gateway = Gateway(conf)
    assert [(h.url, h.max_concurrent, h.weight) for h in gateway.hosts.hosts] == [
        ("http://gpu1:11434", 2, 1.0),
        ("http://gpu2:11434", 3, 0.5),
    ]
    # The single api_url is a list of one, as before.
    single = Gateway(make_config(ollama__api_url="http://one:11434", queue__max_concurrent=4))
    assert [(h.url, h.max_concurrent) for h in single.hosts.hosts] == [("http://one:11434", 4)]
    assert single.ollama is single.hosts.hosts[0].client


def test_a_bad_host_entry_is_named_and_the_lenient_loader_keeps_the_others(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[ollama.hosts]]\nurl = "http://gpu1:11434"\n'
        '[[ollama.hosts]]\nurl = "gpu2:11434"\n'
        '[[ollama.hosts]]\nurl = "http://gpu3:11434"\nmax_concurrent = 0\ncolour = "red"\n'
    )
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, env={})
    assert err.value.problems == [
        'ollama.hosts[1].url = "gpu2:11434": must be an http:// or https:// URL with a host, '
        "e.g. http://localhost:11434",
        "ollama.hosts[2].colour: unknown key (keys of [[ollama.hosts]] are url, "
        "max_concurrent, weight, models)",
        "ollama.hosts[2].max_concurrent = 0: must be a whole number 1..64",
    ]
    loaded = cfg.load_lenient(path, env={})
    assert [h.url for h in loaded.config.ollama.hosts] == ["http://gpu1:11434"]
    assert len(loaded.problems) == 3 and ("ollama", "hosts") in loaded.bad_keys


def test_the_environment_names_hosts_or_overrides_them_with_api_url(tmp_path) -> None:
    conf = cfg.load(None, env={"CHATBOT_OLLAMA_HOSTS": "http://a:1, http://b:2"})
    assert [h.url for h in conf.ollama.hosts] == ["http://a:1", "http://b:2"]
    path = tmp_path / "config.toml"
    path.write_text('[[ollama.hosts]]\nurl = "http://gpu1:11434"\n')
    # The environment's api_url beats the file's list, as any variable beats the file.
    conf = cfg.load(path, env={"NEXT_PUBLIC_CHAT_API_URL": "http://elsewhere:11434"})
    assert conf.ollama.hosts == ()
    assert [h.url for h in Gateway(conf).hosts.hosts] == ["http://elsewhere:11434"]


def test_a_host_list_saved_through_the_config_file_stays_valid_toml(tmp_path) -> None:
    from server import config_file

    path = tmp_path / "config.toml"
    path.write_text(cfg.default_toml().replace("hosts = []", "#"))
    hosts = [{"url": "http://gpu1:11434", "max_concurrent": 2}, {"url": "http://gpu2:11434"}]
    saved = config_file.save(path, {("ollama", "hosts"): hosts, ("queue", "max_concurrent"): 2})
    assert [h.url for h in saved.ollama.hosts] == ["http://gpu1:11434", "http://gpu2:11434"]
    assert saved.queue.max_concurrent == 2
    assert "[[ollama.hosts]]" in path.read_text()


# -- routing ------------------------------------------------------------------------------------


async def test_requests_for_a_model_only_one_host_has_all_go_there(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    common = ("llama3.2:latest",)
    a = await start_host(common)
    b = await start_host((*common, "rare:latest"))
    c = await start_host(common)
    server = await start_gateway([a, b, c])
    await all_up(server)
    answers = await asyncio.gather(
        *(chat(http, server, f"rare {i}", model="rare") for i in range(6))
    )
    assert [status for status, _ in answers] == [200] * 6
    assert [(await h.stats())["generations"] for h in (a, b, c)] == [0, 6, 0]
    # A model nobody has: Ollama's own 404, from a host that was asked.
    status, body = await chat(http, server, "ghost", model="ghost")
    assert status == 404 and "not found" in body["error"]
    # An embedding goes only where its model is, too.
    body = {"model": "nomic-embed-text", "input": ["one", "two"]}
    e = await start_host(("nomic-embed-text:latest",))
    server2 = await start_gateway([a, e])
    await all_up(server2)
    async with http.post(server2.url + "/api/embed", json=body) as r:
        assert r.status == 200
    assert (await e.stats())["embed_inputs"] == 2 and (await a.stats())["embed_inputs"] == 0


async def test_a_host_whose_allow_list_leaves_a_model_out_never_gets_it(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([{"url": a.url, "models": ["qwen3"]}, {"url": b.url}])
    await all_up(server)
    for i in range(3):
        status, _ = await chat(http, server, f"allowed {i}")
        assert status == 200
    assert [(await h.stats())["generations"] for h in (a, b)] == [0, 3]
    # Allowed nowhere: a 404 naming the hosts' lists, without asking any host.
    server = await start_gateway([{"url": a.url, "models": ["qwen3"]}])
    await all_up(server)
    status, body = await chat(http, server, "nowhere")
    assert status == 404 and "[[ollama.hosts]]" in body["error"]


async def test_two_equal_hosts_run_two_generations_at_once_and_a_third_waits(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([a, b], queue__max_concurrent=1)
    await all_up(server)
    # Long enough answers (40 tokens, 100 ms apart) that all three are in the gateway while
    # the first two run; the checks below wait for conditions, not for time.
    tabs = [Streamer(server, {**slow(f"tab {i}", tokens=40, delay=100)}) for i in range(3)]
    gateway = server.gateway

    async def two_running_one_waiting() -> bool:
        running = [(await h.stats())["in_progress"] for h in (a, b)]
        return running == [1, 1] and gateway.queue.waiting == 1

    assert await wait_for(two_running_one_waiting, timeout=10)
    assert [h["running"] for h in (await health(server))["hosts"]] == [1, 1]
    for tab in tabs:
        await tab.finish()
    assert all(tab.done for tab in tabs)
    assert sum(bool(tab.queued) for tab in tabs) == 1  # the third was told its place in line
    stats = [await h.stats() for h in (a, b)]
    assert [s["max_in_progress"] for s in stats] == [1, 1]
    assert sum(s["completed"] for s in stats) == 3


async def test_the_eta_counts_the_slots_of_every_host_that_can_serve_the_model(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host()
    b = await start_host()
    c = await start_host(("other:latest",))
    server = await start_gateway(
        [a, b, c], queue__max_concurrent=1, queue__estimated_time_per_request_ms=6000
    )
    await all_up(server)
    queue = server.gateway.queue
    # Two hosts have llama3.2, one has "other": the ETA divides the line among those slots
    # (the third host, without the model, does not count), so the same place in line is
    # sooner for llama3.2.
    assert (queue.capacity("llama3.2"), queue.capacity("other"), queue.capacity()) == (2, 1, 3)
    assert queue.eta_ms(3, "llama3.2") < queue.eta_ms(3, "other")
    assert queue.stats()["max_concurrent"] == 3
    async with aiohttp.ClientSession() as s, s.get(server.url + "/api/cache-stats") as r:
        assert (await r.json())["queue"]["max_concurrent"] == 3


async def test_a_waiting_request_is_not_held_up_by_one_for_a_busy_host(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host(("llama3.2:latest",))
    b = await start_host(("other:latest",))
    server = await start_gateway([a, b], queue__max_concurrent=1)
    await all_up(server)
    queue = server.gateway.queue
    # Host a is taken by an answer that outlasts the test (it leaves at the end).
    endless = Streamer(server, slow("endless", tokens=100000, delay=50))
    await until(lambda: queue.active == 1)
    on_b = Streamer(server, {"model": "other", **slow("on b", tokens=10, delay=50)})
    await until(lambda: queue.active == 2)
    blocked = Streamer(server, slow("blocked"))  # waits for host a
    await until(lambda: queue.waiting == 1)
    later = Streamer(server, {"model": "other", "messages": user("later")})  # waits for b
    await until(lambda: queue.waiting == 2)
    # Host b frees: the later request, which b can serve, runs; the one ahead of it in line,
    # which only host a can serve, keeps its place.
    await on_b.finish()
    await later.finish()
    assert on_b.done and later.done and later.queued
    assert not blocked.done and queue.waiting == 1
    await endless.leave()
    await blocked.finish()
    assert blocked.done


# -- health and failover ------------------------------------------------------------------------


async def test_a_killed_host_loses_no_request_that_had_not_started_and_comes_back(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([a, b], queue__max_concurrent=1, queue__max_queue_size=50)
    await all_up(server)
    tabs = [Streamer(server, {**slow(f"traffic {i}", tokens=20, delay=50)}) for i in range(8)]
    # Mid-traffic: a generation is streaming on host a, others wait in line.
    await until(lambda: a.runner is not None and server.gateway.queue.waiting >= 2, timeout=10)

    async def streaming_on_a() -> bool:
        return bool((await a.stats())["in_progress"])

    assert await wait_for(streaming_on_a, timeout=10)
    done_on_a = (await a.stats())["completed"]
    await a.stop()
    for tab in tabs:
        await tab.finish()
    failed = [tab for tab in tabs if not tab.done]
    # Only an answer already streaming from host a may end in an error frame (never a second
    # answer after it); every request that had not started completes on host b.
    assert len(failed) <= 1, [tab.frames[-1] for tab in failed]
    for tab in failed:
        assert tab.content and tab.frames[-1].get("error"), tab.frames
    assert all(not f.get("error") for tab in tabs if tab.done for f in tab.frames)
    # The rest ran on host b (one on a may have ended between the count above and the stop).
    assert (await b.stats())["completed"] >= 8 - len(failed) - done_on_a - 1
    assert (await states(server))[0] == "down"
    down = (await health(server))["hosts"][0]
    assert down["url"] == a.url and down["last_error"]

    # The same port answers again: the host is back in rotation after a probe.
    await a.restart()

    async def a_up() -> bool:
        return (await states(server))[0] == "up"

    assert await wait_for(a_up, timeout=40)


async def test_a_failing_host_is_left_for_another_before_the_first_token(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([a, b])
    await all_up(server)
    await a.fault("error", 500)
    # Host a is first in order and believed up: the first request goes there, gets a 500,
    # and is answered by host b without the client noticing.
    status, body = await chat(http, server, "after a 500")
    assert status == 200 and body["done"] is True
    assert (await a.fault("error"))["hits"] >= 1
    assert (await b.stats())["completed"] == 1
    assert (await states(server)) == ["down", "up"]
    # Host a is out of rotation: later requests go straight to b.
    before = (await a.fault("error"))["hits"]
    for i in range(3):
        status, _ = await chat(http, server, f"later {i}")
        assert status == 200
    probes = (await a.fault("error"))["hits"] - before
    assert (await b.stats())["completed"] == 4
    assert probes <= 3  # only its probes (/api/version), no chat


async def test_a_hanging_host_times_out_and_the_request_moves_on(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([a, b], ollama__timeout_seconds=1)
    await all_up(server)
    await a.fault("hang")
    status, body = await chat(http, server, "after a hang")
    assert status == 200 and body["done"] is True
    assert (await b.stats())["completed"] == 1


async def test_a_dead_host_is_probed_with_backoff_not_hammered(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host(fault="error")
    b = await start_host()
    server = await start_gateway([a, b], ollama__probe_interval_seconds=1)

    async def a_down() -> bool:
        return (await states(server))[0] == "down"

    assert await wait_for(a_down, timeout=10)
    start = (await a.fault("error"))["hits"]
    # Down since a moment ago: probed after 1 s, 1 s, 2 s, 4 s… A fixed window, since what is
    # checked is how often: a slow machine only probes less.
    await asyncio.sleep(6)
    probes = (await a.fault("error"))["hits"] - start
    assert 2 <= probes <= 5, probes
    host = (await health(server))["hosts"][0]
    assert host["state"] == "down" and host["next_probe_in_s"] <= 30
    # Healthy again: back at the next probe.
    await a.fault("none")

    async def a_up() -> bool:
        return (await states(server))[0] == "up"

    assert await wait_for(a_up, timeout=40)


async def test_health_stats_and_metrics_show_each_host(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host()
    b = await start_host(("llama3.2:latest", "qwen3:latest"))
    server = await start_gateway(
        [a, {"url": b.url, "max_concurrent": 3, "weight": 2}], ollama__probe_interval_seconds=1
    )
    await all_up(server)
    status, _ = await chat(http, server, "hello")
    assert status == 200
    body = await health(server)
    assert body["status"] == "ok"
    assert [(h["url"], h["state"], h["max_concurrent"], h["weight"]) for h in body["hosts"]] == [
        (a.url, "up", 1, 1.0),
        (b.url, "up", 3, 2.0),
    ]
    assert body["hosts"][1]["models"] == ["llama3.2:latest", "qwen3:latest"]
    async with http.get(server.url + "/api/cache-stats") as r:
        assert [h["url"] for h in (await r.json())["hosts"]] == [a.url, b.url]
    await b.stop()
    await wait_for(lambda: _state_is(server, 1, "down"), timeout=40)
    async with http.get(server.url + "/metrics") as r:
        text = await r.text()
    assert f'chatbot_ollama_host_up{{host="{a.url}"}} 1.0' in text
    assert f'chatbot_ollama_host_up{{host="{b.url}"}} 0.0' in text
    assert f'chatbot_ollama_host_running{{host="{a.url}"}} 0.0' in text


async def _state_is(server: Server, index: int, state: str) -> bool:
    return (await states(server))[index] == state


async def test_the_models_overview_is_the_union_of_the_hosts(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host(("llama3.2:latest",))
    b = await start_host(("llama3.2:latest", "qwen3:4b"))
    server = await start_gateway([a, b])
    await all_up(server)
    status, _ = await chat(http, server, "load it", model="qwen3:4b")
    assert status == 200
    overview = await server.gateway.models_overview()
    assert overview["reachable"] is True
    assert overview["installed"] == ["llama3.2:latest", "qwen3:4b"]
    assert overview["loaded"] == ["qwen3:4b"]
    await a.stop()
    await b.stop()
    overview = await server.gateway.models_overview()
    assert overview["reachable"] is False and overview["installed"] is None
    assert "not reachable" in overview["error"]


async def test_a_model_only_a_dead_host_has_is_reported_unreachable_not_missing(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    a = await start_host(("llama3.2:latest", "rare:latest"))
    b = await start_host()
    server = await start_gateway([a, b])
    await all_up(server)
    await a.stop()
    status, body = await chat(http, server, "only a has it", model="rare")
    # Not retried on b, whose "model not found" would hide what is wrong.
    assert status == 502 and "not reachable" in body["error"], body
    assert (await b.stats())["by_path"].get("/api/chat", 0) == 0
    status, _ = await chat(http, server, "b has this one")
    assert status == 200


async def test_a_failure_after_output_started_ends_the_answer_without_a_second_one(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host()
    b = await start_host()
    server = await start_gateway([a, b])
    await all_up(server)
    tab = Streamer(server, {"messages": user("midway"), "options": {"sim_error_after": 3}})
    await tab.finish()
    assert tab.content and tab.frames[-1].get("error"), tab.frames
    assert [(await h.stats())["generations"] for h in (a, b)] == [1, 0]
    # An error Ollama writes into its stream says it is alive: host a stays in rotation.
    assert (await states(server)) == ["up", "up"]
    # Before the first token, it is retried once on the other host, and no more.
    tab = Streamer(server, {"messages": user("at once"), "options": {"sim_error_after": 0}})
    await tab.finish()
    assert not tab.content and tab.frames[-1].get("error"), tab.frames
    assert sum([(await h.stats())["generations"] for h in (a, b)]) == 1 + 2


async def test_an_embedding_whose_host_fails_is_answered_by_another(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    models = ("nomic-embed-text:latest",)
    a = await start_host(models)
    b = await start_host(models)
    server = await start_gateway([a, b])
    await all_up(server)
    await a.fault("error", 504)
    body = {"model": "nomic-embed-text", "input": ["survives a 504"]}
    async with http.post(server.url + "/api/embed", json=body) as r:
        assert r.status == 200
        assert len((await r.json())["embeddings"]) == 1
    assert (await b.stats())["embed_inputs"] == 1
    assert (await states(server)) == ["down", "up"]


async def test_a_host_with_the_model_loaded_is_preferred_then_the_larger_weight(
    start_host: StartHost, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    models = ("llama3.2:latest", "qwen3:4b")
    a = await start_host(models)
    b = await start_host(models)
    c = await start_host(models)
    # qwen3 is in host b's memory already (someone used it there directly).
    direct = {"model": "qwen3:4b", "messages": user("warm"), "stream": False}
    async with http.post(b.url + "/api/chat", json=direct) as r:
        assert r.status == 200
    server = await start_gateway([a, b, {"url": c.url, "weight": 2}])
    await all_up(server)
    assert (await health(server))["hosts"][1]["loaded"] == ["qwen3:4b"]
    status, _ = await chat(http, server, "where it is loaded", model="qwen3:4b")
    assert status == 200
    assert [(await h.stats())["generations"] for h in (a, b, c)] == [0, 2, 0]
    # llama3.2 is loaded nowhere: all equally idle, so the larger weight wins over list order.
    status, _ = await chat(http, server, "by weight")
    assert status == 200
    assert [(await h.stats())["generations"] for h in (a, b, c)] == [0, 2, 1]


# -- load and unload calls ------------------------------------------------------------------------


async def test_a_load_goes_where_the_model_is_and_an_unload_to_every_host_holding_it(
    start_host: StartHost, start_gateway: StartGateway
) -> None:
    a = await start_host(("llama3.2:latest",))
    b = await start_host(("llama3.2:latest", "qwen3:4b"))
    server = await start_gateway([a, b])
    await all_up(server)

    async def generates(host: Host) -> int:
        return int((await host.stats())["by_path"].get("/api/generate", 0))

    async with aiohttp.ClientSession() as http:
        # A load (no prompt) of a model only b has goes to b, not to the first host.
        async with http.post(server.url + "/api/generate", json={"model": "qwen3:4b"}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["done_reason"] == "load"
        assert (await generates(a), await generates(b)) == (0, 1)
        # llama3.2 loaded on both (b by a client of its own), then unloaded through the gateway:
        # both let it go.
        for host in (a, b):
            async with http.post(host.url + "/api/generate", json={"model": "llama3.2"}) as r:
                assert r.status == 200
        await server.gateway.hosts.refresh()
        assert all(h.has_loaded("llama3.2") for h in server.gateway.hosts.hosts)
        body = {"model": "llama3.2", "keep_alive": 0}
        async with http.post(server.url + "/api/generate", json=body) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["done_reason"] == "unload"
        assert (await generates(a), await generates(b)) == (2, 3)
