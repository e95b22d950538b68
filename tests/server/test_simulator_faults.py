"""The simulator told to fail or hang (at start and live), and several simulators from the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import aiohttp
import pytest

from server.simulator import SimulatorSettings
from tests.conftest import Sim, free_port, wait_json

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def set_fault(http: aiohttp.ClientSession, sim: Sim, **body: object) -> dict[str, object]:
    async with http.post(f"{sim.url}/simulator/fault", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_error_fault_at_start_answers_ollamas_error_json(
    start_sim: Callable[..., Awaitable[Sim]], http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(fault="error", fault_status=503)
    for method, path, body in (
        ("POST", "/api/chat", CHAT),
        ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi"}),
        ("POST", "/api/embed", {"model": "llama3.2", "input": "hi"}),
        ("GET", "/api/tags", None),
        ("GET", "/api/version", None),
    ):
        async with http.request(method, f"{sim.url}{path}", json=body) as r:
            assert r.status == 503, path
            assert r.content_type == "application/json"
            data = await r.json()
            assert set(data) == {"error"} and "503" in data["error"], data
    # The control routes still answer, and count what the fault swallowed.
    async with http.get(f"{sim.url}/simulator/fault") as r:
        assert await r.json() == {"mode": "error", "status": 503, "hits": 5}
    assert (await sim.stats())["generations"] == 0


async def test_fault_switched_live(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/api/chat", json=CHAT) as r:
        assert r.status == 200
    assert (await set_fault(http, sim, mode="error"))["status"] == 500  # the default status
    async with http.post(f"{sim.url}/api/chat", json=CHAT) as r:
        assert r.status == 500
        assert "error" in await r.json()
    await set_fault(http, sim, mode="none")
    async with http.post(f"{sim.url}/api/chat", json=CHAT) as r:
        assert r.status == 200
        assert (await r.json())["done"] is True


async def test_hang_never_answers_until_the_client_gives_up(
    sim: Sim, http: aiohttp.ClientSession
) -> None:
    await set_fault(http, sim, mode="hang")
    for path in ("/api/chat", "/api/tags"):
        with pytest.raises(TimeoutError):
            method = "POST" if path == "/api/chat" else "GET"
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with http.request(method, f"{sim.url}{path}", json=CHAT, timeout=timeout):
                pass
    # The simulator itself is fine: told to stop hanging, it answers again.
    await set_fault(http, sim, mode="none")
    async with http.get(f"{sim.url}/api/tags") as r:
        assert r.status == 200


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"mode": "explode"}, "fault mode must be one of none, error, hang"),
        ({"mode": "error", "status": 404}, "fault status must be a whole number 500..599"),
        ({"mode": "error", "status": "500"}, "fault status"),
        ({"mode": 1}, "mode must be a string"),
        ({"mode": "hang", "delay": 3}, "unknown field 'delay'"),
    ],
)
async def test_bad_fault_request_is_a_400_naming_it(
    sim: Sim, http: aiohttp.ClientSession, body: dict[str, object], named: str
) -> None:
    async with http.post(f"{sim.url}/simulator/fault", json=body) as r:
        assert r.status == 400
        assert named in (await r.json())["error"]
    async with http.get(f"{sim.url}/simulator/fault") as r:
        assert (await r.json())["mode"] == "none"  # unchanged


def test_bad_fault_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="fault mode must be one of"):
        SimulatorSettings(fault="sometimes")
    with pytest.raises(ValueError, match=r"500\.\.599"):
        SimulatorSettings(fault="error", fault_status=200)


@contextmanager
def cli_simulator(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.simulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


async def test_several_simulators_from_the_cli_with_their_own_models_and_faults() -> None:
    one, two = free_port(), free_port()
    with (
        cli_simulator("--port", str(one), "--models", "llama3.2,qwen3:4b") as first,
        cli_simulator("--port", str(two), "--models", "mistral", "--fault", "error") as second,
    ):
        tags = await asyncio.to_thread(wait_json, f"http://127.0.0.1:{one}/api/tags", first)
        names = [m["name"] for m in tags["models"]]
        assert names == ["llama3.2:latest", "qwen3:4b"]
        fault = await asyncio.to_thread(
            wait_json, f"http://127.0.0.1:{two}/simulator/fault", second
        )
        assert fault["mode"] == "error"
        await set_fault_url(f"http://127.0.0.1:{two}", mode="none")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{two}/api/tags") as r,
        ):
            assert [m["name"] for m in (await r.json())["models"]] == ["mistral:latest"]


async def set_fault_url(url: str, **body: object) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/simulator/fault", json=body) as r:
        assert r.status == 200


def test_cli_refuses_a_bad_fault_status() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.simulator", "--fault", "error", "--fault-status", "418"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "500..599" in done.stderr
