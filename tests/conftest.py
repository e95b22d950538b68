"""Shared fixtures: a real Ollama simulator and a real gateway, both on loopback port 0."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server import config as config_mod
from server import simulator
from server.gateway import Gateway
from server.lifecycle import ServerHost

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sim:
    url: str
    port: int
    settings: simulator.SimulatorSettings

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/simulator/stats") as r:
            return await r.json()


@dataclass
class Server:
    url: str
    host: ServerHost

    @property
    def gateway(self) -> Gateway:
        return self.host.gateway


class Threaded:
    """An event loop in a thread of its own: servers run there while a blocking test (hypothesis,
    schemathesis) calls them over real sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Poll an async condition until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()


@pytest.fixture
async def start_sim() -> AsyncIterator[Callable[..., Awaitable[Sim]]]:
    runners = []

    async def start(port: int = 0, **kw: Any) -> Sim:
        settings = simulator.SimulatorSettings(
            **{"tokens": 8, "token_delay_ms": 0, "first_token_delay_ms": 0, **kw}
        )
        runner, port = await simulator.start(settings, port=port)
        runners.append(runner)
        return Sim(f"http://127.0.0.1:{port}", port, settings)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sim(start_sim: Callable[..., Awaitable[Sim]]) -> Sim:
    return await start_sim()


def make_config(**overrides: Any) -> config_mod.Config:
    """A config from defaults plus overrides given as section__key=value."""
    values = {tuple(k.split("__", 1)): v for k, v in overrides.items()}
    return config_mod.load(None, env={}, overrides=values)  # type: ignore[arg-type]


Serve = Callable[[Gateway], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a gateway on a free port (1 s drain); each is stopped after the test."""
    hosts: list[ServerHost] = []

    async def start(gateway: Gateway) -> Server:
        host = ServerHost(gateway, port_override=0, drain_seconds=1)
        await host.start()
        hosts.append(host)
        return Server(f"http://127.0.0.1:{host.port}", host)

    yield start
    for host in hosts:
        await host.stop()


@pytest.fixture
def start_server(sim: Sim, serve: Serve) -> Callable[..., Awaitable[Server]]:
    async def start(**overrides: Any) -> Server:
        overrides.setdefault("ollama__api_url", sim.url)
        overrides.setdefault("ollama__warm_up", False)
        return await serve(Gateway(make_config(**overrides)))

    return start


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[Server]]) -> Server:
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def user(text: str = "test") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def parse_sse(body: str) -> list[dict[str, Any]]:
    """Parse a stream as the frontend does, but strictly: every line must be a `data:` frame."""
    frames = []
    for line in body.split("\n"):
        if not line:
            continue
        assert line.startswith("data: "), f"not a data frame: {line!r}"
        frames.append(json.loads(line[6:]))
    return frames


async def node_frontend(
    url: str, body: dict[str, Any], origin: str | None = None
) -> dict[str, Any]:
    """Run the frontend's own stream-parsing code (tests/js/frontend_stream.mjs) under Node.

    Asynchronous, because the server under test runs on this same event loop.
    """
    args = [str(ROOT / "tests/js/frontend_stream.mjs"), url, json.dumps(body)]
    if origin:
        args.append(origin)
    proc = await asyncio.create_subprocess_exec(
        "node", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def wait_json(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> dict[str, Any]:
    """GET a JSON URL until a process we started answers it (failing if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.communicate()[1] if proc.stderr else ""
            raise AssertionError(f"the process exited ({proc.returncode}): {err}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")
