"""ServerHost: restart keeps the cache and drains streams; a busy port is reported."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from server.gateway import Gateway
from server.lifecycle import PortInUse, ServerHost
from tests.conftest import free_port, make_config, user
from tests.server.test_queue_http import Streamer, slow, until

CHAT = "/api/chat-optimized"


@pytest.fixture
async def host(sim):
    port = free_port()
    gateway = Gateway(
        make_config(ollama__api_url=sim.url, ollama__warm_up=False, queue__max_concurrent=4)
    )
    host = ServerHost(gateway, port_override=port, drain_seconds=0.5)
    await host.start()
    yield host
    await host.stop()


class Url:
    def __init__(self, host: ServerHost) -> None:
        self.url = f"http://127.0.0.1:{host.port}"


async def ask(http, host: ServerHost) -> str:
    # A new connection each time, as a browser opens one when its idle one was closed.
    async with (
        aiohttp.ClientSession() as fresh,
        fresh.post(
            f"http://127.0.0.1:{host.port}{CHAT}", json={"messages": user(), "stream": False}
        ) as r,
    ):
        assert r.status == 200
        return r.headers["X-Cache"]


async def test_restart_keeps_the_cache_and_the_port(host, http):
    port = host.port
    assert await ask(http, host) == "MISS"
    await host.restart()
    assert host.port == port
    assert await ask(http, host) == "HIT"


async def test_restart_drains_then_ends_long_streams_with_an_error_frame(host, http):
    short = Streamer(Url(host), slow("short", tokens=10, delay=20))  # 0.2 s: finishes
    long = Streamer(Url(host), slow("long", tokens=200, delay=20))  # 4 s: cut at 0.5 s
    await until(lambda: short.frames and long.frames)
    await host.restart()
    assert await ask(http, host) in ("MISS", "HIT")  # the new server serves
    await short.finish()
    await long.finish()
    assert short.done and short.frames[-1]["cached"] is False
    assert long.frames[-1]["code"] == "server_restarting" and long.frames[-1]["done"] is True


async def test_busy_port_is_reported_and_restart_recovers(sim, http):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        gateway = Gateway(make_config(ollama__api_url=sim.url, ollama__warm_up=False))
        host = ServerHost(gateway, port_override=port)
        with pytest.raises(PortInUse) as info:
            await host.start()
        assert f"port {port} on 127.0.0.1 is already in use" in info.value.strerror
        assert not host.running
    try:
        await host.restart()  # the other program went away
        assert host.running and await ask(http, host) == "MISS"
    finally:
        await host.stop()
